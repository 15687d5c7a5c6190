//! File I/O of the lockspace: reads around this host's page cache
//! (O_DIRECT), synced and atomic writes, and OFD locks.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// Holds a record lock until dropped (closing the file releases it).
#[derive(Debug)]
pub struct RecordLock {
    _file: File,
}

/// Takes an exclusive OFD lock on `path` (created if missing), waiting at
/// most `timeout_ms`; `what` names what it serialises, for the error.
pub(super) fn lock_file(path: &Path, what: &str, timeout_ms: u64) -> Result<RecordLock> {
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

/// Alignment of uncached reads: buffer address, file offset and length
/// are multiples of it (covers 512-byte and 4 KiB logical blocks).
const DIRECT_ALIGN: usize = 4096;

/// Largest lease record [`read_uncached_whole`] accepts (a record is a few
/// hundred bytes plus the resource name).
pub(super) const MAX_RECORD: usize = 1 << 20;

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

pub(super) mod uncached {
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
