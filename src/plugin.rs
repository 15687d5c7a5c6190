//! What the lock-driver plugin does, in safe Rust. The FFI module turns
//! libvirt's calls into calls on a [`Manager`]; everything it decides is
//! here and can be driven by tests without libvirtd.
//!
//! libvirt builds a fresh manager per operation (New, AddResource..., one
//! Acquire/Release/Inquire, Free), so nothing persists in memory: the
//! lockspace, the local registry and the daemon's status carry the state.
#![forbid(unsafe_code)]

use std::sync::Arc;

pub mod acquire;
pub mod counters;
pub mod host;
pub mod lock_failure;
pub mod release;

use log::warn;

use crate::config::Config;
use crate::deadline;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::lease::Holder;
use crate::lockspace::Lockspace;
use crate::process::ProcId;
use crate::registry::{Entries, Entry};
use crate::resource::{Kind, Resource};
use crate::status::Status;

use acquire::Acquire;
pub use host::{Host, Libvirtd};
use release::{Inquire, Release};

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

    pub fn base_entry(&self, p: ProcId) -> Entry {
        Entry::new(p, &self.uuid, &self.name)
    }

    pub fn holder(&self, host_id: u16, boot_id: &str, p: ProcId) -> Holder {
        Holder {
            host_id,
            boot_id: boot_id.to_string(),
            pid: p.pid,
            pid_start: p.start,
            domain_uuid: self.uuid.clone(),
            domain_name: self.name.clone(),
        }
    }

    pub fn check_disk_policy(&self, cfg: &Config) -> Result<()> {
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
    register_on(&Libvirtd::new(cfg), cfg, m)
}

/// [`register`] on `host`.
pub fn register_on<H: Host>(host: &H, cfg: &Config, m: &Manager) -> Result<()> {
    host.protected(cfg)?;
    m.check_disk_policy(cfg)?;
    m.check_something_leased(cfg)?;
    let p = host
        .proc_id(m.pid)
        .map_err(|e| Error::io("identify process", format!("/proc/{}", m.pid), e))?;
    let mut e = m.base_entry(p);
    e.keys = m
        .all_resources(cfg, true)
        .iter()
        .map(|r| (r.key(), r.name.clone()))
        .collect();
    host.registry().write(&e)
}

/// An engine on the configured lockspace (opened with a deadline). `view`:
/// the daemon's observations, needed only to judge other holders.
fn engine(cfg: &Config, host_id: u16, boot_id: &str, view: Option<Status>) -> Result<Engine> {
    let dir = cfg.lockspace_dir.clone();
    let expect = view.as_ref().map(|s| s.lockspace_uuid.clone());
    let ls = deadline::run(cfg.io_timeout, "open lockspace", &dir.clone(), move || {
        Lockspace::open_cached(&dir, expect.as_deref())
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
/// none, every record at once ([`acquire::Acquire`] decides).
pub fn acquire(cfg: &Config, m: &Manager, state: Option<&str>) -> Result<()> {
    acquire_counting(cfg, m, state).map(|_| ())
}

/// [`acquire`], returning how many leases it took over from another
/// holder (for the metrics).
pub fn acquire_counting(cfg: &Config, m: &Manager, state: Option<&str>) -> Result<usize> {
    let host = Libvirtd::new(cfg);
    let mut op = Acquire::begin(&host, cfg, m, state)?;
    let eng = engine(cfg, op.host_id, &op.boot_id, Some(op.view.clone()))?;
    op.opened(&host, &eng.ls)?;
    let budget = cfg.io_timeout + cfg.lock_timeout;
    // Every record's read-modify-write starts at once, each on its own I/O
    // thread under its own record lock, deadline and cancel token: the
    // domain pays about one storage round trip, not one per resource.
    // Each call hands its intent's end to this thread while it waits
    // (`Acquire::finish` writes them all at once); a call still running
    // after that ends its own.
    let mut calls = Vec::with_capacity(op.calls.len());
    for c in &op.calls {
        let (e2, c2, me2, reg2) = (eng.clone(), c.clone(), op.me.clone(), host.registry.clone());
        let ends2 = op.ends.clone();
        let path = eng.ls.lease_path(&c.resource.key());
        calls.push(deadline::start_cancellable(
            budget,
            "acquire lease",
            &path,
            move |cancel| acquire::run_record(&e2, &reg2, &ends2, &c2, &me2, cancel),
        ));
    }
    for (i, started) in calls.into_iter().enumerate() {
        match started {
            Ok(pending) => op.record_done(i, pending.wait()),
            // Never started (an earlier call is stuck, or no thread).
            Err(e) => op.not_started(&host, i, e),
        }
    }
    let me = op.me.clone();
    op.finish(&host).map_err(|rb| {
        rollback(&eng, budget, &rb.newly, &me);
        rb.error
    })
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
        acquire::rolled_back(r, &started.and_then(deadline::Pending::wait));
    }
}

/// Release: with `want_state` (pause, migration) every lease of the domain
/// including the domain lease, returning the state; without (hot-unplug)
/// only the listed resources ([`release::Release`] decides).
pub fn release(cfg: &Config, m: &Manager, want_state: bool) -> Result<Option<String>> {
    let host = Libvirtd::new(cfg);
    let mut op = Release::begin(&host, cfg, m, want_state)?;
    let eng = engine(cfg, op.me.host_id, &op.me.boot_id, None)?;
    let budget = cfg.io_timeout + cfg.lock_timeout;
    op.opened(&host);
    while let Some(r) = op.next() {
        let (e2, key, name, me2) = (eng.clone(), r.key(), r.name.clone(), op.me.clone());
        let path = eng.ls.lease_path(&key);
        let res = deadline::run(budget, "release lease", &path, move || {
            e2.release(&key, &name, &me2)
        });
        op.record_done(res);
    }
    op.finish(&host)
}

/// Inquire: the state of every lease the domain holds now.
pub fn inquire(cfg: &Config, m: &Manager) -> Result<String> {
    let host = Libvirtd::new(cfg);
    let op = Inquire::begin(&host, cfg, m)?;
    let eng = engine(cfg, op.me.host_id, &op.me.boot_id, None)?;
    let dir = cfg.lockspace_dir.clone();
    let versions = deadline::run(cfg.io_timeout, "inquire leases", &dir, move || {
        release::held_versions(&eng, &op.keys, &op.me)
    })?;
    Ok(versions.encode())
}

#[cfg(test)]
mod tests;
