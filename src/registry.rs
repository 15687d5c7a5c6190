//! The local process registry: which QEMU processes of this host may hold
//! which leases. One file per process, `<state_dir>/procs/<pid>-<start>`,
//! created in libvirt's pre-exec child (register) and extended by the
//! plugin before every acquire, so that the watchdog daemon can release the
//! leases of a QEMU that died and kill the leased ones when fencing.
//!
//! A key is added *before* the lease is taken and removed only after a
//! confirmed release, so the registry may over-list but never under-list.
#![forbid(unsafe_code)]

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::codec;
use crate::error::{Error, Result};
use crate::process::ProcId;

const MAGIC: &str = "vmlease-proc v1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub proc_id: ProcId,
    pub domain_uuid: String,
    pub domain_name: String,
    /// (key, resource name) of every lease this process may hold.
    pub keys: Vec<(String, String)>,
    /// (key, version) handed to libvirt by the last release with a state:
    /// libvirt may release twice on one pause (the STOP event and the
    /// pause itself) and keeps the second state, so the second release
    /// must return the same versions.
    pub released: Vec<(String, u64)>,
}

impl Entry {
    pub fn file_name(&self) -> String {
        format!("{}-{}", self.proc_id.pid, self.proc_id.start)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = codec::Writer::new(MAGIC);
        w.field("pid", self.proc_id.pid)
            .field("pid_start", self.proc_id.start)
            .field("domain_uuid", &self.domain_uuid)
            .field("domain_name", &self.domain_name);
        for (k, r) in &self.keys {
            w.field("key", format!("{} {}", codec::encode(k), codec::encode(r)));
        }
        for (k, v) in &self.released {
            w.field("released", format!("{} {v}", codec::encode(k)));
        }
        w.finish()
    }

    pub fn decode(data: &[u8]) -> std::result::Result<Entry, String> {
        let f = codec::parse(data, MAGIC)?;
        let mut keys = Vec::new();
        for k in f.all("key") {
            let (a, b) = k
                .split_once(' ')
                .ok_or_else(|| format!("bad key line '{k}'"))?;
            keys.push((codec::decode(a)?, codec::decode(b)?));
        }
        let mut released = Vec::new();
        for r in f.all("released") {
            let (a, b) = r
                .split_once(' ')
                .ok_or_else(|| format!("bad released line '{r}'"))?;
            let v = b
                .parse::<u64>()
                .map_err(|_| format!("bad released version '{b}'"))?;
            released.push((codec::decode(a)?, v));
        }
        Ok(Entry {
            proc_id: ProcId {
                pid: u32::try_from(f.req_u64("pid")?).map_err(|_| "pid out of range")?,
                start: f.req_u64("pid_start")?,
            },
            domain_uuid: f.req("domain_uuid")?.to_string(),
            domain_name: f.req("domain_name")?.to_string(),
            keys,
            released,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Registry {
    pub dir: PathBuf,
}

impl Registry {
    pub fn new(state_dir: &Path) -> Registry {
        Registry {
            dir: state_dir.join("procs"),
        }
    }

    fn path(&self, p: ProcId) -> PathBuf {
        self.dir.join(format!("{}-{}", p.pid, p.start))
    }

    pub fn ensure_dir(&self) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(|e| Error::io("create registry", &self.dir, e))
    }

    /// Writes an entry (atomically). Usable in the pre-exec child: no
    /// locks, no threads, local tmpfs only.
    pub fn write(&self, e: &Entry) -> Result<()> {
        self.ensure_dir()?;
        crate::lockspace::write_atomic(&self.path(e.proc_id), &e.encode())
    }

    pub fn read(&self, p: ProcId) -> Result<Option<Entry>> {
        let path = self.path(p);
        match fs::read(&path) {
            Ok(d) => Entry::decode(&d)
                .map(Some)
                .map_err(|reason| Error::Corrupt { path, reason }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read registry entry", path, e)),
        }
    }

    pub fn remove(&self, p: ProcId) -> Result<()> {
        let path = self.path(p);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove registry entry", path, e)),
        }
    }

    /// Every entry; damaged ones are returned as errors with their path so
    /// the caller can report them (never silently dropped).
    pub fn list(&self) -> Result<Vec<std::result::Result<Entry, Error>>> {
        let mut out = Vec::new();
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io("list registry", &self.dir, e)),
        };
        for ent in rd {
            let ent = ent.map_err(|e| Error::io("list registry", &self.dir, e))?;
            let name = ent.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let path = ent.path();
            out.push(match fs::read(&path) {
                Ok(d) => Entry::decode(&d).map_err(|reason| Error::Corrupt { path, reason }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => Err(Error::io("read registry entry", path, e)),
            });
        }
        Ok(out)
    }

    /// Adds keys to an entry (creating it if needed), under the registry
    /// lock. Used by the plugin in libvirtd before acquiring.
    pub fn add_keys(&self, base: &Entry, keys: &[(String, String)]) -> Result<()> {
        let _g = self.lock()?;
        let mut e = self.read(base.proc_id)?.unwrap_or_else(|| base.clone());
        for k in keys {
            if !e.keys.contains(k) {
                e.keys.push(k.clone());
            }
        }
        self.write(&e)
    }

    /// Remembers the versions a release handed to libvirt (see `released`).
    pub fn set_released(&self, p: ProcId, versions: &[(String, u64)]) -> Result<()> {
        let _g = self.lock()?;
        if let Some(mut e) = self.read(p)? {
            e.released = versions.to_vec();
            self.write(&e)?;
        }
        Ok(())
    }

    /// Removes keys after a confirmed release.
    pub fn remove_keys(&self, p: ProcId, keys: &[String]) -> Result<()> {
        let _g = self.lock()?;
        if let Some(mut e) = self.read(p)? {
            e.keys.retain(|(k, _)| !keys.contains(k));
            self.write(&e)?;
        }
        Ok(())
    }

    /// The registry lock (an OFD lock on `procs/.lock`), serialising the
    /// plugin threads and the daemon. Never taken in the pre-exec child.
    pub fn lock(&self) -> Result<RegistryLock> {
        self.ensure_dir()?;
        let path = self.dir.join(".lock");
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("open registry lock", &path, e))?;
        crate::lockspace::ofd_lock_wait(&f).map_err(|e| Error::io("lock registry", &path, e))?;
        Ok(RegistryLock { _f: f })
    }
}

#[derive(Debug)]
pub struct RegistryLock {
    _f: fs::File,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_roundtrip_and_keys_accumulate() {
        let d = std::env::temp_dir().join(format!("vmlease-reg-{}", crate::process::random_u64()));
        let reg = Registry::new(&d);
        let e = Entry {
            proc_id: ProcId { pid: 42, start: 7 },
            domain_uuid: "u".into(),
            domain_name: "my vm".into(),
            keys: vec![],
            released: vec![("domain-u".into(), 4)],
        };
        reg.write(&e).unwrap();
        reg.add_keys(&e, &[("disk-a".into(), "/a b".into())])
            .unwrap();
        reg.add_keys(
            &e,
            &[
                ("disk-a".into(), "/a b".into()),
                ("domain-u".into(), "u".into()),
            ],
        )
        .unwrap();
        let got = reg.read(e.proc_id).unwrap().unwrap();
        assert_eq!(got.keys.len(), 2);
        assert_eq!(got.released, vec![("domain-u".to_string(), 4)]);
        reg.remove_keys(e.proc_id, &["disk-a".into()]).unwrap();
        assert_eq!(reg.read(e.proc_id).unwrap().unwrap().keys.len(), 1);
        fs::write(reg.dir.join("9-9"), b"junk").unwrap();
        let all = reg.list().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all.iter().filter(|r| r.is_err()).count(), 1);
        fs::remove_dir_all(&d).unwrap();
    }
}
