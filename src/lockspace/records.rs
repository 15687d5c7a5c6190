//! The records of a lockspace: the host table (one slot per host, read
//! and written in place, on the file or through RADOS), this host's CephFS
//! probe, and the lease records (one file each, replaced by rename, with
//! a short serialising lock).

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::file_io::{
    lock_file, read_uncached, read_uncached_whole, write_file_synced, RecordLock, MAX_RECORD,
};
use super::Lockspace;
use crate::error::{Error, Result};
use crate::hosts::{self, HostRecord, Slot, SLOT_SIZE};
use crate::lease::LeaseRecord;

impl Lockspace {
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
