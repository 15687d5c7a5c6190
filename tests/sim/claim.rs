//! Joining the lockspace in the simulated daemon: the production claim
//! loop (`daemon::claim::Join` around the real `Claim`) decides; this
//! carries out its reads and its claim write as storage calls. The claim
//! before issue 14 (mutation `claim-without-read-back`) comes through the
//! core's seam (`SimTamper`: the old watch rule, no claim write). The
//! re-claim that `vmlease clear-fence` starts after a host id collision is
//! the core's.

use crate::calls::RenewDone;
use vmlease::collision::CLAIM_COUNTER;
use vmlease::daemon::claim::JoinIo;
use vmlease::error::Error;
use vmlease::hosts::HostState;

use crate::calls::{DaemonCall, Job, Owner};
use crate::daemon::DPhase;
use crate::mutation::Mutation;
use crate::world::{Ev, World};

impl World {
    pub(crate) fn claim_read(&mut self, h: u16, gen: u64) {
        // Each read of the claim runs under the I/O deadline; a late one
        // is read again (`Join::read_failed`). Before issue 14 it had
        // none: a hung storage hung the start.
        let hs = self.host(h);
        let host_id = hs.host_id;
        let deadline = hs
            .daemon
            .as_ref()
            .unwrap()
            .join
            .as_ref()
            .unwrap()
            .read_deadline_ms();
        let io = (self.mutation != Mutation::ClaimWithoutReadBack).then_some(deadline);
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

    /// The slot as read.
    pub(crate) fn claim_got(&mut self, h: u16, own: &[u8]) {
        let now = self.local(h);
        let join = self.join(h);
        let starting = join.claim().first.is_none();
        let io = join.read(now, own);
        if let (true, Some((wait, why)), JoinIo::Read { .. }) =
            (starting, join.claim().watching.clone(), &io)
        {
            let host_id = self.host(h).host_id;
            self.log(
                &format!("h{h}"),
                format!(
                    "host id {host_id}: {why}; watching the slot for {wait} ms before claiming it"
                ),
            );
        }
        self.claim_next(h, io);
    }

    /// The claim write ended.
    pub(crate) fn claim_wrote(&mut self, h: u16, io: RenewDone) {
        let now = self.local(h);
        let host_id = self.host(h).host_id;
        let own = vmlease::daemon::renew::own_slot(&io.raw, host_id);
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        let written = d.pending_written.take().filter(|_| io.wrote);
        if written.is_some() {
            self.log(
                &format!("h{h}"),
                format!("host id {host_id}: claim written; reading it back after the claim wait"),
            );
        }
        let next = self.join(h).wrote(now, written, &own);
        self.claim_next(h, next);
    }

    /// A claim read missed its deadline: the claim loop reads again.
    pub(crate) fn claim_slow(&mut self, h: u16, e: Error) {
        let now = self.local(h);
        self.log(&format!("h{h}"), format!("claim: {e}; reading again"));
        let next = self.join(h).read_failed(now);
        self.claim_next(h, next);
    }

    /// The claim write missed its deadline: it may still land; the claim
    /// loop reads the slot to see.
    pub(crate) fn claim_write_slow(&mut self, h: u16, e: Error) {
        let now = self.local(h);
        self.log(
            &format!("h{h}"),
            format!("claim: {e}; reading the slot to see"),
        );
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        let rec = d.pending_written.take().unwrap_or_default();
        let next = self.join(h).write_failed(now, rec);
        self.claim_next(h, next);
    }

    fn join(&mut self, h: u16) -> &mut vmlease::daemon::claim::Join {
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        assert_eq!(d.phase, DPhase::Claiming);
        d.join.as_mut().unwrap()
    }

    fn claim_next(&mut self, h: u16, io: JoinIo) {
        let now = self.local(h);
        let who = format!("h{h}");
        let host_id = self.host(h).host_id;
        let gen = self.host(h).daemon.as_ref().unwrap().gen;
        match io {
            JoinIo::Read { at } => {
                let d = self.host(h).real(at.saturating_sub(now));
                self.after(d, Ev::ClaimPoll { h, gen });
            }
            JoinIo::Write { expect } => {
                let rec = self.record(h, HostState::Live);
                debug_assert_eq!(rec.counter, CLAIM_COUNTER);
                let d = self.host_mut(h).daemon.as_mut().unwrap();
                d.pending_written = Some(rec.encode());
                let deadline = d.join.as_ref().unwrap().write_deadline_ms();
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
                    Some(deadline),
                );
            }
            JoinIo::Joined {
                first,
                written,
                rejoined,
            } => {
                let line = if rejoined {
                    "our own record of this boot (a daemon restart): joined"
                } else {
                    "claimed"
                };
                self.log(&who, format!("host id {host_id}: {line}"));
                self.host_mut(h).daemon.as_mut().unwrap().join = None;
                self.daemon_run(h, first, written);
            }
            JoinIo::Refused(why) => self.daemon_exit(h, &why, true),
        }
    }

    pub fn claim_poll(&mut self, h: u16, gen: u64) {
        if self.daemon_gen_ok(h, gen) {
            self.claim_read(h, gen);
        }
    }
}
