use super::*;
use crate::ha::decide::{decide, Verdict};
use crate::ha::model::{HostRecord, VmRecord};

const LIM: Limits = Limits {
    max_starts_per_host: 2,
    max_attempts: 2,
    retry_backoff_ms: 1_000,
    start_timeout_ms: 10_000,
};

fn host(name: &str) -> HostRecord {
    HostRecord {
        name: name.into(),
        host_id: 1,
        state: "live".into(),
        protected: true,
        reason: String::new(),
        mem_total_kib: 4 << 20,
        mem_used_kib: 0,
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
        memory_kib: 512 << 10,
        vcpus: 1,
        state: VmState::Running,
        xml: String::new(),
    }
}

/// a in maintenance with vm1 (prio 0), vm2 (prio 5) and a "never" vm3;
/// b and c are targets.
fn cluster() -> ClusterView {
    let mut v = ClusterView::default();
    for n in ["a", "b", "c"] {
        v.hosts.insert(n.into(), host(n));
        v.reach.insert(
            n.into(),
            Reach {
                host: n.into(),
                uri: format!("qemu+ssh://{n}/system"),
                address: String::new(),
            },
        );
        v.seen.insert(n.into(), "live".into());
    }
    for m in [
        vm(1, "a", Restart::Always, 0),
        vm(2, "a", Restart::Always, 5),
        vm(3, "a", Restart::Never, 9),
    ] {
        v.vms.insert(m.uuid.clone(), m);
    }
    v.maintenance.insert(
        "a".into(),
        Maintenance {
            host: "a".into(),
            since_ms: 0,
            disarmed: true,
        },
    );
    v
}

fn apply(v: &mut ClusterView, actions: &[Action]) {
    for a in actions {
        match a {
            Action::Migrate(m) => {
                v.migrations.insert(m.uuid.clone(), m.clone());
            }
            Action::MigrationDone { uuid } => {
                v.migrations.remove(uuid);
            }
            Action::Seen { host, condition } => {
                v.seen.insert(host.clone(), condition.clone());
            }
            Action::Put(r) => {
                v.recoveries.insert(r.uuid.clone(), r.clone());
            }
            Action::Done { uuid, .. } => {
                v.recoveries.remove(uuid);
            }
            Action::Event(_) => {}
        }
    }
}

fn migrations(a: &[Action]) -> Vec<&Migration> {
    a.iter()
        .filter_map(|a| match a {
            Action::Migrate(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn events(a: &[Action]) -> Vec<String> {
    a.iter()
        .filter_map(|a| match a {
            Action::Event(e) => Some(format!("{}:{}", e.kind, e.name)),
            _ => None,
        })
        .collect()
}

/// The target publishes the VM as running there.
fn arrive(v: &mut ClusterView, uuid: &str, target: &str) {
    v.vms.get_mut(uuid).unwrap().host = target.into();
}

#[test]
fn drains_one_vm_at_a_time_highest_priority_first_never_the_never_one() {
    let mut v = cluster();
    let a = decide(&v, 1_000, &LIM);
    let m = migrations(&a);
    assert_eq!(m.len(), 1, "{a:?}");
    assert_eq!(
        (m[0].name.as_str(), m[0].state.clone()),
        ("vm2", MigState::Assigned)
    );
    assert_ne!(m[0].target, "a");
    assert_eq!(events(&a), ["maintenance-entered:"]);
    apply(&mut v, &a);
    assert!(
        migrations(&decide(&v, 1_500, &LIM)).is_empty(),
        "one at a time"
    );

    let t = v.migrations.values().next().unwrap().target.clone();
    arrive(&mut v, &uuid(2), &t);
    let a = decide(&v, 2_000, &LIM);
    assert!(events(&a).contains(&"vm-migrated:vm2".to_string()), "{a:?}");
    apply(&mut v, &a);
    let m: Vec<_> = v.migrations.values().collect();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].name, "vm1", "the next one: {m:?}");
    let t = m[0].target.clone();
    arrive(&mut v, &uuid(1), &t);
    let a = decide(&v, 3_000, &LIM);
    assert_eq!(events(&a), ["vm-migrated:vm1"]);
    apply(&mut v, &a);
    assert!(v.migrations.is_empty());
    let a = decide(&v, 3_500, &LIM);
    assert_eq!(
        events(&a),
        ["host-drained:"],
        "the step after the last one left"
    );
    apply(&mut v, &a);
    assert!(decide(&v, 4_000, &LIM).is_empty());
    assert_eq!(v.vms[&uuid(3)].host, "a", "restart=never stays");
}

fn uuid(n: u8) -> String {
    format!("{n:08x}-0000-4000-8000-000000000000")
}

#[test]
fn nothing_is_placed_on_a_host_in_maintenance() {
    let mut v = cluster();
    v.maintenance.clear();
    v.maintenance.insert("b".into(), Maintenance::default());
    // c fails; its VM may go to a only.
    v.vms.insert(uuid(7), vm(7, "c", Restart::Always, 0));
    v.hosts.get_mut("c").unwrap().protected = false;
    v.verdicts.insert("c".into(), Verdict::Safe);
    let a = decide(&v, 1_000, &LIM);
    let targets: Vec<_> = a
        .iter()
        .filter_map(|a| match a {
            Action::Put(r) => r.target.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(targets, ["a"], "{a:?}");
}

#[test]
fn a_failed_migration_is_retried_elsewhere_then_given_up_and_exit_clears_it() {
    let mut v = cluster();
    v.vms.remove(&uuid(1));
    let a = decide(&v, 1_000, &LIM);
    apply(&mut v, &a);
    let first = v.migrations[&uuid(2)].target.clone();
    let m = v.migrations.get_mut(&uuid(2)).unwrap();
    m.state = MigState::MigrateFailed;
    m.last_error = "destination refused".into();
    let a = decide(&v, 2_000, &LIM);
    assert_eq!(events(&a), ["migration-failed:vm2"]);
    apply(&mut v, &a);
    assert_eq!(
        v.migrations[&uuid(2)].state,
        MigState::Failed { retry_at_ms: 3_000 }
    );
    assert!(migrations(&decide(&v, 2_500, &LIM)).is_empty(), "backoff");
    let a = decide(&v, 3_000, &LIM);
    apply(&mut v, &a);
    let m = &v.migrations[&uuid(2)];
    assert_eq!((m.attempt, m.state.clone()), (2, MigState::Assigned));
    assert_ne!(m.target, first, "another host");
    let m = v.migrations.get_mut(&uuid(2)).unwrap();
    m.state = MigState::MigrateFailed;
    let a = decide(&v, 4_000, &LIM);
    apply(&mut v, &a);
    assert_eq!(v.migrations[&uuid(2)].state, MigState::GaveUp);
    assert!(
        migrations(&decide(&v, 60_000, &LIM)).is_empty(),
        "left alone"
    );

    v.maintenance.clear();
    let a = decide(&v, 61_000, &LIM);
    assert_eq!(events(&a), ["maintenance-exited:"]);
    apply(&mut v, &a);
    assert!(v.migrations.is_empty());
}

#[test]
fn a_source_that_fails_mid_migration_hands_over_to_recovery() {
    let mut v = cluster();
    let a = decide(&v, 1_000, &LIM);
    apply(&mut v, &a);
    v.migrations
        .values_mut()
        .for_each(|m| m.state = MigState::Migrating);
    v.hosts.remove("a");
    let a = decide(&v, 2_000, &LIM);
    assert!(
        events(&a).contains(&"migration-failed:vm2".to_string()),
        "{a:?}"
    );
    apply(&mut v, &a);
    assert!(v.migrations.is_empty());
}
