//! A VM whose QEMU died on a live host: the agent there restarts it first;
//! when that fails (`VmState::Crashed`), the controller goes on elsewhere
//! with the host recovery's retry, backoff and recovery-failed rules.
use super::*;

use super::tests::{decide, LIM};

/// A live host with all its memory free.
fn host(name: &str) -> HostRecord {
    super::tests::host(name, 4096)
}

const U: &str = "00000001-0000-4000-8000-000000000000";

fn view(state: VmState) -> ClusterView {
    let mut v = ClusterView::default();
    for h in [host("a"), host("b")] {
        v.hosts.insert(h.name.clone(), h);
    }
    v.vms.insert(
        U.into(),
        VmRecord {
            uuid: U.into(),
            name: "vm1".into(),
            host: "a".into(),
            restart: Restart::Always,
            priority: 0,
            memory_kib: 512 * 1024,
            vcpus: 1,
            state,
            xml: String::new(),
        },
    );
    v
}

fn apply(v: &mut ClusterView, actions: &[Action]) {
    for a in actions {
        match a {
            Action::Put(r) => {
                v.recoveries.insert(r.uuid.clone(), r.clone());
            }
            Action::Done { uuid, .. } => {
                v.recoveries.remove(uuid);
            }
            _ => {}
        }
    }
}

/// "KIND REASON" of each event.
fn events(a: &[Action]) -> Vec<String> {
    a.iter()
        .filter_map(|a| match a {
            Action::Event(e) => Some(format!("{} {}", e.kind, e.reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_running_vm_on_a_live_host_is_left_alone() {
    let v = view(VmState::Running);
    assert!(suspects(&v).is_empty());
    assert!(decide(&v, 0, &LIM).is_empty());
}

#[test]
fn a_crashed_vm_goes_elsewhere_after_the_backoff_as_attempt_two() {
    let mut v = view(VmState::Crashed);
    // No lockspace verdict needed: its host is alive and its own daemon
    // released the dead QEMU's leases (the plugin checks anyway).
    assert!(suspects(&v).is_empty());
    let a = decide(&v, 10_000, &LIM);
    assert!(
        events(&a)[0].starts_with("attempt-failed attempt 1: its QEMU died on a"),
        "{a:?}"
    );
    apply(&mut v, &a);
    let r = &v.recoveries[U];
    assert_eq!(
        r.state,
        RecState::Failed {
            retry_at_ms: 11_000
        }
    );
    assert_eq!((r.attempt, r.tried.clone()), (1, vec!["a".to_string()]));
    // Nothing new before the backoff, and no second record.
    assert!(decide(&v, 10_999, &LIM).is_empty());
    let a = decide(&v, 11_000, &LIM);
    apply(&mut v, &a);
    let r = &v.recoveries[U];
    assert_eq!(r.state, RecState::Assigned);
    assert_eq!(r.target.as_deref(), Some("b"), "not on its own host again");
    assert_eq!(r.attempt, 2);
    // It runs on b: done.
    v.vms.get_mut(U).unwrap().host = "b".into();
    v.vms.get_mut(U).unwrap().state = VmState::Running;
    let a = decide(&v, 12_000, &LIM);
    assert!(
        matches!(&a[..], [Action::Event(e), Action::Done { host, .. }]
            if e.kind == kind::VM_RECOVERED && host == "b"),
        "{a:?}"
    );
}

#[test]
fn a_crashed_vm_whose_restarts_fail_everywhere_is_recovery_failed() {
    let mut v = view(VmState::Crashed);
    let mut now = 0;
    for _ in 0..20 {
        let a = decide(&v, now, &LIM);
        apply(&mut v, &a);
        if let Some(r) = v.recoveries.get_mut(U) {
            if r.state == RecState::Assigned {
                r.state = RecState::StartFailed;
                r.last_error = "refused".into();
            }
        }
        now += 5_000;
    }
    let r = &v.recoveries[U];
    assert_eq!(r.state, RecState::RecoveryFailed);
    assert_eq!(r.attempt, LIM.max_attempts);
    assert_eq!(r.tried, vec!["a", "b", "b"]);
}

#[test]
fn one_attempt_allowed_means_recovery_failed_at_once() {
    let v = view(VmState::Crashed);
    let lim = Limits {
        max_attempts: 1,
        ..LIM
    };
    let a = decide(&v, 0, &lim);
    assert!(
        events(&a)[0].starts_with("recovery-failed after 1 attempt(s): its QEMU died on a"),
        "{a:?}"
    );
}

#[test]
fn a_crash_recovery_ends_when_the_vm_runs_on_its_host_again() {
    let mut v = view(VmState::Crashed);
    let a = decide(&v, 0, &LIM);
    apply(&mut v, &a);
    // The operator started it on a again.
    v.vms.get_mut(U).unwrap().state = VmState::Running;
    let a = decide(&v, 100, &LIM);
    assert!(
        matches!(&a[..], [Action::Done { host, .. }] if host == "a"),
        "{a:?}"
    );
    // The same for a crash loop's recovery-failed record (the agent's).
    let mut v = view(VmState::Running);
    v.recoveries.insert(
        U.into(),
        Recovery {
            uuid: U.into(),
            name: "vm1".into(),
            from: "a".into(),
            state: RecState::RecoveryFailed,
            attempt: 3,
            target: None,
            tried: vec!["a".into()],
            since_ms: 0,
            last_error: "crash loop".into(),
        },
    );
    let a = decide(&v, 100, &LIM);
    assert!(matches!(&a[..], [Action::Done { .. }]), "{a:?}");
}

#[test]
fn a_host_recovery_is_not_ended_by_a_stale_record_on_its_failed_host() {
    let mut v = view(VmState::Running);
    v.recoveries.insert(
        U.into(),
        Recovery {
            uuid: U.into(),
            name: "vm1".into(),
            from: "a".into(),
            state: RecState::RecoveryFailed,
            attempt: 3,
            target: None,
            tried: vec!["b".into(), "b".into(), "b".into()],
            since_ms: 0,
            last_error: "refused".into(),
        },
    );
    assert!(decide(&v, 100, &LIM).is_empty());
}

#[test]
fn a_crashed_vm_on_a_host_that_then_failed_waits_for_the_lockspace() {
    let mut v = view(VmState::Crashed);
    v.hosts.get_mut("a").unwrap().protected = false;
    assert_eq!(suspects(&v), vec!["a".to_string()]);
    assert!(decide(&v, 0, &LIM).is_empty());
    v.verdicts.insert("a".into(), Verdict::Safe);
    let a = decide(&v, 0, &LIM);
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::Put(r) if r.target.as_deref() == Some("b"))),
        "{a:?}"
    );
}

#[test]
fn a_stopped_vm_is_never_recovered() {
    let mut v = view(VmState::Stopped);
    v.hosts.get_mut("a").unwrap().protected = false;
    v.verdicts.insert("a".into(), Verdict::Safe);
    assert!(suspects(&v).is_empty());
    assert!(decide(&v, 0, &LIM).is_empty());
}
