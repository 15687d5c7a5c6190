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
use crate::daemon::core::Tamper;
use crate::error::{Error, Result};
use crate::hosts::{self, HostRecord, HostState, Slot};
use crate::lockspace::Lockspace;

mod join;
pub use join::{Join, JoinIo};

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
    /// How long the slot is watched before the write, and why (set by
    /// the first step; None: no watch).
    pub watching: Option<(u64, String)>,
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
            watching: None,
            wait_after_write: 0,
        }
    }

    /// Feeds the slot as read at `now`.
    pub fn step(&mut self, now: u64, own: &[u8]) -> ClaimStep {
        self.step_with(now, own, None)
    }

    /// [`Claim::step`], with the test-only seam's watch rule.
    pub fn step_with(&mut self, now: u64, own: &[u8], tamper: Option<&dyn Tamper>) -> ClaimStep {
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
                let (name, boot) = (&self.my_name, &self.my_boot);
                let watch = match tamper {
                    None => watch_time(&slot, name, boot, self.my_dead_ms, self.io_ms),
                    Some(t) => t.watch_time(&slot, name, boot, self.my_dead_ms, self.io_ms),
                };
                self.first = Some(slot);
                self.watching = watch.clone();
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
/// yet): the claim loop ([`Join`]) decides, this does its reads and its
/// write, each under its deadline. A read or write that misses its
/// deadline is reported to the claim loop, which tries again (slow
/// storage does not end the start); `slow` is told why, at most once per
/// `RELOG_MS` while it lasts. Any other storage error ends the start, and
/// so does a stop request. `make` builds the claim record. Returns the
/// slot as first read and the record it holds now.
pub fn claim(
    ls: &Lockspace,
    mut j: Join,
    make: impl Fn() -> HostRecord,
    mut slow: impl FnMut(&Error),
) -> Result<(Slot, Vec<u8>)> {
    let host_id = j.host_id();
    let read = |ls: &Lockspace, ms: u64| -> Result<Vec<u8>> {
        let l = ls.clone();
        crate::deadline::run(ms, "read host slot", &ls.hosts_path(), move || {
            l.read_slot_raw(host_id)
        })
    };
    let mut last_told: Option<u64> = None;
    let mut tell = |e: &Error| {
        let now = crate::clock::boottime_ms();
        if last_told.is_none_or(|t| now.saturating_sub(t) >= RELOG_MS) {
            slow(e);
            last_told = Some(now);
        }
    };
    let mut io = JoinIo::Read { at: 0 };
    loop {
        io = match io {
            JoinIo::Read { at } => {
                // In steps, telling systemd the claim goes on (WatchdogSec).
                loop {
                    if super::signals::stop_requested() {
                        return Err(Error::Unprotected(
                            "stopped while claiming the host id".into(),
                        ));
                    }
                    let now = crate::clock::boottime_ms();
                    super::sd_watchdog::keepalive(now);
                    if at <= now {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis((at - now).min(200)));
                }
                match read(ls, j.read_deadline_ms()) {
                    Ok(own) => j.read(crate::clock::boottime_ms(), &own),
                    Err(e) if slow_storage(&e) => {
                        tell(&e);
                        j.read_failed(crate::clock::boottime_ms())
                    }
                    Err(e) => return Err(e),
                }
            }
            JoinIo::Write { expect } => {
                let rec = make();
                let l = ls.clone();
                let r = rec.clone();
                let done = crate::deadline::run(
                    j.write_deadline_ms(),
                    "write claim record",
                    &ls.hosts_path(),
                    move || super::renew::renew_io(&l, host_id, &[expect], Some(&r)),
                );
                match done {
                    Ok(done) => {
                        let own = super::renew::own_slot(&done.table, host_id);
                        j.wrote(
                            crate::clock::boottime_ms(),
                            done.wrote.then(|| rec.encode()),
                            &own,
                        )
                    }
                    Err(e) if slow_storage(&e) => {
                        tell(&e);
                        j.write_failed(crate::clock::boottime_ms(), rec.encode())
                    }
                    Err(e) => return Err(e),
                }
            }
            JoinIo::Joined { first, written, .. } => return Ok((first, written)),
            JoinIo::Refused(why) => return Err(Error::Config(why)),
        }
    }
}

/// How often `claim` tells of slow storage again while it lasts.
const RELOG_MS: u64 = 60_000;

/// The storage did not answer in time, or an earlier call is still stuck:
/// the claim loop tries again (the simulator's daemon asks this too).
pub fn slow_storage(e: &Error) -> bool {
    matches!(e, Error::Timeout { .. } | Error::Stuck { .. })
}

#[cfg(test)]
mod tests;
