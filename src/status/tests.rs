use super::*;
use crate::config::Timing;
use crate::hosts::{HostRecord, SLOT_SIZE};

fn rec(counter: u64) -> HostRecord {
    HostRecord {
        host_id: 1,
        host_name: "a b".into(),
        boot_id: "boot".into(),
        incarnation: 3,
        counter,
        state: HostState::Live,
        timing: Timing::TEST,
        unsafe_no_watchdog: false,
        mono_ms: 0,
        wall: 0,
    }
}

fn table(counter: Option<u64>) -> Vec<u8> {
    let mut t = vec![0u8; 2 * SLOT_SIZE];
    if let Some(c) = counter {
        t[..SLOT_SIZE].copy_from_slice(&rec(c).encode());
    }
    t
}

fn status(obs: &Observer, written: u64) -> Status {
    Status {
        daemon_pid: 1,
        host_id: 2,
        boot_id: "b".into(),
        incarnation: 1,
        written_ms: written,
        last_renewal_ms: written,
        state: HostState::Live,
        reason: String::new(),
        unsafe_no_watchdog: false,
        lockspace_dir: crate::config::DEFAULT_LOCKSPACE.into(),
        lockspace_uuid: "0b7c5a9e-7f6e-4b1a-9d2c-3e4f5a6b7c8d".into(),
        allow_local_lockspace: true,
        local_lockspace: "/x is on tmpfs".into(),
        observing_since_ms: obs.since_ms,
        renew_interval_ms: 200,
        renew_fail_timeout_ms: 1500,
        host_dead_timeout_ms: 4000,
        networks: vec![NetView {
            name: "management".into(),
            state: "down".into(),
            detail: "0/1 probes up".into(),
        }],
        peers: obs.peers(),
    }
}

#[test]
fn observer_tracks_changes_on_local_clock() {
    let mut obs = Observer::new(100);
    let t1 = table(Some(1));
    obs.update(100, &t1, &crate::hosts::decode_table(&t1));
    obs.update(500, &t1, &crate::hosts::decode_table(&t1));
    assert_eq!(obs.get(1).unwrap().last_change_ms, 100);
    let t2 = table(Some(2));
    obs.update(700, &t2, &crate::hosts::decode_table(&t2));
    assert_eq!(obs.get(1).unwrap().last_change_ms, 700);
    assert!(obs.get(2).is_none(), "empty slots are not listed");
    let st = status(&obs, 1000);
    assert_eq!(st.observed_unchanged_ms(1, &t2[..SLOT_SIZE]), Some(300));
    assert_eq!(st.observed_unchanged_ms(1, &t1[..SLOT_SIZE]), None);
    // An empty, never-listed slot: unchanged since observation began.
    assert_eq!(st.observed_unchanged_ms(2, &[0u8; SLOT_SIZE]), Some(900));
}

#[test]
fn encode_decode_roundtrip() {
    let mut obs = Observer::new(5);
    let t = table(Some(9));
    obs.update(5, &t, &crate::hosts::decode_table(&t));
    let st = status(&obs, 10);
    assert_eq!(Status::decode(&st.encode()).unwrap(), st);
}

#[test]
fn protection_check_reasons() {
    let cfg = crate::config::parse(
        "host_id = 2\nrenew_interval = 0.2\nrenew_fail_timeout = 1.5\nkill_timeout = 0.5\nwatchdog_timeout = 1\n",
        "t",
    )
    .unwrap();
    let obs = Observer::new(0);
    let st = status(&obs, 10_000);
    assert!(st.check_protected(&cfg, "b", 10_100, true).is_ok());
    assert!(st
        .check_protected(&cfg, "b", 10_100, false)
        .unwrap_err()
        .contains("not running"));
    assert!(st
        .check_protected(&cfg, "other", 10_100, true)
        .unwrap_err()
        .contains("another boot"));
    assert!(st
        .check_protected(&cfg, "b", 20_000, true)
        .unwrap_err()
        .contains("not reported"));
    let e = st.check_protected(&cfg, "b", 5_000, true).unwrap_err();
    assert!(e.contains("in the future"), "{e}");
    let mut old = st.clone();
    old.last_renewal_ms = 9_000;
    assert!(old
        .check_protected(&cfg, "b", 10_000, true)
        .unwrap_err()
        .contains("last renewed"));
    let mut fenced = st.clone();
    fenced.state = HostState::FencedClean;
    fenced.reason = "storage lost".into();
    let e = fenced.check_protected(&cfg, "b", 10_000, true).unwrap_err();
    assert!(e.contains("fenced-clean: storage lost"), "{e}");
}

#[test]
fn numbers_out_of_range_are_errors_not_wrapped() {
    let obs = Observer::new(0);
    let good = String::from_utf8(status(&obs, 10).encode()).unwrap();
    let body = &good[..good.rfind("crc=").unwrap()];
    for (from, to) in [
        ("host_id=2\n", "host_id=65538\n"),
        ("daemon_pid=1\n", "daemon_pid=4294967297\n"),
        (
            "host_id=2\n",
            "host_id=2\npeer=65537 00000000 0 record - - 0 live 0\n",
        ),
    ] {
        let text = body.replace(from, to);
        let data = format!("{text}crc={:08x}\n", crc32c(text.as_bytes()));
        let r = Status::decode(data.as_bytes());
        assert!(r.is_err(), "{to:?} decoded as {r:?}");
    }
}

#[test]
fn protection_needs_the_daemon_in_the_configured_lockspace() {
    let cfg = crate::config::parse(
        "host_id = 2\nrenew_interval = 0.2\nrenew_fail_timeout = 1.5\nkill_timeout = 0.5\nwatchdog_timeout = 1\n",
        "/etc/libvirt/qemu-vmlease.conf",
    )
    .unwrap();
    let obs = Observer::new(0);
    let st = status(&obs, 10_000);
    assert!(st.check_protected(&cfg, "b", 10_100, true).is_ok());
    // Waiting for its lockspace: the reason is the refusal.
    let mut waiting = st.clone();
    waiting.lockspace_uuid.clear();
    waiting.last_renewal_ms = 0;
    waiting.reason = "waiting for lockspace mount: /x is on ext4".into();
    let e = waiting
        .check_protected(&cfg, "b", 10_100, true)
        .unwrap_err();
    assert_eq!(
        e,
        "the watchdog daemon is waiting for lockspace mount: /x is on ext4"
    );
    // A status without lockspace (an older daemon).
    let mut old = waiting.clone();
    old.reason.clear();
    let e = old.check_protected(&cfg, "b", 10_100, true).unwrap_err();
    assert!(e.contains("does not say which lockspace"), "{e}");
    // The lockspace this process opens must be the daemon's (UUID),
    // whatever path each of them reaches it by.
    let ls = |uuid: Option<&str>| Lockspace {
        dir: crate::config::DEFAULT_LOCKSPACE.into(),
        max_hosts: 4,
        uuid: uuid.map(str::to_string),
        rados: None,
    };
    assert!(st
        .check_same_lockspace(&ls(Some("0b7c5a9e-7f6e-4b1a-9d2c-3e4f5a6b7c8d")))
        .is_ok());
    for other in [Some("11111111-2222-4333-8444-555555555555"), None] {
        let e = st.check_same_lockspace(&ls(other)).unwrap_err();
        assert!(
            e.contains("not the same lockspace")
                && e.contains(other.unwrap_or("(none)"))
                && e.contains("0b7c5a9e-7f6e-4b1a-9d2c-3e4f5a6b7c8d")
                && e.contains("restart libvirtd"),
            "{e}"
        );
    }
}

#[test]
fn a_status_without_lockspace_fields_decodes() {
    let obs = Observer::new(0);
    let st = status(&obs, 10);
    let text = String::from_utf8(st.encode()).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| {
            !l.starts_with("lockspace_") && !l.contains("local_lockspace") && !l.starts_with("crc=")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let crc = crate::checksum::crc32c(kept.as_bytes());
    let old = Status::decode(format!("{kept}crc={crc:08x}\n").as_bytes()).unwrap();
    assert!(old.lockspace_uuid.is_empty() && !old.allow_local_lockspace);
}
