//! Process file descriptors: a pidfd pins one process, so a signal sent
//! through it never reaches a later process that reused the pid, and it
//! turns readable when every thread of the process has exited. nix has
//! neither call; libc's raw syscalls do.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// pidfd_open(2) of `pid`. ESRCH: no such process.
pub fn open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and flags (none) and touches no
    // memory of ours; it returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// pidfd_send_signal(2) of SIGKILL to the process `pidfd` pins.
/// Ok(false): it has already exited.
pub fn kill(pidfd: &OwnedFd) -> io::Result<bool> {
    // SAFETY: the fd is an open pidfd for the borrow's duration; a NULL
    // siginfo is allowed (the kernel fills in a default), flags are 0.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ESRCH) {
        Ok(false)
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kills_the_pinned_child_and_then_reports_it_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let fd = open(child.id()).unwrap();
        assert!(kill(&fd).unwrap(), "the child was alive");
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        // Reaped: the pidfd still names it, and it is gone.
        assert!(!kill(&fd).unwrap(), "a reaped process is gone");
    }

    #[test]
    fn a_pid_that_does_not_exist_is_esrch() {
        // Beyond pid_max (at most 2^22 on Linux).
        let e = open(1 << 23).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ESRCH), "{e}");
    }
}
