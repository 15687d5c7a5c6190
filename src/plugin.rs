//! What the lock-driver plugin does, in safe Rust. The FFI module turns
//! libvirt's calls into calls on a [`Manager`]; everything it decides is
//! here and can be driven by tests without libvirtd.
//!
//! libvirt builds a fresh manager per operation (New, AddResource..., one
//! Acquire/Release/Inquire, Free), so nothing persists in memory: the
//! lockspace, the local registry and the daemon's status carry the state.
#![forbid(unsafe_code)]

use std::sync::Arc;

pub mod counters;
pub mod lock_failure;

use log::{info, warn};

use crate::config::Config;
use crate::deadline;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::lease::Holder;
use crate::lockspace::Lockspace;
use crate::process::{self, ProcId};
use crate::registry::{Entry, Registry};
use crate::resource::{Kind, Resource};
use crate::state_string::LockState;
use crate::status::{self, protected_status, Status};

/// libvirt flag values (lock_driver.h).
pub const NEW_STARTED: u32 = 1;
pub const RESOURCE_READONLY: u32 = 1;
pub const RESOURCE_SHARED: u32 = 2;
pub const ACQUIRE_REGISTER_ONLY: u32 = 1;
pub const ACQUIRE_RESTRICT: u32 = 2;

/// A typed parameter from libvirt (already copied out of C memory).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(Option<String>),
    Int(i64),
    UInt(u64),
    Double(f64),
    Uuid([u8; 16]),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub key: String,
    pub value: Value,
}

/// The domain an operation is about, and its resources.
#[derive(Debug, Clone, Default)]
pub struct Manager {
    pub uuid: String,
    pub name: String,
    pub id: u32,
    pub pid: u32,
    pub uri: Option<String>,
    pub new_started: bool,
    /// Leased resources (writable disks and `<lease>`s), in libvirt order.
    pub resources: Vec<Resource>,
    /// Writable, non-shared disks seen while disk leases are off.
    pub unleased_rw_disks: Vec<String>,
    /// Read-only disks seen (not leased), for logs.
    pub readonly_disks: usize,
}

impl Manager {
    /// drvNew: the object parameters (uuid, name, id, pid, uri).
    pub fn new(obj_type: u32, params: &[Param], flags: u32) -> Result<Manager> {
        if obj_type != 0 {
            return Err(Error::Invalid(format!(
                "unsupported lock object type {obj_type}"
            )));
        }
        if flags & !NEW_STARTED != 0 {
            return Err(Error::Invalid(format!(
                "unsupported flags 0x{flags:x} for New"
            )));
        }
        let mut m = Manager {
            new_started: flags & NEW_STARTED != 0,
            ..Manager::default()
        };
        let mut have_uuid = false;
        for p in params {
            match (p.key.as_str(), &p.value) {
                ("uuid", Value::Uuid(u)) => {
                    m.uuid = crate::resource::format_uuid(u);
                    have_uuid = true;
                }
                ("name", Value::Str(Some(s))) => m.name = s.clone(),
                ("id", v) => m.id = as_u32(v, "id")?,
                ("pid", v) => m.pid = as_u32(v, "pid")?,
                ("uri", Value::Str(s)) => m.uri = s.clone(),
                (k, v) => {
                    // Unknown parameters from a newer libvirt are logged,
                    // not fatal: the ones we need are checked below.
                    warn!("ignoring unknown lock manager parameter '{k}' ({v:?})");
                }
            }
        }
        if !have_uuid {
            return Err(Error::Invalid("libvirt passed no domain UUID".into()));
        }
        if m.name.is_empty() {
            return Err(Error::Invalid("libvirt passed no domain name".into()));
        }
        if m.pid == 0 {
            return Err(Error::Invalid(format!(
                "libvirt passed no QEMU pid for domain '{}'",
                m.name
            )));
        }
        Ok(m)
    }

    /// drvAddResource.
    pub fn add_resource(
        &mut self,
        cfg: &Config,
        kind: u32,
        name: &str,
        params: &[Param],
        flags: u32,
    ) -> Result<()> {
        if flags & !(RESOURCE_READONLY | RESOURCE_SHARED) != 0 {
            return Err(Error::Invalid(format!(
                "unsupported resource flags 0x{flags:x}"
            )));
        }
        if name.is_empty() {
            return Err(Error::Invalid("empty resource name".into()));
        }
        match kind {
            0 => {
                if flags & RESOURCE_READONLY != 0 {
                    self.readonly_disks += 1;
                    return Ok(());
                }
                let shared = flags & RESOURCE_SHARED != 0;
                if cfg.disk_leases {
                    self.resources.push(Resource::disk(name, shared));
                } else if !shared {
                    self.unleased_rw_disks.push(name.to_string());
                }
                Ok(())
            }
            1 => {
                let mut lockspace = None;
                for p in params {
                    match (p.key.as_str(), &p.value) {
                        ("lockspace", Value::Str(Some(s))) => lockspace = Some(s.clone()),
                        ("path", _) | ("offset", _) => {}
                        (k, _) => warn!("ignoring unknown lease parameter '{k}'"),
                    }
                }
                let ls = lockspace.ok_or_else(|| {
                    Error::Invalid(format!("<lease> '{name}' has no <lockspace>"))
                })?;
                self.resources.push(Resource::lease(&ls, name));
                Ok(())
            }
            k => Err(Error::Invalid(format!("unknown resource type {k}"))),
        }
    }

    /// Every lease this operation is about: the domain lease (when enabled)
    /// first, then the explicit ones.
    pub fn all_resources(&self, cfg: &Config, with_domain: bool) -> Vec<Resource> {
        let mut v = Vec::new();
        if cfg.domain_lease && with_domain {
            v.push(Resource::domain(&self.uuid));
        }
        v.extend(self.resources.iter().cloned());
        v
    }

    fn base_entry(&self, p: ProcId) -> Entry {
        Entry::new(p, &self.uuid, &self.name)
    }

    fn holder(&self, host_id: u16, boot_id: &str, p: ProcId) -> Holder {
        Holder {
            host_id,
            boot_id: boot_id.to_string(),
            pid: p.pid,
            pid_start: p.start,
            domain_uuid: self.uuid.clone(),
            domain_name: self.name.clone(),
        }
    }

    fn check_disk_policy(&self, cfg: &Config) -> Result<()> {
        if cfg.require_lease_for_disks
            && !self.unleased_rw_disks.is_empty()
            && !cfg.domain_lease
            && !self.resources.iter().any(|r| r.kind == Kind::Lease)
        {
            return Err(Error::Config(format!(
                "domain '{}' has writable disks ({}) but no lease covers them \
                 (disk_leases and domain_lease are off and the domain has no <lease>)",
                self.name,
                self.unleased_rw_disks.join(", ")
            )));
        }
        Ok(())
    }
}

impl Manager {
    /// A start (or an incoming migration) with nothing to lease: with
    /// domain_lease = false, a domain whose disks are network (RBD) or
    /// read-only ones, which libvirt never hands to a lock manager or
    /// which take no lease. It would run unprotected, silently.
    pub fn check_something_leased(&self, cfg: &Config) -> Result<()> {
        if self.all_resources(cfg, true).is_empty() && !cfg.allow_unleased_domains {
            return Err(Error::Config(format!(
                "domain '{}' would run with no lease: domain_lease = false and it has no writable \
                 file/block disk or <lease> to lease (network disks such as RBD are never passed to \
                 lock managers); set domain_lease = true, or allow_unleased_domains = true to run \
                 such domains unprotected",
                self.name
            )));
        }
        Ok(())
    }
}

fn as_u32(v: &Value, what: &str) -> Result<u32> {
    match v {
        Value::UInt(u) => u32::try_from(*u).ok(),
        Value::Int(i) => u32::try_from(*i).ok(),
        _ => None,
    }
    .ok_or_else(|| Error::Invalid(format!("bad '{what}' parameter {v:?}")))
}

/// The pre-exec child (REGISTER_ONLY): check protection and register the
/// process that is about to become QEMU. No threads, no locks, no shared
/// storage: local files only.
pub fn register(cfg: &Config, m: &Manager) -> Result<()> {
    protected_status(cfg)?;
    m.check_disk_policy(cfg)?;
    m.check_something_leased(cfg)?;
    let p = ProcId::of(m.pid)
        .map_err(|e| Error::io("identify process", format!("/proc/{}", m.pid), e))?;
    let mut e = m.base_entry(p);
    e.keys = m
        .all_resources(cfg, true)
        .iter()
        .map(|r| (r.key(), r.name.clone()))
        .collect();
    Registry::new(&cfg.state_dir).write(&e)?;
    Ok(())
}

/// An engine on the configured lockspace (opened with a deadline). `view`:
/// the daemon's observations, needed only to judge other holders.
fn engine(cfg: &Config, host_id: u16, boot_id: &str, view: Option<Status>) -> Result<Engine> {
    let dir = cfg.lockspace_dir.clone();
    let ls = deadline::run(cfg.io_timeout, "open lockspace", &dir.clone(), move || {
        Lockspace::open(&dir)
    })?;
    Ok(Engine {
        ls,
        host_id,
        boot_id: boot_id.to_string(),
        dead_ms: cfg.timing.host_dead_timeout,
        trust_unsafe_peers: cfg.trust_unsafe_peers,
        lock_timeout_ms: cfg.lock_timeout,
        view: view.map(Arc::new),
        process_alive: Arc::new(|p: ProcId| p.is_alive()),
    })
}

/// The real acquire in libvirtd, on behalf of QEMU's pid: all resources or
/// none, every record at once.
pub fn acquire(cfg: &Config, m: &Manager, state: Option<&str>) -> Result<()> {
    acquire_counting(cfg, m, state).map(|_| ())
}

/// [`acquire`], returning how many leases it took over from another
/// holder (for the metrics).
pub fn acquire_counting(cfg: &Config, m: &Manager, state: Option<&str>) -> Result<usize> {
    let (host_id, boot_id, status) = protected_status(cfg)?;
    m.check_disk_policy(cfg)?;
    let expect = match state {
        Some(s) => LockState::parse(s)?,
        None => LockState::default(),
    };
    let p = ProcId::of(m.pid)
        .map_err(|e| Error::io("identify QEMU process", format!("/proc/{}", m.pid), e))?;
    let mut resources = m.all_resources(cfg, true);
    resources.sort_by_key(|r| r.key());
    resources.dedup_by_key(|r| r.key());
    let reg = Registry::new(&cfg.state_dir);
    // Without a state (a start, a hotplug, or a resume after a pause whose
    // release failed: libvirt then keeps none), a lease this QEMU held
    // before must still have the version it held it at.
    let held_before: Vec<(String, u64)> = match (state, reg.read(p)?) {
        (None, Some(e)) => e.acquired,
        _ => Vec::new(),
    };
    let keys: Vec<(String, String)> = resources
        .iter()
        .map(|r| (r.key(), r.name.clone()))
        .collect();
    reg.add_keys(&m.base_entry(p), &keys)?;

    let eng = engine(cfg, host_id, &boot_id, Some(status))?;
    if let Some(st) = &eng.view {
        // Our lockspace_dir must hold the lockspace the daemon renews in.
        st.check_same_lockspace(&eng.ls)
            .map_err(Error::Unprotected)?;
    }
    let me = m.holder(host_id, &boot_id, p);
    let budget = cfg.io_timeout + cfg.lock_timeout;
    // libvirtd: the process whose I/O threads may outlive our deadline.
    let caller = ProcId::of(std::process::id())
        .map_err(|e| Error::io("identify libvirtd", "/proc/self", e))?;
    let base = m.base_entry(p);
    // One intent per record, all noted (in one registry write) before the
    // lockspace is touched: the daemon keeps sweeping this QEMU's leases
    // after it exits while any of these calls may still write.
    let ids: Vec<u64> = resources.iter().map(|_| process::random_u64()).collect();
    reg.begin_acquires(&base, &ids, caller)?;
    // Every record's read-modify-write starts at once, each on its own I/O
    // thread under its own record lock, deadline and cancel token: the
    // domain pays about one storage round trip, not one per resource.
    let mut calls = Vec::with_capacity(resources.len());
    for (r, &id) in resources.iter().zip(&ids) {
        let (e2, r2, me2, reg2) = (eng.clone(), r.clone(), me.clone(), reg.clone());
        let want = expect.versions.get(&r.key()).copied().or_else(|| {
            held_before
                .iter()
                .find(|(k, _)| *k == r.key())
                .map(|(_, v)| *v)
        });
        let path = eng.ls.lease_path(&r.key());
        let started = deadline::start_cancellable(budget, "acquire lease", &path, move |c| {
            let res = e2.acquire_for(&r2, &me2, want, c);
            let done = res.as_ref().ok().map(|a| (r2.key(), a.version));
            if let Err(e) = &res {
                if c.is_abandoned() {
                    warn!("abandoned acquire of {r2} for QEMU pid {}: {e}", me2.pid);
                }
            }
            if let Err(e) = reg2.end_acquire(me2.proc_id(), id, done) {
                warn!("{e}");
            }
            res
        });
        if started.is_err() {
            // Never started (an earlier call is stuck, or no thread).
            let _ = reg.end_acquire(p, id, None);
        }
        calls.push((r, started));
    }
    let mut newly = Vec::new();
    let mut first_err = None;
    let mut took_over = 0;
    for (r, started) in calls {
        match started.and_then(deadline::Pending::wait) {
            Ok(a) => {
                took_over += a.took_over.len();
                for (h, why) in &a.took_over {
                    warn!(
                        event = "takeover", host_id = host_id, resource:% = r,
                        holder_host = h.host_id, domain = m.name.as_str(),
                        domain_uuid = m.uuid.as_str();
                        "took over {r} from host {} (domain '{}' pid {}): {why}",
                        h.host_id, h.domain_name, h.pid
                    );
                }
                if a.changed {
                    info!(
                        "acquired {r} ({}) for domain '{}' ({}) pid {} version {}",
                        r.mode, m.name, m.uuid, m.pid, a.version
                    );
                    newly.push(r.clone());
                }
            }
            Err(e) => {
                warn!(
                    event = "lease-refused", host_id = host_id, resource:% = r,
                    domain = m.name.as_str(), domain_uuid = m.uuid.as_str();
                    "acquire of {r} for domain '{}' ({}) failed: {e}",
                    m.name, m.uuid
                );
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        // All or nothing: give back what this call took.
        rollback(&eng, budget, &newly, &me);
        return Err(e);
    }
    // A fresh acquisition makes any earlier release state obsolete.
    let _ = reg.set_released(p, &[]);
    Ok(took_over)
}

/// Releases what a failed acquire took, all records at once (one I/O
/// thread each, as the acquire).
fn rollback(eng: &Engine, budget: u64, newly: &[Resource], me: &Holder) {
    let calls: Vec<_> = newly
        .iter()
        .map(|r| {
            let (e2, key, name, me2) = (eng.clone(), r.key(), r.name.clone(), me.clone());
            let path = eng.ls.lease_path(&key);
            let started = deadline::start_cancellable(budget, "release lease", &path, move |_| {
                e2.release(&key, &name, &me2)
            });
            (r, started)
        })
        .collect();
    for (r, started) in calls {
        match started.and_then(deadline::Pending::wait) {
            Ok(_) => info!("rolled back {r}"),
            Err(e) => warn!(
                "could not roll back {r}: {e}; the watchdog daemon releases it when QEMU exits"
            ),
        }
    }
}

/// Finds the holder identity of `pid`: from /proc while it runs, else from
/// the registry (a process that already died).
fn proc_of(cfg: &Config, pid: u32) -> Result<ProcId> {
    if let Ok(p) = ProcId::of(pid) {
        return Ok(p);
    }
    let reg = Registry::new(&cfg.state_dir);
    let found: Vec<ProcId> = reg
        .list()?
        .into_iter()
        .filter_map(|e| e.ok())
        .map(|e| e.proc_id)
        .filter(|p| p.pid == pid)
        .collect();
    match found.as_slice() {
        [p] => Ok(*p),
        [] => Err(Error::Invalid(format!(
            "QEMU pid {pid} is neither running nor registered"
        ))),
        _ => Err(Error::Invalid(format!(
            "QEMU pid {pid} is registered more than once"
        ))),
    }
}

/// Release: with `want_state` (pause, migration) every lease of the domain
/// including the domain lease, returning the state; without (hot-unplug)
/// only the listed resources.
pub fn release(cfg: &Config, m: &Manager, want_state: bool) -> Result<Option<String>> {
    let host_id = cfg.require_host_id()?;
    let boot_id = status::local_boot_id()?;
    let p = proc_of(cfg, m.pid)?;
    let me = m.holder(host_id, &boot_id, p);
    let eng = engine(cfg, host_id, &boot_id, None)?;
    let budget = cfg.io_timeout + cfg.lock_timeout;
    let reg = Registry::new(&cfg.state_dir);
    let earlier: Vec<(String, u64)> = reg
        .read(p)
        .ok()
        .flatten()
        .map(|e| e.released)
        .unwrap_or_default();
    let mut state = LockState::default();
    let mut released = Vec::new();
    let mut first_err = None;
    for r in m.all_resources(cfg, want_state) {
        let (e2, key, name, me2) = (eng.clone(), r.key(), r.name.clone(), me.clone());
        let path = eng.ls.lease_path(&key);
        match deadline::run(budget, "release lease", &path, move || {
            e2.release(&key, &name, &me2)
        }) {
            Ok(Some(v)) => {
                info!(
                    "released {r} of domain '{}' ({}) pid {} at version {v}",
                    m.name, m.uuid, m.pid
                );
                state.versions.insert(r.key(), v);
                released.push(r.key());
            }
            Ok(None) => {
                // Released a moment ago by this process (libvirt releases
                // twice on some pauses): hand out the same version again.
                if let Some((_, v)) = earlier.iter().find(|(k, _)| *k == r.key()) {
                    state.versions.insert(r.key(), *v);
                }
            }
            Err(e) => {
                warn!("release of {r} of domain '{}' failed: {e}", m.name);
                first_err.get_or_insert(e);
            }
        }
    }
    let _ = reg.remove_keys(p, &released);
    if !want_state {
        // A hot-unplug: plugging the disk in again later is a new
        // attachment, not a resume.
        let _ = reg.forget_acquired(p, &released);
    }
    if want_state {
        let versions: Vec<(String, u64)> = state
            .versions
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        if let Err(e) = reg.set_released(p, &versions) {
            warn!(
                "cannot remember the released lease versions of pid {}: {e}",
                m.pid
            );
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(want_state.then(|| state.encode()))
}

/// Inquire: the state of every lease the domain holds now.
pub fn inquire(cfg: &Config, m: &Manager) -> Result<String> {
    let host_id = cfg.require_host_id()?;
    let boot_id = status::local_boot_id()?;
    let p = proc_of(cfg, m.pid)?;
    let me = m.holder(host_id, &boot_id, p);
    let resources = m.all_resources(cfg, true);
    let eng = engine(cfg, host_id, &boot_id, None)?;
    let dir = cfg.lockspace_dir.clone();
    let versions = deadline::run(cfg.io_timeout, "inquire leases", &dir, move || {
        let mut st = LockState::default();
        for r in resources {
            if let Some(v) = eng.held_version(&r.key(), &r.name, &me)? {
                st.versions.insert(r.key(), v);
            }
        }
        Ok(st)
    })?;
    Ok(versions.encode())
}

#[cfg(test)]
mod tests;
