use std::cell::RefCell;
use std::time::Duration;

use super::ceph::{parse_client_status, parse_osd_dump, parse_osd_status, Ceph, OsdMap};
use super::*;
use crate::config::Timing;
use crate::hosts::{HostRecord, HostState};
use crate::lease::LeaseRecord;

fn verdict() -> Verdict {
    Verdict {
        host_id: 1,
        host_name: "host-a.test".into(),
        boot_id: "boot-1".into(),
        incarnation: 7,
        counter: 40,
        slot_mono_ms: 50_000,
        addrs: vec!["192.0.2.1:0/0".into()],
        osdmap_epoch: 12,
        expire_s: 86_400,
        wall: 1_796_598_000,
        writer_host: 2,
        writer_name: "host-b.test".into(),
    }
}

fn record(counter: u64) -> HostRecord {
    HostRecord {
        host_id: 1,
        host_name: "host-a.test".into(),
        boot_id: "boot-1".into(),
        incarnation: 7,
        counter,
        state: HostState::Live,
        timing: Timing::TEST,
        unsafe_no_watchdog: false,
        mono_ms: 50_000,
        wall: 0,
    }
}

fn holder(pid_start: u64) -> Holder {
    Holder {
        host_id: 1,
        boot_id: "boot-1".into(),
        pid: 10,
        pid_start,
        domain_uuid: "u".into(),
        domain_name: "web".into(),
    }
}

#[test]
fn verdict_round_trips_and_damage_is_never_a_verdict() {
    let v = verdict();
    assert_eq!(Verdict::decode(&v.encode()).unwrap(), v);
    let mut bad = v.encode();
    let i = bad.iter().position(|&b| b == b'4').unwrap();
    bad[i] = b'5';
    assert!(matches!(decode_verdict(1, Some(&bad)), Found::Damaged(_)));
    assert!(matches!(
        decode_verdict(1, Some(&bad[..bad.len() / 2])),
        Found::Damaged(_)
    ));
    // A verdict for another host, in this host's file, is damage.
    assert!(matches!(
        decode_verdict(3, Some(&v.encode())),
        Found::Damaged(_)
    ));
    assert_eq!(decode_verdict(1, None), Found::None);
    assert!(v
        .describe()
        .contains("storage-fenced by host 2 (host-b.test) at 2026-"));
}

#[test]
fn utc_formats_known_instants() {
    assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
    assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
    assert_eq!(utc(1_796_598_000), "2026-12-06 23:00:00 UTC");
}

#[test]
fn rule5_frees_only_a_holder_of_the_fenced_boot_that_did_not_renew_since() {
    let v = verdict();
    let slot = record(40).encode();
    // QEMU started (tick 100 = 1 s) long before the last renewal (50 s).
    assert!(rule5(&holder(100), &slot, &v).is_ok());
    // Another boot of the holder.
    let mut h = holder(100);
    h.boot_id = "boot-0".into();
    assert!(rule5(&h, &slot, &v).is_err());
    // The host renewed after the verdict: stale (blocklist removed?).
    let e = rule5(&holder(100), &record(41).encode(), &v).unwrap_err();
    assert!(e.0.contains("stale"), "{e}");
    // A QEMU started after the last renewal the fencer saw.
    let e = rule5(&holder(5_000), &slot, &v).unwrap_err();
    assert!(e.0.contains("started after"), "{e}");
    // An unreadable slot.
    assert!(rule5(&holder(100), &[0xff; 512], &v).is_err());
}

/// A scripted cluster: `commit` false models a blocklist that is never
/// committed (the command "succeeds" but no map shows it).
struct Script {
    commit: bool,
    fail_add: bool,
    map: RefCell<OsdMap>,
    osd_lag: RefCell<u32>,
    calls: RefCell<Vec<String>>,
}

impl Script {
    fn new(commit: bool) -> Script {
        Script {
            commit,
            fail_add: false,
            map: RefCell::new(OsdMap {
                epoch: 5,
                blocklist: vec![],
                up_osds: vec![0, 1],
            }),
            osd_lag: RefCell::new(2),
            calls: RefCell::new(vec![]),
        }
    }
}

impl Ceph for Script {
    fn blocklist_add(&self, addr: &str, _expire_s: u64) -> std::result::Result<(), String> {
        self.calls.borrow_mut().push(format!("add {addr}"));
        if self.fail_add {
            return Err("connection refused".into());
        }
        if self.commit {
            let mut m = self.map.borrow_mut();
            m.epoch += 1;
            m.blocklist.push(addr.into());
        }
        Ok(())
    }
    fn blocklist_rm(&self, addr: &str) -> std::result::Result<(), String> {
        self.calls.borrow_mut().push(format!("rm {addr}"));
        Ok(())
    }
    fn osdmap(&self) -> std::result::Result<OsdMap, String> {
        Ok(self.map.borrow().clone())
    }
    fn osd_epoch(&self, _id: u32) -> std::result::Result<u64, String> {
        // The OSDs catch up after a few polls.
        let mut lag = self.osd_lag.borrow_mut();
        *lag = lag.saturating_sub(1);
        Ok(self.map.borrow().epoch - u64::from(*lag))
    }
    fn client_epoch(&self, _asok: &std::path::Path) -> std::result::Result<u64, String> {
        Ok(self.map.borrow().epoch)
    }
}

struct Ls {
    dir: std::path::PathBuf,
    ls: Lockspace,
}

impl Drop for Ls {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn lockspace(name: &str, addrs: &[&str]) -> Ls {
    let dir = std::env::temp_dir().join(format!(
        "vmlease-stfence-{name}-{}",
        crate::process::random_u64()
    ));
    Lockspace::init(&dir, 4).unwrap();
    let ls = Lockspace::open(&dir).unwrap();
    ls.write_host(&record(40)).unwrap();
    if !addrs.is_empty() {
        write_target(
            &dir,
            &Target {
                host_id: 1,
                boot_id: "boot-1".into(),
                addrs: addrs.iter().map(|s| s.to_string()).collect(),
            },
        )
        .unwrap();
    }
    Ls { dir, ls }
}

fn opts(silence: Option<u64>) -> FenceOpts {
    FenceOpts {
        expire_s: 3600,
        timeout: Duration::from_millis(400),
        client_asoks: vec!["/run/ceph/client.asok".into()],
        observed_silence_ms: silence,
        min_silence_ms: 1000,
        writer_host: 2,
        writer_name: "host-b.test".into(),
        wall: 1_796_598_000,
    }
}

#[test]
fn a_silent_fenceable_host_is_blocklisted_then_the_verdict_written() {
    let w = lockspace("ok", &["192.0.2.1", "2001:db8::1"]);
    let c = Script::new(true);
    let f = fence_host(&w.ls, &c, 1, &opts(Some(1500))).unwrap();
    assert_eq!(
        *c.calls.borrow(),
        vec!["add 192.0.2.1:0/0", "add [2001:db8::1]:0/0"]
    );
    assert_eq!(f.verdict.osdmap_epoch, 7);
    assert_eq!(f.verdict.counter, 40);
    assert_eq!(read_verdict(&w.dir, 1).unwrap(), Found::Valid(f.verdict));
}

#[test]
fn a_slow_host_or_one_not_observed_is_never_blocklisted() {
    let w = lockspace("slow", &["192.0.2.1"]);
    for silence in [Some(999), None] {
        let c = Script::new(true);
        let e = fence_host(&w.ls, &c, 1, &opts(silence)).unwrap_err();
        assert!(matches!(e, FenceError::Refused(_)), "{e}");
        assert!(c.calls.borrow().is_empty());
    }
    assert_eq!(read_verdict(&w.dir, 1).unwrap(), Found::None);
}

#[test]
fn a_host_without_addresses_or_with_a_local_disk_lease_is_not_fenceable() {
    let w = lockspace("noaddr", &[]);
    let c = Script::new(true);
    let e = fence_host(&w.ls, &c, 1, &opts(Some(5000))).unwrap_err();
    assert!(e.to_string().contains("not storage-fenceable"), "{e}");

    let w = lockspace("local", &["192.0.2.1"]);
    let path = w.dir.join("local.qcow2"); // a tmp directory: not Ceph
    let res = crate::resource::Resource::disk(path.to_str().unwrap(), false);
    let mut rec = LeaseRecord::free(&res.key(), &res.name);
    rec.holders.push(holder(100));
    rec.version = 1;
    rec.mode = Some(crate::lease::Mode::Exclusive);
    w.ls.write_lease(&rec, 1).unwrap();
    let e = fence_host(&w.ls, &c, 1, &opts(Some(5000))).unwrap_err();
    assert!(e.to_string().contains("not Ceph"), "{e}");
    assert!(c.calls.borrow().is_empty());
}

#[test]
fn a_blocklist_that_never_commits_writes_no_verdict() {
    let w = lockspace("nocommit", &["192.0.2.1"]);
    let c = Script::new(false);
    let e = fence_host(&w.ls, &c, 1, &opts(Some(5000))).unwrap_err();
    assert!(
        matches!(
            &e,
            FenceError::Failed {
                step: "osdmap commit",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(read_verdict(&w.dir, 1).unwrap(), Found::None);
    let mut c = Script::new(true);
    c.fail_add = true;
    let e = fence_host(&w.ls, &c, 1, &opts(Some(5000))).unwrap_err();
    assert!(e.to_string().contains("connection refused"), "{e}");
    assert_eq!(read_verdict(&w.dir, 1).unwrap(), Found::None);
}

#[test]
fn a_short_blocklist_lifetime_is_refused() {
    let w = lockspace("short", &["192.0.2.1"]);
    let c = Script::new(true);
    let mut o = opts(Some(5000));
    o.expire_s = 1; // Timing::TEST's D is a few seconds
    let e = fence_host(&w.ls, &c, 1, &o).unwrap_err();
    assert!(e.to_string().contains("lifetime"), "{e}");
}

use super::ceph::sample;

#[test]
fn osd_dump_json_of_pacific_and_later() {
    let m = parse_osd_dump(&sample("osd-dump.json")).unwrap();
    assert_eq!(m.epoch, 11);
    assert_eq!(m.blocklist, vec!["192.0.2.9:0/0"]);
    assert_eq!(m.up_osds, vec![0]);
    let m = parse_osd_dump(
        r#"{"epoch":8,"osds":[{"osd":0,"up":1},{"osd":1,"up":0}],
           "blocklist":{"192.0.2.77:0/0":"2026-12-07T23:10:43.895170+0000"}}"#,
    )
    .unwrap();
    assert_eq!(m.epoch, 8);
    assert_eq!(m.blocklist, vec!["192.0.2.77:0/0"]);
    assert_eq!(m.up_osds, vec![0]);
    let m = parse_osd_dump(
        r#"{"epoch":9,"osds":[],"blocklist":[{"addr":"192.0.2.7:0/0","until":"x"}]}"#,
    )
    .unwrap();
    assert_eq!(m.blocklist, vec!["192.0.2.7:0/0"]);
}

#[test]
fn osd_and_client_status_json() {
    assert_eq!(parse_osd_status(&sample("tell-osd-status.json")), Ok(11));
    assert_eq!(parse_client_status(&sample("client-status.json")), Ok(7));
}

#[test]
fn a_malformed_or_incomplete_ceph_answer_is_a_clear_error() {
    let e = parse_osd_dump("not json").unwrap_err();
    assert!(e.starts_with("ceph osd dump: unreadable answer: "), "{e}");
    let e = parse_osd_dump(r#"{"osds":[]}"#).unwrap_err();
    assert!(e.contains("missing field `epoch`"), "{e}");
    let e = parse_osd_dump(r#"{"epoch":3,"osds":[{"osd":0}]}"#).unwrap_err();
    assert!(e.contains("missing field `up`"), "{e}");
    // A blocklist of neither known shape is not read as an empty one.
    let e = parse_osd_dump(r#"{"epoch":3,"blocklist":"192.0.2.7:0/0"}"#).unwrap_err();
    assert!(e.starts_with("ceph osd dump: unreadable answer: "), "{e}");
    let e = parse_osd_status(r#"{"whoami":0,"state":"active"}"#).unwrap_err();
    assert_eq!(
        e,
        "ceph tell osd status: unreadable answer: missing field `newest_map` at line 1 column 29"
    );
    let e = parse_client_status(&sample("tell-osd-status.json")).unwrap_err();
    assert!(e.contains("missing field `osd_epoch`"), "{e}");
}
