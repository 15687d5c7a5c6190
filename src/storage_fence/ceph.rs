//! The Ceph operations a storage fence needs, behind a small trait so the
//! sequence can be tested with a scripted cluster; [`CephCli`] runs the
//! `ceph` command-line tool as a subprocess with a deadline per call
//! (`CEPH_ARGS`, e.g. `--id vmlease -c /etc/ceph/ceph.conf`, selects the
//! client and cluster).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Deserialize;

/// What a committed OSD map says, as far as a fence cares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OsdMap {
    pub epoch: u64,
    /// Blocklisted addresses, as Ceph prints them (`IP:0/0`, `IP:PORT/NONCE`).
    pub blocklist: Vec<String>,
    /// OSDs that are up: each must have the epoch before a fence counts.
    pub up_osds: Vec<u32>,
}

pub trait Ceph {
    /// Blocklists `addr` for `expire_s` seconds; returns once the monitors
    /// answered (they answer after the map change is committed).
    fn blocklist_add(&self, addr: &str, expire_s: u64) -> Result<(), String>;
    fn blocklist_rm(&self, addr: &str) -> Result<(), String>;
    /// The newest committed OSD map.
    fn osdmap(&self) -> Result<OsdMap, String>;
    /// The newest OSD map epoch OSD `id` has.
    fn osd_epoch(&self, id: u32) -> Result<u64, String>;
    /// The OSD map epoch of a client (e.g. this host's ceph-fuse), asked
    /// through its admin socket.
    fn client_epoch(&self, asok: &Path) -> Result<u64, String>;
}

/// The `ceph` CLI, each call bounded by `timeout`.
pub struct CephCli {
    pub timeout: Duration,
}

impl CephCli {
    fn run(&self, args: &[&str]) -> Result<String, String> {
        run(args, Instant::now() + self.timeout)
    }
}

/// Runs `ceph ARGS` (the ceph CLI, with the host's own config and
/// credentials) with a deadline: its stdout, or why not (the last line of
/// its stderr, or that it did not answer in time, when it is killed).
pub fn run(args: &[&str], deadline: Instant) -> Result<String, String> {
    let what = format!("ceph {}", args.join(" "));
    let budget = deadline.saturating_duration_since(Instant::now());
    let connect = budget.as_secs().max(1).to_string();
    let mut child = Command::new("ceph")
        .args(["--connect-timeout", &connect])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    // Drain stdout in a thread: a large `osd dump` fills the pipe.
    let mut so = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        if let Some(o) = so.as_mut() {
            let _ = o.read_to_string(&mut out);
        }
        out
    });
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let out = reader.join().unwrap_or_default();
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                if status.success() {
                    return Ok(out);
                }
                let err = err.lines().last().unwrap_or("").trim().to_string();
                return Err(format!("{what}: {status}: {err}"));
            }
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{what}: no answer within {} s",
                    budget.as_secs_f64()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("{what}: {e}")),
        }
    }
}

impl CephCli {
    /// Stores `value` under `key` in the monitors' config-key store: a
    /// copy of a verdict that the fenced host can still read (monitors
    /// do not refuse blocklisted clients; OSDs and MDSs do).
    pub fn config_key_set(&self, key: &str, value: &str) -> Result<(), String> {
        self.run(&["config-key", "set", key, value]).map(|_| ())
    }

    /// None when the key does not exist.
    pub fn config_key_get(&self, key: &str) -> Result<Option<String>, String> {
        if self.run(&["config-key", "exists", key]).is_err() {
            return Ok(None);
        }
        self.run(&["config-key", "get", key]).map(Some)
    }

    pub fn config_key_rm(&self, key: &str) -> Result<(), String> {
        self.run(&["config-key", "rm", key]).map(|_| ())
    }
}

/// The monitors' config-key holding the verdict copy for `host_id` of
/// the lockspace `uuid`.
pub fn verdict_key(uuid: &str, host_id: u16) -> String {
    format!("vmlease/storage-fenced/{uuid}/host-{host_id}")
}

impl Ceph for CephCli {
    fn blocklist_add(&self, addr: &str, expire_s: u64) -> Result<(), String> {
        self.run(&["osd", "blocklist", "add", addr, &expire_s.to_string()])
            .map(|_| ())
    }

    fn blocklist_rm(&self, addr: &str) -> Result<(), String> {
        self.run(&["osd", "blocklist", "rm", addr]).map(|_| ())
    }

    fn osdmap(&self) -> Result<OsdMap, String> {
        parse_osd_dump(&self.run(&["osd", "dump", "--format", "json"])?)
    }

    fn osd_epoch(&self, id: u32) -> Result<u64, String> {
        let out = self.run(&["tell", &format!("osd.{id}"), "status", "--format", "json"])?;
        parse_osd_status(&out)
    }

    fn client_epoch(&self, asok: &Path) -> Result<u64, String> {
        let p = asok.to_string_lossy();
        let out = self.run(&["--admin-daemon", &p, "status", "--format", "json"])?;
        parse_client_status(&out)
    }
}

// The answers read, as JSON; samples captured from a real cluster (Ceph
// 16.2.15) are in tests/ceph/json/. serde ignores the other fields.

/// `ceph osd dump --format json`.
#[derive(Deserialize)]
struct OsdDump {
    epoch: u64,
    #[serde(default)]
    blocklist: Blocklist,
    #[serde(default)]
    osds: Vec<OsdEntry>,
}

/// An object keyed by address (`{"IP:PORT/NONCE": "until"}`) in Pacific,
/// a list of `{addr, until}` in later releases.
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Blocklist {
    ByAddr(BTreeMap<String, serde_json::Value>),
    List(Vec<BlocklistEntry>),
    #[default]
    Absent,
}

#[derive(Deserialize)]
struct BlocklistEntry {
    addr: String,
}

#[derive(Deserialize)]
struct OsdEntry {
    osd: u32,
    /// 1 when up.
    up: u8,
}

/// `ceph tell osd.N status --format json`.
#[derive(Deserialize)]
struct OsdStatus {
    newest_map: u64,
}

/// `ceph --admin-daemon CLIENT.asok status --format json` (a ceph-fuse's).
#[derive(Deserialize)]
struct ClientStatus {
    osd_epoch: u64,
}

/// Parses a `--format json` answer as `T`; `what` (the command) names it
/// in the error.
pub(crate) fn parse<T: DeserializeOwned>(out: &str, what: &str) -> Result<T, String> {
    serde_json::from_str(out.trim()).map_err(|e| format!("{what}: unreadable answer: {e}"))
}

/// A `ceph` answer captured from the real cluster of tests/ceph/cluster.sh
/// (tests/ceph/json/NAME).
#[cfg(test)]
pub(crate) fn sample(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/ceph/json")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The newest OSD map epoch in an OSD's `status`.
pub fn parse_osd_status(out: &str) -> Result<u64, String> {
    parse::<OsdStatus>(out, "ceph tell osd status").map(|s| s.newest_map)
}

/// The OSD map epoch in a client's admin-socket `status`.
pub fn parse_client_status(out: &str) -> Result<u64, String> {
    parse::<ClientStatus>(out, "client status").map(|s| s.osd_epoch)
}

/// `ceph osd dump --format json`: epoch, blocklist and the up OSDs.
pub fn parse_osd_dump(out: &str) -> Result<OsdMap, String> {
    let d: OsdDump = parse(out, "ceph osd dump")?;
    let blocklist = match d.blocklist {
        Blocklist::ByAddr(m) => m.into_keys().collect(),
        Blocklist::List(l) => l.into_iter().map(|e| e.addr).collect(),
        Blocklist::Absent => Vec::new(),
    };
    Ok(OsdMap {
        epoch: d.epoch,
        blocklist,
        up_osds: d.osds.iter().filter(|o| o.up == 1).map(|o| o.osd).collect(),
    })
}

/// The whole-IP blocklist entry of an address (`IP:0/0`; IPv6 in
/// brackets). Err for anything that is not an IP address.
pub fn whole_ip_entry(ip: &str) -> Result<String, String> {
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => Ok(format!("{a}:0/0")),
        Ok(std::net::IpAddr::V6(a)) => Ok(format!("[{a}]:0/0")),
        Err(_) => Err(format!("'{ip}' is not an IP address")),
    }
}
