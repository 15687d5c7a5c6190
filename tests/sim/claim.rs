//! Joining the lockspace in the simulated daemon: `daemon::claim::claim`
//! (the real `Claim` stepped with each read of the slot, its claim write
//! and its delayed read-back), and the claim before issue 14 for the
//! mutation `claim-without-read-back`. The re-claim that `vmlease
//! clear-fence` starts after a host id collision is the core's.

use vmlease::collision::CLAIM_COUNTER;
use vmlease::daemon::claim::{watch_time, ClaimStep};
use vmlease::hosts::HostState;

use crate::calls::{DaemonCall, Job, Owner};
use crate::daemon::DPhase;
use crate::mutation::{self, Mutation};
use crate::world::{Ev, World};

impl World {
    pub(crate) fn claim_read(&mut self, h: u16, gen: u64) {
        // Each read of the claim runs under the I/O deadline
        // (`claim::claim`); a failed or late one ends the start (exit 3,
        // systemd restarts the daemon). Before issue 14 it had none: a
        // hung storage hung the start.
        let old = self.mutation == Mutation::ClaimWithoutReadBack;
        let io = (!old).then_some(self.p.cfg.io_timeout);
        let host_id = self.host(h).host_id;
        self.issue(
            h,
            Job::ReadSlot(host_id),
            Owner::Daemon {
                h,
                gen,
                what: DaemonCall::Claim,
            },
            io,
        );
    }

    /// `claim::claim`'s loop, the real `Claim` deciding: `own` is the
    /// slot as read; `written` the claim record when the claim write wrote
    /// it.
    pub(crate) fn claim_step(&mut self, h: u16, own: &[u8], written: Option<Vec<u8>>) {
        let now = self.local(h);
        let d = self.host(h).daemon.as_ref().unwrap();
        let gen = d.gen;
        let mut claim = match d.phase.clone() {
            DPhase::Claiming(c) => c,
            DPhase::OldClaiming { .. } => return self.old_claim_step(h, own),
            _ => return,
        };
        let starting = claim.first.is_none();
        let step = match &written {
            Some(rec) => claim.wrote(now, rec.clone()),
            None => claim.step(now, own),
        };
        let first = claim.first.clone();
        let hs = self.host(h);
        let (host_id, name, boot) = (hs.host_id, hs.name.clone(), hs.boot_id.clone());
        let t = self.p.cfg.timing;
        let io = self.p.cfg.io_timeout;
        if let (true, Some(slot), ClaimStep::ReadAt(_)) = (starting, &first, &step) {
            if let Some((wait, why)) = watch_time(slot, &name, &boot, t.host_dead_timeout, io) {
                self.log(
                    &format!("h{h}"),
                    format!("host id {host_id}: {why}; watching the slot for {wait} ms before claiming it"),
                );
            }
        }
        if written.is_some() {
            self.log(
                &format!("h{h}"),
                format!("host id {host_id}: claim written; reading it back after the claim wait"),
            );
        }
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        d.phase = DPhase::Claiming(claim);
        if let Some(w) = written {
            // The record written last, until a renewal writes the next.
            d.expect = vec![w];
        }
        let who = format!("h{h}");
        match step {
            ClaimStep::ReadAt(at) => {
                let d = self.host(h).real(at.saturating_sub(now));
                self.after(d, Ev::ClaimPoll { h, gen });
            }
            ClaimStep::Write { expect } => {
                let rec = self.record(h, HostState::Live);
                debug_assert_eq!(rec.counter, CLAIM_COUNTER);
                let d = self.host_mut(h).daemon.as_mut().unwrap();
                d.pending_written = Some(rec.encode());
                self.issue(
                    h,
                    Job::Renew {
                        host_id,
                        expect: vec![expect],
                        rec: Some(rec),
                    },
                    Owner::Daemon {
                        h,
                        gen,
                        what: DaemonCall::ClaimWrite,
                    },
                    Some(2 * io),
                );
            }
            ClaimStep::Rejoined => {
                self.log(
                    &who,
                    format!(
                        "host id {host_id}: our own record of this boot (a daemon restart): joined"
                    ),
                );
                self.host_mut(h).daemon.as_mut().unwrap().expect = vec![own.to_vec()];
                self.daemon_run(h, first);
            }
            ClaimStep::Joined => {
                self.log(&who, format!("host id {host_id}: claimed"));
                self.daemon_run(h, first);
            }
            ClaimStep::Refused(why) => self.daemon_exit(h, &why, true),
        }
    }

    /// The claim before issue 14 (mutation `claim-without-read-back`):
    /// watch the slot as the old `watch_time` said, then join without
    /// writing; the first renewal writes.
    fn old_claim_step(&mut self, h: u16, raw: &[u8]) {
        let hs = self.host(h);
        let slot = vmlease::hosts::decode_slot(hs.host_id, raw);
        let now = self.local(h);
        let (name, boot) = (hs.name.clone(), hs.boot_id.clone());
        let d_ms = self.p.cfg.timing.host_dead_timeout;
        let io = self.p.cfg.io_timeout;
        let d = hs.daemon.as_ref().unwrap();
        let gen = d.gen;
        let DPhase::OldClaiming {
            first,
            wait,
            start_ms,
        } = d.phase.clone()
        else {
            return;
        };
        match first {
            None => match mutation::old_watch_time(&slot, &name, &boot, d_ms, io) {
                None => self.daemon_run(h, Some(slot)),
                Some((wait, why)) => {
                    self.log(
                        &format!("h{h}"),
                        format!(
                            "host id {}: {why}; watching the slot for {wait} ms",
                            hs.host_id
                        ),
                    );
                    self.host_mut(h).daemon.as_mut().unwrap().phase = DPhase::OldClaiming {
                        first: Some(slot),
                        wait,
                        start_ms: now,
                    };
                    let pause = 200.min(wait.max(10));
                    let d = self.host(h).real(pause);
                    self.after(d, Ev::ClaimPoll { h, gen });
                }
            },
            Some(first) => {
                if slot != first {
                    self.daemon_exit(
                        h,
                        "host id in use: its record changed while we watched",
                        true,
                    );
                } else if now.saturating_sub(start_ms) >= wait {
                    self.daemon_run(h, Some(slot));
                } else {
                    let pause = 200.min(wait.max(10));
                    let d = self.host(h).real(pause);
                    self.after(d, Ev::ClaimPoll { h, gen });
                }
            }
        }
    }

    pub fn claim_poll(&mut self, h: u16, gen: u64) {
        if self.daemon_gen_ok(h, gen) {
            self.claim_read(h, gen);
        }
    }
}
