//! The controller under faults: starts that fail at random, a host record
//! that does not decode, a start carried out but never reported.

use super::*;

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
