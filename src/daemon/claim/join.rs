//! The start-up claim loop, without I/O: which read or write of the slot
//! comes next, under which deadline, and what the daemon joins with. The
//! daemon's start (`claim::claim`) and the simulator's daemon drive it,
//! each with its own storage calls.

use log::info;

use super::{Claim, ClaimStep};
use crate::daemon::core::Tamper;
use crate::hosts::Slot;

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinIo {
    /// Read the slot, not before this boottime ms, under
    /// [`Join::read_deadline_ms`]; hand it to [`Join::read`].
    Read { at: u64 },
    /// Write the claim record (counter `collision::CLAIM_COUNTER`) if the
    /// slot still holds exactly `expect`, under
    /// [`Join::write_deadline_ms`]; report it with [`Join::wrote`].
    Write { expect: Vec<u8> },
    /// Joined: `first` is the slot as first read (a restarted daemon
    /// continues its fence clock from it, `fence::clock_start`),
    /// `written` the record it holds now, written last (the next renewal
    /// must find it). `rejoined`: a daemon restart on this boot, joined
    /// without a write.
    Joined {
        first: Slot,
        written: Vec<u8>,
        rejoined: bool,
    },
    /// Another live machine uses the id: the start fails.
    Refused(String),
}

/// The claim loop around [`Claim`].
pub struct Join {
    claim: Claim,
    written: Vec<u8>,
    io_ms: u64,
    tamper: Option<Box<dyn Tamper>>,
}

impl Join {
    /// `tamper`: the simulator's test-only seam (production passes None).
    pub fn new(claim: Claim, io_ms: u64, tamper: Option<Box<dyn Tamper>>) -> Join {
        Join {
            claim,
            written: Vec::new(),
            io_ms,
            tamper,
        }
    }

    pub fn host_id(&self) -> u16 {
        self.claim.host_id
    }

    /// The claim as it stands (`Claim::watching` for a log line).
    pub fn claim(&self) -> &Claim {
        &self.claim
    }

    /// Each read of the slot: a failed or late one ends the start (the
    /// daemon exits, systemd restarts it).
    pub fn read_deadline_ms(&self) -> u64 {
        self.io_ms
    }

    /// The claim write: a read of the table, the check and the write.
    pub fn write_deadline_ms(&self) -> u64 {
        2 * self.io_ms
    }

    fn old_rules(&self) -> bool {
        self.tamper
            .as_ref()
            .is_some_and(|t| t.old_collision_rules())
    }

    /// The slot `own` as read at `now`; the first read starts the claim.
    pub fn read(&mut self, now: u64, own: &[u8]) -> JoinIo {
        let step = self.claim.step_with(now, own, self.tamper.as_deref());
        self.next(step, own)
    }

    /// The claim write ended at `now`: `wrote` holds the record (encoded)
    /// when it was written; else the slot held `own` instead.
    pub fn wrote(&mut self, now: u64, wrote: Option<Vec<u8>>, own: &[u8]) -> JoinIo {
        let step = match wrote {
            Some(rec) => {
                self.written = rec.clone();
                self.claim.wrote(now, rec)
            }
            None => self.claim.step_with(now, own, self.tamper.as_deref()),
        };
        self.next(step, own)
    }

    fn next(&mut self, step: ClaimStep, own: &[u8]) -> JoinIo {
        let host_id = self.claim.host_id;
        let first = || self.claim.first.clone().unwrap_or(Slot::Empty);
        match step {
            ClaimStep::ReadAt(at) => JoinIo::Read { at },
            ClaimStep::Rejoined => {
                info!("host id {host_id}: our own record of this boot (a daemon restart): joined");
                JoinIo::Joined {
                    first: first(),
                    written: own.to_vec(),
                    rejoined: true,
                }
            }
            // Before issue 14 (the simulator's seam): joined unwritten.
            ClaimStep::Write { .. } if self.old_rules() => JoinIo::Joined {
                first: first(),
                written: Vec::new(),
                rejoined: false,
            },
            ClaimStep::Write { expect } => JoinIo::Write { expect },
            ClaimStep::Joined => {
                info!("host id {host_id}: claimed");
                JoinIo::Joined {
                    first: first(),
                    written: self.written.clone(),
                    rejoined: false,
                }
            }
            ClaimStep::Refused(why) => JoinIo::Refused(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hosts::{HostRecord, HostState, SLOT_SIZE};

    fn mine(counter: u64) -> Vec<u8> {
        HostRecord {
            host_id: 1,
            host_name: "a".into(),
            boot_id: "b1".into(),
            incarnation: 1,
            counter,
            state: HostState::Live,
            timing: crate::config::Timing {
                renew_interval: 200,
                renew_fail_timeout: 2000,
                kill_timeout: 1000,
                watchdog_timeout: 1500,
                host_dead_timeout: 4000,
                host_dead_derived: false,
            },
            unsafe_no_watchdog: false,
            mono_ms: 0,
            wall: 0,
        }
        .encode()
    }

    fn join(careful: bool) -> Join {
        Join::new(Claim::new(1, "a", "b1", 4000, 500, 200, careful), 500, None)
    }

    #[test]
    fn an_empty_slot_joins_with_the_claim_record_as_written_last() {
        let empty = vec![0u8; SLOT_SIZE];
        let mut j = join(false);
        assert_eq!((j.read_deadline_ms(), j.write_deadline_ms()), (500, 1000));
        assert_eq!(
            j.read(0, &empty),
            JoinIo::Write {
                expect: empty.clone()
            }
        );
        let at = match j.wrote(10, Some(mine(0)), &mine(0)) {
            JoinIo::Read { at } => at,
            io => panic!("{io:?}"),
        };
        let wait = crate::collision::claim_wait_ms(500, 200, None);
        assert_eq!(j.read(at, &mine(0)), JoinIo::Read { at: at + 200 });
        assert_eq!(
            j.read(10 + wait, &mine(0)),
            JoinIo::Joined {
                first: Slot::Empty,
                written: mine(0),
                rejoined: false
            }
        );
    }

    #[test]
    fn a_restart_rejoins_with_the_slot_as_read() {
        let mut j = join(false);
        match j.read(0, &mine(7)) {
            JoinIo::Joined {
                first: Slot::Record(r),
                written,
                rejoined: true,
            } => {
                assert_eq!(r.counter, 7);
                assert_eq!(written, mine(7));
            }
            io => panic!("{io:?}"),
        }
    }

    #[test]
    fn a_write_that_finds_the_slot_changed_is_refused() {
        let empty = vec![0u8; SLOT_SIZE];
        let mut j = join(true);
        j.read(0, &empty);
        assert!(matches!(
            j.wrote(5, None, &mine(3)),
            JoinIo::Refused(why) if why.contains("wrote the slot just before")
        ));
    }
}
