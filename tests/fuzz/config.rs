//! The config file (src/config): TOML written by an operator, read by the
//! plugin inside libvirtd (a failing drvInit takes libvirt's QEMU driver
//! down), the daemon and the CLI.

use proptest::prelude::*;
use vmlease::config;
use vmlease::hosts::{HostRecord, HostState, SLOT_SIZE};

use crate::runner::{bounded, fuzz};

const KEYS: &[&str] = &[
    "host_id",
    "host_name",
    "lockspace_dir",
    "state_dir",
    "renew_interval",
    "renew_fail_timeout",
    "kill_timeout",
    "watchdog_timeout",
    "host_dead_timeout",
    "io_timeout",
    "lock_timeout",
    "domain_lease",
    "disk_leases",
    "require_lease_for_disks",
    "unsafe_no_watchdog",
    "watchdog_device",
    "reset_action",
    "reset_record_file",
    "probes",
    "min_up",
    "timeout",
    "probe_timeout",
    "policy",
    "type",
    "target",
    "interface",
    "no_such_key",
];

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0u32..100_000).prop_map(|n| n.to_string()),
        prop_oneof![
            Just("0"),
            Just("-1"),
            Just("2001"),
            Just("65537"),
            Just("9223372036854775807"),
            Just("1e308"),
            Just("-0.0"),
            Just("0.0001"),
            Just("nan"),
            Just("inf"),
            Just("86400"),
            Just("86400.0001"),
            Just("true"),
            Just("false"),
            Just("[]"),
            Just("[1, 2]"),
            Just("{}"),
            Just("\"\""),
            Just("\"record\""),
            Just("\"sysrq\""),
            Just("\"fence\""),
            Just("\"report\""),
            Just("\"tcp\""),
            Just("\"icmp\""),
            Just("\"carrier\""),
            Just("\"127.0.0.1:22\""),
            Just("\"/tmp/x\""),
            Just("\"relative\""),
            Just("\"\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\""),
            Just("\"\\u0000\""),
            Just("'a\\b'"),
            Just("\"\"\"multi\nline\"\"\""),
        ]
        .prop_map(str::to_string),
        (0.0f64..200.0).prop_map(|f| f.to_string()),
        "\"[ -!#-\\[\\]-~]{0,70}\"",
        any::<String>().prop_map(|s| format!("{s:?}")),
    ]
}

/// A config file near the real ones: known keys (and a wrong one) with
/// values of every type, network sections, probe arrays, garbage lines.
pub fn config_text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        4 => (prop::sample::select(KEYS), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => prop::sample::select(&[
            "[storage]",
            "[management]",
            "[service]",
            "[[storage.probes]]",
            "[[management.probes]]",
            "[[service.probes]]",
            "[storage.probes]",
            "[nope]",
            "management.policy = \"fence\"",
            "storage = 1",
            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
            "x = [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]",
            "",
            "# comment",
        ][..])
        .prop_map(str::to_string),
        1 => "[ -~]{0,40}",
    ];
    (prop::collection::vec(line, 0..14), any::<bool>()).prop_map(|(v, base)| {
        // Half of them start from a valid file, so that most lines
        // reach validation.
        let head = if base {
            "host_id = 3\nlockspace_dir = \"/var/lib/vmlease/lockspace\"\n"
        } else {
            ""
        };
        format!("{head}{}", v.join("\n"))
    })
}

#[test]
fn config_random() {
    let accepted = std::cell::Cell::new(0u32);
    fuzz(
        "config_random",
        3000,
        prop_oneof![config_text(), any::<String>()],
        |text| {
            let r = bounded("config::parse", text.len(), || {
                config::parse(&text, "fuzz.conf")
            })?;
            match r {
                Err(e) => {
                    let e = e.to_string();
                    prop_assert!(
                        e.contains("fuzz.conf"),
                        "error without the file name: {}",
                        e
                    );
                    // A line number, when given, is one of the file's.
                    if let Some(n) = e
                        .split("fuzz.conf:")
                        .nth(1)
                        .and_then(|r| r.split(':').next())
                        .and_then(|n| n.parse::<usize>().ok())
                    {
                        prop_assert!(
                            n >= 1 && n <= text.lines().count() + 1,
                            "line {} in: {}",
                            n,
                            e
                        );
                    }
                }
                Ok(cfg) => {
                    accepted.set(accepted.get() + 1);
                    // What the config accepts, the rest of vmlease can use:
                    // the safety inequality holds and the host's liveness
                    // record fits its slot with every number at its largest.
                    prop_assert!(cfg.timing.check().is_ok(), "{:?}", cfg.timing);
                    prop_assert!(cfg.host_id.is_none_or(|id| (1..=2000).contains(&id)));
                    let r = HostRecord {
                        host_id: cfg.host_id.unwrap_or(1),
                        host_name: cfg.host_name.clone().unwrap_or_else(|| "h".into()),
                        boot_id: "0b6f5b8e-8f2c-4b59-9d7c-7a1e3a0d9c11".into(),
                        incarnation: u64::MAX,
                        counter: u64::MAX,
                        state: HostState::ServiceIsolated,
                        timing: cfg.timing,
                        unsafe_no_watchdog: cfg.unsafe_no_watchdog,
                        mono_ms: u64::MAX,
                        wall: u64::MAX,
                    };
                    let data = std::panic::catch_unwind(|| r.encode()).map_err(|_| {
                        TestCaseError::fail(format!(
                            "accepted host_name {:?} does not fit the slot",
                            r.host_name
                        ))
                    })?;
                    prop_assert_eq!(data.len(), SLOT_SIZE);
                }
            }
            Ok(())
        },
    );
    // Not only errors: the properties of accepted files were checked.
    assert!(accepted.get() > 0, "no generated config was accepted");
    eprintln!("fuzz config_random: {} configs accepted", accepted.get());
}
