use super::*;
use crate::config::Timing;
use crate::hosts::{HostRecord, HostState};
use crate::lease::Mode;
use crate::status::Observer;
use std::collections::HashSet;
use std::sync::Mutex;

const D: u64 = 4000;

fn timing() -> Timing {
    Timing::TEST
}

fn record(id: u16, boot: &str, counter: u64, state: HostState) -> HostRecord {
    HostRecord {
        host_id: id,
        host_name: format!("host-{id}.test"),
        boot_id: boot.into(),
        incarnation: 1,
        counter,
        state,
        timing: timing(),
        unsafe_no_watchdog: false,
        // Written long after the test holders started (pid_start 100
        // ticks = 1 s): fenced-clean and leaving vouch for them.
        mono_ms: 1_000_000,
        wall: 0,
    }
}

struct World {
    dir: std::path::PathBuf,
    ls: Lockspace,
    /// Local processes considered alive (pid).
    alive: Arc<Mutex<HashSet<u32>>>,
}

impl World {
    fn new(name: &str) -> World {
        let dir = std::env::temp_dir().join(format!(
            "vmlease-engine-{name}-{}",
            crate::process::random_u64()
        ));
        Lockspace::init(&dir, 8).unwrap();
        let ls = Lockspace::open(&dir).unwrap();
        ls.write_host(&record(1, "boot-1", 1, HostState::Live))
            .unwrap();
        ls.write_host(&record(2, "boot-2", 1, HostState::Live))
            .unwrap();
        World {
            dir,
            ls,
            alive: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// A status as host `id`'s daemon would publish it at `now`, having
    /// observed the table at `seen` (list of (time, table read)).
    fn view(&self, id: u16, reads: &[u64], now: u64) -> Status {
        let mut obs = Observer::new(reads[0]);
        for &t in reads {
            let raw = std::fs::read(self.ls.hosts_path()).unwrap();
            let slots = crate::hosts::decode_table(&raw);
            obs.update(t, &raw, &slots);
        }
        Status {
            daemon_pid: 1,
            host_id: id,
            boot_id: format!("boot-{id}"),
            incarnation: 1,
            written_ms: now,
            last_renewal_ms: now,
            state: HostState::Live,
            reason: String::new(),
            unsafe_no_watchdog: true,
            lockspace_dir: String::new(),
            lockspace_uuid: String::new(),
            allow_local_lockspace: false,
            local_lockspace: String::new(),
            observing_since_ms: obs.since_ms,
            renew_interval_ms: 200,
            renew_fail_timeout_ms: 1500,
            host_dead_timeout_ms: D,
            networks: vec![],
            peers: obs.peers(),
        }
    }

    fn engine(&self, id: u16, view: Option<Status>) -> Engine {
        let alive = self.alive.clone();
        Engine {
            ls: self.ls.clone(),
            host_id: id,
            boot_id: format!("boot-{id}"),
            dead_ms: D,
            trust_unsafe_peers: false,
            lock_timeout_ms: 500,
            view: view.map(Arc::new),
            process_alive: Arc::new(move |p: ProcId| alive.lock().unwrap().contains(&p.pid)),
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn holder(host: u16, pid: u32, dom: &str) -> Holder {
    Holder {
        host_id: host,
        boot_id: format!("boot-{host}"),
        pid,
        pid_start: 100,
        domain_uuid: format!("uuid-{dom}"),
        domain_name: dom.into(),
    }
}

#[test]
fn exclusive_conflict_names_the_holder() {
    let w = World::new("excl");
    let disk = Resource::disk("/images/a.qcow2", false);
    let a = w.engine(1, Some(w.view(1, &[0], 0)));
    let got = a.acquire(&disk, &holder(1, 10, "web"), None).unwrap();
    assert!(got.changed);
    assert_eq!(got.version, 1);
    let b = w.engine(2, Some(w.view(2, &[0, 100], 100)));
    let e = b
        .acquire(&disk, &holder(2, 20, "web-copy"), None)
        .unwrap_err();
    let msg = e.to_string();
    assert!(e.is_busy(), "{msg}");
    assert!(
        msg.contains("host 1 (host-1.test)") && msg.contains("'web'"),
        "{msg}"
    );
    assert!(msg.contains("QEMU pid 10"), "{msg}");
}

#[test]
fn reacquire_by_same_process_is_idempotent() {
    let w = World::new("idem");
    let dom = Resource::domain("c7a5fdbd-edaf-9455-926a-d65c16db1809");
    let a = w.engine(1, Some(w.view(1, &[0], 0)));
    let me = holder(1, 10, "web");
    let v1 = a.acquire(&dom, &me, None).unwrap();
    let v2 = a.acquire(&dom, &me, None).unwrap();
    assert!(!v2.changed);
    assert_eq!(v1.version, v2.version);
}

#[test]
fn shared_disks_coexist_but_exclude_writers() {
    let w = World::new("shared");
    let sh = Resource::disk("/images/shared.img", true);
    let a = w.engine(1, Some(w.view(1, &[0], 0)));
    let b = w.engine(2, Some(w.view(2, &[0], 0)));
    a.acquire(&sh, &holder(1, 10, "a"), None).unwrap();
    b.acquire(&sh, &holder(2, 20, "b"), None).unwrap();
    let rec = w.ls.read_lease(&sh.key(), &sh.name).unwrap();
    assert_eq!(rec.holders.len(), 2);
    assert_eq!(rec.mode, Some(Mode::Shared));
    let excl = Resource::disk("/images/shared.img", false);
    assert!(b
        .acquire(&excl, &holder(2, 21, "c"), None)
        .unwrap_err()
        .is_busy());
}

#[test]
fn rule2_reboot_frees_at_once() {
    let w = World::new("reboot");
    let disk = Resource::disk("/images/a", false);
    w.engine(1, Some(w.view(1, &[0], 0)))
        .acquire(&disk, &holder(1, 10, "web"), None)
        .unwrap();
    w.ls.write_host(&record(1, "boot-1-new", 1, HostState::Live))
        .unwrap();
    let b = w.engine(2, Some(w.view(2, &[0], 0)));
    let got = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap();
    assert_eq!(got.took_over.len(), 1);
    assert!(
        got.took_over[0].1.contains("rebooted"),
        "{:?}",
        got.took_over
    );
}

/// Issue 14, item 2: a claim that has not finished (counter 0) is no
/// reboot: it may be a second machine with the same host id that is about
/// to find the id in use.
#[test]
fn rule2_ignores_a_claim_record() {
    let w = World::new("claim");
    let disk = Resource::disk("/images/a", false);
    w.engine(1, Some(w.view(1, &[0], 0)))
        .acquire(&disk, &holder(1, 10, "web"), None)
        .unwrap();
    w.ls.write_host(&record(1, "boot-clone", 0, HostState::Live))
        .unwrap();
    let b = w.engine(2, Some(w.view(2, &[0], 0)));
    let e = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap_err();
    assert!(e.to_string().contains("still claiming host id 1"), "{e}");
    // Once the claim is confirmed (first renewal), it is a reboot.
    w.ls.write_host(&record(1, "boot-clone", 1, HostState::Live))
        .unwrap();
    let got = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap();
    assert!(
        got.took_over[0].1.contains("rebooted"),
        "{:?}",
        got.took_over
    );
}

/// Issue 14, item 2: two machines taking turns on one slot, as this host's
/// daemon observed them: rule 2 is off for that slot until one writer has
/// been alone on it for D.
#[test]
fn rule2_is_off_for_a_slot_two_machines_take_turns_on() {
    let w = World::new("turns");
    let disk = Resource::disk("/images/a", false);
    w.engine(1, Some(w.view(1, &[0], 0)))
        .acquire(&disk, &holder(1, 10, "web"), None)
        .unwrap();
    let mut clone = record(1, "boot-clone", 1, HostState::Live);
    clone.host_name = "clone.test".into();
    let mut obs = Observer::new(0);
    let feed = |t: u64, rec: &HostRecord, obs: &mut Observer| {
        w.ls.write_host(rec).unwrap();
        let raw = std::fs::read(w.ls.hosts_path()).unwrap();
        obs.update(t, &raw, &crate::hosts::decode_table(&raw));
    };
    let mut counter = 1;
    let own = |c: &mut u64| {
        *c += 1;
        record(1, "boot-1", *c, HostState::Live)
    };
    feed(0, &own(&mut counter), &mut obs);
    feed(200, &clone, &mut obs);
    feed(400, &own(&mut counter), &mut obs);
    clone.counter += 1;
    feed(600, &clone, &mut obs);
    let view = |obs: &Observer, now: u64| {
        let mut st = w.view(2, &[0], now);
        st.peers = obs.peers();
        st.observing_since_ms = 0;
        st
    };
    let peer = obs.get(1).unwrap().clone();
    assert!(peer.collision.contains("take turns"), "{peer:?}");
    let b = w.engine(2, Some(view(&obs, 600)));
    let e = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap_err();
    assert!(e.to_string().contains("host id 1 collision"), "{e}");
    // The clone alone for D: the first machine has been silent that long.
    for t in (800..=600 + D).step_by(200) {
        clone.counter += 1;
        feed(t, &clone, &mut obs);
    }
    assert_eq!(obs.get(1).unwrap().collision, "");
    let b = w.engine(2, Some(view(&obs, 600 + D)));
    let got = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap();
    assert!(
        got.took_over[0].1.contains("rebooted"),
        "{:?}",
        got.took_over
    );
}

/// Issue 14, item 2: a claim that is never confirmed (its daemon died
/// right after the claim write, and was not restarted) proves no reboot -
/// but a slot left unchanged for D is silence like any other: rule 4
/// frees the holder. Found by the simulator (seed 1778): the leases of
/// the host's previous boot were held forever.
#[test]
fn a_claim_record_left_unchanged_for_d_frees_by_rule_4() {
    let w = World::new("claim-silent");
    let disk = Resource::disk("/images/a", false);
    w.engine(1, Some(w.view(1, &[0], 0)))
        .acquire(&disk, &holder(1, 10, "web"), None)
        .unwrap();
    w.ls.write_host(&record(1, "boot-next", 0, HostState::Live))
        .unwrap();
    let b = w.engine(2, Some(w.view(2, &[0, D - 1], D - 1)));
    let e = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap_err();
    assert!(e.to_string().contains("still claiming host id 1"), "{e}");
    let b = w.engine(2, Some(w.view(2, &[0, D], D)));
    let got = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap();
    assert!(
        got.took_over[0].1.contains("observed unchanged"),
        "{:?}",
        got.took_over
    );
}

#[test]
fn rule1_fenced_clean_frees_at_once_but_fencing_does_not() {
    let w = World::new("fenced");
    let disk = Resource::disk("/images/a", false);
    w.engine(1, Some(w.view(1, &[0], 0)))
        .acquire(&disk, &holder(1, 10, "web"), None)
        .unwrap();
    w.ls.write_host(&record(1, "boot-1", 2, HostState::Fencing))
        .unwrap();
    let b = w.engine(2, Some(w.view(2, &[0], 0)));
    assert!(b
        .acquire(&disk, &holder(2, 20, "web"), None)
        .unwrap_err()
        .is_busy());
    w.ls.write_host(&record(1, "boot-1", 3, HostState::FencedClean))
        .unwrap();
    let got = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap();
    assert!(got.took_over[0].1.contains("fenced-clean"));
}

/// KB5: a fenced-clean record written before the holder's QEMU started
/// (the host cleared its fence and started a VM before its next renewal
/// landed, or a read still shows the previous record) does not free it.
#[test]
fn rule1_fenced_clean_frees_only_qemus_started_before_the_record() {
    let w = World::new("fenced-old");
    let disk = Resource::disk("/images/a", false);
    w.engine(1, Some(w.view(1, &[0], 0)))
        .acquire(&disk, &holder(1, 10, "web"), None)
        .unwrap();
    // The holder started at tick 100 (1.0 s); the record is from 0.99 s.
    let mut old = record(1, "boot-1", 3, HostState::FencedClean);
    old.mono_ms = 990;
    w.ls.write_host(&old).unwrap();
    let b = w.engine(2, Some(w.view(2, &[0], 0)));
    let err = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap_err();
    assert!(err.is_busy(), "{err}");
    // Within the tick the holder started in: still not certain.
    old.mono_ms = 1_005;
    w.ls.write_host(&old).unwrap();
    assert!(b
        .acquire(&disk, &holder(2, 20, "web"), None)
        .unwrap_err()
        .is_busy());
    old.mono_ms = 1_010;
    w.ls.write_host(&old).unwrap();
    let got = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap();
    assert!(got.took_over[0].1.contains("fenced-clean"));
}

/// KB5 for `leaving`: a host that left cleanly vouches only for the QEMUs
/// that started before its leaving record, not for one started after it
/// (a record read before the host rejoined and started a VM).
#[test]
fn rule1_leaving_frees_only_qemus_started_before_the_record() {
    let w = World::new("leaving-old");
    let disk = Resource::disk("/images/a", false);
    w.engine(1, Some(w.view(1, &[0], 0)))
        .acquire(&disk, &holder(1, 10, "web"), None)
        .unwrap();
    // The holder started at tick 100 (1.0 s); the record is from 0.99 s.
    let mut old = record(1, "boot-1", 3, HostState::Leaving);
    old.mono_ms = 990;
    w.ls.write_host(&old).unwrap();
    let b = w.engine(2, Some(w.view(2, &[0], 0)));
    let err = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap_err();
    assert!(
        err.is_busy(),
        "a leaving record older than the QEMU freed it: {err}"
    );
    old.mono_ms = 1_010;
    w.ls.write_host(&old).unwrap();
    let got = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap();
    assert!(got.took_over[0].1.contains("left the lockspace"), "{got:?}");
}

#[test]
fn rule3_local_process_gone() {
    let w = World::new("local");
    let disk = Resource::disk("/images/a", false);
    let a = w.engine(1, Some(w.view(1, &[0], 0)));
    w.alive.lock().unwrap().insert(10);
    a.acquire(&disk, &holder(1, 10, "web"), None).unwrap();
    // Another QEMU on the same host while the first is alive: busy.
    let e = a.acquire(&disk, &holder(1, 11, "web"), None).unwrap_err();
    assert!(e.to_string().contains("alive on this host"), "{e}");
    // The first one died: free by rule 3.
    w.alive.lock().unwrap().remove(&10);
    let got = a.acquire(&disk, &holder(1, 11, "web"), None).unwrap();
    assert!(got.took_over[0].1.contains("gone"));
    // Rule 3 is only for this host: host 2 cannot judge host 1's pids.
    let b = w.engine(2, Some(w.view(2, &[0], 0)));
    assert!(b
        .acquire(&disk, &holder(2, 20, "web"), None)
        .unwrap_err()
        .is_busy());
}

/// Rule 3 is for this host's own QEMUs: a holder with this host's id but
/// another boot (a previous boot, or another machine that uses the same
/// id) is not judged by the local process table, where its pid means
/// nothing. Here rule 2 cannot free it either: the slot shows a claim.
#[test]
fn rule3_needs_this_boot_not_only_this_host_id() {
    let w = World::new("other-boot");
    let disk = Resource::disk("/images/a", false);
    let mut prev = holder(2, 20, "web");
    prev.boot_id = "boot-prev".into();
    w.engine(1, Some(w.view(1, &[0], 0)))
        .acquire(&disk, &prev, None)
        .unwrap();
    w.ls.write_host(&record(
        2,
        "boot-2",
        crate::collision::CLAIM_COUNTER,
        HostState::Live,
    ))
    .unwrap();
    // pid 20 is not alive here: rule 3 would free it.
    let b = w.engine(2, Some(w.view(2, &[0], 0)));
    let e = b.acquire(&disk, &holder(2, 21, "web"), None).unwrap_err();
    assert!(
        e.is_busy(),
        "a holder of another boot was judged by local pids: {e}"
    );
    assert!(e.to_string().contains("still claiming host id 2"), "{e}");
}

#[test]
fn rule4_observed_dead_only_after_d_on_own_clock() {
    let w = World::new("dead");
    let disk = Resource::disk("/images/a", false);
    w.engine(1, Some(w.view(1, &[0], 0)))
        .acquire(&disk, &holder(1, 10, "web"), None)
        .unwrap();
    // Host 2 starts observing at t=1000 and host 1 never renews again.
    let b_early = w.engine(2, Some(w.view(2, &[1000, 3000], 1000 + D - 1)));
    let e = b_early
        .acquire(&disk, &holder(2, 20, "web"), None)
        .unwrap_err();
    assert!(e.to_string().contains("may be taken over after 4s"), "{e}");
    let b = w.engine(2, Some(w.view(2, &[1000, 3000], 1000 + D)));
    let got = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap();
    assert!(
        got.took_over[0].1.contains("observed unchanged"),
        "{:?}",
        got.took_over
    );
}

#[test]
fn rule4_never_frees_a_holder_without_a_watchdog() {
    let w = World::new("nowd");
    let disk = Resource::disk("/images/a", false);
    let mut unsafe_rec = record(1, "boot-1", 1, HostState::Live);
    unsafe_rec.unsafe_no_watchdog = true;
    w.ls.write_host(&unsafe_rec).unwrap();
    w.engine(1, Some(w.view(1, &[0], 0)))
        .acquire(&disk, &holder(1, 10, "web"), None)
        .unwrap();
    // Silent for 10 x D: nothing resets a host without a watchdog whose
    // daemon hangs, so its silence proves nothing.
    let b = w.engine(2, Some(w.view(2, &[1000, 3000], 1000 + 10 * D)));
    let e = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap_err();
    assert!(e.is_busy(), "{e}");
    assert!(e.to_string().contains("unsafe_no_watchdog"), "{e}");
    // Published fenced-clean (it killed its QEMUs) still frees at once.
    unsafe_rec.state = HostState::FencedClean;
    unsafe_rec.counter = 2;
    w.ls.write_host(&unsafe_rec).unwrap();
    let got = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap();
    assert!(got.took_over[0].1.contains("fenced-clean"), "{got:?}");
}

#[test]
fn rule4_renewal_after_the_view_keeps_the_holder() {
    let w = World::new("renewed");
    let disk = Resource::disk("/images/a", false);
    w.engine(1, Some(w.view(1, &[0], 0)))
        .acquire(&disk, &holder(1, 10, "web"), None)
        .unwrap();
    let view = w.view(2, &[0, 1000], 10 * D);
    // Host 1 renews after host 2's daemon wrote its view: the fresh slot
    // read under the record lock differs from the view, so it is alive.
    w.ls.write_host(&record(1, "boot-1", 2, HostState::Live))
        .unwrap();
    let b = w.engine(2, Some(view));
    let e = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap_err();
    assert!(e.to_string().contains("alive"), "{e}");
}

#[test]
fn rule4_needs_an_observation() {
    let w = World::new("noview");
    let disk = Resource::disk("/images/a", false);
    w.engine(1, Some(w.view(1, &[0], 0)))
        .acquire(&disk, &holder(1, 10, "web"), None)
        .unwrap();
    let b = w.engine(2, None);
    assert!(b
        .acquire(&disk, &holder(2, 20, "web"), None)
        .unwrap_err()
        .is_busy());
}

#[test]
fn handover_requires_matching_version() {
    let w = World::new("version");
    let disk = Resource::disk("/images/a", false);
    let a = w.engine(1, Some(w.view(1, &[0], 0)));
    let b = w.engine(2, Some(w.view(2, &[0], 0)));
    let me = holder(1, 10, "web");
    let v = a.acquire(&disk, &me, None).unwrap().version;
    // Pause: release keeps the version, which goes into the state.
    assert_eq!(a.release(&disk.key(), &disk.name, &me).unwrap(), Some(v));
    assert_eq!(a.release(&disk.key(), &disk.name, &me).unwrap(), None);
    // Someone else takes it and gives it back in between.
    let other = holder(2, 20, "web");
    b.acquire(&disk, &other, None).unwrap();
    b.release(&disk.key(), &disk.name, &other).unwrap();
    // Resume with the old state must fail: the disk may have changed.
    let e = a.acquire(&disk, &me, Some(v)).unwrap_err();
    assert!(matches!(e, Error::VersionMismatch { .. }), "{e}");
    // With the current version it works (migration destination case).
    let cur = w.ls.read_lease(&disk.key(), &disk.name).unwrap().version;
    b.acquire(&disk, &holder(2, 22, "web"), Some(cur)).unwrap();
}

#[test]
fn corrupt_record_is_never_free() {
    let w = World::new("corrupt");
    let disk = Resource::disk("/images/a", false);
    let b = w.engine(2, Some(w.view(2, &[0], 0)));
    std::fs::write(
        w.ls.lease_path(&disk.key()),
        b"vmlease-lease v1\nkey=x\ncrc=00000000\n",
    )
    .unwrap();
    let e = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains(&disk.key()), "{e}");
    // Truncated to nothing: still corrupt, not free.
    std::fs::write(w.ls.lease_path(&disk.key()), b"").unwrap();
    assert!(matches!(
        b.acquire(&disk, &holder(2, 20, "web"), None),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn concurrent_acquires_from_threads_have_one_winner() {
    let w = World::new("race");
    let disk = Resource::disk("/images/race", false);
    let mut handles = Vec::new();
    for i in 0..8u32 {
        let e = w.engine(
            1 + (i % 2) as u16,
            Some(w.view(1 + (i % 2) as u16, &[0], 0)),
        );
        let d = disk.clone();
        w.alive.lock().unwrap().insert(100 + i);
        handles.push(std::thread::spawn(move || {
            e.acquire(&d, &holder(1 + (i % 2) as u16, 100 + i, "race"), None)
                .is_ok()
        }));
    }
    let winners = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|&ok| ok)
        .count();
    assert_eq!(winners, 1);
}

/// An acquire whose caller gave up at its deadline (the record lock was
/// held elsewhere: a storage stall) and whose QEMU then exited must not
/// leave that dead QEMU as the holder when the stall ends.
#[test]
fn abandoned_acquire_never_leaves_a_holder() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let _serial = crate::deadline::TEST_SERIAL
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let w = World::new("abandoned");
    let disk = Resource::disk("/images/stall.qcow2", false);
    let mut eng = w.engine(1, Some(w.view(1, &[0], 0)));
    eng.lock_timeout_ms = 5000;
    let me = holder(1, 10, "web");
    w.alive.lock().unwrap().insert(10);
    let stall = w.ls.lock_record(&disk.key(), 100).unwrap();
    let finished = Arc::new(AtomicBool::new(false));
    let (e2, d2, me2, f2) = (eng.clone(), disk.clone(), me.clone(), finished.clone());
    let path = w.ls.lease_path(&disk.key());
    let r = crate::deadline::run_cancellable(100, "acquire lease", &path, move |c| {
        let r = e2.acquire_for(&d2, &me2, None, c);
        f2.store(true, Ordering::SeqCst);
        r
    });
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    // libvirt kills the QEMU after the failed start; the stall ends.
    w.alive.lock().unwrap().remove(&10);
    drop(stall);
    let t0 = std::time::Instant::now();
    while !finished.load(Ordering::SeqCst) {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "waited 10 s for the abandoned acquire to end"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let rec = w.ls.read_lease(&disk.key(), &disk.name).unwrap();
    assert!(
        rec.holders.is_empty(),
        "the abandoned acquire left holders {:?} (version {})",
        rec.holders,
        rec.version
    );
}

/// The checks `acquire_for` makes under the record lock, one by one.
#[test]
fn acquire_for_writes_nothing_when_abandoned_or_for_a_dead_process() {
    let w = World::new("acqfor");
    let disk = Resource::disk("/images/b.qcow2", false);
    let eng = w.engine(1, Some(w.view(1, &[0], 0)));
    let me = holder(1, 11, "web");
    // QEMU 11 is not alive.
    let e = eng
        .acquire_for(&disk, &me, None, &crate::deadline::Cancel::new())
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("QEMU pid 11 exited while the acquire waited"),
        "{e}"
    );
    w.alive.lock().unwrap().insert(11);
    let gave_up = crate::deadline::Cancel::new();
    assert!(gave_up.abandon());
    let e = eng.acquire_for(&disk, &me, None, &gave_up).unwrap_err();
    assert!(e.to_string().contains("its caller gave up"), "{e}");
    let rec = w.ls.read_lease(&disk.key(), &disk.name).unwrap();
    assert!(rec.holders.is_empty() && rec.version == 0, "{rec:?}");
    let ok = crate::deadline::Cancel::new();
    assert_eq!(eng.acquire_for(&disk, &me, None, &ok).unwrap().version, 1);
    // The call committed: the caller can no longer give up on it.
    assert!(!ok.abandon());
}

#[test]
fn a_version_at_its_largest_is_refused_not_wrapped() {
    let w = World::new("maxver");
    let disk = Resource::disk("/images/a.qcow2", false);
    let mut rec = LeaseRecord::free(&disk.key(), &disk.name);
    rec.version = u64::MAX;
    w.ls.write_lease(&rec, 2).unwrap();
    let a = w.engine(1, Some(w.view(1, &[0], 0)));
    let e = a.acquire(&disk, &holder(1, 10, "web"), None).unwrap_err();
    assert!(e.to_string().contains("cannot grow"), "{e}");
    assert_eq!(w.ls.read_lease(&disk.key(), "").unwrap(), rec);
}

#[test]
fn rule5_a_storage_fence_verdict_frees_at_once_a_damaged_or_stale_one_does_not() {
    use crate::storage_fence::{self, Verdict as Fenced};
    let w = World::new("stfence");
    let disk = Resource::disk("/images/a", false);
    w.engine(1, Some(w.view(1, &[0], 0)))
        .acquire(&disk, &holder(1, 10, "web"), None)
        .unwrap();
    let b = w.engine(2, Some(w.view(2, &[0, 100], 100)));
    // Host 1 renews; host 2 has seen it silent only 100 ms: held.
    assert!(b
        .acquire(&disk, &holder(2, 20, "web"), None)
        .unwrap_err()
        .is_busy());
    let r = record(1, "boot-1", 1, HostState::Live);
    let v = Fenced {
        host_id: 1,
        host_name: r.host_name.clone(),
        boot_id: "boot-1".into(),
        incarnation: r.incarnation,
        counter: r.counter,
        slot_mono_ms: r.mono_ms,
        addrs: vec!["192.0.2.1:0/0".into()],
        osdmap_epoch: 9,
        expire_s: 3600,
        wall: 0,
        writer_host: 2,
        writer_name: "host-2.test".into(),
    };
    // Damaged: frees nothing, says so.
    let path = storage_fence::verdict_path(&w.dir, 1);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut bad = v.encode();
    bad.truncate(bad.len() - 3);
    std::fs::write(&path, &bad).unwrap();
    let e = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap_err();
    assert!(e.to_string().contains("damaged"), "{e}");
    // Stale: the host renewed after the verdict.
    let mut old = v.clone();
    old.counter = 0;
    storage_fence::write_verdict(&w.dir, &old).unwrap();
    let e = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap_err();
    assert!(e.to_string().contains("stale"), "{e}");
    // Valid: free at once.
    storage_fence::write_verdict(&w.dir, &v).unwrap();
    let got = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap();
    assert!(
        got.took_over[0].1.contains("storage-fenced by host 2"),
        "{:?}",
        got.took_over
    );
}

/// The last slot of the lockspace is a host like any other; only a host
/// id beyond it is "outside this lockspace" (held, never judged).
#[test]
fn the_last_slot_is_judged_and_an_id_beyond_it_is_held() {
    let w = World::new("lastslot");
    let last = w.ls.max_hosts;
    let disk = Resource::disk("/images/last", false);
    w.ls.write_host(&record(last, &format!("boot-{last}"), 1, HostState::Live))
        .unwrap();
    w.engine(last, Some(w.view(last, &[0], 0)))
        .acquire(&disk, &holder(last, 10, "web"), None)
        .unwrap();
    // The last host rebooted: rule 2 frees its holder at once.
    w.ls.write_host(&record(last, "boot-new", 1, HostState::Live))
        .unwrap();
    let b = w.engine(2, Some(w.view(2, &[0], 0)));
    let got = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap();
    assert_eq!(got.took_over.len(), 1, "{:?}", got.took_over);
    // A record naming a host id beyond the table holds.
    let other = Resource::disk("/images/beyond", false);
    let mut rec = crate::lease::LeaseRecord::free(&other.key(), &other.name);
    rec.holders.push(holder(last + 1, 30, "ghost"));
    rec.mode = Some(Mode::Exclusive);
    rec.version = 1;
    w.ls.write_lease(&rec, last + 1).unwrap();
    let e = b
        .acquire(&other, &holder(2, 21, "ghost"), None)
        .unwrap_err();
    assert!(e.to_string().contains("outside this lockspace"), "{e}");
}

/// A re-acquire by the process that already holds the lease (a resume)
/// through `acquire_for`: done unchanged while its caller waits, refused
/// once the caller gave up (the caller must not count on it).
#[test]
fn acquire_for_a_holder_already_named_honours_its_caller() {
    let w = World::new("reacqfor");
    let disk = Resource::disk("/images/re.qcow2", false);
    let eng = w.engine(1, Some(w.view(1, &[0], 0)));
    let me = holder(1, 12, "web");
    w.alive.lock().unwrap().insert(12);
    let first = crate::deadline::Cancel::new();
    assert_eq!(
        eng.acquire_for(&disk, &me, None, &first).unwrap().version,
        1
    );
    let again = crate::deadline::Cancel::new();
    let got = eng.acquire_for(&disk, &me, None, &again).unwrap();
    assert!(!got.changed && got.version == 1, "{got:?}");
    assert!(!again.abandon(), "the re-acquire committed");
    let gave_up = crate::deadline::Cancel::new();
    assert!(gave_up.abandon());
    let e = eng.acquire_for(&disk, &me, None, &gave_up).unwrap_err();
    assert!(e.to_string().contains("its caller gave up"), "{e}");
}
