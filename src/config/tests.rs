use std::path::Path;

use super::*;

fn err(text: &str) -> String {
    parse(text, "test.conf").unwrap_err().to_string()
}

#[test]
fn empty_file_gives_defaults() {
    let c = parse("", "x").unwrap();
    assert_eq!(c.host_id, None);
    assert_eq!(c.lockspace_dir, PathBuf::from(DEFAULT_LOCKSPACE));
    assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    assert_eq!(c.timing.renew_interval, 2000);
    assert_eq!(c.timing.renew_fail_timeout, 20000);
    assert!(c.timing.host_dead_derived);
    assert!(c.timing.check().is_ok());
    assert!(c.domain_lease && c.disk_leases && c.require_lease_for_disks);
    assert!(!c.unsafe_no_watchdog);
    assert_eq!(c.reset_action, ResetAction::Sysrq);
    assert_eq!(c.management.policy, Policy::Report);
    assert_eq!(c.storage.policy, Policy::Fence);
}

#[test]
fn unknown_key_names_key_and_line() {
    let e = err("host_id = 1\n\nrenew_intervall = 2\n");
    assert!(e.contains("test.conf:3"), "{e}");
    assert!(e.contains("renew_intervall"), "{e}");
}

#[test]
fn unknown_key_in_a_section() {
    let e = err("[management]\ntimeout = 5\npolicyy = \"fence\"\n");
    assert!(e.contains("test.conf:3") && e.contains("policyy"), "{e}");
}

#[test]
fn bad_type_names_line() {
    let e = err("host_id = \"one\"\n");
    assert!(e.contains("test.conf:1"), "{e}");
    let e = err("host_id = 3\ndomain_lease = 1\n");
    assert!(e.contains("test.conf:2"), "{e}");
}

#[test]
fn out_of_range_values() {
    let e = err("\nhost_id = 2001\n");
    assert!(
        e.contains("test.conf:2: host_id: must be between 1 and 2000"),
        "{e}"
    );
    let e = err("host_id = 0\n");
    assert!(e.contains("host_id"), "{e}");
    let e = err("renew_interval = -1\n");
    assert!(e.contains("test.conf:1: renew_interval"), "{e}");
    let e = err("lockspace_dir = \"relative/dir\"\n");
    assert!(e.contains("lockspace_dir: must be an absolute path"), "{e}");
}

#[test]
fn unsafe_timing_is_refused_with_timeline() {
    let e = err("renew_interval = 2\nrenew_fail_timeout = 20\nkill_timeout = 10\nwatchdog_timeout = 15\nhost_dead_timeout = 39\n");
    assert!(
        e.contains("test.conf:5: host_dead_timeout: unsafe timing"),
        "{e}"
    );
    assert!(e.contains("latest possible write"), "{e}");
    // Just above the floor is accepted.
    let c = parse(
        "renew_interval = 2\nrenew_fail_timeout = 20\nkill_timeout = 10\nwatchdog_timeout = 15\nhost_dead_timeout = 39.001\n",
        "x",
    )
    .unwrap();
    assert_eq!(c.timing.host_dead_timeout, 39001);
}

#[test]
fn fractional_seconds_for_tests() {
    let c = parse(
        "host_id = 7\nrenew_interval = 0.2\nrenew_fail_timeout = 1.5\nkill_timeout = 0.5\nwatchdog_timeout = 1\n",
        "x",
    )
    .unwrap();
    assert_eq!(c.host_id, Some(7));
    assert_eq!(c.timing.renew_interval, 200);
    // derived: max(1.5+0.5, 1.5+1) + 0.4 + 0.2 = 3.1 -> 4 s
    assert_eq!(c.timing.host_dead_timeout, 4000);
}

#[test]
fn probes_parse_and_validate() {
    let c = parse(
        r#"
[management]
probes = [ { type = "tcp", target = "192.0.2.1:22" }, { type = "icmp", target = "192.0.2.2" }, { type = "carrier", interface = "eth1" } ]
min_up = 2
timeout = 5
policy = "fence"
"#,
        "x",
    )
    .unwrap();
    assert_eq!(c.management.probes.len(), 3);
    assert_eq!(c.management.min_up, 2);
    assert_eq!(c.management.timeout, 5000);
    assert_eq!(c.management.policy, Policy::Fence);

    let e = err("[management]\nprobes = [ { type = \"tcp\", target = \"nohost\" } ]\n");
    assert!(
        e.contains("test.conf:2: management.probes: tcp target must be HOST:PORT"),
        "{e}"
    );
    let e = err("[service]\nprobes = [ { type = \"udp\", target = \"a:1\" } ]\n");
    assert!(e.contains("unknown probe type 'udp'"), "{e}");
    let e = err("[storage]\npolicy = \"report\"\n");
    assert!(e.contains("storage loss always fences"), "{e}");
    let e = err(
        "[management]\nprobes = [ { type = \"carrier\", interface = \"eth0\" } ]\nmin_up = 2\n",
    );
    assert!(e.contains("test.conf:3: management.min_up"), "{e}");
}

#[test]
fn reset_action_record_needs_a_file() {
    let e = err("reset_action = \"record\"\n");
    assert!(e.contains("reset_record_file"), "{e}");
    let c = parse(
        "reset_action = \"record\"\nreset_record_file = \"/tmp/r\"\n",
        "x",
    )
    .unwrap();
    assert_eq!(c.reset_action, ResetAction::Record("/tmp/r".into()));
    assert!(c.warnings().iter().any(|w| w.contains("tests and demos")));
}

#[test]
fn io_timeout_must_be_below_fail_timeout() {
    let e = err("renew_interval = 1\nrenew_fail_timeout = 4\nio_timeout = 4\n");
    assert!(e.contains("test.conf:3: io_timeout"), "{e}");
}

#[test]
fn allow_local_lockspace_is_off_by_default_strict_and_loud() {
    let c = parse("", "x").unwrap();
    assert!(!c.allow_local_lockspace);
    assert!(!c
        .warnings()
        .iter()
        .any(|w| w.contains("allow_local_lockspace")));
    let c = parse("allow_local_lockspace = true\n", "x").unwrap();
    assert!(c.allow_local_lockspace);
    assert!(
        c.warnings()
            .iter()
            .any(|w| w.contains("allow_local_lockspace = true")
                && w.contains("tests and demos only")),
        "{:?}",
        c.warnings()
    );
    let e = err("host_id = 1\nallow_local_lockspace = \"yes\"\n");
    assert!(
        e.contains("test.conf:2") && e.contains("allow_local_lockspace"),
        "{e}"
    );
    let e = err("allow_local_lockspaces = true\n");
    assert!(
        e.contains("test.conf:1") && e.contains("allow_local_lockspaces"),
        "{e}"
    );
}

#[test]
fn shipped_example_config_loads() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/qemu-vmlease.conf");
    let c = load(Path::new(path)).unwrap();
    assert!(c.timing.check().is_ok());
    assert!(
        !c.unsafe_no_watchdog,
        "the packaged default must use the hardware watchdog"
    );
    assert_eq!(c.reset_action, ResetAction::Sysrq);
    assert!(
        !c.allow_local_lockspace,
        "the packaged default must refuse a local lockspace"
    );
    // Every key is documented there (commented out), this one included.
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.contains("\n#allow_local_lockspace = false\n"),
        "{text}"
    );
}

#[test]
fn metrics_dir_is_optional_and_must_be_absolute() {
    assert_eq!(parse("", "t").unwrap().metrics_dir, None);
    let c = parse("metrics_dir = \"/var/lib/prometheus/node-exporter\"\n", "t").unwrap();
    assert_eq!(
        c.metrics_dir.as_deref(),
        Some(Path::new("/var/lib/prometheus/node-exporter"))
    );
    let e = parse("\nmetrics_dir = \"textfiles\"\n", "t")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("metrics_dir") && e.contains(":2") && e.contains("absolute"),
        "{e}"
    );
}

#[test]
fn missing_file_gives_defaults_without_host_id() {
    let c = load(Path::new("/nonexistent/vmlease.conf")).unwrap();
    assert_eq!(c.host_id, None);
    assert!(c
        .require_host_id()
        .unwrap_err()
        .to_string()
        .contains("host_id is not set"));
}

#[test]
fn liveness_rados_keys() {
    assert_eq!(parse("", "x").unwrap().liveness_rados, None);
    let c = parse("liveness_rados = true\n", "x").unwrap();
    assert_eq!(
        c.liveness_rados,
        Some(RadosSettings {
            conf: "/etc/ceph/ceph.conf".into(),
            client_id: "admin".into()
        })
    );
    let c = parse(
        "liveness_rados = true\nceph_conf = \"/srv/c.conf\"\nceph_client_id = \"vmlease.h1\"\n",
        "x",
    )
    .unwrap();
    let r = c.liveness_rados.unwrap();
    assert_eq!(
        (r.conf.to_str(), r.client_id.as_str()),
        (Some("/srv/c.conf"), "vmlease.h1")
    );
    let e = err("host_id = 1\nceph_client_id = \"admin\"\n");
    assert!(
        e.contains("test.conf:2") && e.contains("only used with liveness_rados = true"),
        "{e}"
    );
    let e = err("liveness_rados = true\nceph_client_id = \"client.admin\"\n");
    assert!(
        e.contains("ceph_client_id") && e.contains("without 'client.'"),
        "{e}"
    );
    let e = err("liveness_rados = true\nceph_conf = \"ceph.conf\"\n");
    assert!(e.contains("ceph_conf") && e.contains("absolute"), "{e}");
}
