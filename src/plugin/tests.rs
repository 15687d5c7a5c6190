use super::*;
use crate::status::protected_status;

fn params(uuid: [u8; 16], name: &str, pid: u64) -> Vec<Param> {
    vec![
        Param {
            key: "uuid".into(),
            value: Value::Uuid(uuid),
        },
        Param {
            key: "name".into(),
            value: Value::Str(Some(name.into())),
        },
        Param {
            key: "id".into(),
            value: Value::UInt(3),
        },
        Param {
            key: "pid".into(),
            value: Value::UInt(pid),
        },
        Param {
            key: "uri".into(),
            value: Value::Str(None),
        },
    ]
}

fn cfg(extra: &str) -> Config {
    crate::config::parse(&format!("host_id = 1\n{extra}"), "t").unwrap()
}

#[test]
fn new_requires_uuid_name_and_pid() {
    let m = Manager::new(0, &params([1; 16], "web", 42), NEW_STARTED).unwrap();
    assert_eq!(m.uuid, "01010101-0101-0101-0101-010101010101");
    assert_eq!((m.name.as_str(), m.pid, m.id), ("web", 42, 3));
    assert!(m.new_started && m.uri.is_none());
    assert!(Manager::new(0, &params([1; 16], "web", 0), 0).is_err());
    assert!(Manager::new(1, &params([1; 16], "web", 4), 0).is_err());
    assert!(Manager::new(0, &params([1; 16], "web", 4), 0x80).is_err());
    assert!(Manager::new(0, &params([1; 16], "", 4), 0).is_err());
    assert!(Manager::new(0, &params([1; 16], "x", 1 << 40), 0).is_err());
    assert!(Manager::new(0, &params([1; 16], "web", 4)[1..], 0).is_err());
}

#[test]
fn resources_follow_disk_flags() {
    let c = cfg("");
    let mut m = Manager::new(0, &params([2; 16], "db", 7), 0).unwrap();
    m.add_resource(&c, 0, "/img/ro.iso", &[], RESOURCE_READONLY)
        .unwrap();
    m.add_resource(&c, 0, "/img/shared.img", &[], RESOURCE_SHARED)
        .unwrap();
    m.add_resource(&c, 0, "/img/rw.qcow2", &[], 0).unwrap();
    let lease = vec![
        Param {
            key: "path".into(),
            value: Value::Str(Some("/var/lib/x".into())),
        },
        Param {
            key: "offset".into(),
            value: Value::UInt(0),
        },
        Param {
            key: "lockspace".into(),
            value: Value::Str(Some("ls1".into())),
        },
    ];
    m.add_resource(&c, 1, "key1", &lease, 0).unwrap();
    assert_eq!(m.readonly_disks, 1);
    let all = m.all_resources(&c, true);
    let names: Vec<String> = all.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        names,
        [
            "domain 02020202-0202-0202-0202-020202020202",
            "disk /img/shared.img",
            "disk /img/rw.qcow2",
            "lease ls1/key1"
        ]
    );
    assert_eq!(all[1].mode, crate::lease::Mode::Shared);
    // Detach-style release: no domain lease.
    assert_eq!(m.all_resources(&c, false).len(), 3);
    assert!(
        m.add_resource(&c, 1, "k", &lease[..2], 0).is_err(),
        "lease without lockspace"
    );
    assert!(m.add_resource(&c, 2, "x", &[], 0).is_err());
    assert!(m.add_resource(&c, 0, "/x", &[], 4).is_err());
}

#[test]
fn disk_policy_without_disk_leases() {
    let c = cfg("disk_leases = false\ndomain_lease = false\n");
    let mut m = Manager::new(0, &params([3; 16], "db", 7), 0).unwrap();
    m.add_resource(&c, 0, "/img/rw.qcow2", &[], 0).unwrap();
    let e = m.check_disk_policy(&c).unwrap_err().to_string();
    assert!(e.contains("no lease covers them"), "{e}");
    let c2 = cfg("disk_leases = false\n");
    assert!(
        m.check_disk_policy(&c2).is_ok(),
        "the domain lease covers them"
    );
}

#[test]
fn unprotected_without_daemon_status() {
    let dir = std::env::temp_dir().join(format!("vmlease-plugin-{}", crate::process::random_u64()));
    let c = cfg(&format!("state_dir = \"{}\"\n", dir.display()));
    let e = protected_status(&c).unwrap_err().to_string();
    assert!(e.contains("vmlease-watchdog daemon is not running"), "{e}");
    let none = crate::config::parse("", "t").unwrap();
    assert!(protected_status(&none)
        .unwrap_err()
        .to_string()
        .contains("host_id is not set"));
}

#[test]
fn a_domain_with_nothing_to_lease_needs_allow_unleased_domains() {
    let c = cfg("domain_lease = false\n");
    let mut m = Manager::new(0, &params([4; 16], "rbd", 7), 0).unwrap();
    // An RBD disk never reaches the plugin; a read-only one takes no lease.
    m.add_resource(&c, 0, "/img/seed.iso", &[], RESOURCE_READONLY)
        .unwrap();
    let e = m.check_something_leased(&c).unwrap_err().to_string();
    assert!(
        e.contains("domain 'rbd' would run with no lease") && e.contains("allow_unleased_domains"),
        "{e}"
    );
    assert!(m
        .check_something_leased(&cfg(
            "domain_lease = false\nallow_unleased_domains = true\n"
        ))
        .is_ok());
    assert!(
        m.check_something_leased(&cfg("")).is_ok(),
        "the domain lease"
    );
    assert!(cfg("domain_lease = false\n")
        .warnings()
        .iter()
        .any(|w| w.contains("domain_lease = false")));
}
