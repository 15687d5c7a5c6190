//! The start limit (`max_starts_per_host`): a target's slot is taken by an
//! assignment and freed when the target reports the start done (`started`
//! or `start-failed`); the VM's memory stays reserved on the target until
//! the VM is published running.

use super::*;

/// a failed (leases free), b the only target, one start at a time: vm2
/// (the highest priority) is assigned to b, vm1 and vm3 wait.
fn one_slot() -> (ClusterView, Limits) {
    let (mut v, lim) = b_alone(1);
    let a = decide(&v, 0, &lim);
    apply(&mut v, &a);
    assert_eq!(v.recoveries[&uuid(2)].state, RecState::Assigned);
    assert_eq!(v.recoveries[&uuid(2)].target.as_deref(), Some("b"));
    for n in [1, 3] {
        assert_eq!(v.recoveries[&uuid(n)].state, RecState::Pending);
    }
    (v, lim)
}

/// The agent's report (agent.rs), as it writes it.
fn report(v: &mut ClusterView, n: u8, state: RecState, error: &str) {
    let r = v.recoveries.get_mut(&uuid(n)).unwrap();
    r.state = state;
    r.last_error = error.into();
}

#[test]
fn an_assignment_holds_its_slot_until_the_target_reports() {
    let (v, lim) = one_slot();
    for now in [100, 5_000, lim.start_timeout_ms - 1] {
        let a = decide(&v, now, &lim);
        assert!(a.is_empty(), "at {now} ms: {a:?}");
    }
}

#[test]
fn a_start_reported_done_frees_its_slot_before_the_vm_is_published() {
    let (mut v, lim) = one_slot();
    report(&mut v, 2, RecState::Started, "");
    // vm2 is not published on b yet (its record still names a).
    assert_eq!(v.vms[&uuid(2)].host, "a");
    let a = decide(&v, 200, &lim);
    let p = puts(&a);
    assert_eq!(p.len(), 1, "{a:?}");
    assert_eq!(
        (
            p[0].name.as_str(),
            p[0].state.clone(),
            p[0].target.as_deref()
        ),
        ("vm1", RecState::Assigned, Some("b"))
    );
    // vm2 itself: neither done nor placed again.
    assert!(!a.iter().any(|a| matches!(a, Action::Done { .. })), "{a:?}");
    apply(&mut v, &a);
    assert_eq!(v.recoveries[&uuid(2)].state, RecState::Started);
    assert_eq!(v.recoveries[&uuid(2)].attempt, 1);
    // vm1 now holds the slot: vm3 waits, vm2 is still not touched.
    let a = decide(&v, 300, &lim);
    assert!(a.is_empty(), "{a:?}");
    // vm2 shows up running on b: done, once; nothing else changes.
    v.vms.get_mut(&uuid(2)).unwrap().host = "b".into();
    let a = decide(&v, 400, &lim);
    assert_eq!(
        a.iter()
            .filter(
                |a| matches!(a, Action::Done { uuid: u, host, .. } if *u == uuid(2) && host == "b")
            )
            .count(),
        1,
        "{a:?}"
    );
    assert!(puts(&a).is_empty(), "{a:?}");
}

#[test]
fn a_failed_start_frees_its_slot_and_is_retried_after_the_backoff() {
    let (mut v, lim) = one_slot();
    report(
        &mut v,
        2,
        RecState::StartFailed,
        "virsh start: disk missing",
    );
    let a = decide(&v, 1_000, &lim);
    apply(&mut v, &a);
    let r = &v.recoveries[&uuid(2)];
    assert_eq!(
        r.state,
        RecState::Failed {
            retry_at_ms: 1_000 + lim.retry_backoff_ms
        }
    );
    assert_eq!(r.last_error, "b: virsh start: disk missing");
    assert!(a.iter().any(
        |a| matches!(a, Action::Event(e) if e.kind == kind::ATTEMPT_FAILED && e.name == "vm2")
    ));
    // Its slot went to the next one at once.
    assert_eq!(v.recoveries[&uuid(1)].state, RecState::Assigned);
    assert_eq!(v.recoveries[&uuid(1)].target.as_deref(), Some("b"));
    // vm2's retry waits for its backoff, then for a slot.
    assert!(decide(&v, 1_999, &lim).is_empty());
    report(&mut v, 1, RecState::Started, "");
    let a = decide(&v, 2_000, &lim);
    apply(&mut v, &a);
    let r = &v.recoveries[&uuid(2)];
    assert_eq!(
        (r.state.clone(), r.attempt, r.target.as_deref()),
        (RecState::Assigned, 2, Some("b"))
    );
}

#[test]
fn a_started_vm_keeps_its_memory_reserved_until_it_is_published_running() {
    let (mut v, lim) = b_alone(4);
    // b has room for two of the three 512 MiB VMs; slots are plenty.
    v.hosts.insert("b".into(), host("b", 1024));
    let a = decide(&v, 0, &lim);
    apply(&mut v, &a);
    assert_eq!(v.recoveries[&uuid(2)].state, RecState::Assigned);
    assert_eq!(v.recoveries[&uuid(1)].state, RecState::Assigned);
    assert_eq!(v.recoveries[&uuid(3)].state, RecState::Pending);
    // Both started (slots free), neither published yet: still no room.
    report(&mut v, 2, RecState::Started, "");
    report(&mut v, 1, RecState::Started, "");
    let a = decide(&v, 100, &lim);
    assert!(a.is_empty(), "vm3 placed on a full host: {a:?}");
    // vm2 published running on b, with the host record that counts it
    // (the agent writes the host record first): done, b still full.
    v.vms.get_mut(&uuid(2)).unwrap().host = "b".into();
    v.hosts.get_mut("b").unwrap().mem_used_kib += 512 * 1024;
    let a = decide(&v, 200, &lim);
    apply(&mut v, &a);
    assert!(!v.recoveries.contains_key(&uuid(2)));
    assert!(puts(&a).is_empty(), "vm3 placed on a full host: {a:?}");
    // c joins with room: vm3 goes there.
    v.hosts.insert("c".into(), host("c", 2048));
    let a = decide(&v, 300, &lim);
    let p = puts(&a);
    assert_eq!(p.len(), 1, "{a:?}");
    assert_eq!(
        (p[0].name.as_str(), p[0].target.as_deref()),
        ("vm3", Some("c"))
    );
}
