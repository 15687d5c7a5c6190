//! May this host take leases now? The one check that the plugin (before
//! every acquire and in the pre-exec child), the qemu hook and `vmlease
//! status` make, on top of the daemon's status rules
//! ([`Status::check_protected`]).
#![forbid(unsafe_code)]

use crate::clock::boottime_ms;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::process;

use super::Status;

/// Checks that this host may take leases now: configured, daemon alive,
/// fresh, renewing, not fenced. Returns the daemon's status.
pub fn protected_status(cfg: &Config) -> Result<(u16, String, Status)> {
    let host_id = cfg.require_host_id()?;
    let boot_id = local_boot_id()?;
    let status = Status::read(&cfg.state_dir)?.ok_or_else(|| {
        Error::Unprotected(format!(
            "the vmlease-watchdog daemon is not running (no status in {}); \
             a host that cannot fence itself must not run protected VMs",
            cfg.state_dir.display()
        ))
    })?;
    // A zombie daemon (killed, not yet reaped) is dead. Here the leader's
    // own state is the right test, not `ProcId::liveness` (may the process
    // still write?): the daemon's loop, which fences and pets, runs on its
    // main thread, so without it the host is unprotected whatever other
    // threads remain.
    let daemon_alive = matches!(
        process::stat(status.daemon_pid),
        Ok(st) if st.state != 'Z' && st.state != 'X'
    );
    status
        .check_protected(cfg, &boot_id, boottime_ms(), daemon_alive)
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
