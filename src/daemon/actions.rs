//! What the daemon does to the host: kill a QEMU process (through a pidfd,
//! so a reused pid is never hit) and reset the machine. Behind a trait so
//! tests and the simulator can record instead of act.

use std::io::{self, Write};
use std::path::PathBuf;

use crate::config::ResetAction;
use crate::process::ProcId;

pub trait HostActions: Send {
    /// Sends SIGKILL to that exact process. Ok(false): already gone.
    fn kill(&mut self, p: ProcId) -> io::Result<bool>;
    /// Resets the host (does not return for a real reset).
    fn reset(&mut self, why: &str) -> io::Result<()>;
}

pub struct RealHost {
    pub reset_action: ResetAction,
}

fn pidfd_open(pid: u32) -> io::Result<libc::c_int> {
    // SAFETY: pidfd_open takes a pid and flags and returns an fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd as libc::c_int)
}

impl HostActions for RealHost {
    fn kill(&mut self, p: ProcId) -> io::Result<bool> {
        let fd = match pidfd_open(p.pid) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(false),
            Err(e) => return Err(e),
        };
        // The pidfd pins the process: if it is still the one we mean, the
        // signal reaches it and nothing else. A process whose main thread
        // has exited is still alive (its other threads may write): the
        // signal reaches them through the zombie leader's pidfd.
        let result = if p.is_alive() {
            // SAFETY: fd is a valid pidfd; a NULL siginfo is allowed.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd,
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            if rc == 0 {
                Ok(true)
            } else {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ESRCH) {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        } else {
            Ok(false)
        };
        // SAFETY: fd was returned by pidfd_open and is closed once.
        unsafe { libc::close(fd) };
        result
    }

    fn reset(&mut self, why: &str) -> io::Result<()> {
        match &self.reset_action {
            ResetAction::Sysrq => {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .open("/proc/sysrq-trigger")?;
                f.write_all(b"b")
            }
            ResetAction::Record(path) => record(path, why),
        }
    }
}

fn record(path: &PathBuf, why: &str) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(
        f,
        "reset boottime_ms={} pid={} reason={}",
        crate::clock::boottime_ms(),
        std::process::id(),
        why
    )?;
    f.sync_all()
}
