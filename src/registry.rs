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
use std::sync::{Arc, Mutex, MutexGuard};

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
    /// (key, version) of every lease this process acquired: a resume after
    /// a pause whose release failed (libvirt then keeps no state) must
    /// find these versions unchanged.
    pub acquired: Vec<(String, u64)>,
    /// Acquires in flight for this process. The daemon keeps the entry of
    /// an exited QEMU, and sweeps its leases, while one of them may still
    /// write (its caller process lives).
    pub acquiring: Vec<Intent>,
}

/// One acquire call in flight: its id and the process making it
/// (libvirtd, whose abandoned I/O thread may still be stuck on storage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intent {
    pub id: u64,
    pub caller: ProcId,
}

impl Entry {
    /// A fresh entry with no keys.
    pub fn new(proc_id: ProcId, domain_uuid: &str, domain_name: &str) -> Entry {
        Entry {
            proc_id,
            domain_uuid: domain_uuid.to_string(),
            domain_name: domain_name.to_string(),
            keys: Vec::new(),
            released: Vec::new(),
            acquired: Vec::new(),
            acquiring: Vec::new(),
        }
    }

    /// In-flight acquires whose caller still runs (`alive` judges).
    pub fn live_intents(&self, alive: &dyn Fn(ProcId) -> bool) -> Vec<Intent> {
        self.acquiring
            .iter()
            .filter(|i| alive(i.caller))
            .copied()
            .collect()
    }

    /// The version this process last acquired `key` at.
    pub fn acquired_version(&self, key: &str) -> Option<u64> {
        self.acquired
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
    }

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
        for (k, v) in &self.acquired {
            w.field("acquired", format!("{} {v}", codec::encode(k)));
        }
        for i in &self.acquiring {
            w.field(
                "acquiring",
                format!("{} {} {}", i.id, i.caller.pid, i.caller.start),
            );
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
        let mut acquired = Vec::new();
        for r in f.all("acquired") {
            let (a, b) = r
                .split_once(' ')
                .ok_or_else(|| format!("bad acquired line '{r}'"))?;
            let v = b
                .parse::<u64>()
                .map_err(|_| format!("bad acquired version '{b}'"))?;
            acquired.push((codec::decode(a)?, v));
        }
        let mut acquiring = Vec::new();
        for r in f.all("acquiring") {
            let n: Vec<u64> = r
                .split(' ')
                .map(|x| x.parse::<u64>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| format!("bad acquiring line '{r}'"))?;
            let [id, pid, start] = n[..] else {
                return Err(format!("bad acquiring line '{r}'"));
            };
            acquiring.push(Intent {
                id,
                caller: ProcId {
                    pid: u32::try_from(pid).map_err(|_| "pid out of range")?,
                    start,
                },
            });
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
            acquired,
            acquiring,
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

    /// Writes an entry (atomically: a temp file renamed over it). Usable
    /// in the pre-exec child: no locks, no threads, local tmpfs only.
    ///
    /// Not fsynced: an entry only means something within the boot that
    /// wrote it (its processes, its daemon), and a crash of a process
    /// loses nothing from the page cache. A power loss ends the boot, and
    /// with it every QEMU the entries name; the lease records (which are
    /// synced) then free by the takeover rule for a new boot id.
    pub fn write(&self, e: &Entry) -> Result<()> {
        self.ensure_dir()?;
        crate::lockspace::write_atomic_unsynced(&self.path(e.proc_id), &e.encode())
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

    /// [`Entries::begin_acquires`] for one call.
    pub fn begin_acquire(&self, base: &Entry, id: u64, caller: ProcId) -> Result<()> {
        Entries::begin_acquires(self, base, &[id], caller)
    }

    /// [`Entries::end_acquire`].
    pub fn end_acquire(&self, p: ProcId, id: u64, acquired: Option<(String, u64)>) -> Result<()> {
        Entries::end_acquire(self, p, id, acquired)
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

/// The registry as the plugin uses it: the entries and one
/// read-modify-write under the registry lock, on which the plugin's
/// changes are built. [`Registry`] (a directory on tmpfs) is the real one;
/// the simulator (`tests/sim`) keeps its entries in memory.
pub trait Entries {
    /// One process's entry.
    fn read(&self, p: ProcId) -> Result<Option<Entry>>;

    /// Every entry (damaged ones as errors).
    fn list(&self) -> Result<Vec<std::result::Result<Entry, Error>>>;

    /// Writes an entry without the registry lock (the pre-exec child).
    fn write(&self, e: &Entry) -> Result<()>;

    /// Under the registry lock: applies `f` to `p`'s entry and writes it.
    /// A missing entry starts from `base` (when given) or is left alone.
    fn update(&self, p: ProcId, base: Option<&Entry>, f: &mut dyn FnMut(&mut Entry)) -> Result<()>;

    /// Adds keys to an entry (creating it if needed). Used by the plugin
    /// in libvirtd before acquiring.
    fn add_keys(&self, base: &Entry, keys: &[(String, String)]) -> Result<()> {
        self.update(base.proc_id, Some(base), &mut |e| {
            for k in keys {
                if !e.keys.contains(k) {
                    e.keys.push(k.clone());
                }
            }
        })
    }

    /// Remembers the versions a release handed to libvirt (see `released`).
    fn set_released(&self, p: ProcId, versions: &[(String, u64)]) -> Result<()> {
        self.update(p, None, &mut |e| e.released = versions.to_vec())
    }

    /// Notes acquires about to start (before any lockspace write), one per
    /// record of a domain, on behalf of `base`'s process by `caller`, in
    /// one write.
    fn begin_acquires(&self, base: &Entry, ids: &[u64], caller: ProcId) -> Result<()> {
        self.update(base.proc_id, Some(base), &mut |e| {
            e.acquiring
                .extend(ids.iter().map(|&id| Intent { id, caller }))
        })
    }

    /// What the plugin notes before a domain's acquire touches the
    /// lockspace, in one write: the keys it may take (as
    /// [`Entries::add_keys`]) and one intent per record (as
    /// [`Entries::begin_acquires`]).
    fn begin_domain_acquire(
        &self,
        base: &Entry,
        keys: &[(String, String)],
        ids: &[u64],
        caller: ProcId,
    ) -> Result<()> {
        self.update(base.proc_id, Some(base), &mut |e| {
            for k in keys {
                if !e.keys.contains(k) {
                    e.keys.push(k.clone());
                }
            }
            e.acquiring
                .extend(ids.iter().map(|&id| Intent { id, caller }))
        })
    }

    /// Ends an acquire noted by [`Entries::begin_acquires`]; `acquired`:
    /// the key and version it took. Written once the call is over (its
    /// last lockspace write done), by its I/O thread when its caller no
    /// longer waits for it ([`IntentEnds`]).
    fn end_acquire(&self, p: ProcId, id: u64, acquired: Option<(String, u64)>) -> Result<()> {
        self.end_acquires(p, &[(id, acquired)], false)
    }

    /// Ends several acquires in one write, as [`Entries::end_acquire`]
    /// each; with `clear_released`, also forgets the last release state (a
    /// fresh acquisition makes it obsolete).
    fn end_acquires(&self, p: ProcId, ends: &[End], clear_released: bool) -> Result<()> {
        self.update(p, None, &mut |e| {
            for (id, acquired) in ends {
                e.acquiring.retain(|i| i.id != *id);
                if let Some((k, v)) = acquired {
                    e.acquired.retain(|(x, _)| x != k);
                    e.acquired.push((k.clone(), *v));
                }
            }
            if clear_released {
                e.released.clear();
            }
        })
    }

    /// Forgets the acquired versions of `keys` (a hot-unplug: a later
    /// hotplug of the same disk is a new attachment).
    fn forget_acquired(&self, p: ProcId, keys: &[String]) -> Result<()> {
        self.update(p, None, &mut |e| {
            e.acquired.retain(|(k, _)| !keys.contains(k))
        })
    }

    /// Removes keys after a confirmed release.
    fn remove_keys(&self, p: ProcId, keys: &[String]) -> Result<()> {
        self.update(p, None, &mut |e| e.keys.retain(|(k, _)| !keys.contains(k)))
    }
}

impl Entries for Registry {
    fn read(&self, p: ProcId) -> Result<Option<Entry>> {
        Registry::read(self, p)
    }

    fn list(&self) -> Result<Vec<std::result::Result<Entry, Error>>> {
        Registry::list(self)
    }

    fn write(&self, e: &Entry) -> Result<()> {
        Registry::write(self, e)
    }

    fn update(&self, p: ProcId, base: Option<&Entry>, f: &mut dyn FnMut(&mut Entry)) -> Result<()> {
        let _g = self.lock()?;
        let Some(mut e) = self.read(p)?.or_else(|| base.cloned()) else {
            return Ok(());
        };
        f(&mut e);
        self.write(&e)
    }
}

#[derive(Debug)]
pub struct RegistryLock {
    _f: fs::File,
}

/// The end of one acquire call: its intent id and, when it took the lease,
/// the key and version.
pub type End = (u64, Option<(String, u64)>);

/// Where the I/O threads of one domain's acquire leave the ends of their
/// intents while their caller still waits, so that the caller writes them
/// all in one registry write ([`Entries::end_acquires`]) instead of one
/// locked write per record. Once the caller has stopped waiting
/// ([`IntentEnds::close`]), a call still running (abandoned at its
/// deadline, stuck on storage) ends its own intent: each end is written
/// exactly once, by whoever holds it, and only after the call's last
/// write to the lockspace, so the daemon's reaper sees the intent while
/// any of the call's record writes may still land.
#[derive(Debug, Clone, Default)]
pub struct IntentEnds(Arc<Mutex<Handover>>);

#[derive(Debug, Default)]
struct Handover {
    closed: bool,
    ends: Vec<End>,
}

impl IntentEnds {
    fn state(&self) -> MutexGuard<'_, Handover> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the intent `id` of `p`'s acquire (the call is over): handed to
    /// the caller while it collects, else written here.
    pub fn end<R: Entries + ?Sized>(
        &self,
        reg: &R,
        p: ProcId,
        id: u64,
        acquired: Option<(String, u64)>,
    ) -> Result<()> {
        let mut s = self.state();
        if !s.closed {
            s.ends.push((id, acquired));
            return Ok(());
        }
        drop(s);
        reg.end_acquire(p, id, acquired)
    }

    /// The caller stops collecting: returns the ends handed over so far
    /// (the caller writes them); later ones are written by their calls.
    pub fn close(&self) -> Vec<End> {
        let mut s = self.state();
        s.closed = true;
        std::mem::take(&mut s.ends)
    }

    /// Closed: the caller no longer collects.
    pub fn is_closed(&self) -> bool {
        self.state().closed
    }
}

#[cfg(test)]
mod tests;
