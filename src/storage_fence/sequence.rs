//! The fence sequence: blocklist every storage address a silent host
//! published, wait until the OSD map holding the entries is committed,
//! every up OSD and this host's own Ceph clients have it, then write the
//! `storage-fenced` verdict. Until the verdict is written nothing is
//! freed: a failure anywhere leaves the normal rule (wait D) in charge,
//! and blocklist entries already added only stop a host that is silent
//! anyway.
#![forbid(unsafe_code)]

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::ceph::{whole_ip_entry, Ceph};
use super::{peek_target, write_verdict, Found, Verdict};
use crate::config::secs;
use crate::hosts::{HostState, Slot};
use crate::lease::LeaseRecord;
use crate::lockspace::Lockspace;
use crate::resource::Kind;

/// The fence's own error: what failed, and whether the blocklist may
/// already stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceError {
    /// The host may not or need not be storage-fenced (nothing was done).
    Refused(String),
    /// A step failed; `blocklisted` lists the entries added before it.
    Failed {
        step: &'static str,
        why: String,
        blocklisted: Vec<String>,
    },
}

impl fmt::Display for FenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FenceError::Refused(why) => write!(f, "not storage-fenced: {why}"),
            FenceError::Failed {
                step,
                why,
                blocklisted,
            } => {
                write!(
                    f,
                    "storage fence failed at '{step}': {why}; no verdict written"
                )?;
                if !blocklisted.is_empty() {
                    write!(
                        f,
                        " (blocklist entries already added: {}; they stay until they expire or 'ceph osd blocklist rm')",
                        blocklisted.join(" ")
                    )?;
                }
                Ok(())
            }
        }
    }
}

pub struct FenceOpts {
    /// Lifetime of the blocklist entries (seconds). Must exceed the
    /// fenced host's host_dead_timeout: once it runs out, only the host's
    /// own fence (done by then) keeps it from writing.
    pub expire_s: u64,
    /// The whole sequence's deadline.
    pub timeout: Duration,
    /// This host's Ceph clients that must have the new map (admin sockets).
    pub client_asoks: Vec<PathBuf>,
    /// How long this host observed the target's slot unchanged (None: not
    /// at all), and the least silence that allows a fence.
    pub observed_silence_ms: Option<u64>,
    pub min_silence_ms: u64,
    pub writer_host: u16,
    pub writer_name: String,
    pub wall: u64,
}

/// A completed fence.
#[derive(Debug, Clone)]
pub struct Fenced {
    pub verdict: Verdict,
    /// From the first `blocklist add` until the committed map showed every
    /// entry.
    pub commit_ms: u64,
    /// From the first `blocklist add` until the OSDs and this host's
    /// clients had that map.
    pub delivered_ms: u64,
    pub total_ms: u64,
}

/// Resources of host `host_id` that are not on Ceph (a storage fence would
/// not stop their writes). Disk paths are judged by this host's mount
/// table, lexically (no `stat`: a dead mount must not hang the fence).
///
/// The records are read around the MDS when the host table is on RADOS
/// ([`Lockspace::peek_records`]): the silent host wrote them, and its
/// CephFS client may hold capabilities on them until its session times
/// out. A record that does not decode is an error (never "not held").
pub fn not_on_ceph(ls: &Lockspace, host_id: u16) -> crate::error::Result<Vec<String>> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    let dir = ls.dir.join("leases");
    for (key, data) in ls.peek_records(&dir, &ls.list_leases()?)? {
        let corrupt = |reason: String| crate::error::Error::Corrupt {
            path: dir.join(&key),
            reason,
        };
        let rec = LeaseRecord::decode(&data).map_err(corrupt)?;
        if rec.key != key {
            return Err(corrupt(format!("record names key '{}'", rec.key)));
        }
        if !rec.holders.iter().any(|h| h.host_id == host_id) {
            continue;
        }
        if !key.starts_with(Kind::Disk.as_str()) {
            continue; // domain (covers RBD disks) and <lease> records
        }
        let path = std::path::Path::new(&rec.resource);
        let ceph = rec.resource.starts_with("/dev/rbd")
            || crate::sharedfs::find_mount(&mountinfo, path).is_some_and(|m| m.is_cephfs());
        if !ceph {
            out.push(rec.resource.clone());
        }
    }
    Ok(out)
}

/// Fences host `host_id` at the storage layer (see the module doc).
pub fn fence_host(
    ls: &Lockspace,
    ceph: &dyn Ceph,
    host_id: u16,
    o: &FenceOpts,
) -> Result<Fenced, FenceError> {
    let start = Instant::now();
    let deadline = start + o.timeout;
    let refuse = |s: String| Err(FenceError::Refused(s));
    if host_id == o.writer_host {
        return refuse("a host does not storage-fence itself".into());
    }
    let io = |step: &'static str, e: crate::error::Error| FenceError::Failed {
        step,
        why: e.to_string(),
        blocklisted: Vec::new(),
    };
    let before = match ls
        .read_host(host_id)
        .map_err(|e| io("read host record", e))?
    {
        Slot::Record(r) => r,
        Slot::Empty => return refuse(format!("host {host_id} never joined this lockspace")),
        Slot::Corrupt(why) => {
            return refuse(format!(
                "host {host_id}'s liveness record is damaged: {why}"
            ))
        }
    };
    if matches!(before.state, HostState::Leaving | HostState::FencedClean) {
        return refuse(format!(
            "host {host_id} published {}: its leases are free already",
            before.state
        ));
    }
    match o.observed_silence_ms {
        None => {
            return refuse(format!(
                "this host has not observed host {host_id} (watchdog daemon not running?)"
            ))
        }
        Some(s) if s < o.min_silence_ms => {
            return refuse(format!(
                "host {host_id} renewed {} ago as observed here; it must be silent for {} first \
                 (a slow host is never blocklisted)",
                secs(s),
                secs(o.min_silence_ms)
            ))
        }
        Some(_) => {}
    }
    if o.expire_s * 1000 <= before.timing.host_dead_timeout * 2 {
        return refuse(format!(
            "blocklist lifetime {} s is not more than twice host {host_id}'s host_dead_timeout {}",
            o.expire_s,
            secs(before.timing.host_dead_timeout)
        ));
    }
    let target = match peek_target(ls, host_id).map_err(|e| io("read target", e))? {
        Found::Valid(t) => t,
        Found::None => {
            return refuse(format!(
                "host {host_id} publishes no storage address (storage_addrs not set): not storage-fenceable"
            ))
        }
        Found::Damaged(why) => {
            return refuse(format!(
                "host {host_id}'s storage-fence target record is damaged: {why}"
            ))
        }
    };
    if target.boot_id != before.boot_id {
        return refuse(format!(
            "host {host_id}'s published storage addresses are from boot {}, its record is from boot {}",
            target.boot_id, before.boot_id
        ));
    }
    if target.addrs.is_empty() {
        return refuse(format!(
            "host {host_id} publishes no storage address: not storage-fenceable"
        ));
    }
    let local = not_on_ceph(ls, host_id).map_err(|e| io("read leases", e))?;
    if !local.is_empty() {
        return refuse(format!(
            "host {host_id} holds leases on storage that is not Ceph ({}): a blocklist would not stop those writes",
            local.join(", ")
        ));
    }
    let mut entries = Vec::new();
    for a in &target.addrs {
        entries.push(
            whole_ip_entry(a).map_err(|e| {
                FenceError::Refused(format!("host {host_id}'s storage address: {e}"))
            })?,
        );
    }

    // Blocklist.
    let mut added = Vec::new();
    let fail = |step: &'static str, why: String, added: &[String]| FenceError::Failed {
        step,
        why,
        blocklisted: added.to_vec(),
    };
    for e in &entries {
        ceph.blocklist_add(e, o.expire_s)
            .map_err(|why| fail("blocklist add", why, &added))?;
        added.push(e.clone());
    }
    // The committed map that holds every entry.
    let epoch = loop {
        match ceph.osdmap() {
            Ok(m) if entries.iter().all(|e| m.blocklist.contains(e)) => break m,
            Ok(_) | Err(_) if Instant::now() >= deadline => {
                return Err(fail(
                    "osdmap commit",
                    "the committed OSD map does not show the entries in time".into(),
                    &added,
                ))
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let commit_ms = start.elapsed().as_millis() as u64;
    // Every up OSD, and this host's clients, have that map.
    let mut waiting: Vec<String> = Vec::new();
    loop {
        waiting.clear();
        for id in &epoch.up_osds {
            match ceph.osd_epoch(*id) {
                Ok(e) if e >= epoch.epoch => {}
                Ok(e) => waiting.push(format!("osd.{id} has epoch {e}")),
                Err(why) => waiting.push(format!("osd.{id}: {why}")),
            }
        }
        for a in &o.client_asoks {
            match ceph.client_epoch(a) {
                Ok(e) if e >= epoch.epoch => {}
                Ok(e) => waiting.push(format!("client {} has epoch {e}", a.display())),
                Err(why) => waiting.push(format!("client {}: {why}", a.display())),
            }
        }
        if waiting.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(fail(
                "osdmap delivery",
                format!(
                    "epoch {} not delivered in time: {}",
                    epoch.epoch,
                    waiting.join("; ")
                ),
                &added,
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let delivered_ms = start.elapsed().as_millis() as u64;
    // The host's last word: its slot cannot change any more.
    let after = match ls.read_host(host_id) {
        Ok(Slot::Record(r)) if r.boot_id == before.boot_id => r,
        Ok(_) => {
            return Err(fail(
                "read host record",
                "the host's record changed boot or became unreadable during the fence".into(),
                &added,
            ))
        }
        Err(e) => return Err(fail("read host record", e.to_string(), &added)),
    };
    let verdict = Verdict {
        host_id,
        host_name: after.host_name.clone(),
        boot_id: after.boot_id.clone(),
        incarnation: after.incarnation,
        counter: after.counter,
        slot_mono_ms: after.mono_ms,
        addrs: entries.clone(),
        osdmap_epoch: epoch.epoch,
        expire_s: o.expire_s,
        wall: o.wall,
        writer_host: o.writer_host,
        writer_name: o.writer_name.clone(),
    };
    write_verdict(&ls.dir, &verdict).map_err(|e| fail("write verdict", e.to_string(), &added))?;
    Ok(Fenced {
        verdict,
        commit_ms,
        delivered_ms,
        total_ms: start.elapsed().as_millis() as u64,
    })
}
