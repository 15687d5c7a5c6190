//! The lockspace directory on shared storage:
//!
//! ```text
//! <lockspace_dir>/
//!   VMLEASE          header: magic, format, max_hosts, uuid (written by 'vmlease init')
//!   VMLEASE.lock     serialises writers of the header (init, UUID upgrade)
//!   hosts            max_hosts slots of 512 bytes: liveness records
//!   leases/<key>     one lease record per resource (replaced by rename)
//!   leases/<key>.lock  the short serialising lock of that record (OFD lock)
//! ```
//!
//! Every read of the host table and of lease records opens the file anew
//! and bypasses this host's page cache (O_DIRECT, [`read_uncached`]): on
//! CephFS through ceph-fuse with its default kernel page cache, a plain
//! read on one host was seen returning another host's renewal of more
//! than 50 s ago while that host renewed every 2 s - a live host would
//! look dead for longer than host_dead_timeout (docs/cephfs.md).
//!
//! Here: the header, `init` and `open`. The host table, the probe and the
//! lease records are in `records.rs`; the uncached reads, synced writes
//! and OFD locks in `file_io.rs`.
#![forbid(unsafe_code)]

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::codec;
use crate::error::{Error, Result};
use crate::hosts::SLOT_SIZE;

mod file_io;
mod records;

use file_io::lock_file;
pub use file_io::{
    ofd_lock_wait, ofd_try_lock, read_uncached, read_uncached_whole, write_atomic,
    write_atomic_unsynced, write_file_synced, RecordLock,
};

const HEADER_MAGIC: &str = "vmlease-lockspace v1";
pub const DEFAULT_MAX_HOSTS: u16 = 2000;

#[derive(Debug, Clone)]
pub struct Lockspace {
    pub dir: PathBuf,
    pub max_hosts: u16,
    /// The lockspace's identity, written once by `vmlease init`: the
    /// daemon publishes it and the plugin leases only where it is the
    /// same. `None` for a lockspace made by a vmlease without UUIDs (until
    /// `vmlease init` or the daemon adds one, see [`Lockspace::add_uuid`]).
    pub uuid: Option<String>,
    /// The host table through RADOS instead of this host's CephFS client
    /// (`liveness_rados`, [`Lockspace::via_rados`]); `None`: through the file.
    pub rados: Option<crate::rados::RadosTable>,
}

/// What [`Lockspace::create`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Made {
    Created,
    /// It was initialised before, without a UUID: one was added.
    AddedUuid,
    /// It was initialised before, with a UUID: left alone.
    Existing,
}

/// How long `init` and the UUID upgrade wait for the header lock.
const HEADER_LOCK_MS: u64 = 5_000;

impl Lockspace {
    /// Creates the layout. An already initialised lockspace is left alone
    /// (returns Ok(false)) except that it gets a UUID if it has none; a
    /// damaged one is an error.
    pub fn init(dir: &Path, max_hosts: u16) -> Result<bool> {
        Ok(Lockspace::create(dir, max_hosts)? == Made::Created)
    }

    /// [`Lockspace::init`], saying what it did. The header is written
    /// under the header lock (`VMLEASE.lock`), so that two hosts running
    /// init at once make one lockspace with one UUID.
    pub fn create(dir: &Path, max_hosts: u16) -> Result<Made> {
        if max_hosts == 0 || max_hosts > crate::config::MAX_HOST_ID {
            return Err(Error::Invalid(format!(
                "max_hosts must be between 1 and {}, got {max_hosts}",
                crate::config::MAX_HOST_ID
            )));
        }
        if dir.join("VMLEASE").exists() {
            let ls = Lockspace::open(dir)?;
            if ls.uuid.is_some() {
                return Ok(Made::Existing);
            }
            ls.add_uuid()?;
            return Ok(Made::AddedUuid);
        }
        fs::create_dir_all(dir.join("leases"))
            .map_err(|e| Error::io("create lockspace", dir.join("leases"), e))?;
        let _lock = lock_file(
            &dir.join("VMLEASE.lock"),
            "the lockspace header",
            HEADER_LOCK_MS,
        )?;
        if dir.join("VMLEASE").exists() {
            // Another host initialised it while we waited for the lock.
            drop(_lock);
            return Lockspace::create(dir, max_hosts);
        }
        let hosts = dir.join("hosts");
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&hosts)
            .map_err(|e| Error::io("create", &hosts, e))?;
        f.set_len(max_hosts as u64 * SLOT_SIZE as u64)
            .map_err(|e| Error::io("size", &hosts, e))?;
        f.sync_all().map_err(|e| Error::io("fsync", &hosts, e))?;
        write_header(dir, max_hosts, &new_uuid())?;
        Ok(Made::Created)
    }

    /// Gives a lockspace made without a UUID its UUID (under the header
    /// lock; a UUID another host added meanwhile is kept). Returns the
    /// UUID.
    pub fn add_uuid(&self) -> Result<String> {
        let _lock = lock_file(
            &self.dir.join("VMLEASE.lock"),
            "the lockspace header",
            HEADER_LOCK_MS,
        )?;
        let now = Lockspace::open(&self.dir)?;
        if let Some(u) = now.uuid {
            return Ok(u);
        }
        let uuid = new_uuid();
        write_header(&self.dir, now.max_hosts, &uuid)?;
        Ok(uuid)
    }

    /// Opens an initialised lockspace, checking its header. The header is
    /// read around the page cache, as every record.
    pub fn open(dir: &Path) -> Result<Lockspace> {
        let header = dir.join("VMLEASE");
        let data = match read_uncached_whole(&header) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let reason = if dir.is_dir() {
                    "not initialised (run 'vmlease init')".to_string()
                } else {
                    "directory missing (is the shared filesystem mounted?)".to_string()
                };
                return Err(Error::Lockspace {
                    path: dir.to_path_buf(),
                    reason,
                });
            }
            Err(e) => return Err(Error::io("read", header, e)),
        };
        let f = codec::parse(&data, HEADER_MAGIC).map_err(|reason| Error::Corrupt {
            path: header.clone(),
            reason,
        })?;
        let bad = |reason: String| Error::Corrupt {
            path: header.clone(),
            reason,
        };
        let max_hosts = f.req_u64("max_hosts").map_err(bad)?;
        let slot = f.req_u64("slot_size").map_err(bad)?;
        if slot != SLOT_SIZE as u64 || max_hosts == 0 || max_hosts > 2000 {
            return Err(bad(format!(
                "unsupported layout (slot_size {slot}, max_hosts {max_hosts})"
            )));
        }
        let uuid = match f.get("uuid") {
            None => None,
            Some(u) if is_uuid(u) => Some(u.to_string()),
            Some(u) => return Err(bad(format!("bad lockspace UUID '{u}'"))),
        };
        Ok(Lockspace {
            dir: dir.to_path_buf(),
            max_hosts: max_hosts as u16,
            uuid,
            rados: None,
        })
    }

    /// [`Lockspace::open`] for a long-lived process that opens the same
    /// lockspace for every call (the plugin in libvirtd): the header is read
    /// again only when it is not the file this process read before (its
    /// device, inode, size, mtime or ctime differ: the header is only ever
    /// replaced by rename, never rewritten in place), or when the UUID read
    /// then is not `expect_uuid`. A missing header, an unmounted or another
    /// filesystem, a lockspace made anew or given a UUID since: all read
    /// the header again, with the errors of [`Lockspace::open`]. Saves the
    /// uncached open and read of the header (two storage round trips on
    /// CephFS) before every acquire; the stat is answered from the
    /// client's capabilities.
    pub fn open_cached(dir: &Path, expect_uuid: Option<&str>) -> Result<Lockspace> {
        let header = dir.join("VMLEASE");
        let id = HeaderId::of(&header);
        if let Some(id) = &id {
            let known = opened();
            if let Some((_, _, ls)) = known.iter().find(|(d, i, ls)| {
                d == dir && i == id && expect_uuid.is_none_or(|u| ls.uuid.as_deref() == Some(u))
            }) {
                return Ok(ls.clone());
            }
        }
        let ls = Lockspace::open(dir)?;
        // Identified before the read: a header replaced in between is read
        // again next time (its identity is not the one remembered).
        if let Some(id) = id {
            let mut known = opened();
            known.retain(|(d, _, _)| d != dir);
            if known.len() >= OPENED_MAX {
                known.remove(0);
            }
            known.push((dir.to_path_buf(), id, ls.clone()));
        }
        Ok(ls)
    }

    /// This lockspace with the host table read and written through RADOS
    /// (`src/rados/`): the same bytes at the same offsets, without the
    /// CephFS capabilities through which a hung peer stalls the file.
    pub fn via_rados(self, conf: crate::rados::RadosConf) -> Lockspace {
        let len = self.max_hosts as usize * SLOT_SIZE;
        let table = crate::rados::RadosTable::new(conf, &self.hosts_path(), len);
        Lockspace {
            rados: Some(table),
            ..self
        }
    }
}

/// What identifies one version of a header file: it is replaced by rename
/// (a new inode) or, when damaged or rewritten by hand, changes size,
/// mtime or ctime.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HeaderId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl HeaderId {
    fn of(path: &Path) -> Option<HeaderId> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(path).ok()?;
        Some(HeaderId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// Lockspaces this process opened with [`Lockspace::open_cached`].
static OPENED: std::sync::Mutex<Vec<(PathBuf, HeaderId, Lockspace)>> =
    std::sync::Mutex::new(Vec::new());
const OPENED_MAX: usize = 8;

fn opened() -> std::sync::MutexGuard<'static, Vec<(PathBuf, HeaderId, Lockspace)>> {
    OPENED.lock().unwrap_or_else(|p| p.into_inner())
}

fn write_header(dir: &Path, max_hosts: u16, uuid: &str) -> Result<()> {
    let mut w = codec::Writer::new(HEADER_MAGIC);
    w.field("max_hosts", max_hosts)
        .field("slot_size", SLOT_SIZE)
        .field("uuid", uuid);
    write_atomic(&dir.join("VMLEASE"), &w.finish())
}

/// A random (version 4) UUID.
fn new_uuid() -> String {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&crate::process::random_u64().to_le_bytes());
    b[8..].copy_from_slice(&crate::process::random_u64().to_le_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    crate::resource::format_uuid(&b)
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests;
