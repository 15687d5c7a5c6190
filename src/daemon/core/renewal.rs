//! The renewal bookkeeping of the core: when to renew and what to write
//! (`maybe_renew`), what a renewal's result means (`renewed`: the records
//! our slot may hold, a collision, a re-claim's step), and a renewal that
//! is late.

use log::{error, info, warn};

use super::{Core, MAX_EXPECT};
use crate::collision::CLAIM_COUNTER;
use crate::config::secs;
use crate::daemon::claim::ClaimStep;
use crate::daemon::renew::{self, RenewIo};
use crate::error::Result;
use crate::hosts::{HostRecord, HostState, Slot};

/// A request to the renewal thread: the records our slot may hold, and
/// the record to write when it holds one of them (`None`: only read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewReq {
    pub expect: Vec<Vec<u8>>,
    pub rec: Option<HostRecord>,
    pub issued_ms: u64,
}

/// What the renewal in flight did.
#[derive(Debug)]
pub struct Renewed {
    pub result: Result<RenewIo>,
    /// The table of `result` decoded (`hosts::decode_table`).
    pub slots: Vec<Slot>,
    /// How long the I/O took, measured on the storage thread.
    pub took_ms: u64,
}

impl Core {
    /// A renewal is in flight (issued, its result not yet fed back).
    pub fn renewal_in_flight(&self) -> bool {
        self.inflight.is_some()
    }

    /// The renewal just returned by `tick` could not be handed over (the
    /// storage thread is gone): it is tried again at the next interval.
    pub fn renewal_not_sent(&mut self) {
        self.inflight = None;
    }

    pub(super) fn maybe_renew(
        &mut self,
        now: u64,
        wall: u64,
        state: HostState,
    ) -> Option<RenewReq> {
        if self.inflight.is_some() || now < self.next_renew_ms {
            return None;
        }
        self.next_renew_ms = now + self.setup.timing.renew_interval;
        // After a collision the slot is not ours: read the table only (to
        // observe the others, and for a re-claim), write nothing - unless
        // the re-claim asks for its claim write.
        let rec = if self.collision && !self.old_rules() {
            match self.reclaim.as_ref().map(|c| c.pending_write()) {
                Some(Some(expect)) => {
                    self.expect = vec![expect];
                    self.unconfirmed.clear();
                    self.counter = CLAIM_COUNTER;
                    Some(self.record(HostState::Live, now, wall))
                }
                _ => None,
            }
        } else {
            self.counter += 1;
            Some(self.record(state, now, wall))
        };
        self.inflight = Some((now, rec.as_ref().map(HostRecord::encode)));
        Some(RenewReq {
            expect: self.expect.clone(),
            rec,
            issued_ms: now,
        })
    }

    /// The renewal in flight returned at `now`.
    pub fn renewed(&mut self, now: u64, r: Renewed) {
        let Some((issued_ms, written)) = self.inflight.take() else {
            return;
        };
        match r.result {
            Ok(io) => {
                let raw = io.table;
                let own = renew::own_slot(&raw, self.setup.host_id);
                let written = written.unwrap_or_default();
                if self.reclaim.is_some() {
                    // A re-claim's read, its claim write, or the claim write
                    // refused (the slot changed).
                    if io.wrote {
                        self.expect = vec![written.clone()];
                        self.step_reclaim(now, &own, Some(written));
                    } else {
                        self.step_reclaim(now, &own, None);
                    }
                } else if let Some(c) = io.collision {
                    if !self.collision {
                        error!(
                            event = "collision", host_id = self.setup.host_id;
                            "{c}; this host ('{}', boot {}) fences and stops writing the slot; \
                             give one of the machines another host_id, then run 'vmlease clear-fence'",
                            self.setup.host_name,
                            crate::collision::short(&self.setup.boot_id)
                        );
                        self.collision_msg = c.to_string();
                    }
                    self.collision = true;
                } else if io.wrote {
                    self.counters.renewals += 1;
                    self.counters.renewal_latency.observe(r.took_ms);
                    if self.last_renewal_ms == 0 || !self.last_renew_error.is_empty() {
                        info!("liveness lease renewed (counter {})", self.counter);
                        self.last_renew_error.clear();
                    }
                    self.last_renewal_ms = issued_ms;
                    self.blocklisted = false;
                    self.expect = renew::after_write(&self.unconfirmed, written, MAX_EXPECT);
                    if self.clear_after_renewal {
                        self.clear_after_renewal = false;
                        self.clear_ready = true;
                    }
                }
                self.observer.update(now, &raw, &r.slots);
            }
            Err(e) => {
                self.counters.renewal_failures += 1;
                // A write that failed may have landed.
                if let Some(w) = written {
                    if !self.unconfirmed.contains(&w) {
                        self.unconfirmed.push(w.clone());
                    }
                    if self.unconfirmed.len() > MAX_EXPECT {
                        self.unconfirmed.remove(0);
                    }
                    if !self.expect.contains(&w) {
                        self.expect.push(w);
                    }
                    if self.expect.len() > MAX_EXPECT {
                        self.expect.remove(0);
                    }
                }
                let msg = e.to_string();
                if renew::blocklisted(&e) && !self.blocklisted {
                    error!(
                        "renewal refused by Ceph: {msg}; this host's client is \
                         blocklisted (storage-fenced): fencing now"
                    );
                    self.blocklisted = true;
                }
                if msg != self.last_renew_error {
                    warn!("renewal failed: {msg}");
                    self.last_renew_error = msg;
                }
            }
        }
    }

    /// After the renewals were collected at `now`: a renewal in flight for
    /// longer than the I/O timeout is reported (storage hung?).
    pub fn check_late(&mut self, now: u64) {
        let Some((issued, _)) = self.inflight else {
            return;
        };
        let age = now.saturating_sub(issued);
        if age > self.setup.io_timeout {
            let msg = format!(
                "renewal I/O has not completed for {} (storage hung?)",
                secs(age)
            );
            if msg.split(" for ").next() != self.last_renew_error.split(" for ").next() {
                warn!("{msg}");
            }
            self.last_renew_error = msg;
        }
    }

    /// Feeds a re-claim with our slot as read at `now`.
    fn step_reclaim(&mut self, now: u64, own: &[u8], wrote: Option<Vec<u8>>) {
        let Some(c) = self.reclaim.as_mut() else {
            return;
        };
        let step = match wrote {
            Some(rec) => c.wrote(now, rec),
            None => c.step(now, own),
        };
        match step {
            ClaimStep::ReadAt(at) => self.next_renew_ms = at,
            ClaimStep::Write { .. } => self.next_renew_ms = 0,
            ClaimStep::Joined | ClaimStep::Rejoined => {
                info!(
                    "host id {}: slot claimed again; the collision is over",
                    self.setup.host_id
                );
                self.reclaim = None;
                self.reclaim_note =
                    "re-claiming the host id: claimed; clearing at the next renewal".into();
                self.collision = false;
                self.collision_msg.clear();
                self.clear_after_renewal = true;
                self.next_renew_ms = 0;
            }
            ClaimStep::Refused(why) => {
                warn!("fence not cleared: {why}");
                self.reclaim = None;
                self.reclaim_note = format!("fence not cleared: {why}");
            }
        }
    }
}
