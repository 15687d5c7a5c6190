//! `<on_lockfailure>`: what libvirt asks a lock manager to do with a
//! domain whose lease is lost, and what vmlease does with each value.
//!
//! libvirt hands the value to every acquire (`virDomainLockFailureAction`,
//! 0..=4). sanlock is the reference: it honours poweroff and pause through
//! a kill path and refuses restart and ignore at start. vmlease:
//!
//! * `default`, `poweroff`: the fence kills the QEMU process (SIGKILL),
//!   as it always did.
//! * `pause`: accepted, but the fence kills too. A lease is lost when the
//!   host's renewals fail (its storage is gone) or a network fence fires;
//!   pausing goes through QEMU's monitor, which first drains the block
//!   layer - on failed storage that drain hangs, the guest's queued writes
//!   stay queued, and they would reach the disk whenever the storage came
//!   back, after another host took the VM over. Only the kill ends a
//!   QEMU's I/O within the kill timeout; the start logs that pause acts
//!   as poweroff.
//! * `restart`: refused at start (as sanlock does): a host that lost its
//!   lease is fenced and starts no VM, so a restart there would fail.
//! * `ignore`: refused at start: a VM that goes on writing after its host
//!   lost the lease corrupts its disks once another host takes it over,
//!   and the fence would reset the host anyway.
#![forbid(unsafe_code)]

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockFailure {
    Default,
    Poweroff,
    Restart,
    Pause,
    Ignore,
}

impl LockFailure {
    /// From libvirt's `virDomainLockFailureAction`.
    pub fn from_c(action: i32) -> Result<LockFailure> {
        Ok(match action {
            0 => LockFailure::Default,
            1 => LockFailure::Poweroff,
            2 => LockFailure::Restart,
            3 => LockFailure::Pause,
            4 => LockFailure::Ignore,
            _ => {
                return Err(Error::Invalid(format!(
                    "unknown lock failure action {action}"
                )))
            }
        })
    }

    /// The XML spelling (`<on_lockfailure>`).
    pub fn as_str(self) -> &'static str {
        match self {
            LockFailure::Default => "default",
            LockFailure::Poweroff => "poweroff",
            LockFailure::Restart => "restart",
            LockFailure::Pause => "pause",
            LockFailure::Ignore => "ignore",
        }
    }

    /// May domain `name` start with this action? `Ok(Some(note))`: yes,
    /// but the action is not the one it asks for (logged at the start).
    pub fn check(self, name: &str) -> Result<Option<String>> {
        match self {
            LockFailure::Default | LockFailure::Poweroff => Ok(None),
            LockFailure::Pause => Ok(Some(format!(
                "domain '{name}': <on_lockfailure>pause</on_lockfailure> acts as poweroff: \
                 when this host loses its lease, the fence kills the QEMU process, because \
                 pausing drains the block layer through QEMU and hangs on failed storage \
                 with the guest's writes still queued"
            ))),
            LockFailure::Restart => Err(Error::Config(format!(
                "domain '{name}': <on_lockfailure>restart</on_lockfailure> is not supported: \
                 a host that lost its lease is fenced and starts no VM; use poweroff (the \
                 default) or remove the element"
            ))),
            LockFailure::Ignore => Err(Error::Config(format!(
                "domain '{name}': <on_lockfailure>ignore</on_lockfailure> is refused: a VM \
                 that goes on writing after its host lost the lease corrupts its disks once \
                 another host takes it over; use poweroff (the default) or remove the element"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_value_of_libvirts_enum() {
        let got: Vec<_> = (0..=4)
            .map(|a| {
                let l = LockFailure::from_c(a).unwrap();
                (l.as_str(), l.check("vm").map_err(|e| e.to_string()))
            })
            .collect();
        assert_eq!(got[0], ("default", Ok(None)));
        assert_eq!(got[1], ("poweroff", Ok(None)));
        assert!(
            matches!(&got[2], ("restart", Err(e)) if e.contains("'vm'") && e.contains("not supported"))
        );
        assert!(matches!(&got[3], ("pause", Ok(Some(n))) if n.contains("acts as poweroff")));
        assert!(matches!(&got[4], ("ignore", Err(e)) if e.contains("is refused")));
        assert!(LockFailure::from_c(5).is_err());
        assert!(LockFailure::from_c(-1).is_err());
    }
}
