//! May this host take leases now? The one check that the plugin (before
//! every acquire and in the pre-exec child), the qemu hook and `vmlease
//! status` make, on top of the daemon's status rules
//! ([`Status::check_protected`]).
#![forbid(unsafe_code)]

use std::path::Path;

use crate::clock::boottime_ms;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::process;

use super::Status;

/// What the protected check reads on the host: this boot's id, the
/// daemon's status file, whether the daemon's process runs, and the
/// boot-time clock. [`ThisHost`] reads the real ones; the simulator
/// (`tests/sim`) answers from its world.
pub trait StatusSource {
    /// This boot's id.
    fn boot_id(&self) -> Result<String>;
    /// The daemon's status in `state_dir`; None when there is none.
    fn read_status(&self, state_dir: &Path) -> Result<Option<Status>>;
    /// Does the daemon's main thread run (pid `pid`)?
    fn daemon_alive(&self, pid: u32) -> bool;
    /// CLOCK_BOOTTIME, in ms.
    fn now_ms(&self) -> u64;
}

/// The host this process runs on.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThisHost;

impl StatusSource for ThisHost {
    fn boot_id(&self) -> Result<String> {
        local_boot_id()
    }

    fn read_status(&self, state_dir: &Path) -> Result<Option<Status>> {
        Status::read(state_dir)
    }

    fn daemon_alive(&self, pid: u32) -> bool {
        // A zombie daemon (killed, not yet reaped) is dead. Here the
        // leader's own state is the right test, not `ProcId::liveness`
        // (may the process still write?): the daemon's loop, which fences
        // and pets, runs on its main thread, so without it the host is
        // unprotected whatever other threads remain.
        matches!(
            process::stat(pid),
            Ok(st) if st.state != 'Z' && st.state != 'X'
        )
    }

    fn now_ms(&self) -> u64 {
        boottime_ms()
    }
}

/// Checks that this host may take leases now: configured, daemon alive,
/// fresh, renewing, not fenced. Returns the daemon's status.
pub fn protected_status(cfg: &Config) -> Result<(u16, String, Status)> {
    protected_status_on(cfg, &ThisHost)
}

/// [`protected_status`] on the host `h` describes.
pub fn protected_status_on(
    cfg: &Config,
    h: &(impl StatusSource + ?Sized),
) -> Result<(u16, String, Status)> {
    let host_id = cfg.require_host_id()?;
    let boot_id = h.boot_id()?;
    let status = h.read_status(&cfg.state_dir)?.ok_or_else(|| {
        Error::Unprotected(format!(
            "the vmlease-watchdog daemon is not running (no status in {}); \
             a host that cannot fence itself must not run protected VMs",
            cfg.state_dir.display()
        ))
    })?;
    let daemon_alive = h.daemon_alive(status.daemon_pid);
    status
        .check_protected(cfg, &boot_id, h.now_ms(), daemon_alive)
        .map_err(|why| {
            Error::Unprotected(format!(
                "{why}; a host that cannot fence itself must not run protected VMs"
            ))
        })?;
    Ok((host_id, boot_id, status))
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`).
pub fn local_boot_id() -> Result<String> {
    process::boot_id().map_err(|e| Error::io("read boot id", "/proc/sys/kernel/random/boot_id", e))
}
