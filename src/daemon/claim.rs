//! Joining the lockspace: claim this host's id only after making sure no
//! other live machine uses it ("observe before you claim").
//!
//! - empty slot, or our own record of this boot (daemon restart), or a
//!   record that left cleanly: claim at once;
//! - our host name from an earlier boot: watch the slot for two of its
//!   renew intervals plus the I/O timeout (a machine with our name and id
//!   that is alive would renew in that time), then claim;
//! - anything else (another host's record, or a damaged slot): watch it for
//!   that host's host_dead_timeout; its leases must not look "rebooted" to
//!   others while it may still run VMs.

use std::time::Duration;

use log::{info, warn};

use crate::config::secs;
use crate::error::{Error, Result};
use crate::hosts::{HostState, Slot};
use crate::lockspace::Lockspace;

/// How long to watch `slot` before claiming it, and why (None: claim now).
pub fn watch_time(
    slot: &Slot,
    my_name: &str,
    my_boot: &str,
    my_dead_ms: u64,
    io_ms: u64,
) -> Option<(u64, String)> {
    match slot {
        Slot::Empty => None,
        Slot::Record(r) if r.state == HostState::Leaving && r.host_name == my_name => None,
        Slot::Record(r) if r.host_name == my_name && r.boot_id == my_boot => None,
        Slot::Record(r) if r.host_name == my_name => Some((
            2 * r.timing.renew_interval + io_ms,
            format!(
                "it holds this host's record from an earlier boot ({})",
                r.boot_id
            ),
        )),
        Slot::Record(r) => Some((
            r.timing.host_dead_timeout.max(my_dead_ms),
            format!(
                "it was last used by host '{}' (state {})",
                r.host_name, r.state
            ),
        )),
        Slot::Corrupt(why) => Some((my_dead_ms, format!("its record is damaged ({why})"))),
    }
}

/// Waits as long as `watch_time` says, failing if the slot changes.
/// Returns the slot as read (unchanged while watched): a restarted daemon
/// continues its fence clock from it (`fence::clock_start`).
pub fn claim(
    ls: &Lockspace,
    host_id: u16,
    my_name: &str,
    my_boot: &str,
    my_dead_ms: u64,
    io_ms: u64,
) -> Result<Slot> {
    let first = ls.read_host(host_id)?;
    let Some((wait, why)) = watch_time(&first, my_name, my_boot, my_dead_ms, io_ms) else {
        return Ok(first);
    };
    warn!(
        "host id {host_id}: {why}; watching the slot for {} before claiming it",
        secs(wait)
    );
    let start = crate::clock::boottime_ms();
    loop {
        std::thread::sleep(Duration::from_millis(200.min(wait.max(10))));
        let now = ls.read_host(host_id)?;
        if now != first {
            let who = match &now {
                Slot::Record(r) => format!("host '{}' (boot {})", r.host_name, r.boot_id),
                _ => "another writer".into(),
            };
            return Err(Error::Config(format!(
                "host id {host_id} is in use by live {who}: its liveness record changed while we watched it; \
                 give this host a unique host_id"
            )));
        }
        if crate::clock::boottime_ms().saturating_sub(start) >= wait {
            info!(
                "host id {host_id}: slot unchanged for {}, claiming it",
                secs(wait)
            );
            return Ok(first);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Timing;
    use crate::hosts::HostRecord;

    fn rec(name: &str, boot: &str, state: HostState) -> Slot {
        Slot::Record(HostRecord {
            host_id: 1,
            host_name: name.into(),
            boot_id: boot.into(),
            incarnation: 1,
            counter: 1,
            state,
            timing: Timing {
                renew_interval: 2000,
                renew_fail_timeout: 20000,
                kill_timeout: 10000,
                watchdog_timeout: 15000,
                host_dead_timeout: 41000,
                host_dead_derived: false,
            },
            unsafe_no_watchdog: false,
            mono_ms: 0,
            wall: 0,
        })
    }

    #[test]
    fn watch_rules() {
        assert_eq!(watch_time(&Slot::Empty, "a", "b1", 4000, 100), None);
        assert_eq!(
            watch_time(&rec("a", "b1", HostState::Live), "a", "b1", 4000, 100),
            None
        );
        assert_eq!(
            watch_time(&rec("a", "b0", HostState::Leaving), "a", "b1", 4000, 100),
            None
        );
        assert_eq!(
            watch_time(&rec("a", "b0", HostState::Live), "a", "b1", 4000, 100)
                .unwrap()
                .0,
            4100
        );
        assert_eq!(
            watch_time(&rec("x", "b0", HostState::Live), "a", "b1", 4000, 100)
                .unwrap()
                .0,
            41000
        );
        assert_eq!(
            watch_time(&rec("x", "b0", HostState::Leaving), "a", "b1", 50000, 100)
                .unwrap()
                .0,
            50000
        );
        assert_eq!(
            watch_time(&Slot::Corrupt("x".into()), "a", "b1", 4000, 100)
                .unwrap()
                .0,
            4000
        );
    }
}
