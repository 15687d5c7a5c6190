//! The plugin's release and inquire, as decisions a driver runs step by
//! step (see [`super::acquire`]): which process, which records, and what
//! the registry and libvirt's lock state learn from the answers.
#![forbid(unsafe_code)]

use log::{info, warn};

use crate::config::Config;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::lease::Holder;
use crate::process::ProcId;
use crate::registry::Entries;
use crate::resource::Resource;
use crate::state_string::LockState;
use crate::store::Store;

use super::host::Host;
use super::Manager;

/// Finds the holder identity of `pid`: from /proc while it runs, else from
/// the registry (a process that already died).
pub fn proc_of<H: Host>(host: &H, pid: u32) -> Result<ProcId> {
    if let Ok(p) = host.proc_id(pid) {
        return Ok(p);
    }
    let found: Vec<ProcId> = host
        .registry()
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

/// A release in progress. With `want_state` (pause, migration) every
/// lease of the domain including the domain lease, returning the state;
/// without (hot-unplug) only the listed resources. One record after the
/// other.
#[derive(Debug)]
pub struct Release {
    pub p: ProcId,
    pub me: Holder,
    pub resources: Vec<Resource>,
    want_state: bool,
    done: usize,
    earlier: Vec<(String, u64)>,
    state: LockState,
    released: Vec<String>,
    first_err: Option<Error>,
}

impl Release {
    /// Up to the lockspace: which process, which records.
    pub fn begin<H: Host>(
        host: &H,
        cfg: &Config,
        m: &Manager,
        want_state: bool,
    ) -> Result<Release> {
        let host_id = cfg.require_host_id()?;
        let boot_id = host.boot_id()?;
        let p = proc_of(host, m.pid)?;
        Ok(Release {
            p,
            me: m.holder(host_id, &boot_id, p),
            resources: m.all_resources(cfg, want_state),
            want_state,
            done: 0,
            earlier: Vec::new(),
            state: LockState::default(),
            released: Vec::new(),
            first_err: None,
        })
    }

    /// The lockspace is open: what an earlier release of this process
    /// handed out.
    pub fn opened<H: Host>(&mut self, host: &H) {
        self.earlier = host
            .registry()
            .read(self.p)
            .ok()
            .flatten()
            .map(|e| e.released)
            .unwrap_or_default();
    }

    /// The record to release next; None when every one answered.
    pub fn next(&self) -> Option<&Resource> {
        self.resources.get(self.done)
    }

    /// The answer for [`Release::next`].
    pub fn record_done(&mut self, res: Result<Option<u64>>) {
        let r = &self.resources[self.done];
        self.done += 1;
        let me = &self.me;
        match res {
            Ok(Some(v)) => {
                info!(
                    "released {r} of domain '{}' ({}) pid {} at version {v}",
                    me.domain_name, me.domain_uuid, me.pid
                );
                self.state.versions.insert(r.key(), v);
                self.released.push(r.key());
            }
            Ok(None) => {
                // Released a moment ago by this process (libvirt releases
                // twice on some pauses): hand out the same version again.
                if let Some((_, v)) = self.earlier.iter().find(|(k, _)| *k == r.key()) {
                    self.state.versions.insert(r.key(), *v);
                }
            }
            Err(e) => {
                warn!("release of {r} of domain '{}' failed: {e}", me.domain_name);
                self.first_err.get_or_insert(e);
            }
        }
    }

    /// Every record answered: the registry learns what was released, and
    /// libvirt gets the state (with `want_state`) or the first error.
    pub fn finish<H: Host>(self, host: &H) -> Result<Option<String>> {
        let (reg, p) = (host.registry(), self.p);
        let _ = reg.remove_keys(p, &self.released);
        if !self.want_state {
            // A hot-unplug: plugging the disk in again later is a new
            // attachment, not a resume.
            let _ = reg.forget_acquired(p, &self.released);
        }
        if self.want_state {
            let versions: Vec<(String, u64)> = self
                .state
                .versions
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            if let Err(e) = reg.set_released(p, &versions) {
                warn!(
                    "cannot remember the released lease versions of pid {}: {e}",
                    self.me.pid
                );
            }
        }
        if let Some(e) = self.first_err {
            return Err(e);
        }
        Ok(self.want_state.then(|| self.state.encode()))
    }
}

/// An inquire: the state of every lease the domain holds now.
#[derive(Debug)]
pub struct Inquire {
    pub me: Holder,
    /// (key, resource name) of every lease of the domain.
    pub keys: Vec<(String, String)>,
}

impl Inquire {
    /// Up to the lockspace: which process, which records.
    pub fn begin<H: Host>(host: &H, cfg: &Config, m: &Manager) -> Result<Inquire> {
        let host_id = cfg.require_host_id()?;
        let boot_id = host.boot_id()?;
        let p = proc_of(host, m.pid)?;
        Ok(Inquire {
            me: m.holder(host_id, &boot_id, p),
            keys: m
                .all_resources(cfg, true)
                .iter()
                .map(|r| (r.key(), r.name.clone()))
                .collect(),
        })
    }
}

/// The records' reads, as one I/O call: the versions `me` holds.
pub fn held_versions<S: Store>(
    eng: &Engine<S>,
    keys: &[(String, String)],
    me: &Holder,
) -> Result<LockState> {
    let mut st = LockState::default();
    for (key, name) in keys {
        if let Some(v) = eng.held_version(key, name, me)? {
            st.versions.insert(key.clone(), v);
        }
    }
    Ok(st)
}
