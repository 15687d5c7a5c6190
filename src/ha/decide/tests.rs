use super::*;

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
    let mut v = cluster();
    v.hosts.remove("a");
    v.hosts.remove("c");
    v.verdicts.insert("a".into(), Verdict::Safe);
    let lim = Limits {
        max_starts_per_host: 1,
        ..LIM
    };
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

/// Many rounds of the controller against scripted agents whose starts
/// fail at random (a fixed-seed generator): each VM is assigned to at most
/// one host at a time, never to the failed host, and ends either running
/// on exactly one host or recovery-failed after max_attempts; the
/// controller is stateless, so every round may as well be a new leader.
#[test]
fn random_start_failures_end_in_one_home_or_recovery_failed() {
    let mut seed: u64 = 0x5eed;
    let mut rnd = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for round in 0..200 {
        let mut v = cluster();
        v.hosts.remove("a");
        v.verdicts.insert("a".into(), Verdict::Safe);
        let fail_pct = rnd(101);
        let mut now = 0u64;
        let mut starts: BTreeMap<String, u32> = BTreeMap::new();
        for _step in 0..400 {
            let a = decide(&v, now, &LIM);
            for act in &a {
                if let Action::Put(r) = act {
                    assert_ne!(
                        r.target.as_deref(),
                        Some("a"),
                        "round {round}: placed on the failed host"
                    );
                    assert!(r.attempt <= LIM.max_attempts, "round {round}: {r:?}");
                }
            }
            apply(&mut v, &a);
            // The agents: each assigned start succeeds or fails.
            let assigned: Vec<Recovery> = v
                .recoveries
                .values()
                .filter(|r| r.state == RecState::Assigned)
                .cloned()
                .collect();
            for mut r in assigned {
                if rnd(100) < fail_pct {
                    r.state = RecState::StartFailed;
                    r.last_error = "refused".into();
                } else {
                    r.state = RecState::Started;
                    *starts.entry(r.uuid.clone()).or_default() += 1;
                    let vm = v.vms.get_mut(&r.uuid).unwrap();
                    vm.host = r.target.clone().unwrap();
                }
                v.recoveries.insert(r.uuid.clone(), r);
            }
            now += 500;
            let settled = v
                .recoveries
                .values()
                .all(|r| r.state == RecState::RecoveryFailed);
            if settled {
                break;
            }
        }
        for n in [1u8, 2, 3] {
            let u = uuid(n);
            let vm = &v.vms[&u];
            match v.recoveries.get(&u) {
                None => {
                    assert_ne!(
                        vm.host, "a",
                        "round {round}: vm{n} neither recovered nor failed"
                    );
                    assert_eq!(
                        starts.get(&u),
                        Some(&1),
                        "round {round}: vm{n} started twice"
                    );
                }
                Some(r) => {
                    assert_eq!(r.state, RecState::RecoveryFailed, "round {round}: {r:?}");
                    assert_eq!(r.attempt, LIM.max_attempts);
                    assert_eq!(vm.host, "a");
                    assert_eq!(starts.get(&u), None);
                }
            }
        }
        // The "never" VM and b's own VM were never touched.
        assert_eq!(v.vms[&uuid(4)].host, "a");
        assert_eq!(v.vms[&uuid(5)].host, "b");
    }
}

#[test]
fn a_host_whose_record_does_not_decode_is_neither_failed_nor_recovered() {
    // a's record in etcd is garbage: a is not in `hosts`, it is unreadable.
    let mut v = cluster();
    v.seen.insert("a".into(), "live".into());
    v.hosts.remove("a");
    v.unreadable.insert("a".into());
    assert!(suspects(&v).is_empty(), "a's VMs are suspects");
    assert!(crate::ha::events::to_judge(&v).is_empty());
    // (b and c, seen for the first time, are recorded silently.)
    let all = super::decide(&v, 0, &LIM);
    assert!(
        all.iter()
            .all(|x| matches!(x, Action::Seen { host, .. } if host != "a")),
        "decided on an unreadable record: {all:?}"
    );
    // Not a target either.
    v.unreadable.clear();
    v.hosts.insert("a".into(), host("a", 2048));
    v.hosts.remove("b");
    v.hosts.remove("c");
    v.unreadable.insert("b".into());
    v.verdicts.insert("c".into(), Verdict::Safe);
    v.vms.insert(uuid(6), vm(6, "c", Restart::Always, 0));
    let p = decide(&v, 0, &LIM);
    let targets: Vec<Option<&str>> = puts(&p).iter().map(|r| r.target.as_deref()).collect();
    assert_eq!(targets, vec![Some("a")], "{p:?}");

    // A start assigned to a host whose record turns unreadable is waited
    // for (up to the start timeout), not given up at once.
    apply(&mut v, &p);
    v.hosts.remove("a");
    v.unreadable.insert("a".into());
    assert!(decide(&v, 1_000, &LIM).is_empty());
    v.unreadable.remove("a");
    let a = decide(&v, 1_000, &LIM);
    assert!(
        matches!(puts(&a).as_slice(), [r] if matches!(r.state, RecState::Failed { .. })),
        "{a:?}"
    );
}

#[test]
fn a_start_carried_out_but_not_reported_ends_the_recovery_where_it_runs() {
    // b was assigned vm1 and started it, but its vmlease-ha died before
    // reporting (b led and was its own target); the record moved on to
    // failed (b gone from etcd for a while) and then to c. b's agent,
    // back, publishes vm1 running on b: the recovery is over, on b, and
    // c is not asked to start it.
    let mut v = cluster();
    v.hosts.remove("a");
    v.verdicts.insert("a".into(), Verdict::Safe);
    for state in [
        RecState::Failed { retry_at_ms: 0 },
        RecState::Assigned,
        RecState::StartFailed,
        RecState::Pending,
    ] {
        let mut w = v.clone();
        w.recoveries.insert(
            uuid(1),
            Recovery {
                uuid: uuid(1),
                name: "vm1".into(),
                from: "a".into(),
                state: state.clone(),
                attempt: 2,
                target: Some("c".into()),
                tried: vec!["b".into(), "c".into()],
                since_ms: 0,
                last_error: String::new(),
            },
        );
        w.vms.get_mut(&uuid(1)).unwrap().host = "b".into();
        let a = decide(&w, 1_000, &LIM);
        let done: Vec<&str> = a
            .iter()
            .filter_map(|a| match a {
                Action::Done { uuid: u, host, .. } if *u == uuid(1) => Some(host.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(done, ["b"], "{state:?}: {a:?}");
        assert!(
            !puts(&a).iter().any(|r| r.uuid == uuid(1)),
            "{state:?}: vm1 placed again: {a:?}"
        );
    }
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
