//! Hand-written scenarios: the protocol bugs the random schedules found,
//! reduced to a few steps each, plus a sanity run of the happy path.
//!
//! The bug scenarios assert what the protocol promises. Those of fixed
//! bugs (KB1, KB2) are regression tests, and each is also run with the
//! mutation that restores the old behaviour, which must fail it. Those of
//! open issues are `#[ignore]`d so that CI stays usable meanwhile
//! (`cargo test --test sim -- --ignored kb` runs them).

use crate::check::Violation;
use crate::mutation::Mutation;
use crate::params::{Params, MS};
use crate::schedule::Fault;
use crate::world::World;
use vmlease::hosts::HostState;

/// The claim wait of a scenario's hosts: a host booted at 0 joins that
/// much later than before issue 14 (its claim write is read back after
/// it), so the scenarios' timelines start that much later.
fn cw(p: &Params) -> u64 {
    vmlease::collision::claim_wait_ms(p.cfg.io_timeout, p.cfg.timing.renew_interval, None)
}

fn print_trace(w: &World) {
    for l in &w.trace {
        println!("  {l}");
    }
}

/// No fault: both VMs start and nothing is violated.
#[test]
fn happy_path_runs_every_vm() {
    let p = Params::fixed(3, 2, 200, 1000, 400, 600);
    let mut w = World::custom(7, p, Vec::new(), &[0, 50 * MS, 100 * MS], true, true);
    let v = w.run_until((cw(&w.p) + 10_000) * MS);
    assert!(v.is_none(), "{v:?}");
    for vm in 0..2 {
        assert!(w.running_qemu_of(vm).is_some(), "vm{vm} does not run");
    }
}

/// KB1. h1's lockspace turns read-only at 3 s (its renewals fail; its VM's
/// disk, on RBD, works). Before h1 fences (F = 1 s after its last renewal)
/// the operator restarts the watchdog daemon, twice. Each new daemon reads
/// the lockspace fine and re-opens the watchdog (which pings it). Before
/// the fix it counted F from its own start, so h1 fenced ~1.9 s late -
/// after D, when h2 may already take the VM over: two writers. Now it
/// continues from its own record's last renewal (`fence::clock_start`).
pub fn kb1_world(mutation: Mutation) -> World {
    let p = Params::fixed(2, 1, 200, 1000, 400, 600);
    let j = cw(&p);
    let mut faults = vec![
        Fault::LockspaceReadOnly {
            host: 1,
            at: (j + 3000) * MS,
            dur: 6000 * MS,
        },
        Fault::DaemonRestart {
            host: 1,
            at: (j + 3800) * MS,
        },
        Fault::DaemonRestart {
            host: 1,
            at: (j + 4700) * MS,
        },
    ];
    // Someone keeps trying to start the VM on h2.
    for i in 0..12 {
        faults.push(Fault::RogueStart {
            vm: 0,
            host: 2,
            at: (j + 4000 + 200 * i) * MS,
        });
    }
    // h1 boots (and joins) first so the controller places the VM there.
    World::custom_mutated(11, p, faults, &[0, (j + 1500) * MS], true, true, mutation)
}

/// KB1 is fixed: h1 fences F after its last renewal whatever the restarts.
#[test]
fn kb1_a_daemon_restart_does_not_delay_the_fence() {
    let mut w = kb1_world(Mutation::None);
    w.keep_going = true;
    let j = cw(&w.p);
    w.run_until((j + 9000) * MS);
    print_trace(&w);
    assert!(w.violations.is_empty(), "{}", w.violations[0]);
    // The restarts did happen and continued the clock; h1 fenced.
    let continued = w
        .trace
        .iter()
        .filter(|l| l.contains("continuing the previous daemon's fence clock"))
        .count();
    assert_eq!(continued, 2, "both restarted daemons continue the clock");
    assert!(w
        .trace
        .iter()
        .any(|l| l.contains("h1") && l.contains("FENCING")));
}

/// The old behaviour (the mutation `restart-resets-fence-clock`) still
/// fails the scenario, up to two live writers: the simulator catches KB1.
#[test]
fn kb1_is_caught_with_the_old_fence_clock() {
    let mut w = kb1_world(Mutation::RestartResetsFenceClock);
    w.keep_going = true;
    let j = cw(&w.p);
    w.run_until((j + 9000) * MS);
    let kinds: Vec<&str> = w.violations.iter().map(|v| v.invariant).collect();
    assert!(kinds.contains(&"fresh-liveness"), "{kinds:?}");
    assert!(kinds.contains(&"single-writer"), "{kinds:?}");
}

/// KB2. h2 joins the lockspace 6 s after h1 (its slot was empty until
/// then), starts a VM right after its first renewal, and its daemon hangs
/// before the second. Before the fix h1's observer dated h2's slot to h1's
/// own start, so h2 looked unchanged for 6 s > D: h1 took the VM over at
/// once, while h2's QEMU ran until h2's watchdog fired.
///
/// Since issue 14 a joining host writes a claim record first, so an
/// observer that reads the table all along sees the slot change at the
/// first renewal; here h1's table reads fail (I/O errors, shorter than F)
/// while h2 claims, so that h1 first sees h2's slot after its first
/// renewal - the other way a first sight happened, as the finding says.
/// (io_timeout 0.2 s: a claim wait of 0.7 s, shorter than F.)
pub fn kb2_world(mutation: Mutation) -> (World, Option<crate::check::Violation>) {
    let mut p = Params::fixed(2, 1, 200, 1500, 400, 1000);
    p.cfg.io_timeout = 200;
    let (boot2, errors) = (6000, 100 + cw(&p) + 300);
    let faults = vec![Fault::IoErrors {
        host: 1,
        at: (boot2 + 50) * MS,
        dur: errors * MS,
    }];
    let mut w = World::custom_mutated(12, p, faults, &[0, boot2 * MS], false, true, mutation);
    // Until h2's daemon has published its first renewal.
    while w
        .host(2)
        .status
        .as_ref()
        .map(|s| s.last_renewal_ms)
        .unwrap_or(0)
        == 0
    {
        let t = w.now + MS;
        w.run_until(t);
    }
    let until = w.now + 3000 * MS;
    w.host_mut(2).daemon_hung_until = until;
    w.start_vm(0, 2, false);
    while w.running_qemu_of(0).is_none() && w.now < (boot2 + 2000) * MS {
        let t = w.now + MS;
        w.run_until(t);
    }
    assert!(w.running_qemu_of(0).is_some(), "vm0 started on h2");
    // Until h1 renews again after its I/O errors.
    let healed = w.host(1).local_ms((boot2 + 50 + errors) * MS);
    run_while(&mut w, (boot2 + 3000) * MS, |w| {
        w.host(1)
            .status
            .as_ref()
            .is_some_and(|s| s.last_renewal_ms >= healed)
    });
    let t = w.now + 50 * MS;
    w.run_until(t);
    w.start_vm(0, 1, false);
    let t = w.now + 2000 * MS;
    let v = w.run_until(t);
    (w, v)
}

/// KB2 is fixed: the observer dates a first sight to the read that saw it.
#[test]
fn kb2_a_late_joiner_keeps_its_leases_for_d() {
    let (w, v) = kb2_world(Mutation::None);
    print_trace(&w);
    assert!(v.is_none(), "{}", v.unwrap());
}

/// The old observer (the mutation `first-sight-dated-to-start`) fails it.
#[test]
fn kb2_is_caught_with_the_old_observer() {
    let (_, v) = kb2_world(Mutation::FirstSightDatedToStart);
    let v = v.expect("the old observer lets h1 take h2's VM early");
    assert_eq!(v.invariant, "safe-takeover", "{v}");
}

/// The fresh slot read under the record lock. h1 runs the VM; its
/// lockspace turns read-only for 5 s (< F: it does not fence, its VM runs
/// on). Meanwhile the OSD holding the `hosts` file turns slow for h2 just
/// after one of its renewals: its view of the table freezes while it stays
/// protected for F/2 (its lease records and disks are fine). Once
/// that frozen view shows h1 unchanged for D, only the slot read under the
/// record lock shows that h1 renewed again. This needs F/2 > max(K, W) +
/// 3R + a tick (here R 250, F 6000, K 250, W 300: D = 6801). The offsets
/// of h2's slowdown (`x`) and of the start attempt on h2 (`y`) are tried
/// on a small grid.
pub fn fresh_read_world(x_ms: u64, y_ms: u64, mutation: Mutation) -> Option<Violation> {
    let p = Params::fixed(2, 1, 250, 6000, 250, 300);
    let j = cw(&p);
    let t0 = j + 3000;
    let faults = vec![
        Fault::LockspaceReadOnly {
            host: 1,
            at: t0 * MS,
            dur: 5000 * MS,
        },
        Fault::SlowHostTable {
            hosts: vec![2],
            at: (t0 + x_ms) * MS,
            dur: 3000 * MS,
            extra_ms: 4000,
        },
        Fault::RogueStart {
            vm: 0,
            host: 2,
            at: (t0 + y_ms) * MS,
        },
    ];
    let mut w = World::custom_mutated(13, p, faults, &[0, 0], false, false, mutation);
    w.run_until((j + 1000) * MS);
    w.start_vm(0, 1, false);
    w.run_until((j + 14000) * MS)
}

fn fresh_read_grid(mutation: Mutation) -> Vec<(u64, u64, Violation)> {
    let mut found = Vec::new();
    for x in [4500, 4700, 4900] {
        for y in (6850..=7800).step_by(50) {
            if let Some(v) = fresh_read_world(x, y, mutation) {
                found.push((x, y, v));
            }
        }
    }
    found
}

#[test]
fn fresh_slot_read_is_what_keeps_a_renewing_holder() {
    let real = fresh_read_grid(Mutation::None);
    assert!(real.is_empty(), "{:?}", real.first());
    let mutated = fresh_read_grid(Mutation::NoFreshSlotRead);
    assert!(
        !mutated.is_empty(),
        "without the fresh slot read the grid finds no violation"
    );
    let (x, y, v) = &mutated[0];
    eprintln!(
        "no-fresh-slot-read: {} of the grid's points violate, e.g. x = {x} ms, y = {y} ms: {v}",
        mutated.len()
    );
}

/// KB3 (liveness, configuration, fixed): `check-config` accepted F = 2R,
/// but the plugin wants a renewal younger than F/2 = R, and a healthy
/// daemon's last renewal is up to R + one tick old just before the next one
/// is collected: healthy hosts refused starts much of the time. The config
/// now requires F >= 4R. Starts on two healthy hosts with F = 4R: (ok,
/// refused, reasons).
pub fn kb3_refusals(r: u64) -> (u64, u64, Vec<String>) {
    let p = Params::fixed(2, 1, r, 4 * r, 200, 300);
    let j = cw(&p);
    let mut w = World::custom(14, p, Vec::new(), &[0, 0], false, true);
    w.run_until((j + 1000) * MS);
    let (mut ok, mut refused) = (0, 0);
    for i in 0..40 {
        let h = 1 + (i % 2) as u16;
        w.start_vm(0, h, false);
        let t = w.now + 400 * MS;
        w.run_until(t);
        match w.running_qemu_of(0) {
            Some(q) => {
                ok += 1;
                w.kill_qemu(q);
            }
            None => refused += 1,
        }
        let t = w.now + 317 * MS;
        w.run_until(t);
    }
    let reasons = w
        .trace
        .iter()
        .filter(|l| l.contains("start of vm0 failed"))
        .cloned()
        .collect();
    (ok, refused, reasons)
}

#[test]
fn kb3_config_refuses_f_below_4r() {
    let text =
        "lockspace_dir = \"/sim/lockspace\"\nrenew_interval = 0.2\nrenew_fail_timeout = 0.4\n";
    let e = vmlease::config::parse(text, "kb3.conf")
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 4 * renew_interval"), "{e}");
}

#[test]
fn kb3_healthy_hosts_accept_starts_with_f_4r() {
    for r in [100, 200, 500] {
        let (ok, refused, reasons) = kb3_refusals(r);
        assert_eq!(
            refused,
            0,
            "R = {r} ms, F = 4R: {refused} of {} starts refused: {reasons:?}",
            ok + refused
        );
    }
}

/// KB4. h1's lockspace turns read-only at 3 s and its VM's disk I/O is
/// stuck in the kernel from 3.5 s to 6.5 s, so SIGKILL cannot take effect:
/// h1 fences at F and must reset by its last renewal + F + K. Its watchdog
/// daemon crashes every 0.4 s meanwhile (systemd restarts it at once); h2
/// keeps trying to start the VM. Before the fix each new daemon found its
/// fence again (the marker) and gave the stuck QEMU another K (and the
/// watchdog, re-opened, another W): h1 never reset, and h2 took the VM
/// over at D while h1's QEMU lived. Now K counts from when F ran out.
pub fn kb4_world(mutation: Mutation) -> World {
    let p = Params::fixed(2, 1, 200, 1000, 400, 600);
    let j = cw(&p);
    let mut faults = vec![
        Fault::LockspaceReadOnly {
            host: 1,
            at: (j + 3000) * MS,
            dur: 6000 * MS,
        },
        Fault::QemuStuck {
            vm: 0,
            at: (j + 3500) * MS,
            dur: 3000 * MS,
        },
    ];
    for i in 0..5 {
        faults.push(Fault::DaemonKill {
            host: 1,
            at: (j + 4300 + 400 * i) * MS,
            restart: true,
        });
    }
    for i in 0..15 {
        faults.push(Fault::RogueStart {
            vm: 0,
            host: 2,
            at: (j + 4000 + 200 * i) * MS,
        });
    }
    World::custom_mutated(15, p, faults, &[0, 1500 * MS], true, true, mutation)
}

/// KB4 is fixed: h1 resets F + K after its last renewal, crashes or not.
#[test]
fn kb4_daemon_crashes_during_a_fence_do_not_delay_the_reset() {
    let mut w = kb4_world(Mutation::None);
    w.keep_going = true;
    let j = cw(&w.p);
    w.run_until((j + 10_000) * MS);
    print_trace(&w);
    assert!(w.violations.is_empty(), "{}", w.violations[0]);
    assert!(w
        .trace
        .iter()
        .any(|l| l.contains("h1") && l.contains("RESET")));
}

/// The old kill clock (the mutation `kill-timeout-from-now`) fails it.
#[test]
fn kb4_is_caught_with_the_old_kill_clock() {
    let mut w = kb4_world(Mutation::KillTimeoutFromNow);
    w.keep_going = true;
    let j = cw(&w.p);
    w.run_until((j + 10_000) * MS);
    let kinds: Vec<&str> = w.violations.iter().map(|v| v.invariant).collect();
    assert!(kinds.contains(&"safe-takeover"), "{kinds:?}");
}

/// Adds a fault that starts now (scenarios that react to the world).
fn inject(w: &mut World, f: Fault) {
    let mut faults = w.sched.faults.clone();
    let (at, dur) = (f.at(), f.dur());
    faults.push(f);
    w.sched = crate::schedule::Schedule::from_faults(faults, &w.p);
    let i = w.sched.faults.len() - 1;
    w.at(at, crate::world::Ev::Fault(i));
    if dur > 0 {
        w.at(at + dur, crate::world::Ev::FaultEnd(i));
    }
}

/// Runs until `cond` holds (1 ms steps), at most until `limit`.
fn run_while(w: &mut World, limit: u64, cond: impl Fn(&World) -> bool) {
    while !cond(w) && w.now < limit {
        let t = w.now + MS;
        w.run_until(t);
    }
}

/// KB5 (found by long-run seed 1000088187). h1 runs the VM; its lockspace
/// turns read-only for 1.5 s, it fences (kills the VM) and, once writes
/// work again, publishes fenced-clean. The operator clears the fence; h1
/// starts the VM again at once, and its storage is cut right after the
/// acquire - before a renewal saying `live` lands. The lockspace still
/// says fenced-clean. Before the fix h2 took the VM over by rule 1 at
/// once, while h1's new QEMU ran. Now a fenced-clean record vouches only
/// for QEMUs started before it was written.
pub fn kb5_world(mutation: Mutation) -> (World, Option<Violation>) {
    let p = Params::fixed(2, 1, 200, 1000, 400, 600);
    let j = cw(&p);
    let faults = vec![Fault::LockspaceReadOnly {
        host: 1,
        at: (j + 2000) * MS,
        dur: 1500 * MS,
    }];
    let mut w = World::custom_mutated(16, p, faults, &[0, 0], false, true, mutation);
    w.run_until((j + 500) * MS);
    w.start_vm(0, 1, false);
    w.run_until((j + 5000) * MS);
    let state = |w: &World| w.host(1).status.as_ref().map(|s| s.state);
    assert_eq!(state(&w), Some(HostState::FencedClean), "h1 fenced");
    assert!(w.running_qemu_of(0).is_none());
    w.host_mut(1).clear_request = true;
    run_while(&mut w, (j + 6000) * MS, |w| {
        state(w) == Some(HostState::Live)
    });
    assert_eq!(state(&w), Some(HostState::Live), "fence cleared");
    w.start_vm(0, 1, false);
    run_while(&mut w, (j + 7000) * MS, |w| w.running_qemu_of(0).is_some());
    assert!(w.running_qemu_of(0).is_some(), "vm0 runs on h1 again");
    let now = w.now;
    inject(
        &mut w,
        Fault::StorageCut {
            hosts: vec![1],
            at: now,
            dur: 4000 * MS,
            data: false,
        },
    );
    let t = w.now + 20 * MS;
    w.run_until(t);
    w.start_vm(0, 2, false);
    let t = w.now + 3000 * MS;
    let v = w.run_until(t);
    (w, v)
}

#[test]
fn kb5_a_fenced_clean_record_does_not_vouch_for_a_later_qemu() {
    let (w, v) = kb5_world(Mutation::None);
    print_trace(&w);
    assert!(v.is_none(), "{}", v.unwrap());
}

/// The old rule 1 (the mutation `fenced-clean-vouches-for-all`) fails it.
#[test]
fn kb5_is_caught_with_the_old_rule_1() {
    let (_, v) = kb5_world(Mutation::FencedCleanVouchesForAll);
    let v = v.expect("the old rule 1 lets h2 take the VM from h1's new QEMU");
    assert_eq!(v.invariant, "safe-takeover", "{v}");
}

/// Issue 14 item 4. h1 starts the VM; libvirtd's acquire hangs in the
/// kernel before its record lock (the daemon's I/O works), past its
/// deadline: libvirt gives up and kills the QEMU, the daemon releases what
/// that QEMU held (nothing yet) and forgets it. Then the stuck acquire
/// goes on. Before the fix it wrote the dead QEMU into the record, and h2,
/// seeing a live holder host, could never start the VM. Now a call whose
/// caller gave up, or whose QEMU exited, writes nothing.
pub fn abandoned_acquire_world(mutation: Mutation) -> World {
    let p = Params::fixed(2, 1, 200, 1000, 400, 600);
    let stall = p.cfg.io_timeout + p.cfg.lock_timeout + 2000;
    let j = cw(&p);
    let faults = vec![Fault::AcquireStall {
        host: 1,
        at: (j + 400) * MS,
        dur: stall * MS,
    }];
    let mut w = World::custom_mutated(17, p, faults, &[0, 0], false, true, mutation);
    w.run_until((j + 500) * MS);
    w.start_vm(0, 1, false);
    let t = w.now + (stall + 1000) * MS;
    w.run_until(t);
    assert!(w.running_qemu_of(0).is_none(), "the start on h1 failed");
    w.start_vm(0, 2, false);
    run_while(&mut w, t + 5000 * MS, |w| w.running_qemu_of(0).is_some());
    w
}

#[test]
fn an_abandoned_acquire_leaves_no_dead_holder() {
    let w = abandoned_acquire_world(Mutation::None);
    print_trace(&w);
    assert!(w.violations.is_empty(), "{}", w.violations[0]);
    let q = w.running_qemu_of(0).expect("vm0 runs on h2");
    assert_eq!(w.qemus[q].host, 2);
}

/// The old acquire (the mutation `abandoned-acquire-writes`) fails it.
#[test]
fn an_abandoned_acquire_is_caught_with_the_old_acquire() {
    let w = abandoned_acquire_world(Mutation::AbandonedAcquireWrites);
    print_trace(&w);
    assert!(
        w.running_qemu_of(0).is_none(),
        "with the old acquire the dead QEMU's record must keep h2 out"
    );
    assert!(
        w.trace.iter().any(|l| l.contains("h2")
            && l.contains("start of vm0 failed")
            && l.contains("held by host 1")),
        "h2 must be refused by h1's dead QEMU"
    );
}

/// Issue 14, item 1: a QEMU whose main thread has exited is not dead.
/// h1's lockspace turns read-only at 3 s (its renewals fail; its VM's disk
/// works) and its VM's disk I/O is stuck in the kernel from 3.5 s to 7 s;
/// h2 keeps trying to start the VM. h1 fences at F: SIGKILL ends the main
/// thread at once ('Z' in /proc), the I/O thread stays until its write
/// lands. The fence must wait for the whole process and reset at F + K.
/// With the old liveness rule (the leader's state) the daemon counted the
/// QEMU dead right after the kill: the fence completed, the watchdog was
/// petted again, no reset came, and h2 took the VM over at D while the
/// stuck write was still to land.
pub fn zombie_leader_world(mutation: Mutation) -> World {
    let p = Params::fixed(2, 1, 200, 1000, 400, 600);
    let j = cw(&p);
    let mut faults = vec![
        Fault::LockspaceReadOnly {
            host: 1,
            at: (j + 3000) * MS,
            dur: 6000 * MS,
        },
        Fault::QemuStuck {
            vm: 0,
            at: (j + 3500) * MS,
            dur: 3500 * MS,
        },
    ];
    for i in 0..20 {
        faults.push(Fault::RogueStart {
            vm: 0,
            host: 2,
            at: (j + 4000 + 200 * i) * MS,
        });
    }
    World::custom_mutated(21, p, faults, &[0, 1500 * MS], true, true, mutation)
}

/// The whole thread group decides: h1 resets, nobody writes twice.
#[test]
fn a_killed_qemu_with_io_in_flight_is_alive_until_its_last_thread_exits() {
    let mut w = zombie_leader_world(Mutation::None);
    w.keep_going = true;
    let j = cw(&w.p);
    w.run_until((j + 10_000) * MS);
    print_trace(&w);
    assert!(w.violations.is_empty(), "{}", w.violations[0]);
    assert!(w
        .trace
        .iter()
        .any(|l| l.contains("h1") && l.contains("RESET")));
}

/// The old rule (the mutation `leader-exit-is-death`) fails it.
#[test]
fn leader_exit_taken_for_death_is_caught() {
    let mut w = zombie_leader_world(Mutation::LeaderExitIsDeath);
    w.keep_going = true;
    let j = cw(&w.p);
    w.run_until((j + 10_000) * MS);
    print_trace(&w);
    let kinds: Vec<&str> = w.violations.iter().map(|v| v.invariant).collect();
    assert!(kinds.contains(&"safe-takeover"), "{kinds:?}");
    assert!(!w
        .trace
        .iter()
        .any(|l| l.contains("h1") && l.contains("RESET")));
}

/// The trace lines of host `h`.
fn lines_of(w: &World, h: u16) -> Vec<&String> {
    let who = format!("h{h}");
    w.trace
        .iter()
        .filter(|l| l.split_whitespace().nth(1) == Some(who.as_str()))
        .collect()
}

fn joined(w: &World, h: u16) -> bool {
    lines_of(w, h)
        .iter()
        .any(|l| l.contains("joined the lockspace as host"))
}

/// Machine `h` lost host id 1 to the machine named `winner`: it was
/// refused at its claim, or fenced for the collision, with a message
/// that names the collision and both machines.
fn lost_the_id(w: &World, h: u16, winner: &str) -> Result<String, String> {
    let name = w.host(h).name.clone();
    let lines = lines_of(w, h);
    let text = lines
        .iter()
        .find(|l| {
            l.contains("host id 1")
                && (l.contains("collision") || l.contains("in use"))
                && (l.contains("watchdog daemon exits") || l.contains("fences"))
        })
        .ok_or_else(|| format!("h{h} ({name}) neither refused nor fenced for host id 1"))?;
    if !text.contains(&format!("host '{winner}'"))
        || !text.contains(&format!("this host ('{name}'"))
    {
        return Err(format!(
            "h{h}: the message does not name both machines: {text}"
        ));
    }
    Ok(text.to_string())
}

/// Issue 14 item 2: h1 and a clone of it (h3: host id 1, another name
/// unless `same_name`) start `gap_ms` apart on an empty slot, both with
/// R 0.2 s, F 1.5 s; h2 keeps trying to start the VM that the winner runs.
pub fn clone_race_world(gap_ms: u64, same_name: bool, mutation: Mutation) -> World {
    let p = Params::fixed(2, 1, 200, 1500, 400, 600);
    let mut faults = vec![Fault::Clone {
        of: 1,
        at: gap_ms * MS,
        dur: 12_000 * MS,
        same_name,
        stall: 0,
    }];
    for i in 0..30 {
        faults.push(Fault::RogueStart {
            vm: 0,
            host: 2,
            at: (3000 + 200 * i) * MS,
        });
    }
    let mut w = World::custom_mutated(22, p, faults, &[0, 0], false, true, mutation);
    w.keep_going = true;
    run_while(&mut w, 2800 * MS, |w| joined(w, 1) || joined(w, 3));
    let winner = if joined(&w, 1) { 1 } else { 3 };
    let t = w.now + 200 * MS;
    w.run_until(t);
    w.start_vm(0, winner, false);
    w.run_until(11_000 * MS);
    w
}

#[test]
fn two_machines_with_one_host_id_started_together() {
    for (gap, same_name) in [(0, false), (0, true), (50, false), (50, true)] {
        let w = clone_race_world(gap, same_name, Mutation::None);
        let ctx = || format!("gap {gap} ms, same name {same_name}");
        assert!(w.violations.is_empty(), "{}: {}", ctx(), w.violations[0]);
        // Exactly one keeps the id; the other lost it and says so.
        let (a, b) = (joined(&w, 1), joined(&w, 3));
        let (winner, loser) = match (a, b) {
            (true, false) => (1, 3),
            (false, true) => (3, 1),
            _ => {
                print_trace(&w);
                panic!("{}: h1 joined {a}, the clone joined {b}", ctx());
            }
        };
        let name = w.host(winner).name.clone();
        let text = lost_the_id(&w, loser, &name).unwrap_or_else(|e| {
            print_trace(&w);
            panic!("{}: {e}", ctx())
        });
        let q = w.running_qemu_of(0).expect("vm0 runs");
        assert_eq!(w.qemus[q].host, winner, "{}", ctx());
        eprintln!("{}: h{winner} keeps the id; h{loser}: {text}", ctx());
    }
}

/// Issue 14 item 2: h1 runs the VM; its watchdog daemon is stopped
/// (SIGSTOP) for 2.5 s - longer than the claim wait (1.8 s) and the old
/// claim's watch of a record with this host's name (2 R + io_timeout =
/// 1.15 s), shorter than W (3 s: h1 is not reset) and D (4.9 s) - while a
/// clone of it starts. h2 keeps trying to start the VM; the clone's
/// libvirtd autostarts it once its daemon has joined. (h1 fences when it
/// resumes: F = 1.5 s has passed.)
pub fn clone_stall_world(same_name: bool, mutation: Mutation) -> World {
    let p = Params::fixed(2, 1, 200, 1500, 400, 3000);
    let t0 = 5000;
    let mut faults = vec![
        Fault::DaemonHang {
            host: 1,
            at: t0 * MS,
            dur: 2500 * MS,
        },
        Fault::Clone {
            of: 1,
            at: t0 * MS,
            dur: 8000 * MS,
            same_name,
            stall: 0,
        },
    ];
    for i in 0..30 {
        faults.push(Fault::RogueStart {
            vm: 0,
            host: 2,
            at: (t0 + 200 * i) * MS,
        });
    }
    let mut w = World::custom_mutated(23, p, faults, &[0, 0], false, true, mutation);
    w.keep_going = true;
    w.run_until(3000 * MS);
    w.start_vm(0, 1, false);
    w.run_until(14_000 * MS);
    w
}

#[test]
fn a_clone_started_while_the_owner_stalls_is_refused() {
    for same_name in [false, true] {
        let w = clone_stall_world(same_name, Mutation::None);
        print_trace(&w);
        assert!(
            w.violations.is_empty(),
            "same name {same_name}: {}",
            w.violations[0]
        );
        assert!(!joined(&w, 3), "same name {same_name}: the clone joined");
        let text = lost_the_id(&w, 3, "host-1.sim").unwrap();
        eprintln!("same name {same_name}: {text}");
        // h1 fenced when it resumed (its last renewal was more than F
        // ago), killing its VM; nobody took the VM while that ran.
        assert!(!w.trace.iter().any(|l| l.contains("RESET")));
    }
}

/// The old claim and renewal (mutation `claim-without-read-back`): a clone
/// with h1's name watched h1's record for 2 R + io_timeout only, joined,
/// and took h1's VM by rule 2 ("rebooted") while h1's QEMU ran.
#[test]
fn a_clone_started_while_the_owner_stalls_is_caught_with_the_old_claim() {
    let w = clone_stall_world(true, Mutation::ClaimWithoutReadBack);
    print_trace(&w);
    let v = w
        .violations
        .iter()
        .find(|v| v.invariant == "safe-takeover")
        .unwrap_or_else(|| panic!("no safe-takeover: {:?}", w.violations));
    assert!(v.text.contains("by rule 2"), "{v}");
}

/// Storage-level fencing (takeover rule 5, issue 17). h1 runs the VM (h2
/// boots 4 s later) and is cut off (storage, VM disk I/O and management)
/// at 7 s for 0.9 s; at 7.5 s the controller blocklists it and writes the
/// storage-fenced verdict; from 7.55 s someone keeps starting the VM on
/// h2. Rule 5 frees
/// h1's leases at once, long before D (about 2 s after h1's last
/// renewal). With a real blocklist h1's QEMU never writes again; with the
/// blocklist step a no-op (the verdict still written) its writes land
/// when the cut heals, while h2's copy runs: the checker must see it.
pub fn blocklist_world(noop: bool) -> World {
    let p = Params::fixed(2, 1, 200, 1000, 400, 600);
    let mut faults = vec![
        Fault::StorageCut {
            hosts: vec![1],
            at: 7000 * MS,
            dur: 900 * MS,
            data: true,
        },
        Fault::MgmtCut {
            hosts: vec![1],
            at: 7000 * MS,
            dur: 900 * MS,
        },
        Fault::Blocklist {
            host: 1,
            at: 7500 * MS,
            noop,
        },
    ];
    for i in 0..8 {
        faults.push(Fault::RogueStart {
            vm: 0,
            host: 2,
            at: (7550 + 50 * i) * MS,
        });
    }
    World::custom_mutated(11, p, faults, &[0, 4000 * MS], true, true, Mutation::None)
}

#[test]
fn rule5_storage_fence_moves_the_vm_before_d_without_split_brain() {
    let mut w = blocklist_world(false);
    w.keep_going = true;
    w.run_until(13_000 * MS);
    print_trace(&w);
    assert!(w.violations.is_empty(), "{}", w.violations[0]);
    let d = w.p.cfg.timing.host_dead_timeout * MS;
    let on_h2 = w
        .qemus
        .iter()
        .filter(|q| q.vm == 0 && q.host == 2 && q.ran)
        .map(|q| q.running_since)
        .min()
        .expect("vm0 never ran on h2");
    println!(
        "vm0 runs on h2 at {} ms: {} ms after the cut (D {} ms)",
        on_h2 / MS,
        on_h2 / MS - 7000,
        d / MS
    );
    assert!(
        on_h2 < 7000 * MS + d,
        "vm0 ran on h2 only at {} ms (cut at 7000 ms, D {} ms)",
        on_h2 / MS,
        d / MS
    );
}

#[test]
fn rule5_with_a_noop_blocklist_is_caught() {
    let mut w = blocklist_world(true);
    w.keep_going = true;
    w.run_until(13_000 * MS);
    if w.violations.is_empty() {
        print_trace(&w);
    }
    assert!(
        !w.violations.is_empty(),
        "a storage-fenced verdict without a blocklist went unnoticed"
    );
    println!("caught: {}", w.violations[0]);
}

/// Issue 19: a domain's acquire writes the intents' ends of its calls in
/// one registry write, and a call its caller stopped waiting for ends its
/// own intent once it is over. h1's lockspace turns slow right before
/// vm0's acquire: opening the lockspace still answers within io_timeout,
/// the record calls land after their deadline. libvirt gives up on them
/// and the start fails; the calls' writes land later, while their intents
/// are still noted (so the daemon would keep sweeping the exited QEMU),
/// and each call then ends its own intent (invariant 7, intent-kept).
pub fn late_acquire_world(mutation: Mutation) -> World {
    let p = Params::fixed(2, 1, 200, 3000, 400, 600);
    let (io, budget) = (p.cfg.io_timeout, p.cfg.io_timeout + p.cfg.lock_timeout);
    let j = cw(&p);
    let mut w = World::custom_mutated(19, p, Vec::new(), &[0, 0], false, true, mutation);
    w.run_until((j + 500) * MS);
    w.start_vm(0, 1, false);
    let acquiring = |w: &World| {
        w.ops
            .values()
            .any(|o| o.phase == crate::libvirt::Phase::Acquire)
    };
    run_while(&mut w, (j + 2000) * MS, acquiring);
    assert!(acquiring(&w), "vm0's start reached its acquire");
    // One operation takes `extra` longer: the open (one operation) answers
    // within io_timeout, a record's read-modify-write (several) does not
    // within its deadline.
    let extra = io - 300;
    assert!(2 * extra > budget);
    let now = w.now;
    inject(
        &mut w,
        Fault::SlowIo {
            hosts: vec![1],
            at: now,
            dur: (extra + 100) * MS,
            extra_ms: extra,
        },
    );
    let t = w.now + 4 * budget * MS;
    w.run_until(t);
    w
}

#[test]
fn a_late_acquire_ends_its_own_intent() {
    let w = late_acquire_world(Mutation::None);
    print_trace(&w);
    assert!(w.violation.is_none(), "{}", w.violation.unwrap());
    assert!(
        w.trace.iter().any(|l| l.contains("start of vm0 failed")),
        "vm0's start must fail (its acquire timed out)"
    );
    assert!(
        w.trace
            .iter()
            .any(|l| l.contains("ends its own intent (its caller stopped waiting)")),
        "a call must end its own intent after its caller stopped waiting"
    );
    let left: Vec<_> = w
        .host(1)
        .registry
        .values()
        .filter(|e| !e.acquiring.is_empty())
        .collect();
    assert!(left.is_empty(), "intents left: {left:?}");
}

/// Ends written too early (the mutation `caller-ends-every-intent`: the
/// caller ends its abandoned calls' intents too) are caught.
#[test]
fn an_intent_ended_before_its_write_landed_is_caught() {
    let w = late_acquire_world(Mutation::CallerEndsEveryIntent);
    print_trace(&w);
    let v = w.violation.expect("an intent-kept violation");
    assert_eq!(v.invariant, "intent-kept", "{v}");
    assert!(v.text.contains("lands after its intent"), "{v}");
}
