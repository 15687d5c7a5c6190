//! The start-up claim loop, without I/O: which read or write of the slot
//! comes next, under which deadline, and what the daemon joins with. The
//! daemon's start (`claim::claim`) and the simulator's daemon drive it,
//! each with its own storage calls.
//!
//! Slow storage does not end the start: a read that misses its deadline
//! is done again ([`Join::read_failed`]), and so is a claim write whose
//! outcome is unknown ([`Join::write_failed`]), once a read shows it did
//! not land. Nothing is leased before the claim joins, so waiting costs
//! nothing but time; exiting instead would put the start at the mercy of
//! systemd's start limit while the storage is slow, e.g. when every host
//! boots at once. A late answer is never used: the claim's times hold for
//! answers within the deadline only.

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

/// How long after a failed read or write the slot is read again.
pub const RETRY_MS: u64 = 200;

/// The claim loop around [`Claim`].
pub struct Join {
    claim: Claim,
    written: Vec<u8>,
    io_ms: u64,
    tamper: Option<Box<dyn Tamper>>,
    /// Claim records (encoded) whose write missed its deadline: each may
    /// still land. The slot holding one of them is our claim, written.
    unsure: Vec<Vec<u8>>,
}

impl Join {
    /// `tamper`: the simulator's test-only seam (production passes None).
    pub fn new(claim: Claim, io_ms: u64, tamper: Option<Box<dyn Tamper>>) -> Join {
        Join {
            claim,
            written: Vec::new(),
            io_ms,
            tamper,
            unsure: Vec::new(),
        }
    }

    pub fn host_id(&self) -> u16 {
        self.claim.host_id
    }

    /// The claim as it stands (`Claim::watching` for a log line).
    pub fn claim(&self) -> &Claim {
        &self.claim
    }

    /// Each read of the slot; a late one is abandoned and reported with
    /// [`Join::read_failed`].
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
        if let Some(expect) = self.claim.pending_write() {
            // A claim write missed its deadline: the slot says how it went.
            if own == expect.as_slice() {
                return JoinIo::Write { expect };
            }
            return self.wrote(now, None, own);
        }
        let step = self.claim.step_with(now, own, self.tamper.as_deref());
        self.next(step, own)
    }

    /// A read of the slot did not answer within its deadline (or could
    /// not start: an earlier call is still stuck) at `now`: read again.
    /// The claim's state is unchanged; its watch and its wait after the
    /// write go on from the reads that did answer.
    pub fn read_failed(&mut self, now: u64) -> JoinIo {
        JoinIo::Read { at: now + RETRY_MS }
    }

    /// The claim write of `rec` (encoded) did not answer within its
    /// deadline at `now`: it may still land. The slot is read again; if it
    /// holds `rec` (or an earlier such record) the claim goes on from that
    /// read as written, if it holds what the write expected the write is
    /// done again, anything else is another machine's write.
    pub fn write_failed(&mut self, now: u64, rec: Vec<u8>) -> JoinIo {
        self.unsure.push(rec);
        JoinIo::Read { at: now + RETRY_MS }
    }

    /// The claim write ended at `now`: `wrote` holds the record (encoded)
    /// when it was written; else the slot held `own` instead.
    pub fn wrote(&mut self, now: u64, wrote: Option<Vec<u8>>, own: &[u8]) -> JoinIo {
        // An earlier write of ours that missed its deadline landed after all.
        let wrote = wrote.or_else(|| self.unsure.iter().find(|r| r.as_slice() == own).cloned());
        if wrote.is_some() {
            self.unsure.clear();
        }
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

    #[test]
    fn a_late_read_is_read_again_and_changes_nothing() {
        let empty = vec![0u8; SLOT_SIZE];
        let mut j = join(false);
        assert_eq!(j.read_failed(7), JoinIo::Read { at: 7 + RETRY_MS });
        assert_eq!(
            j.read(300, &empty),
            JoinIo::Write {
                expect: empty.clone()
            }
        );
        // While watched for its writer's D: the watch goes on, unchanged.
        let mut j = join(false);
        let other = {
            let mut r = crate::hosts::decode_slot(1, &mine(4))
                .record()
                .unwrap()
                .clone();
            r.host_name = "z".into();
            r.encode()
        };
        assert!(matches!(j.read(0, &other), JoinIo::Read { .. }));
        assert_eq!(j.read_failed(900), JoinIo::Read { at: 1100 });
        assert!(matches!(j.read(1100, &other), JoinIo::Read { .. }));
        assert!(matches!(j.read(4000, &other), JoinIo::Write { expect } if expect == other));
    }

    #[test]
    fn a_late_claim_write_that_landed_counts_from_the_read_that_saw_it() {
        let empty = vec![0u8; SLOT_SIZE];
        let wait = crate::collision::claim_wait_ms(500, 200, None);
        let mut j = join(false);
        j.read(0, &empty);
        assert_eq!(j.write_failed(1000, mine(0)), JoinIo::Read { at: 1200 });
        // Seen at 1300: the wait after the write runs from there.
        assert_eq!(j.read(1300, &mine(0)), JoinIo::Read { at: 1500 });
        assert_eq!(
            j.read(1300 + wait - 1, &mine(0)),
            JoinIo::Read { at: 1300 + wait }
        );
        assert_eq!(
            j.read(1300 + wait, &mine(0)),
            JoinIo::Joined {
                first: Slot::Empty,
                written: mine(0),
                rejoined: false
            }
        );
    }

    /// An empty slot read at 0, the claim write of mine(0) late at 1000:
    /// the join and the empty slot.
    fn late_claim_write() -> (Join, Vec<u8>) {
        let empty = vec![0u8; SLOT_SIZE];
        let mut j = join(false);
        j.read(0, &empty);
        j.write_failed(1000, mine(0));
        (j, empty)
    }

    #[test]
    fn a_late_claim_write_that_did_not_land_is_done_again() {
        let (mut j, empty) = late_claim_write();
        assert_eq!(
            j.read(1200, &empty),
            JoinIo::Write {
                expect: empty.clone()
            }
        );
        // The first write landed after all, before the second: ours.
        assert_eq!(j.wrote(1400, None, &mine(0)), JoinIo::Read { at: 1600 });
    }

    #[test]
    fn a_late_claim_write_then_another_record_is_refused() {
        let (mut j, _) = late_claim_write();
        assert!(matches!(
            j.read(1200, &mine(9)),
            JoinIo::Refused(why) if why.contains("wrote the slot just before")
        ));
    }
}
