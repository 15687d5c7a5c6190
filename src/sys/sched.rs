//! Memory locking and the scheduling class: the daemon locks its memory
//! and runs SCHED_RR so that neither paging nor load delays a renewal;
//! the RADOS worker it starts goes back to the normal class. nix has
//! mlockall but not sched_setscheduler; libc has it.
#![allow(unsafe_code)]

use std::io;

use nix::sys::mman::{mlockall, MlockAllFlags};

/// mlockall(MCL_CURRENT | MCL_FUTURE).
pub fn lock_memory() -> io::Result<()> {
    mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE).map_err(super::io_err)
}

fn set_scheduler(policy: libc::c_int, priority: libc::c_int) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a valid sched_param the kernel only reads; pid 0
    // is this process.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// SCHED_RR at priority 1 (needs CAP_SYS_NICE).
pub fn realtime() -> io::Result<()> {
    set_scheduler(libc::SCHED_RR, 1)
}

/// SCHED_OTHER (always allowed).
pub fn normal() -> io::Result<()> {
    set_scheduler(libc::SCHED_OTHER, 0)
}
