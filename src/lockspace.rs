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
#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::codec;
use crate::error::{Error, Result};
use crate::hosts::{self, HostRecord, Slot, SLOT_SIZE};
use crate::lease::LeaseRecord;

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

    /// This host's own CephFS probe file, `probes/<id>/alive`, when the
    /// host table is on RADOS (`None` otherwise). RADOS I/O proves only
    /// that this host reaches the OSDs; the renewal must also prove that
    /// its CephFS client works (its VMs' lease records are there), without
    /// touching anything another client touches: the file is created once
    /// at start ([`Lockspace::create_probe`]) and then only rewritten in
    /// place by its owner; no vmlease reads, stats or lists it, so no
    /// other client holds capabilities on it (docs/cephfs.md, case (b)).
    pub fn probe_path(&self, host_id: u16) -> Option<PathBuf> {
        self.rados.as_ref()?;
        Some(
            self.dir
                .join("probes")
                .join(host_id.to_string())
                .join("alive"),
        )
    }

    /// Creates this host's probe file (at start, not on the renewal path:
    /// creating in a directory may wait for another client).
    pub fn create_probe(&self, host_id: u16) -> Result<()> {
        let Some(path) = self.probe_path(host_id) else {
            return Ok(());
        };
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io("create", parent, e))?;
        }
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(|e| Error::io("create", &path, e))?;
        Ok(())
    }

    /// Rewrites this host's probe file in place and syncs it (no-op when
    /// the host table is in the file: writing it proves the same). Never
    /// creates it: a missing probe is an error, as a missing table.
    pub fn write_probe(&self, rec: &HostRecord) -> Result<()> {
        let Some(path) = self.probe_path(rec.host_id) else {
            return Ok(());
        };
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open probe", &path, e))?;
        f.write_all_at(&rec.encode(), 0)
            .map_err(|e| Error::io("write probe", &path, e))?;
        f.sync_data()
            .map_err(|e| Error::io("fsync probe", &path, e))?;
        Ok(())
    }

    pub fn hosts_path(&self) -> PathBuf {
        self.dir.join("hosts")
    }

    pub fn lease_path(&self, key: &str) -> PathBuf {
        self.dir.join("leases").join(key)
    }

    fn check_host_id(&self, host_id: u16) -> Result<()> {
        if host_id == 0 || host_id > self.max_hosts {
            return Err(Error::Invalid(format!(
                "host id {host_id} is outside this lockspace (1..{})",
                self.max_hosts
            )));
        }
        Ok(())
    }

    /// Reads the whole host table in one read (raw bytes, always
    /// `max_hosts * SLOT_SIZE` long).
    pub fn read_hosts_raw(&self) -> Result<Vec<u8>> {
        let path = self.hosts_path();
        let len = self.max_hosts as usize * SLOT_SIZE;
        let mut data = match &self.rados {
            Some(r) => r.read(0, len),
            None => read_uncached(&path, 0, len),
        }
        .map_err(|e| Error::io("read host table", &path, e))?;
        data.resize(len, 0);
        Ok(data)
    }

    /// Reads and decodes the whole host table.
    pub fn read_hosts(&self) -> Result<Vec<Slot>> {
        Ok(hosts::decode_table(&self.read_hosts_raw()?))
    }

    /// Small records of `dir` that other hosts write (storage-fence
    /// targets, lease records), by file name, read without waiting for
    /// those hosts' CephFS capabilities when the host table is on RADOS:
    /// each file's inode number from the directory listing (a listing
    /// waits for nobody, docs/cephfs.md case (d)) and its data from the
    /// object `<inode hex>.00000000` of the host table's pool, i.e. the
    /// last data its writer made durable (records are written whole,
    /// synced, and renamed into place). Through the files otherwise. A
    /// name that is not in `dir` is absent from the answer; a file whose
    /// object does not exist reads as empty.
    pub fn peek_records(&self, dir: &Path, names: &[String]) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        let Some(r) = &self.rados else {
            for n in names {
                let p = dir.join(n);
                match read_uncached_whole(&p) {
                    Ok(d) => out.push((n.clone(), d)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("read", p, e)),
                }
            }
            return Ok(out);
        };
        use std::os::unix::fs::DirEntryExt;
        let mut inodes = std::collections::HashMap::new();
        for e in fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))? {
            let e = e.map_err(|e| Error::io("list", dir, e))?;
            inodes.insert(e.file_name().to_string_lossy().into_owned(), e.ino());
        }
        for n in names {
            let Some(ino) = inodes.get(n) else { continue };
            let obj = format!("{ino:x}.00000000");
            let data = r
                .read_object(&obj, MAX_RECORD)
                .map_err(|e| Error::io("read (RADOS object)", dir.join(n), e))?;
            out.push((n.clone(), data.unwrap_or_default()));
        }
        Ok(out)
    }

    /// Reads one host's slot.
    pub fn read_host(&self, host_id: u16) -> Result<Slot> {
        self.check_host_id(host_id)?;
        Ok(hosts::decode_slot(host_id, &self.read_slot_raw(host_id)?))
    }

    /// One host's slot, raw (`SLOT_SIZE` bytes, zeros past the end of the
    /// table), read around the page cache. The caller checks `host_id`.
    pub fn read_slot_raw(&self, host_id: u16) -> Result<Vec<u8>> {
        let path = self.hosts_path();
        let offset = (host_id as u64 - 1) * SLOT_SIZE as u64;
        let mut buf = match &self.rados {
            Some(r) => r.read(offset, SLOT_SIZE),
            None => read_uncached(&path, offset, SLOT_SIZE),
        }
        .map_err(|e| Error::io("read host record", &path, e))?;
        buf.resize(SLOT_SIZE, 0);
        Ok(buf)
    }

    /// Writes this host's slot and syncs it to storage.
    pub fn write_host(&self, rec: &HostRecord) -> Result<()> {
        self.check_host_id(rec.host_id)?;
        let path = self.hosts_path();
        let offset = (rec.host_id as u64 - 1) * SLOT_SIZE as u64;
        if let Some(r) = &self.rados {
            return r
                .write(offset, &rec.encode())
                .map_err(|e| Error::io("write host record", &path, e));
        }
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open host table", &path, e))?;
        f.write_all_at(&rec.encode(), offset)
            .map_err(|e| Error::io("write host record", &path, e))?;
        f.sync_data()
            .map_err(|e| Error::io("fsync host record", &path, e))?;
        Ok(())
    }

    /// Reads a lease record; a missing file is a free lease.
    pub fn read_lease(&self, key: &str, resource: &str) -> Result<LeaseRecord> {
        let path = self.lease_path(key);
        match read_uncached_whole(&path) {
            Ok(data) => {
                let rec = LeaseRecord::decode(&data).map_err(|reason| Error::Corrupt {
                    path: path.clone(),
                    reason,
                })?;
                if rec.key != key {
                    return Err(Error::Corrupt {
                        path,
                        reason: format!("record names key '{}'", rec.key),
                    });
                }
                if !resource.is_empty() && rec.resource != resource {
                    return Err(Error::Corrupt {
                        path,
                        reason: format!(
                            "record is for '{}', not '{resource}' (hash collision or damage)",
                            rec.resource
                        ),
                    });
                }
                Ok(rec)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(LeaseRecord::free(key, resource)),
            Err(e) => Err(Error::io("read lease", path, e)),
        }
    }

    /// Replaces a lease record atomically (write temp, fsync, rename).
    pub fn write_lease(&self, rec: &LeaseRecord, writer_host: u16) -> Result<()> {
        let path = self.lease_path(&rec.key);
        let tmp = self
            .dir
            .join("leases")
            .join(format!(".{}.{writer_host}.tmp", rec.key));
        write_file_synced(&tmp, &rec.encode())?;
        fs::rename(&tmp, &path).map_err(|e| Error::io("rename lease", &path, e))?;
        Ok(())
    }

    /// Takes the short serialising lock of a record, waiting at most
    /// `timeout_ms`. The lock is an OFD lock: per open file, so two threads
    /// of one libvirtd exclude each other too. Dropped with the guard.
    pub fn lock_record(&self, key: &str, timeout_ms: u64) -> Result<RecordLock> {
        let path = self.dir.join("leases").join(format!("{key}.lock"));
        lock_file(&path, key, timeout_ms)
    }

    /// Lists the keys of every lease record.
    pub fn list_leases(&self) -> Result<Vec<String>> {
        let dir = self.dir.join("leases");
        let mut keys = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| Error::io("list leases", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("list leases", &dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.ends_with(".lock") {
                continue;
            }
            keys.push(name);
        }
        keys.sort();
        Ok(keys)
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

/// Holds a record lock until dropped (closing the file releases it).
#[derive(Debug)]
pub struct RecordLock {
    _file: File,
}

/// Takes an exclusive OFD lock on `path` (created if missing), waiting at
/// most `timeout_ms`; `what` names what it serialises, for the error.
fn lock_file(path: &Path, what: &str, timeout_ms: u64) -> Result<RecordLock> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)
        .map_err(|e| Error::io("open record lock", path, e))?;
    let start = crate::clock::boottime_ms();
    let mut pause = 1u64;
    loop {
        match crate::sys::ofd_lock::try_lock(&file) {
            Ok(true) => return Ok(RecordLock { _file: file }),
            Ok(false) => {}
            Err(e) => return Err(Error::io("lock record", path, e)),
        }
        if crate::clock::boottime_ms().saturating_sub(start) >= timeout_ms {
            return Err(Error::Busy {
                resource: what.to_string(),
                reason: format!(
                    "its record lock {} is held by another host or thread for more than {} ms",
                    path.display(),
                    timeout_ms
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(pause));
        pause = (pause * 2).min(20);
    }
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

/// Alignment of uncached reads: buffer address, file offset and length
/// are multiples of it (covers 512-byte and 4 KiB logical blocks).
const DIRECT_ALIGN: usize = 4096;

/// Largest lease record [`read_uncached_whole`] accepts (a record is a few
/// hundred bytes plus the resource name).
const MAX_RECORD: usize = 1 << 20;

/// Reads up to `len` bytes at `offset` of `path` from the storage, not from
/// this host's page cache: the file is opened with O_DIRECT, so a read
/// returns what other hosts' completed writes left on shared storage.
/// Shorter than `len` only at the end of the file.
///
/// A filesystem that refuses O_DIRECT (EINVAL) is read through the page
/// cache only if it is a local one (tmpfs, ext4, xfs, btrfs, ...), where
/// the page cache is the storage's only view; on any other filesystem
/// that is an error, never a silent fallback to reads that may be stale.
pub fn read_uncached(path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            return read_cached_if_local(path, offset, len)
        }
        Err(e) => return Err(e),
    };
    let align = DIRECT_ALIGN as u64;
    let start = offset - offset % align;
    let end = (offset + len as u64).div_ceil(align) * align;
    let span = (end - start) as usize;
    let mut raw = vec![0u8; span + DIRECT_ALIGN];
    let skip = raw.as_ptr().align_offset(DIRECT_ALIGN);
    let buf = &mut raw[skip..skip + span];
    let mut done = 0;
    while done < span {
        match file.read_at(&mut buf[done..], start + done as u64) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                if done % DIRECT_ALIGN != 0 {
                    break; // a short read ends at the end of the file
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && done == 0 => {
                return read_cached_if_local(path, offset, len)
            }
            Err(e) => return Err(e),
        }
    }
    let from = (offset - start) as usize;
    let to = done.min(from + len);
    Ok(if to > from {
        buf[from..to].to_vec()
    } else {
        Vec::new()
    })
}

/// Reads a whole (small) file with [`read_uncached`].
pub fn read_uncached_whole(path: &Path) -> io::Result<Vec<u8>> {
    let mut len = 4 * DIRECT_ALIGN;
    loop {
        let data = read_uncached(path, 0, len)?;
        if data.len() < len {
            return Ok(data);
        }
        if len >= MAX_RECORD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("larger than {MAX_RECORD} bytes: not a lockspace record"),
            ));
        }
        len *= 4;
    }
}

fn read_cached_if_local(path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let fs_type = crate::sys::statfs::fs_type(path)?;
    if !uncached::is_local(fs_type) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "the filesystem (type {fs_type:#x}) refuses O_DIRECT reads; on shared storage \
                 vmlease must read around the page cache (a cached read may be stale)"
            ),
        ));
    }
    let file = File::open(path)?;
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// Writes a file and fsyncs it (no rename).
pub fn write_file_synced(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)
        .map_err(|e| Error::io("create", path, e))?;
    f.write_all(data).map_err(|e| Error::io("write", path, e))?;
    f.sync_all().map_err(|e| Error::io("fsync", path, e))?;
    Ok(())
}

/// Writes `path` atomically: a temp file beside it, fsync, rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = temp_beside(path);
    write_file_synced(&tmp, data)?;
    fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e))
}

/// Writes `path` atomically for readers on this host (a temp file beside
/// it, renamed over it) without making it durable: for local state that
/// means nothing after a power loss (tmpfs under /run), and for files
/// other programs read whole (the metrics). A failed write leaves no
/// temp file behind.
pub fn write_atomic_unsynced(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = temp_beside(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(|e| Error::io("create", &tmp, e))?;
    let res = f
        .write_all(data)
        .map_err(|e| Error::io("write", &tmp, e))
        .and_then(|()| {
            drop(f);
            fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e))
        });
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// A temp file name beside `path`, private to this process.
fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Tries to take an exclusive OFD lock on `file` without waiting.
pub fn ofd_try_lock(file: &File) -> io::Result<bool> {
    crate::sys::ofd_lock::try_lock(file)
}

/// Takes an exclusive OFD lock on `file`, waiting as long as it takes.
/// Only for local files (the state dir), never for shared storage.
pub fn ofd_lock_wait(file: &File) -> io::Result<()> {
    crate::sys::ofd_lock::lock_wait(file)
}

mod uncached {
    //! Which filesystem types are local (statfs(2)'s f_type, read by
    //! `crate::sys::statfs`).

    /// Filesystems of one machine: their page cache is the only view of
    /// the data, so it cannot be stale.
    pub fn is_local(fs_type: i64) -> bool {
        const LOCAL: [i64; 8] = [
            0x0102_1994, // tmpfs
            0x8584_58f6, // ramfs
            0xef53,      // ext2/3/4
            0x5846_5342, // xfs
            0x9123_683e, // btrfs
            0x794c_7630, // overlayfs
            0xf2f5_2010, // f2fs
            0x2fc1_2fc1, // zfs
        ];
        LOCAL.contains(&fs_type)
    }
}

#[cfg(test)]
mod tests;
