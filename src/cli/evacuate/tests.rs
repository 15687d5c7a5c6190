//! The can-evacuate rule on fabricated tables, records and views: every
//! branch of the rule, with the exit code and the time until safe.

use super::*;
use crate::config::{self, Timing};
use crate::hosts::{self, HostRecord, HostState, SLOT_SIZE};
use crate::lease::Mode;
use crate::lockspace::Lockspace;
use crate::process::{self, ProcId};
use crate::status::{Observer, Status};

const ME: u16 = 2;
const OTHER: u16 = 1;
// The other host's D; this host's is 4 s.
const D_OTHER: u64 = 10_000;

fn record(id: u16, counter: u64, state: HostState, boot: &str) -> HostRecord {
    HostRecord {
        host_id: id,
        host_name: format!("host-{id}"),
        boot_id: boot.into(),
        incarnation: 7,
        counter,
        state,
        timing: Timing {
            renew_interval: 200,
            renew_fail_timeout: 1500,
            kill_timeout: 500,
            watchdog_timeout: 1000,
            host_dead_timeout: if id == OTHER { D_OTHER } else { 4000 },
            host_dead_derived: false,
        },
        unsafe_no_watchdog: false,
        // Long after the holders started: fenced-clean vouches for them.
        mono_ms: 1_000_000,
        wall: 0,
    }
}

fn my_boot() -> String {
    process::boot_id().unwrap()
}

/// A 4-slot table with this host live and the other host as given.
fn table(other: Option<HostRecord>, read_at: u64) -> Table {
    let mut raw = vec![0u8; 4 * SLOT_SIZE];
    let me = record(ME, 5, HostState::Live, &my_boot());
    raw[SLOT_SIZE..2 * SLOT_SIZE].copy_from_slice(&me.encode());
    if let Some(r) = other {
        raw[..SLOT_SIZE].copy_from_slice(&r.encode());
    }
    Table {
        slots: hosts::decode_table(&raw),
        raw,
        read_at,
    }
}

/// This host's daemon view: it has seen `seen` since `since` and wrote
/// its status at `written`.
fn view(seen: &Table, since: u64, written: u64) -> Status {
    let mut obs = Observer::new(since);
    obs.update(since, &seen.raw, &seen.slots);
    Status {
        daemon_pid: std::process::id(),
        host_id: ME,
        boot_id: my_boot(),
        incarnation: 1,
        written_ms: written,
        last_renewal_ms: written,
        state: HostState::Live,
        reason: String::new(),
        unsafe_no_watchdog: true,
        lockspace_dir: String::new(),
        lockspace_uuid: String::new(),
        allow_local_lockspace: false,
        local_lockspace: String::new(),
        observing_since_ms: since,
        renew_interval_ms: 200,
        renew_fail_timeout_ms: 1500,
        host_dead_timeout_ms: 4000,
        networks: Vec::new(),
        peers: obs.peers(),
    }
}

fn ctx(view: Option<Status>) -> Ctx {
    ctx_with(view, "")
}

fn ctx_with(view: Option<Status>, extra: &str) -> Ctx {
    let cfg = config::parse(
        &format!(
            "host_id = 2\nhost_name = \"host-2\"\nrenew_interval = 0.2\nrenew_fail_timeout = 1.5\n\
             kill_timeout = 0.5\nwatchdog_timeout = 1\nhost_dead_timeout = 4\n{extra}"
        ),
        "test.conf",
    )
    .unwrap();
    Ctx {
        cfg,
        ls: Lockspace {
            dir: "/nonexistent".into(),
            max_hosts: 4,
            uuid: None,
            rados: None,
        },
        view_note: view.is_none().then(|| "no watchdog here".into()),
        view,
        boot_id: my_boot(),
    }
}

fn holder(host: u16, boot: &str, p: ProcId) -> Holder {
    Holder {
        host_id: host,
        boot_id: boot.into(),
        pid: p.pid,
        pid_start: p.start,
        domain_uuid: "c7a5fdbd-edaf-9455-926a-d65c16db1809".into(),
        domain_name: "web".into(),
    }
}

fn held(h: Holder) -> Vec<(String, Result<LeaseRecord, Error>)> {
    let key = "domain-c7a5fdbd-edaf-9455-926a-d65c16db1809".to_string();
    let r = LeaseRecord {
        key: key.clone(),
        resource: "c7a5fdbd-edaf-9455-926a-d65c16db1809".into(),
        version: 3,
        mode: Some(Mode::Exclusive),
        holders: vec![h],
    };
    vec![(key, Ok(r))]
}

fn far() -> ProcId {
    ProcId {
        pid: 4242,
        start: 1,
    }
}

#[test]
fn a_renewing_holder_is_not_safe_and_gives_no_time() {
    let before = table(Some(record(OTHER, 1, HostState::Live, "b1")), 1000);
    let now = table(Some(record(OTHER, 2, HostState::Live, "b1")), 5000);
    let c = ctx(Some(view(&before, 0, 4900)));
    let a = decide(&c, &now, &held(holder(OTHER, "b1", far())), OTHER);
    assert_eq!(a.code, exit::NO, "{a:?}");
    assert!(
        a.answer
            .starts_with("not yet: 1 of 1 lease(s) of host 1 (host-1) are held"),
        "{}",
        a.answer
    );
    assert!(a.answer.contains("its host is alive"), "{}", a.answer);
    assert_eq!(a.safe_in_ms, None);
}

#[test]
fn a_silent_holder_becomes_safe_after_its_dead_timeout() {
    let t0 = table(Some(record(OTHER, 1, HostState::Live, "b1")), 0);
    // The daemon last wrote at 3 s; the CLI reads the same bytes at 7 s:
    // silent for 7 s of the other host's D (10 s, larger than ours).
    let c = ctx(Some(view(&t0, 0, 3000)));
    let at7 = table(Some(record(OTHER, 1, HostState::Live, "b1")), 7000);
    let a = decide(&c, &at7, &held(holder(OTHER, "b1", far())), OTHER);
    assert_eq!((a.code, a.safe_in_ms), (exit::NO, Some(3000)), "{a:?}");
    let at10 = table(Some(record(OTHER, 1, HostState::Live, "b1")), D_OTHER);
    let a = decide(&c, &at10, &held(holder(OTHER, "b1", far())), OTHER);
    assert_eq!(a.code, exit::OK, "{a:?}");
    assert!(
        a.answer.contains("observed unchanged for 10s"),
        "{}",
        a.answer
    );
    // Silent for less than its renew_fail_timeout: it is renewing.
    let c = ctx(Some(view(&t0, 0, 500)));
    let at1 = table(Some(record(OTHER, 1, HostState::Live, "b1")), 1000);
    let a = decide(&c, &at1, &held(holder(OTHER, "b1", far())), OTHER);
    assert_eq!((a.code, a.safe_in_ms), (exit::NO, None), "{a:?}");
}

#[test]
fn fenced_clean_and_reboot_need_no_view() {
    let c = ctx(None);
    let t = table(Some(record(OTHER, 9, HostState::FencedClean, "b1")), 1);
    let a = decide(&c, &t, &held(holder(OTHER, "b1", far())), OTHER);
    assert_eq!(a.code, exit::OK, "{a:?}");
    assert!(a.answer.contains("fenced-clean"), "{}", a.answer);
    let t = table(Some(record(OTHER, 9, HostState::Live, "b2")), 1);
    let a = decide(&c, &t, &held(holder(OTHER, "b1", far())), OTHER);
    assert_eq!(a.code, exit::OK, "{a:?}");
    assert!(a.answer.contains("rebooted"), "{}", a.answer);
    // Anything else needs the view: cannot tell.
    let t = table(Some(record(OTHER, 9, HostState::Live, "b1")), 1);
    let a = decide(&c, &t, &held(holder(OTHER, "b1", far())), OTHER);
    assert_eq!(a.code, exit::UNKNOWN, "{a:?}");
    assert!(
        a.answer.starts_with("cannot tell: no watchdog here"),
        "{}",
        a.answer
    );
}

#[test]
fn a_corrupt_record_means_cannot_tell() {
    let t = table(Some(record(OTHER, 9, HostState::FencedClean, "b1")), 1);
    let mut recs = held(holder(OTHER, "b1", far()));
    recs.push((
        "disk-x".into(),
        Err(Error::Corrupt {
            path: "/ls/leases/disk-x".into(),
            reason: "bad checksum".into(),
        }),
    ));
    let a = decide(&ctx(None), &t, &recs, OTHER);
    assert_eq!(a.code, exit::UNKNOWN, "{a:?}");
    assert!(a.answer.contains("disk-x"), "{}", a.answer);
}

#[test]
fn without_leases_only_a_host_known_to_be_down_is_safe() {
    let live = table(Some(record(OTHER, 1, HostState::Live, "b1")), 0);
    let c = ctx(Some(view(&live, 0, 100)));
    let a = decide(
        &c,
        &table(Some(record(OTHER, 2, HostState::Live, "b1")), 200),
        &[],
        OTHER,
    );
    assert_eq!(a.code, exit::NO, "{a:?}");
    assert!(
        a.answer
            .starts_with("no: host 1 (host-1) holds no lease but is renewing"),
        "{}",
        a.answer
    );
    let iso = table(Some(record(OTHER, 2, HostState::MgmtIsolated, "b1")), 200);
    let a = decide(&c, &iso, &[], OTHER);
    assert!(a.answer.contains("(state mgmt-isolated)"), "{}", a.answer);
    assert_eq!(
        a.host_verdict.unwrap().text(),
        "mgmt-isolated: its VMs still run; do not evacuate"
    );
    let a = decide(
        &c,
        &table(Some(record(OTHER, 1, HostState::Live, "b1")), 5000),
        &[],
        OTHER,
    );
    assert_eq!((a.code, a.safe_in_ms), (exit::NO, Some(5000)), "{a:?}");
    let a = decide(
        &c,
        &table(Some(record(OTHER, 1, HostState::Live, "b1")), D_OTHER),
        &[],
        OTHER,
    );
    assert_eq!(a.code, exit::OK, "{a:?}");
    let clean = table(Some(record(OTHER, 3, HostState::FencedClean, "b1")), 200);
    assert_eq!(decide(&ctx(None), &clean, &[], OTHER).code, exit::OK);
    let a = decide(
        &ctx(None),
        &table(Some(record(OTHER, 3, HostState::Live, "b1")), 200),
        &[],
        OTHER,
    );
    assert_eq!(a.code, exit::UNKNOWN, "{a:?}");
    // A slot nobody ever wrote: nothing is known about that host.
    let a = decide(&c, &table(None, 200), &[], OTHER);
    assert_eq!(a.code, exit::USAGE, "{a:?}");
}

#[test]
fn this_host_is_safe_only_for_dead_qemus() {
    let t = table(None, 100);
    let c = ctx(Some(view(&t, 0, 100)));
    let alive = ProcId::of(std::process::id()).unwrap();
    let a = decide(&c, &t, &held(holder(ME, &my_boot(), alive)), ME);
    assert_eq!(a.code, exit::NO, "{a:?}");
    assert!(a.answer.contains("is alive on this host"), "{}", a.answer);
    let dead = ProcId {
        pid: alive.pid,
        start: alive.start + 1,
    };
    let a = decide(&c, &t, &held(holder(ME, &my_boot(), dead)), ME);
    assert_eq!(a.code, exit::OK, "{a:?}");
    let a = decide(&c, &t, &[], ME);
    assert_eq!(a.code, exit::NO, "{a:?}");
    assert!(a.answer.contains("is this host"), "{}", a.answer);
}

/// A host without a hardware watchdog: silent for any time, nothing
/// proves that its QEMUs stopped (a hung daemon resets nothing).
#[test]
fn a_silent_host_without_a_watchdog_is_never_safe() {
    let unsafe_rec = |counter| {
        let mut r = record(OTHER, counter, HostState::Live, "b1");
        r.unsafe_no_watchdog = true;
        r
    };
    let t0 = table(Some(unsafe_rec(1)), 0);
    let c = ctx(Some(view(&t0, 0, 3000)));
    let late = table(Some(unsafe_rec(1)), 10 * D_OTHER);
    let a = decide(&c, &late, &held(holder(OTHER, "b1", far())), OTHER);
    assert_eq!((a.code, a.safe_in_ms), (exit::NO, None), "{a:?}");
    assert!(a.answer.starts_with("no: "), "{}", a.answer);
    assert!(a.answer.contains("unsafe_no_watchdog"), "{}", a.answer);
    let a = decide(&c, &late, &[], OTHER);
    assert_eq!((a.code, a.safe_in_ms), (exit::NO, None), "{a:?}");
    assert!(a.answer.starts_with("no: "), "{}", a.answer);
    assert!(a.answer.contains("unsafe_no_watchdog"), "{}", a.answer);
    // fenced-clean is still proof.
    let mut clean = unsafe_rec(2);
    clean.state = HostState::FencedClean;
    let t = table(Some(clean), 10 * D_OTHER);
    let a = decide(&c, &t, &held(holder(OTHER, "b1", far())), OTHER);
    assert_eq!(a.code, exit::OK, "{a:?}");
}

/// Tests and demos opt in to trusting such hosts' silence after D.
#[test]
fn trust_unsafe_peers_applies_the_dead_timeout_to_them() {
    let mut r = record(OTHER, 1, HostState::Live, "b1");
    r.unsafe_no_watchdog = true;
    let t0 = table(Some(r.clone()), 0);
    let c = ctx_with(Some(view(&t0, 0, 3000)), "trust_unsafe_peers = true\n");
    let at10 = table(Some(r), D_OTHER);
    let a = decide(&c, &at10, &held(holder(OTHER, "b1", far())), OTHER);
    assert_eq!(a.code, exit::OK, "{a:?}");
    assert!(a.answer.contains("observed unchanged"), "{}", a.answer);
    assert_eq!(decide(&c, &at10, &[], OTHER).code, exit::OK);
}
