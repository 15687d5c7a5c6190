use super::*;
use crate::ha::model::HostRecord;

fn host(name: &str, state: &str, protected: bool) -> HostRecord {
    HostRecord {
        name: name.into(),
        host_id: 1,
        state: state.into(),
        protected,
        reason: if protected { "" } else { "storage lost" }.into(),
        mem_total_kib: 1,
        mem_used_kib: 0,
        vcpus: 1,
        vcpus_used: 0,
    }
}

fn kinds(a: &[Action]) -> Vec<String> {
    a.iter()
        .filter_map(|a| match a {
            Action::Event(e) => Some(format!("{}:{}", e.kind, e.host)),
            _ => None,
        })
        .collect()
}

/// Applies the Seen actions, as the controller's writes would.
fn apply(v: &mut ClusterView, a: &[Action]) {
    for a in a {
        if let Action::Seen { host, condition } = a {
            v.seen.insert(host.clone(), condition.clone());
        }
    }
}

#[test]
fn rfc3339_is_utc() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(rfc3339(1_796_601_723_456), "2026-12-07T00:02:03.456Z");
    assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
}

#[test]
fn a_host_failure_is_reported_once_then_fenced_then_evacuable_then_back() {
    let mut v = ClusterView::default();
    v.hosts.insert("a".into(), host("a", "live", true));
    let a = host_events(&v, 1);
    assert!(kinds(&a).is_empty(), "a new live host is recorded silently");
    apply(&mut v, &a);
    assert!(host_events(&v, 2).is_empty(), "nothing changed");

    v.hosts.insert("a".into(), host("a", "fencing", false));
    let a = host_events(&v, 3);
    assert_eq!(kinds(&a), ["host-failed:a"]);
    apply(&mut v, &a);
    assert!(host_events(&v, 4).is_empty(), "reported once");

    v.hosts.insert("a".into(), host("a", "fenced-clean", false));
    let a = host_events(&v, 5);
    assert_eq!(kinds(&a), ["host-fenced:a"]);
    apply(&mut v, &a);

    v.verdicts.insert("a".into(), Verdict::Safe);
    let a = host_events(&v, 6);
    assert_eq!(kinds(&a), ["host-evacuable:a"]);
    apply(&mut v, &a);
    // Not asked again (no HA VM left there): still evacuable, no event.
    v.verdicts.clear();
    assert!(host_events(&v, 7).is_empty(), "{:?}", host_events(&v, 7));
    assert!(to_judge(&v).is_empty());

    v.verdicts.clear();
    v.hosts.insert("a".into(), host("a", "live", true));
    let a = host_events(&v, 7);
    assert_eq!(kinds(&a), ["host-back:a"]);
}

#[test]
fn a_vanished_host_is_failed_and_skipped_steps_are_reported() {
    let mut v = ClusterView::default();
    v.seen.insert("a".into(), "live".into());
    v.verdicts.insert("a".into(), Verdict::Safe);
    let a = host_events(&v, 1);
    assert_eq!(kinds(&a), ["host-failed:a", "host-evacuable:a"]);
    let Action::Event(e) = &a[0] else { panic!() };
    assert!(e.reason.contains("gone from etcd"), "{e:?}");
    apply(&mut v, &a);
    assert!(host_events(&v, 2).is_empty());
}

#[test]
fn maintenance_and_isolation() {
    let mut v = ClusterView::default();
    v.seen.insert("a".into(), "live".into());
    v.hosts.insert("a".into(), host("a", "live", true));
    v.maintenance.insert("a".into(), Default::default());
    let a = host_events(&v, 1);
    assert_eq!(kinds(&a), ["maintenance-entered:a", "host-drained:a"]);
    apply(&mut v, &a);
    v.maintenance.clear();
    let a = host_events(&v, 2);
    assert_eq!(
        kinds(&a),
        ["maintenance-exited:a"],
        "no host-back after maintenance"
    );
    apply(&mut v, &a);
    v.hosts.insert("a".into(), host("a", "mgmt-isolated", true));
    assert_eq!(kinds(&host_events(&v, 3)), ["host-isolated:a"]);
}

#[test]
fn an_unreadable_host_is_not_reported_and_corrupt_values_name_their_key() {
    let mut v = ClusterView::default();
    v.seen.insert("a".into(), "live".into());
    v.unreadable.insert("a".into());
    assert!(host_events(&v, 1).is_empty(), "{:?}", host_events(&v, 1));
    assert!(to_judge(&v).is_empty());

    let e = corrupt(5, "/p/", "/p/hosts/a", "expected value at line 1 column 1");
    assert_eq!(
        (e.kind.as_str(), e.host.as_str(), e.uuid.as_str()),
        ("corrupt-value", "a", "")
    );
    assert!(
        e.line()
            .contains("corrupt-value host=a: /p/hosts/a: expected value"),
        "{}",
        e.line()
    );
    let e = corrupt(5, "/p/", "/p/vms/u-1", "EOF");
    assert_eq!((e.host.as_str(), e.uuid.as_str()), ("", "u-1"));
    assert!(
        e.reason
            .starts_with("/p/vms/u-1: EOF; the domain is unmanaged"),
        "{}",
        e.reason
    );
}

#[test]
fn events_round_trip_and_give_hooks_their_fields() {
    let e = Event::vm(kind::VM_RECOVERED, 5, "b", "u-1", "web", "runs on b");
    let j = serde_json::to_string(&e).unwrap();
    assert_eq!(
        j,
        r#"{"kind":"vm-recovered","time_ms":5,"host":"b","uuid":"u-1","name":"web","reason":"runs on b"}"#
    );
    assert_eq!(serde_json::from_str::<Event>(&j).unwrap(), e);
    let env = e.env();
    assert!(env.contains(&("VMLEASE_EVENT_DOMAIN_NAME", "web".into())));
    assert!(env.contains(&("VMLEASE_EVENT_TIME", "1970-01-01T00:00:00.005Z".into())));
    assert!(e
        .line()
        .contains("vm-recovered host=b domain=web (u-1): runs on b"));
}
