//! Storage-level fencing through Ceph (SPEC section 7): the records a
//! storage fence leaves in the lockspace, takeover rule 5, and the fence
//! sequence itself.
//!
//! - `fences/target-<id>`: what host `id` can be fenced by (its storage
//!   client addresses), written by its daemon when it joins;
//! - `fences/host-<id>`: the `storage-fenced` verdict, written by the host
//!   that blocklisted host `id` and saw the OSD map holding the entry
//!   committed and delivered ([`fence_host`]);
//!
//! Both are text with a CRC, kept out of the host table. A verdict that is
//! damaged is never read as "fenced" (no lease is freed by it) nor as
//! "not fenced" (the fenced host's status says it cannot tell).
#![forbid(unsafe_code)]

pub mod ceph;
mod sequence;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::codec;
use crate::error::{Error, Result};
use crate::hosts::{self, Slot};
use crate::lease::Holder;
use crate::lockspace::{read_uncached_whole, write_atomic, Lockspace};
use crate::takeover::started_before;

pub use sequence::{fence_host, FenceError, FenceOpts, Fenced};

const VERDICT_MAGIC: &str = "vmlease-storage-fenced 1";
const TARGET_MAGIC: &str = "vmlease-storage-target 1";

/// The directory of the storage-fence records in a lockspace.
pub fn dir(ls_dir: &Path) -> PathBuf {
    ls_dir.join("fences")
}

pub fn verdict_path(ls_dir: &Path, host_id: u16) -> PathBuf {
    dir(ls_dir).join(format!("host-{host_id}"))
}

pub fn target_path(ls_dir: &Path, host_id: u16) -> PathBuf {
    dir(ls_dir).join(format!("target-{host_id}"))
}

/// "Host `host_id` was storage-fenced": written only after the blocklist
/// entries for every address were seen in a committed OSD map that the
/// writer's clients and the OSDs have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub host_id: u16,
    pub host_name: String,
    /// The fenced host's boot.
    pub boot_id: String,
    pub incarnation: u64,
    /// The fenced host's slot as read after the blocklist was committed:
    /// its last renewal (counter and its own boot clock). It cannot change
    /// while the blocklist stands.
    pub counter: u64,
    pub slot_mono_ms: u64,
    /// Blocklisted addresses (`IP:0/0`).
    pub addrs: Vec<String>,
    pub osdmap_epoch: u64,
    /// The entries' lifetime, seconds (on the monitors' clock).
    pub expire_s: u64,
    /// When it was written, writer's wall clock (display only).
    pub wall: u64,
    pub writer_host: u16,
    pub writer_name: String,
}

impl Verdict {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = codec::Writer::new(VERDICT_MAGIC);
        w.field("host_id", self.host_id)
            .field("host_name", &self.host_name)
            .field("boot_id", &self.boot_id)
            .field("incarnation", self.incarnation)
            .field("counter", self.counter)
            .field("slot_mono_ms", self.slot_mono_ms);
        for a in &self.addrs {
            w.field("addr", a);
        }
        w.field("osdmap_epoch", self.osdmap_epoch)
            .field("expire_s", self.expire_s)
            .field("wall", self.wall)
            .field("writer_host", self.writer_host)
            .field("writer_name", &self.writer_name);
        w.finish()
    }

    pub fn decode(data: &[u8]) -> std::result::Result<Verdict, String> {
        let f = codec::parse(data, VERDICT_MAGIC)?;
        let u16f = |k: &str| -> std::result::Result<u16, String> {
            let v = f.req_u64(k)?;
            u16::try_from(v).map_err(|_| format!("{k}: {v} out of range"))
        };
        let v = Verdict {
            host_id: u16f("host_id")?,
            host_name: f.req("host_name")?.to_string(),
            boot_id: f.req("boot_id")?.to_string(),
            incarnation: f.req_u64("incarnation")?,
            counter: f.req_u64("counter")?,
            slot_mono_ms: f.req_u64("slot_mono_ms")?,
            addrs: f.all("addr").map(String::from).collect(),
            osdmap_epoch: f.req_u64("osdmap_epoch")?,
            expire_s: f.req_u64("expire_s")?,
            wall: f.req_u64("wall")?,
            writer_host: u16f("writer_host")?,
            writer_name: f.req("writer_name")?.to_string(),
        };
        if v.host_id == 0 || v.boot_id.is_empty() || v.addrs.is_empty() || v.osdmap_epoch == 0 {
            return Err("incomplete verdict (no host, boot, address or epoch)".into());
        }
        Ok(v)
    }

    /// "storage-fenced by host N (name) at T (osdmap epoch E)".
    pub fn describe(&self) -> String {
        format!(
            "storage-fenced by host {} ({}) at {} (Ceph blocklist of {}, osdmap epoch {})",
            self.writer_host,
            self.writer_name,
            utc(self.wall),
            self.addrs.join(" "),
            self.osdmap_epoch
        )
    }
}

/// What a host can be fenced by: its storage client addresses. A host
/// without any is not storage-fenceable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host_id: u16,
    pub boot_id: String,
    pub addrs: Vec<String>,
}

impl Target {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = codec::Writer::new(TARGET_MAGIC);
        w.field("host_id", self.host_id)
            .field("boot_id", &self.boot_id);
        for a in &self.addrs {
            w.field("addr", a);
        }
        w.finish()
    }

    pub fn decode(data: &[u8]) -> std::result::Result<Target, String> {
        let f = codec::parse(data, TARGET_MAGIC)?;
        let id = f.req_u64("host_id")?;
        Ok(Target {
            host_id: u16::try_from(id).map_err(|_| format!("host_id {id} out of range"))?,
            boot_id: f.req("boot_id")?.to_string(),
            addrs: f.all("addr").map(String::from).collect(),
        })
    }
}

/// A verdict file as found: absent, valid, or damaged (with why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found<T> {
    None,
    Valid(T),
    Damaged(String),
}

impl<T> Found<T> {
    pub fn valid(&self) -> Option<&T> {
        match self {
            Found::Valid(v) => Some(v),
            _ => None,
        }
    }
}

fn read_record<T>(
    path: &Path,
    host_id: u16,
    decode: impl Fn(&[u8]) -> std::result::Result<T, String>,
    id_of: impl Fn(&T) -> u16,
) -> Result<Found<T>> {
    match read_uncached_whole(path) {
        Ok(d) => Ok(match decode(&d) {
            Ok(v) if id_of(&v) == host_id => Found::Valid(v),
            Ok(v) => Found::Damaged(format!("names host {}", id_of(&v))),
            Err(e) => Found::Damaged(e),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Found::None),
        Err(e) => Err(Error::io("read storage-fence record", path, e)),
    }
}

/// Decodes a raw verdict file's content (None: no file).
pub fn decode_verdict(host_id: u16, raw: Option<&[u8]>) -> Found<Verdict> {
    match raw {
        None => Found::None,
        Some(d) => match Verdict::decode(d) {
            Ok(v) if v.host_id == host_id => Found::Valid(v),
            Ok(v) => Found::Damaged(format!("names host {}", v.host_id)),
            Err(e) => Found::Damaged(e),
        },
    }
}

pub fn read_verdict_raw(ls_dir: &Path, host_id: u16) -> Result<Option<Vec<u8>>> {
    let p = verdict_path(ls_dir, host_id);
    match read_uncached_whole(&p) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read storage-fence verdict", p, e)),
    }
}

pub fn read_verdict(ls_dir: &Path, host_id: u16) -> Result<Found<Verdict>> {
    read_record(
        &verdict_path(ls_dir, host_id),
        host_id,
        Verdict::decode,
        |v| v.host_id,
    )
}

pub fn write_verdict(ls_dir: &Path, v: &Verdict) -> Result<()> {
    ensure_dir(ls_dir)?;
    write_atomic(&verdict_path(ls_dir, v.host_id), &v.encode())
}

/// Removes a verdict (`clear-fence`); true when there was one.
pub fn remove_verdict(ls_dir: &Path, host_id: u16) -> Result<bool> {
    let p = verdict_path(ls_dir, host_id);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("remove storage-fence verdict", p, e)),
    }
}

/// Host `host_id`'s storage-fence target as the fence reads it: around
/// the MDS when the lockspace's host table is on RADOS
/// ([`Lockspace::peek_records`]), so that a cut-off host's capabilities
/// on the file cannot hold the fence until its session times out.
pub fn peek_target(ls: &crate::lockspace::Lockspace, host_id: u16) -> Result<Found<Target>> {
    let name = format!("target-{host_id}");
    let d = dir(&ls.dir);
    if !d.exists() {
        return Ok(Found::None);
    }
    let raw = ls.peek_records(&d, std::slice::from_ref(&name))?;
    Ok(match raw.first() {
        None => Found::None,
        Some((_, data)) => match Target::decode(data) {
            Ok(t) if t.host_id == host_id => Found::Valid(t),
            Ok(t) => Found::Damaged(format!("names host {}", t.host_id)),
            Err(e) => Found::Damaged(e),
        },
    })
}

pub fn read_target(ls_dir: &Path, host_id: u16) -> Result<Found<Target>> {
    read_record(
        &target_path(ls_dir, host_id),
        host_id,
        Target::decode,
        |t| t.host_id,
    )
}

pub fn write_target(ls_dir: &Path, t: &Target) -> Result<()> {
    ensure_dir(ls_dir)?;
    write_atomic(&target_path(ls_dir, t.host_id), &t.encode())
}

fn ensure_dir(ls_dir: &Path) -> Result<()> {
    let d = dir(ls_dir);
    match std::fs::create_dir(&d) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io("create", d, e)),
    }
}

/// Why takeover rule 5 does not free a holder (for messages and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotFenced(pub String);

impl fmt::Display for NotFenced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Takeover rule 5: may `h` be treated as free because its host was
/// storage-fenced? Only when the verdict is for the holder's host and
/// boot, its QEMU started before the host's last renewal the fencer saw
/// (so the holder existed before the blocklist: a host blocklisted cannot
/// write a holder afterwards), and the host's slot, read now under the
/// record lock, is still exactly the one the fencer saw: a host that
/// renewed since is not blocklisted (any more) and proves the verdict
/// stale.
pub fn rule5(h: &Holder, raw_slot: &[u8], v: &Verdict) -> std::result::Result<(), NotFenced> {
    let no = |s: String| Err(NotFenced(s));
    if v.host_id != h.host_id || v.boot_id != h.boot_id {
        return no(format!(
            "the storage-fence verdict is for host {} boot {}, not this holder's",
            v.host_id, v.boot_id
        ));
    }
    let Slot::Record(r) = hosts::decode_slot(h.host_id, raw_slot) else {
        return no("its host's liveness record is unreadable".into());
    };
    if r.boot_id != v.boot_id || r.incarnation != v.incarnation || r.counter != v.counter {
        return no(format!(
            "its host renewed after the storage-fence verdict (counter {} now, {} when fenced): \
             the verdict is stale",
            r.counter, v.counter
        ));
    }
    if !started_before(h, v.slot_mono_ms) {
        return no(
            "its QEMU started after the host's last renewal before the fence; \
             only rule 4 can free it"
                .into(),
        );
    }
    Ok(())
}

/// The daemon's part, when it joins: publish what this host can be
/// storage-fenced by (its `storage_fence_addrs`; none: not fenceable).
/// Bounded by the I/O deadline; a failure is logged and leaves the host
/// not storage-fenceable (the old rule, wait D, applies to it).
pub fn publish_target(ls: &Lockspace, cfg: &crate::config::Config, host_id: u16, boot_id: &str) {
    let t = Target {
        host_id,
        boot_id: boot_id.to_string(),
        addrs: cfg.storage_fence_addrs.clone(),
    };
    let dir = ls.dir.clone();
    let path = target_path(&dir, host_id);
    match crate::deadline::run(cfg.io_timeout, "publish storage-fence target", &path, move || {
        write_target(&dir, &t)
    }) {
        Ok(()) if cfg.storage_fence_addrs.is_empty() => log::info!(
            "not storage-fenceable (storage_fence_addrs not set): other hosts wait host_dead_timeout"
        ),
        Ok(()) => log::info!(
            "storage-fenceable by a Ceph blocklist of {}",
            cfg.storage_fence_addrs.join(" ")
        ),
        Err(e) => log::warn!("cannot publish the storage-fence target: {e}"),
    }
}

impl Lockspace {
    /// Raw storage-fence verdict of `host_id` (None: no file).
    pub fn read_storage_fence_raw(&self, host_id: u16) -> Result<Option<Vec<u8>>> {
        read_verdict_raw(&self.dir, host_id)
    }
}

/// Seconds since the epoch as "YYYY-MM-DD HH:MM:SS UTC" (display only).
pub fn utc(secs: u64) -> String {
    let (y, m, d, hh, mm, ss) = crate::clock::utc_parts(secs);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02} UTC")
}
