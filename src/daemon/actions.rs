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

impl HostActions for RealHost {
    fn kill(&mut self, p: ProcId) -> io::Result<bool> {
        let fd = match crate::sys::pidfd::open(p.pid) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(false),
            Err(e) => return Err(e),
        };
        // The pidfd pins the process: if it is still the one we mean, the
        // signal reaches it and nothing else. A process whose main thread
        // has exited is still alive (its other threads may write): the
        // signal reaches them through the zombie leader's pidfd.
        if p.is_alive() {
            crate::sys::pidfd::kill(&fd)
        } else {
            Ok(false)
        }
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
