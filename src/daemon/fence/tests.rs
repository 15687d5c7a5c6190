use super::*;

fn timing() -> Timing {
    Timing::TEST
}

fn inputs(now: u64, last: u64, alive: usize) -> Inputs {
    Inputs {
        now,
        last_renewal: last,
        started: 0,
        alive_leased: alive,
        ..Inputs::default()
    }
}

#[test]
fn storage_loss_fences_after_f_not_before() {
    let mut f = Fence::new(timing(), Policy::Report, Policy::Report);
    let a = f.step(&inputs(1500, 0, 2));
    assert_eq!(a.state, HostState::Live);
    assert!(a.pet && !a.kill_all);
    let a = f.step(&inputs(1501, 0, 2));
    assert_eq!(a.state, HostState::Fencing);
    assert!(a.kill_all && !a.pet && !a.reset);
    assert!(a.log.unwrap().contains("storage lost"));
    // Kill succeeds: fenced-clean, petting again (no writer left).
    let a = f.step(&inputs(1700, 0, 0));
    assert_eq!(a.state, HostState::FencedClean);
    assert!(a.pet && !a.kill_all);
}

/// A renewal refused with EBLOCKLISTED fences at once, long before F
/// (the renewal 0.2 s old), kills, stops petting while a QEMU lives,
/// and is cleared only by a renewal that succeeds again.
#[test]
fn blocklisted_fences_at_once_and_stays() {
    let mut f = Fence::new(timing(), Policy::Report, Policy::Report);
    let mut i = inputs(200, 0, 1);
    i.blocklisted = true;
    let a = f.step(&i);
    assert_eq!(a.state, HostState::Fencing);
    assert!(a.kill_all && !a.pet && !a.reset);
    assert!(a.log.unwrap().contains("blocklisted"));
    assert_eq!(
        f.phase,
        Phase::Fencing {
            cause: Cause::StorageFenced,
            since: 200
        }
    );
    i.now = 300;
    i.alive_leased = 0;
    let a = f.step(&i);
    assert_eq!(a.state, HostState::FencedClean);
    // Cleared only once the host can renew again.
    i.now = 400;
    i.clear_requested = true;
    assert_eq!(f.step(&i).state, HostState::FencedClean);
    let mut ok = inputs(500, 450, 0);
    ok.clear_requested = true;
    assert_eq!(f.step(&ok).state, HostState::Live);
    // The marker keeps the cause across a daemon restart.
    let d = std::env::temp_dir().join(format!(
        "vmlease-test-fence-marker-{}-{}",
        std::process::id(),
        crate::process::random_u64()
    ));
    std::fs::create_dir_all(&d).unwrap();
    store_marker(
        &d,
        &Phase::Fenced {
            cause: Cause::StorageFenced,
            since: 1,
        },
    );
    assert_eq!(load_marker(&d), Some(Cause::StorageFenced));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn survivor_after_k_resets() {
    let mut f = Fence::new(timing(), Policy::Report, Policy::Report);
    // F ran out at 1500: K counts from there, however late the fence
    // was noticed (a tick, a stalled loop).
    f.step(&inputs(1600, 0, 1));
    let a = f.step(&inputs(1999, 0, 1));
    assert!(!a.reset);
    let a = f.step(&inputs(2000, 0, 1));
    assert!(a.reset && !a.pet);
    // Stays reset.
    assert!(f.step(&inputs(9000, 8000, 0)).reset);
}

#[test]
fn mgmt_loss_reports_or_fences_by_policy() {
    let mut i = inputs(100, 100, 1);
    i.mgmt_lost = true;
    let mut report = Fence::new(timing(), Policy::Report, Policy::Report);
    let a = report.step(&i);
    assert_eq!(a.state, HostState::MgmtIsolated);
    assert!(!a.kill_all && a.pet);
    let mut fence = Fence::new(timing(), Policy::Fence, Policy::Report);
    let a = fence.step(&i);
    assert!(a.kill_all);
    i.alive_leased = 0;
    let a = fence.step(&i);
    assert_eq!(a.state, HostState::FencedClean);
    // Clearing is refused while the network is still lost...
    i.clear_requested = true;
    assert_eq!(fence.step(&i).state, HostState::FencedClean);
    // ...and accepted once it is back.
    i.mgmt_lost = false;
    assert_eq!(fence.step(&i).state, HostState::Live);
}

#[test]
fn fenced_host_kills_new_leased_processes() {
    let mut f = Fence::new(timing(), Policy::Report, Policy::Report);
    f.step(&inputs(2000, 0, 0));
    assert_eq!(f.step(&inputs(2100, 0, 0)).state, HostState::FencedClean);
    let a = f.step(&inputs(2200, 0, 1));
    assert!(a.kill_all);
    assert_eq!(a.state, HostState::Fencing);
}

#[test]
fn collision_fences_at_once() {
    let mut f = Fence::new(timing(), Policy::Report, Policy::Report);
    let mut i = inputs(100, 100, 1);
    i.collision = true;
    let a = f.step(&i);
    assert!(a.kill_all && !a.pet);
}

fn own(boot: &str, name: &str, state: HostState, mono_ms: u64) -> Slot {
    Slot::Record(crate::hosts::HostRecord {
        host_id: 1,
        host_name: name.into(),
        boot_id: boot.into(),
        incarnation: 7,
        counter: 3,
        state,
        timing: timing(),
        unsafe_no_watchdog: false,
        mono_ms,
        wall: 1_700_000_000,
    })
}

#[test]
fn restart_continues_the_fence_clock_of_this_boot() {
    let rec = own("b1", "h1", HostState::Live, 4_000);
    assert_eq!(clock_start(Some(&rec), "h1", "b1", 5_000), 4_000);
    let fencing = own("b1", "h1", HostState::Fencing, 4_000);
    assert_eq!(clock_start(Some(&fencing), "h1", "b1", 5_000), 4_000);
    // A record from the future of this clock cannot be ours: now.
    assert_eq!(clock_start(Some(&rec), "h1", "b1", 3_000), 3_000);
}

#[test]
fn fence_clock_starts_now_without_a_record_of_this_boot() {
    let now = 5_000;
    let other_boot = own("b0", "h1", HostState::Live, 4_000);
    let other_host = own("b1", "h9", HostState::Live, 4_000);
    let left = own("b1", "h1", HostState::Leaving, 4_000);
    for s in [&other_boot, &other_host, &left, &Slot::Empty] {
        assert_eq!(clock_start(Some(s), "h1", "b1", now), now, "{s:?}");
    }
    assert_eq!(clock_start(None, "h1", "b1", now), now);
}

/// KB1: the previous daemon last renewed at 4.0 s, renewals fail since,
/// and the daemon is restarted at 4.9 s: it fences at 4.0 s + F, not at
/// 4.9 s + F, and does not pet the watchdog past 4.0 s + F.
#[test]
fn kb1_a_restarted_daemon_fences_f_after_the_last_renewal() {
    let rec = own("b1", "h1", HostState::Live, 4_000);
    let started = clock_start(Some(&rec), "h1", "b1", 4_900);
    let mut f = Fence::new(timing(), Policy::Report, Policy::Report);
    let mut i = inputs(5_500, 0, 1);
    i.started = started;
    let a = f.step(&i);
    assert!(a.pet && !a.kill_all);
    i.now = 5_501;
    let a = f.step(&i);
    assert_eq!(a.state, HostState::Fencing);
    assert!(a.kill_all && !a.pet);
}

/// KB4: a daemon restarted during a fence (the marker brings the fence
/// back) resets at the last renewal + F + K, not K after its start.
#[test]
fn kb4_a_restart_during_a_fence_does_not_restart_k() {
    // The last renewal at 1.0 s: F ran out at 2.5 s, K at 3.0 s. The
    // first daemon fenced at 2.55 s (a tick late) and died at 2.9 s
    // with a QEMU stuck in the kernel; the new one starts at 3.2 s.
    let mut first = Fence::new(timing(), Policy::Report, Policy::Report);
    let a = first.step(&inputs(2_550, 1_000, 1));
    assert!(a.kill_all);
    assert_eq!(
        first.phase,
        Phase::Fencing {
            cause: Cause::Storage,
            since: 2_500
        }
    );
    assert!(first.step(&inputs(3_000, 1_000, 1)).reset);
    let mut f = Fence::new(timing(), Policy::Report, Policy::Report);
    f.phase = Phase::Fenced {
        cause: Cause::Storage,
        since: 3_200,
    };
    let mut i = inputs(3_200, 0, 1);
    i.started = 1_000;
    // It kills at once, and resets at its next step (one tick) if the
    // kill did not work: K ran out long ago.
    let a = f.step(&i);
    assert!(a.kill_all && !a.reset && !a.pet, "{a:?}");
    i.now = 3_300;
    let a = f.step(&i);
    assert!(a.reset && !a.pet, "{a:?}");
}

/// A fence by policy (renewals healthy) gives the processes K from now.
#[test]
fn mgmt_fence_counts_k_from_its_start() {
    let mut f = Fence::new(timing(), Policy::Fence, Policy::Report);
    let mut i = inputs(5_000, 4_900, 1);
    i.mgmt_lost = true;
    f.step(&i);
    i.now = 5_499;
    assert!(!f.step(&i).reset);
    i.now = 5_500;
    assert!(f.step(&i).reset);
}

#[test]
fn no_renewal_since_start_counts_from_start() {
    let mut f = Fence::new(timing(), Policy::Report, Policy::Report);
    let mut i = inputs(10_000, 0, 0);
    i.started = 9_000;
    assert_eq!(f.step(&i).state, HostState::Live);
    i.now = 10_501;
    assert_eq!(f.step(&i).state, HostState::FencedClean);
}
