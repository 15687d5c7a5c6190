use super::*;

mod faults;
mod slots;

pub(super) const LIM: Limits = Limits {
    max_starts_per_host: 2,
    max_attempts: 3,
    retry_backoff_ms: 1_000,
    start_timeout_ms: 10_000,
};

pub(super) fn host(name: &str, free_mib: u64) -> HostRecord {
    HostRecord {
        name: name.into(),
        host_id: name.as_bytes()[0] as u16,
        state: "live".into(),
        protected: true,
        reason: String::new(),
        mem_total_kib: 4 * 1024 * 1024,
        mem_used_kib: 4 * 1024 * 1024 - free_mib * 1024,
        vcpus: 8,
        vcpus_used: 0,
    }
}

fn vm(n: u8, host: &str, restart: Restart, priority: i32) -> VmRecord {
    VmRecord {
        uuid: format!("{n:08x}-0000-4000-8000-000000000000"),
        name: format!("vm{n}"),
        host: host.into(),
        restart,
        priority,
        memory_kib: 512 * 1024,
        vcpus: 1,
        state: VmState::Running,
        xml: String::new(),
    }
}

/// A with three HA VMs (priorities 1, 5, 0) and one "never"; B and C up.
fn cluster() -> ClusterView {
    let mut v = ClusterView::default();
    for h in [host("a", 2048), host("b", 4096), host("c", 3000)] {
        v.hosts.insert(h.name.clone(), h);
    }
    for m in [
        vm(1, "a", Restart::Always, 1),
        vm(2, "a", Restart::Always, 5),
        vm(3, "a", Restart::Always, 0),
        vm(4, "a", Restart::Never, 9),
        vm(5, "b", Restart::Always, 0),
    ] {
        v.vms.insert(m.uuid.clone(), m);
    }
    v
}

/// a failed (its leases free) and b the only target, with
/// `max_starts_per_host` slots.
fn b_alone(max_starts_per_host: u32) -> (ClusterView, Limits) {
    let mut v = cluster();
    v.hosts.remove("a");
    v.hosts.remove("c");
    v.verdicts.insert("a".into(), Verdict::Safe);
    let lim = Limits {
        max_starts_per_host,
        ..LIM
    };
    (v, lim)
}

/// The recovery decisions of a step (host events and their marks are
/// tested in events.rs).
pub(super) fn decide(v: &ClusterView, now_ms: u64, lim: &Limits) -> Vec<Action> {
    super::decide(v, now_ms, lim)
        .into_iter()
        .filter(|a| match a {
            Action::Seen { .. } => false,
            Action::Event(e) => !e.uuid.is_empty(),
            _ => true,
        })
        .collect()
}

fn uuid(n: u8) -> String {
    format!("{n:08x}-0000-4000-8000-000000000000")
}

fn puts(a: &[Action]) -> Vec<&Recovery> {
    a.iter()
        .filter_map(|a| match a {
            Action::Put(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// Applies the leader's writes to the view, as etcd would.
fn apply(v: &mut ClusterView, actions: &[Action]) {
    for a in actions {
        match a {
            Action::Put(r) => {
                v.recoveries.insert(r.uuid.clone(), r.clone());
            }
            Action::Done { uuid, .. } => {
                v.recoveries.remove(uuid);
            }
            Action::Seen { host, condition } => {
                v.seen.insert(host.clone(), condition.clone());
            }
            Action::Migrate(m) => {
                v.migrations.insert(m.uuid.clone(), m.clone());
            }
            Action::MigrationDone { uuid } => {
                v.migrations.remove(uuid);
            }
            Action::Event(_) => {}
        }
    }
}

#[test]
fn a_healthy_cluster_needs_nothing() {
    let v = cluster();
    assert!(suspects(&v).is_empty());
    assert!(decide(&v, 0, &LIM).is_empty());
}

#[test]
fn a_failed_host_is_recovered_only_once_its_leases_may_be_taken() {
    let mut v = cluster();
    v.hosts.get_mut("a").unwrap().protected = false;
    v.hosts.get_mut("a").unwrap().state = "fencing".into();
    assert_eq!(suspects(&v), vec!["a".to_string()]);
    v.verdicts
        .insert("a".into(), Verdict::NotYet("silent for 2 s of 4 s".into()));
    assert!(
        decide(&v, 0, &LIM).is_empty(),
        "decided before the safe time"
    );

    // Gone from etcd altogether: still only with the lockspace's yes.
    v.hosts.remove("a");
    assert!(decide(&v, 0, &LIM).is_empty());
    v.verdicts.insert("a".into(), Verdict::Safe);
    let a = decide(&v, 0, &LIM);
    let p = puts(&a);
    // The three "always" VMs, highest priority first; never vm4, never vm5.
    let names: Vec<&str> = p.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["vm2", "vm1", "vm3"]);
    assert!(p
        .iter()
        .all(|r| r.state == RecState::Assigned && r.attempt == 1));
    // Most free memory first (b: 4096 MiB, then 3584 after vm2, c: 3000),
    // two starts per host at most.
    let targets: Vec<&str> = p.iter().map(|r| r.target.as_deref().unwrap()).collect();
    assert_eq!(targets, vec!["b", "b", "c"]);
}

#[test]
fn the_start_limit_leaves_the_rest_pending_until_a_slot_frees() {
    let (mut v, lim) = b_alone(1);
    let a = decide(&v, 0, &lim);
    apply(&mut v, &a);
    let p = puts(&a);
    assert_eq!(p.len(), 3);
    assert_eq!(p[0].name, "vm2");
    assert_eq!(p[0].state, RecState::Assigned);
    assert!(p[1..].iter().all(|r| r.state == RecState::Pending), "{p:?}");
    // Nothing changes while vm2 starts: no rewrite of the pending ones.
    assert!(puts(&decide(&v, 100, &lim)).is_empty());
    // vm2 runs on b: done, and the next one is assigned.
    v.vms.get_mut(&uuid(2)).unwrap().host = "b".into();
    let a = decide(&v, 200, &lim);
    assert!(a.contains(&Action::Done {
        uuid: uuid(2),
        name: "vm2".into(),
        host: "b".into()
    }));
    let p = puts(&a);
    assert_eq!(p.len(), 1);
    assert_eq!(
        (p[0].name.as_str(), p[0].target.as_deref()),
        ("vm1", Some("b"))
    );
}

#[test]
fn a_memory_hungry_vm_waits_for_room() {
    let mut v = cluster();
    v.hosts.remove("a");
    v.verdicts.insert("a".into(), Verdict::Safe);
    v.vms.get_mut(&uuid(2)).unwrap().memory_kib = 8 * 1024 * 1024;
    let p = decide(&v, 0, &LIM);
    let r = puts(&p).into_iter().find(|r| r.uuid == uuid(2)).unwrap();
    assert_eq!(r.state, RecState::Pending);
    assert!(r.last_error.contains("room"));
}

#[test]
fn failed_attempts_retry_elsewhere_with_backoff_then_give_up() {
    let mut v = cluster();
    v.hosts.remove("a");
    v.vms.retain(|k, _| *k == uuid(1));
    v.verdicts.insert("a".into(), Verdict::Safe);
    let mut now = 0;
    let a = decide(&v, now, &LIM);
    apply(&mut v, &a);
    assert_eq!(v.recoveries[&uuid(1)].target.as_deref(), Some("b"));

    // b never reports: a timeout is a failed attempt.
    now += LIM.start_timeout_ms - 1;
    assert!(decide(&v, now, &LIM).is_empty());
    now += 1;
    let a = decide(&v, now, &LIM);
    apply(&mut v, &a);
    let r = &v.recoveries[&uuid(1)];
    assert_eq!(
        r.state,
        RecState::Failed {
            retry_at_ms: now + 1_000
        }
    );
    assert!(r.last_error.contains("no start reported by b"), "{r:?}");
    // Not before the backoff; then on the host not tried yet.
    assert!(decide(&v, now + 999, &LIM).is_empty());
    now += 1_000;
    let a = decide(&v, now, &LIM);
    apply(&mut v, &a);
    let r = &v.recoveries[&uuid(1)];
    assert_eq!((r.attempt, r.target.as_deref()), (2, Some("c")));

    // The target reports an error (as its agent writes it); the backoff doubles.
    let mut r = r.clone();
    r.state = RecState::StartFailed;
    r.last_error = "virsh start: disk missing".into();
    v.recoveries.insert(r.uuid.clone(), r);
    let a = decide(&v, now, &LIM);
    apply(&mut v, &a);
    let r = &v.recoveries[&uuid(1)];
    assert_eq!(r.last_error, "c: virsh start: disk missing");
    assert_eq!(
        r.state,
        RecState::Failed {
            retry_at_ms: now + 2_000
        }
    );
    assert!(decide(&v, now + 1_999, &LIM).is_empty());
    now += 2_000;
    let a = decide(&v, now, &LIM);
    apply(&mut v, &a);
    let r = &v.recoveries[&uuid(1)];
    assert_eq!(
        (r.attempt, r.target.as_deref()),
        (3, Some("b")),
        "all tried: the roomiest again"
    );

    // The target leaves: the third attempt fails and it is recovery-failed.
    v.hosts.remove("b");
    let a = decide(&v, now + 1, &LIM);
    assert!(
        a.iter().any(
            |a| matches!(a, Action::Event(e) if e.kind == "recovery-failed" && e.name == "vm1")
        ),
        "{a:?}"
    );
    apply(&mut v, &a);
    assert_eq!(v.recoveries[&uuid(1)].state, RecState::RecoveryFailed);
    // Left to the operator: nothing more, ever.
    assert!(decide(&v, now + 1_000_000, &LIM).is_empty());
    // Until the operator starts it somewhere: then it is over.
    v.vms.get_mut(&uuid(1)).unwrap().host = "c".into();
    let a = decide(&v, now + 1_000_001, &LIM);
    assert!(matches!(a.as_slice(), [Action::Done { host, .. }] if host == "c"));
}

#[test]
fn a_new_leader_resumes_without_deciding_twice() {
    let mut v = cluster();
    v.hosts.remove("a");
    v.verdicts.insert("a".into(), Verdict::Safe);
    let a = decide(&v, 0, &LIM);
    apply(&mut v, &a);
    // Another controller, same etcd state, a moment later: nothing new.
    let again = decide(&v, 500, &LIM);
    assert!(again.is_empty(), "{again:?}");
    // Its target reported the start: still nothing until the VM shows up.
    for r in v.recoveries.values_mut() {
        r.state = RecState::Started;
    }
    assert!(decide(&v, 600, &LIM).is_empty());
}

#[test]
fn stopped_and_never_vms_and_live_hosts_are_left_alone() {
    let mut v = cluster();
    v.hosts.get_mut("a").unwrap().protected = false;
    v.verdicts.insert("a".into(), Verdict::Safe);
    // A protected-looking record would stop everything: not the case here.
    for m in v.vms.values_mut() {
        if m.host == "a" {
            m.state = VmState::Stopped;
        }
    }
    assert!(suspects(&v).is_empty());
    assert!(decide(&v, 0, &LIM).is_empty());
    // A host that is protected again is not recovered, whatever the verdict.
    let mut v = cluster();
    v.verdicts.insert("a".into(), Verdict::Safe);
    assert!(decide(&v, 0, &LIM).is_empty());
    // Hosts that are not live (fencing, not protected) receive nothing.
    v.hosts.remove("a");
    v.hosts.get_mut("b").unwrap().state = "mgmt-isolated".into();
    v.hosts.get_mut("c").unwrap().protected = false;
    let p = decide(&v, 0, &LIM);
    assert!(
        puts(&p).iter().all(|r| r.state == RecState::Pending),
        "{p:?}"
    );
}

#[test]
fn the_leader_steps_on_a_timer_only_while_time_or_the_lockspace_can_change_a_decision() {
    let mut v = cluster();
    assert!(!needs_timer(&v), "a healthy cluster: only etcd changes");
    // a's lease expired: its verdict comes with time, not through etcd.
    v.hosts.remove("a");
    assert!(needs_timer(&v), "a suspect host");
    // Its VMs run elsewhere now and a was reported evacuable: nothing left.
    for m in v.vms.values_mut() {
        m.host = "b".into();
    }
    v.seen.insert("a".into(), "evacuable".into());
    assert!(!needs_timer(&v), "a failed host already judged");
    v.seen.insert("a".into(), "failed".into());
    assert!(needs_timer(&v), "a failed host not yet reported evacuable");
    v.seen.insert("a".into(), "evacuable".into());
    let mut r = Recovery {
        uuid: uuid(1),
        name: "vm1".into(),
        from: "a".into(),
        state: RecState::Failed { retry_at_ms: 5_000 },
        attempt: 1,
        target: None,
        tried: vec!["b".into()],
        since_ms: 0,
        last_error: String::new(),
    };
    v.recoveries.insert(r.uuid.clone(), r.clone());
    assert!(needs_timer(&v), "a retry timer");
    r.state = RecState::RecoveryFailed;
    v.recoveries.insert(r.uuid.clone(), r);
    assert!(!needs_timer(&v), "left to the operator: nothing runs out");
    v.maintenance.insert(
        "c".into(),
        crate::ha::maintenance::Maintenance {
            host: "c".into(),
            since_ms: 0,
            disarmed: false,
        },
    );
    assert!(needs_timer(&v), "a host in maintenance (its drain)");
}
