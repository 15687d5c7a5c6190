//! What the plugin asks of the host it runs on, besides the shared store:
//! the daemon's status (through [`StatusSource`]), the identity of local
//! processes, the local registry, and its own identity. [`Libvirtd`] is the
//! real host (procfs, the registry directory); the deterministic simulator
//! (`tests/sim`) answers from its world, so that it runs the plugin's own
//! decisions ([`super::acquire`], [`super::release`]).
#![forbid(unsafe_code)]

use crate::config::Config;
use crate::error::{Error, Result};
use crate::process::{self, ProcId};
use crate::registry::{Entries, Registry};
use crate::status::{self, protected_status_on, Status, StatusSource};

/// The host as the plugin's decisions see it.
pub trait Host: StatusSource {
    type Registry: Entries;

    /// The local registry.
    fn registry(&self) -> &Self::Registry;

    /// The identity of a running process (/proc/PID/stat); an error when
    /// it is gone (a zombie still has one).
    fn proc_id(&self, pid: u32) -> std::io::Result<ProcId>;

    /// The process that makes the calls (libvirtd), whose I/O threads may
    /// outlive its deadlines.
    fn caller(&self) -> Result<ProcId>;

    /// A fresh id for an acquire intent.
    fn intent_id(&self) -> u64;

    /// May this host take leases now? [`status::protected_status`] on this
    /// host. Only the simulator's mutation testing answers otherwise.
    fn protected(&self, cfg: &Config) -> Result<(u16, String, Status)> {
        protected_status_on(cfg, self)
    }
}

/// libvirtd's host: procfs, the registry in `state_dir`, the daemon's
/// status file.
#[derive(Debug, Clone)]
pub struct Libvirtd {
    pub registry: Registry,
}

impl Libvirtd {
    pub fn new(cfg: &Config) -> Libvirtd {
        Libvirtd {
            registry: Registry::new(&cfg.state_dir),
        }
    }
}

impl StatusSource for Libvirtd {
    fn boot_id(&self) -> Result<String> {
        status::ThisHost.boot_id()
    }

    fn read_status(&self, state_dir: &std::path::Path) -> Result<Option<Status>> {
        status::ThisHost.read_status(state_dir)
    }

    fn daemon_alive(&self, pid: u32) -> bool {
        status::ThisHost.daemon_alive(pid)
    }

    fn now_ms(&self) -> u64 {
        status::ThisHost.now_ms()
    }
}

impl Host for Libvirtd {
    type Registry = Registry;

    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn proc_id(&self, pid: u32) -> std::io::Result<ProcId> {
        ProcId::of(pid)
    }

    fn caller(&self) -> Result<ProcId> {
        ProcId::of(std::process::id()).map_err(|e| Error::io("identify libvirtd", "/proc/self", e))
    }

    fn intent_id(&self) -> u64 {
        process::random_u64()
    }
}
