//! Joining the lockspace: claim this host's id only after making sure no
//! other live machine uses it ("observe before you claim"), then write a
//! claim record and read it back after a delay before counting as joined
//! (sanlock's delta-lease acquire; `collision::claim_wait_ms` says why the
//! delay is what it is).
//!
//! What the slot holds decides how long to watch it before writing:
//!
//! - empty, or a record of this host name that left cleanly: no watch;
//! - this host's own record of this boot (a daemon restart): joined at
//!   once, without writing - no other machine has this boot id, one that
//!   races us reads our record and watches it, and the first renewal
//!   checks the slot still holds that record (`collision::check_own`). A
//!   restart must not depend on a write: a daemon restarted while the
//!   lockspace is read-only or full must run, to continue the fence its
//!   predecessor began (KB1, docs/simulation.md);
//! - anything else - another host's record, a damaged slot, and also a
//!   record with this host's name from another boot: watch it unchanged
//!   for its writer's host_dead_timeout D. "Our name, another boot" is
//!   what a reboot looks like, but also what a clone with the same name
//!   and id looks like, and the writer may be alive with its renewals
//!   stalled (it fences only after F): once we write, others treat its
//!   leases as rebooted (takeover rule 2), so the writer must be as dead
//!   as rule 4 demands.
//!
//! A slot that changes while watched, or that does not hold our claim
//! record when read back, belongs to another live machine: refused.
//! `Claim` is the decision, stepped with each read of the slot; `claim`
//! drives it at start, the daemon loop when a collision fence is cleared.

use std::time::Duration;

use log::{info, warn};

use crate::collision::{claim_wait_ms, describe, short};
use crate::config::secs;
use crate::error::{Error, Result};
use crate::hosts::{self, HostRecord, HostState, Slot};
use crate::lockspace::Lockspace;

/// How long to watch `slot` before claiming it, and why (None: claim now).
pub fn watch_time(
    slot: &Slot,
    my_name: &str,
    my_boot: &str,
    my_dead_ms: u64,
    _io_ms: u64,
) -> Option<(u64, String)> {
    match slot {
        Slot::Empty => None,
        Slot::Record(r) if r.state == HostState::Leaving && r.host_name == my_name => None,
        Slot::Record(r) if r.host_name == my_name && r.boot_id == my_boot => None,
        Slot::Record(r) if r.host_name == my_name => Some((
            r.timing.host_dead_timeout.max(my_dead_ms),
            format!(
                "it holds a record of this host name from another boot ({}): this host rebooted, \
                 or another machine with the same name and host id may still use it",
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

/// Where a claim stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Start,
    /// Watching the slot hold `first` unchanged until `until`.
    Watching {
        first: Vec<u8>,
        until: u64,
    },
    /// Asked for the claim write over `first`.
    Writing {
        first: Vec<u8>,
    },
    /// Our claim record `rec` was written; read it back at `until`.
    Written {
        rec: Vec<u8>,
        until: u64,
    },
    Done,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimStep {
    /// Read the slot (not before this boottime ms) and step again.
    ReadAt(u64),
    /// A daemon restart on this boot: joined without writing; the slot as
    /// read is the record written last.
    Rejoined,
    /// Write the claim record (counter `collision::CLAIM_COUNTER`) if the
    /// slot still holds exactly `expect`; report it with `wrote`, or step
    /// with what the slot held instead.
    Write { expect: Vec<u8> },
    /// The slot is ours: the record we wrote is the last record written.
    Joined,
    /// Another live machine uses the id.
    Refused(String),
}

/// The claim decision, without I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    host_id: u16,
    my_name: String,
    my_boot: String,
    my_dead_ms: u64,
    io_ms: u64,
    my_renew_ms: u64,
    /// After a collision: our own record of this boot gets the delay too.
    careful: bool,
    phase: Phase,
    /// The slot as first read (a restarted daemon continues its fence
    /// clock from it, `fence::clock_start`).
    pub first: Option<Slot>,
    wait_after_write: u64,
}

impl Claim {
    pub fn new(
        host_id: u16,
        my_name: &str,
        my_boot: &str,
        my_dead_ms: u64,
        io_ms: u64,
        my_renew_ms: u64,
        careful: bool,
    ) -> Claim {
        Claim {
            host_id,
            my_name: my_name.into(),
            my_boot: my_boot.into(),
            my_dead_ms,
            io_ms,
            my_renew_ms,
            careful,
            phase: Phase::Start,
            first: None,
            wait_after_write: 0,
        }
    }

    /// Feeds the slot as read at `now`.
    pub fn step(&mut self, now: u64, own: &[u8]) -> ClaimStep {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Start => {
                let slot = hosts::decode_slot(self.host_id, own);
                let seen_renew = slot.record().map(|r| r.timing.renew_interval);
                let restart = matches!(&slot, Slot::Record(r)
                    if r.host_name == self.my_name && r.boot_id == self.my_boot && r.state != HostState::Leaving);
                self.wait_after_write = if restart && !self.careful {
                    0
                } else {
                    claim_wait_ms(self.io_ms, self.my_renew_ms, seen_renew)
                };
                let watch = watch_time(
                    &slot,
                    &self.my_name,
                    &self.my_boot,
                    self.my_dead_ms,
                    self.io_ms,
                );
                self.first = Some(slot);
                if restart && !self.careful {
                    return ClaimStep::Rejoined;
                }
                match watch {
                    None => {
                        self.phase = Phase::Writing { first: own.to_vec() };
                        ClaimStep::Write {
                            expect: own.to_vec(),
                        }
                    }
                    Some((wait, why)) => {
                        warn!(
                            "host id {}: {why}; watching the slot for {} before claiming it",
                            self.host_id,
                            secs(wait)
                        );
                        self.phase = Phase::Watching {
                            first: own.to_vec(),
                            until: now + wait,
                        };
                        ClaimStep::ReadAt(now + wait.min(200))
                    }
                }
            }
            Phase::Watching { first, until } => {
                if own != first.as_slice() {
                    return self.refuse(format!(
                        "host id {} is in use by live {}: its liveness record changed while this host ('{}', boot {}) watched it; \
                         give one of them another host_id",
                        self.host_id,
                        describe(self.host_id, own),
                        self.my_name,
                        short(&self.my_boot)
                    ));
                }
                if now >= until {
                    info!("host id {}: slot unchanged while watched, claiming it", self.host_id);
                    self.phase = Phase::Writing { first: first.clone() };
                    ClaimStep::Write { expect: first }
                } else {
                    self.phase = Phase::Watching { first, until };
                    ClaimStep::ReadAt((now + 200).min(until))
                }
            }
            // The conditional write found the slot changed.
            Phase::Writing { .. } => self.refuse(format!(
                "host id {} is in use by live {}: it wrote the slot just before this host ('{}', boot {}) could claim it; \
                 give one of them another host_id",
                self.host_id,
                describe(self.host_id, own),
                self.my_name,
                short(&self.my_boot)
            )),
            Phase::Written { rec, until } => {
                if own != rec.as_slice() {
                    return self.refuse(format!(
                        "host id {} collision: while this host ('{}', boot {}) claimed it, {} wrote its slot; \
                         give one of them another host_id",
                        self.host_id,
                        self.my_name,
                        short(&self.my_boot),
                        describe(self.host_id, own)
                    ));
                }
                if now >= until {
                    self.phase = Phase::Done;
                    ClaimStep::Joined
                } else {
                    self.phase = Phase::Written { rec, until };
                    ClaimStep::ReadAt((now + 200).min(until))
                }
            }
            Phase::Done => ClaimStep::Refused("claim already finished".into()),
        }
    }

    /// The bytes the claim write must find in the slot, while the claim
    /// waits for its write (`ClaimStep::Write`).
    pub fn pending_write(&self) -> Option<Vec<u8>> {
        match &self.phase {
            Phase::Writing { first } => Some(first.clone()),
            _ => None,
        }
    }

    /// The claim record `rec` (encoded) was written at `now`.
    pub fn wrote(&mut self, now: u64, rec: Vec<u8>) -> ClaimStep {
        if self.wait_after_write == 0 {
            self.phase = Phase::Done;
            return ClaimStep::Joined;
        }
        info!(
            "host id {}: claim written; reading it back in {} before joining",
            self.host_id,
            secs(self.wait_after_write)
        );
        let until = now + self.wait_after_write;
        self.phase = Phase::Written { rec, until };
        ClaimStep::ReadAt((now + 200).min(until))
    }

    fn refuse(&mut self, why: String) -> ClaimStep {
        self.phase = Phase::Done;
        ClaimStep::Refused(why)
    }
}

/// Claims `host_id` at daemon start, blocking (the loop is not running
/// yet): every read and the write run with the I/O deadline. `make` builds
/// the claim record. Returns the slot as first read and the record written.
pub fn claim(
    ls: &Lockspace,
    mut c: Claim,
    io_ms: u64,
    make: impl Fn() -> HostRecord,
) -> Result<(Slot, Vec<u8>)> {
    let host_id = c.host_id;
    let read = |ls: &Lockspace| -> Result<Vec<u8>> {
        let l = ls.clone();
        crate::deadline::run(io_ms, "read host slot", &ls.hosts_path(), move || {
            l.read_slot_raw(host_id)
        })
    };
    let mut own = read(ls)?;
    let mut step = c.step(crate::clock::boottime_ms(), &own);
    let mut written = Vec::new();
    if step == ClaimStep::Rejoined {
        info!("host id {host_id}: our own record of this boot (a daemon restart): joined");
        return Ok((c.first.unwrap_or(Slot::Empty), own));
    }
    loop {
        match step {
            ClaimStep::ReadAt(at) => {
                // In steps, telling systemd the claim goes on (WatchdogSec).
                loop {
                    let now = crate::clock::boottime_ms();
                    super::sd_watchdog::keepalive(now);
                    if at <= now {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis((at - now).min(200)));
                }
                own = read(ls)?;
                step = c.step(crate::clock::boottime_ms(), &own);
            }
            ClaimStep::Write { expect } => {
                let rec = make();
                let l = ls.clone();
                let r = rec.clone();
                let io = crate::deadline::run(
                    2 * io_ms,
                    "write claim record",
                    &ls.hosts_path(),
                    move || super::renew::renew_io(&l, host_id, &[expect], Some(&r)),
                )?;
                if io.wrote {
                    written = rec.encode();
                    step = c.wrote(crate::clock::boottime_ms(), written.clone());
                } else {
                    step = c.step(
                        crate::clock::boottime_ms(),
                        &super::renew::own_slot(&io.table, host_id),
                    );
                }
            }
            ClaimStep::Joined | ClaimStep::Rejoined => {
                info!("host id {host_id}: claimed");
                return Ok((c.first.unwrap_or(Slot::Empty), written));
            }
            ClaimStep::Refused(why) => return Err(Error::Config(why)),
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
        // Our name from another boot: a reboot, or a clone that may be
        // alive with stalled renewals: its D, as for any other record.
        assert_eq!(
            watch_time(&rec("a", "b0", HostState::Live), "a", "b1", 4000, 100)
                .unwrap()
                .0,
            41000
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

    fn raw(s: &Slot) -> Vec<u8> {
        match s {
            Slot::Record(r) => r.encode(),
            _ => vec![0u8; hosts::SLOT_SIZE],
        }
    }

    fn mine(counter: u64) -> Vec<u8> {
        let mut r = rec("a", "b1", HostState::Live).record().unwrap().clone();
        r.counter = counter;
        r.encode()
    }

    fn new(careful: bool) -> Claim {
        Claim::new(1, "a", "b1", 4000, 500, 200, careful)
    }

    #[test]
    fn an_empty_slot_is_written_then_read_back_after_the_claim_wait() {
        let empty = vec![0u8; hosts::SLOT_SIZE];
        let mut c = new(false);
        assert_eq!(
            c.step(0, &empty),
            ClaimStep::Write {
                expect: empty.clone()
            }
        );
        assert_eq!(c.pending_write(), Some(empty));
        let wait = crate::collision::claim_wait_ms(500, 200, None);
        assert_eq!(c.wrote(10, mine(0)), ClaimStep::ReadAt(210));
        assert_eq!(c.step(210, &mine(0)), ClaimStep::ReadAt(410));
        assert_eq!(c.step(10 + wait, &mine(0)), ClaimStep::Joined);
    }

    #[test]
    fn a_racing_claimer_refuses_the_one_that_wrote_first() {
        let empty = vec![0u8; hosts::SLOT_SIZE];
        let mut c = new(false);
        c.step(0, &empty);
        c.wrote(10, mine(0));
        // The other machine's claim landed after ours.
        let other = raw(&rec("x", "b9", HostState::Live));
        match c.step(500, &other) {
            ClaimStep::Refused(why) => {
                assert!(why.contains("host id 1 collision"), "{why}");
                assert!(
                    why.contains("this host ('a', boot b1)") && why.contains("host 'x'"),
                    "{why}"
                );
            }
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn a_record_that_changes_while_watched_refuses_the_claim() {
        let r0 = rec("a", "b0", HostState::Live);
        let mut c = new(false);
        assert_eq!(c.step(0, &raw(&r0)), ClaimStep::ReadAt(200));
        assert_eq!(c.step(200, &raw(&r0)), ClaimStep::ReadAt(400));
        let mut r1 = r0.record().unwrap().clone();
        r1.counter += 1;
        match c.step(400, &r1.encode()) {
            ClaimStep::Refused(why) => assert!(why.contains("in use by live host 'a'"), "{why}"),
            s => panic!("{s:?}"),
        }
        // Unchanged for its D: claimed, over exactly what was watched.
        let mut c = new(false);
        c.step(0, &raw(&r0));
        assert_eq!(
            c.step(41000, &raw(&r0)),
            ClaimStep::Write { expect: raw(&r0) }
        );
        // The conditional write found it changed after all.
        assert!(matches!(c.step(41010, &r1.encode()), ClaimStep::Refused(_)));
    }

    #[test]
    fn a_restart_on_this_boot_joins_at_once_unless_after_a_collision() {
        let own = mine(7);
        let mut c = new(false);
        assert_eq!(c.step(0, &own), ClaimStep::Rejoined);
        let mut c = new(true);
        assert_eq!(
            c.step(0, &own),
            ClaimStep::Write {
                expect: own.clone()
            }
        );
        let mut c = new(true);
        c.step(0, &own);
        assert_eq!(c.wrote(5, mine(0)), ClaimStep::ReadAt(205));
    }
}
