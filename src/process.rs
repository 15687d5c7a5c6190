//! Process identity and liveness. A QEMU process is named by its pid and
//! its start time, so that pid reuse can never keep a lease alive or make
//! a live one look dead.
#![forbid(unsafe_code)]

use std::fs;
use std::io;

/// A process of this boot: pid + start time (clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcId {
    pub pid: u32,
    pub start: u64,
}

/// What /proc says about a pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Some thread of the process still exists (running, stopped, or in
    /// uninterruptible sleep): it may still write.
    Alive,
    /// Every thread is gone (a zombie or reaped), or the pid now names
    /// another process.
    Dead,
}

/// The fields of `/proc/PID/stat` that liveness needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Field 22: start time, clock ticks since boot.
    pub start: u64,
    /// Field 3: the state of the thread-group leader (the pid's own
    /// thread), not of the process.
    pub state: char,
    /// Field 20: threads in the group, the leader included even as a
    /// zombie (0 while the group is being reaped).
    pub threads: u64,
}

/// Reads `/proc/PID/stat`.
pub fn stat(pid: u32) -> io::Result<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unparsable /proc/{pid}/stat"),
        )
    })
}

fn parse_stat(text: &str) -> Option<Stat> {
    // The command name (field 2) is in parentheses and may contain spaces
    // and parentheses: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state).
    let field = |n: usize| fields.get(n - 3);
    Some(Stat {
        state: field(3)?.chars().next()?,
        threads: field(20)?.parse().ok()?,
        start: field(22)?.parse().ok()?,
    })
}

impl ProcId {
    /// Identifies a running process now.
    pub fn of(pid: u32) -> io::Result<ProcId> {
        Ok(ProcId {
            pid,
            start: stat(pid)?.start,
        })
    }

    /// The one liveness rule of vmlease, from what `/proc/PID/stat` says
    /// (`None`: the pid does not exist). A process is dead only when its
    /// whole thread group is gone: the leader shows 'Z' as soon as the
    /// main thread has exited (pthread_exit, or SIGKILL while another
    /// thread sits in uninterruptible I/O), and the other threads may
    /// still write. The group is gone when the leader is a zombie ('Z',
    /// or 'X' while it is reaped) and no other thread is left: exactly
    /// when the kernel makes the process's pidfd readable (what the
    /// daemon's reaper waits for). A different start time means the pid
    /// was reused: the registered process is gone.
    pub fn judge(&self, st: Option<&Stat>) -> Liveness {
        match st {
            None => Liveness::Dead,
            Some(st) if st.start != self.start => Liveness::Dead,
            Some(st) if st.state == 'X' => Liveness::Dead,
            Some(st) if st.state == 'Z' && st.threads <= 1 => Liveness::Dead,
            Some(_) => Liveness::Alive,
        }
    }

    pub fn liveness(&self) -> Liveness {
        match stat(self.pid) {
            Ok(st) => self.judge(Some(&st)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.judge(None),
            // ESRCH and friends while the process is being reaped.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => self.judge(None),
            // Anything else (EACCES, EMFILE, ...) is not proof of death.
            Err(_) => Liveness::Alive,
        }
    }

    pub fn is_alive(&self) -> bool {
        self.liveness() == Liveness::Alive
    }
}

/// The kernel's boot id: changes at every boot.
pub fn boot_id() -> io::Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string())
}

/// The kernel host name.
pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// A random u64 from the kernel.
pub fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        use io::Read;
        if f.read_exact(&mut buf).is_ok() {
            return u64::from_le_bytes(buf);
        }
    }
    // Fallback: time and pid mixed; only used as an incarnation number.
    let t = crate::clock::boottime_ms();
    t.rotate_left(17) ^ (std::process::id() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_odd_command_names() {
        let line = "1234 (qemu) (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 4 0 987654 1000 200";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                start: 987654,
                state: 'S',
                threads: 4
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn self_is_alive_and_pid_reuse_is_dead() {
        let me = ProcId::of(std::process::id()).unwrap();
        assert!(me.is_alive());
        let other = ProcId {
            pid: me.pid,
            start: me.start + 1,
        };
        assert!(!other.is_alive(), "different start time must be dead");
        let gone = ProcId {
            pid: u32::MAX - 1,
            start: 1,
        };
        assert!(!gone.is_alive());
    }

    #[test]
    fn dead_only_when_every_thread_is_gone() {
        let p = ProcId { pid: 7, start: 100 };
        let st = |state, threads| Stat {
            start: 100,
            state,
            threads,
        };
        assert_eq!(p.judge(Some(&st('S', 1))), Liveness::Alive);
        assert_eq!(p.judge(Some(&st('D', 3))), Liveness::Alive);
        assert_eq!(p.judge(Some(&st('T', 1))), Liveness::Alive);
        // The main thread exited; another thread runs or sits in D.
        assert_eq!(p.judge(Some(&st('Z', 2))), Liveness::Alive);
        // Every thread gone: a zombie waiting for its parent, or one
        // being reaped.
        assert_eq!(p.judge(Some(&st('Z', 1))), Liveness::Dead);
        assert_eq!(p.judge(Some(&st('Z', 0))), Liveness::Dead);
        assert_eq!(p.judge(Some(&st('X', 0))), Liveness::Dead);
        // The pid names another process now, or none.
        let reused = Stat {
            start: 101,
            ..st('S', 3)
        };
        assert_eq!(p.judge(Some(&reused)), Liveness::Dead);
        assert_eq!(p.judge(None), Liveness::Dead);
    }

    #[test]
    fn zombie_is_dead() {
        let child = std::process::Command::new("true").spawn().unwrap();
        let id = ProcId::of(child.id()).unwrap_or(ProcId {
            pid: child.id(),
            start: 0,
        });
        // Wait until the child has exited but is not reaped.
        for _ in 0..500 {
            if !id.is_alive() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(
            !id.is_alive(),
            "an exited, unreaped child must count as dead"
        );
        drop(child);
    }

    #[test]
    fn boot_id_is_a_uuid() {
        assert!(crate::resource::is_uuid(&boot_id().unwrap()));
    }
}
