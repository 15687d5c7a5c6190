//! The stop path (SIGTERM): first make the plugin refuse new leases, then
//! look at what runs; with nothing leased, leave the lockspace cleanly so
//! that others need not wait for us.

use super::{Core, RenewReq};
use crate::hosts::HostState;

/// Where the stop path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// The status was withdrawn; the first count is awaited.
    Withdrawn,
    /// Waiting (until this time) for the renewal in flight.
    Waiting(u64),
    /// The last count, right before 'leaving', is awaited.
    Recount,
}

/// What the driver does next on the stop path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopNext {
    /// Remove the status (the plugin refuses new leases from now on),
    /// then count the leased QEMUs from a fresh registry scan and call
    /// `stop` again with the count.
    Withdraw,
    /// Count the leased QEMUs again from a fresh registry scan (a start
    /// that checked the status before it was removed registers late).
    Count,
    /// Wait a moment for the renewal in flight, feed its result
    /// (`renewed`), and call `stop` again.
    WaitRenewal,
    /// Leased QEMUs run: exit with the hardware watchdog still armed.
    StayArmed(usize),
    /// Publish this 'leaving' record (under twice the I/O timeout), then
    /// disarm the watchdog and exit.
    Leave(RenewReq),
    /// Disarm the watchdog and exit.
    Disarm,
}

impl Core {
    /// One step of the stop path at `now`; `leased` is the count the last
    /// step asked for (`None` when it asked for none).
    pub fn stop(&mut self, now: u64, wall_secs: u64, leased: Option<usize>) -> StopNext {
        let stage = match self.stopping {
            None => {
                self.stopping = Some(Stage::Withdrawn);
                return StopNext::Withdraw;
            }
            Some(s) => s,
        };
        match (stage, leased) {
            (Stage::Withdrawn, Some(n)) | (Stage::Recount, Some(n)) if n > 0 => {
                StopNext::StayArmed(n)
            }
            (Stage::Withdrawn, Some(_)) => {
                // A renewal in flight is waited for (at most io_timeout):
                // else no 'leaving' is written, and a daemon started soon
                // after continues the fence clock from our last renewal
                // (KB1) and may fence a host that runs nothing.
                self.stopping = Some(Stage::Waiting(now + self.setup.io_timeout));
                self.stop(now, wall_secs, None)
            }
            (Stage::Waiting(until), _) => {
                if self.inflight.is_some() && now < until {
                    return StopNext::WaitRenewal;
                }
                // 'leaving' frees every lease of this host at once: count
                // again right before publishing it.
                self.stopping = Some(Stage::Recount);
                StopNext::Count
            }
            (Stage::Recount, Some(_)) => {
                // After a collision the slot is not ours: nothing is
                // written; else only over the record we wrote last (the
                // renewal's check).
                let slot_ours = !self.collision || self.old_rules();
                if self.last_renewal_ms > 0 && self.inflight.is_none() && slot_ours {
                    self.counter += 1;
                    StopNext::Leave(RenewReq {
                        expect: self.expect.clone(),
                        rec: Some(self.record(HostState::Leaving, now, wall_secs)),
                        issued_ms: now,
                    })
                } else {
                    StopNext::Disarm
                }
            }
            (Stage::Withdrawn, None) => StopNext::Withdraw,
            (Stage::Recount, None) => StopNext::Count,
        }
    }
}
