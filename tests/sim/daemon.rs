//! The watchdog daemon of one simulated host: `Daemon::start` (open the
//! lockspace, claim the host id, open the hardware watchdog), the main
//! loop of `Daemon::run` (collect the renewal, probe, reap, fence, kill,
//! pet, renew, release, write the status) and `Daemon::stop`, step by step
//! as in src/daemon/mod.rs, src/daemon/claim.rs, src/daemon/renew.rs and
//! src/daemon/reaper.rs, with the threads replaced by storage calls and
//! events.
//!
//! The decisions are the real ones: `Fence::step`, `Observer::update`,
//! `claim::Claim` (the claim, its write and its delayed read-back:
//! tests/sim/claim.rs),
//! `collision::check_own` (before every write of the slot), `NetState`,
//! `HostRecord::encode`, `hosts::decode_slot`, and the release goes
//! through the real `Engine::release_matching`.

use std::collections::{BTreeMap, VecDeque};

use vmlease::collision::CLAIM_COUNTER;
use vmlease::config::Network;
use vmlease::daemon::claim::Claim;
use vmlease::daemon::fence::{self, Fence, Inputs, Phase};
use vmlease::daemon::probes::{NetState, Round};
use vmlease::daemon::renew::own_slot;
use vmlease::error::Result;
use vmlease::hosts::{HostRecord, HostState, Slot};
use vmlease::lease::Holder;
use vmlease::process::ProcId;
use vmlease::registry::Entry as RegEntry;
use vmlease::status::{Observer, Status};

use crate::calls::{DaemonCall, Job, Outcome, Owner, RenewDone};
use crate::mutation::Mutation;
use crate::params::MS;
use crate::world::{pk, proc_id, Ev, Pk, World};

/// What a renewal returned: `renew_io`'s result, or (mutation
/// `claim-without-read-back`) the table read after the write.
pub enum RenewResult {
    Io(Result<RenewDone>),
    Old(Result<(Vec<u8>, Vec<u64>)>),
}

/// At most this many records the slot may hold while writes fail
/// (src/daemon/mod.rs `MAX_EXPECT`).
const MAX_EXPECT: usize = 32;

pub struct Tracked {
    pub entry: Option<RegEntry>,
    pub dead: bool,
    pub releasing: bool,
    pub retry_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DPhase {
    Opening,
    /// `claim::claim`: the real `Claim`, stepped with each read of the
    /// slot and with its write.
    Claiming(Box<Claim>),
    /// The claim before issue 14 (mutation `claim-without-read-back`):
    /// watch the slot, write nothing.
    OldClaiming {
        first: Option<Slot>,
        wait: u64,
        start_ms: u64,
    },
    Running,
    Stopping,
}

pub struct ReleaseJob {
    pub p: ProcId,
    pub entry: RegEntry,
    pub idx: usize,
    pub done: Vec<String>,
}

pub struct Daemon {
    pub gen: u64,
    pub pid: u32,
    pub incarnation: u64,
    pub phase: DPhase,
    pub counter: u64,
    pub started_ms: u64,
    pub last_renewal_ms: u64,
    pub renew_inflight: Option<u64>,
    pub next_renew_ms: u64,
    /// The records our slot may hold: the one we wrote last, and those
    /// whose write failed after it (they may have landed).
    pub expect: Vec<Vec<u8>>,
    /// The record the renewal (or claim write) in flight asked to write.
    pub pending_written: Option<Vec<u8>>,
    pub observer: Observer,
    pub fence: Fence,
    pub mgmt: NetState,
    pub service: NetState,
    pub probe_out: Option<Round>,
    /// Another machine wrote our slot: we write it no more until a
    /// re-claim succeeds.
    pub collision: bool,
    pub collision_msg: String,
    /// A re-claim of the slot after a collision (`vmlease clear-fence`).
    pub reclaim: Option<Claim>,
    pub reclaim_note: String,
    pub clear_after_renewal: bool,
    pub clear_ready: bool,
    pub last_state: HostState,
    pub renew_error: String,
    pub status_written_ms: u64,
    pub status_key: (HostState, u64, String),
    pub tracked: BTreeMap<Pk, Tracked>,
    pub jobs: VecDeque<(ProcId, RegEntry)>,
    pub job: Option<ReleaseJob>,
    pub inbox_renew: Vec<(u64, RenewResult)>,
    pub inbox_release: Vec<(ProcId, Result<Vec<String>>)>,
    pub tick_seq: u64,
    /// The last table read fed to the observer (for a mutation).
    pub last_table: Option<Vec<u8>>,
    /// When the observer was made, and when (local ms) it first saw each
    /// slot: the mutation `first-sight-dated-to-start` (KB2) uses them.
    pub observer_made_ms: u64,
    pub first_sight: BTreeMap<u16, u64>,
    pub registry_seen: Option<u64>,
    pub last_full_scan: u64,
}

impl World {
    pub(crate) fn daemon_gen_ok(&self, h: u16, gen: u64) -> bool {
        let hs = self.host(h);
        hs.up && hs.daemon.as_ref().map(|d| d.gen) == Some(gen)
    }

    pub fn daemon_spawn(&mut self, h: u16) {
        let gen = self.id();
        let now = self.local(h);
        let pid = {
            let hs = self.host_mut(h);
            hs.next_pid += 1;
            hs.daemon_gen = gen;
            hs.next_pid
        };
        let t = self.p.cfg.timing;
        let cfg = &self.p.cfg;
        let d = Daemon {
            gen,
            pid,
            incarnation: self.rng.next_u64(),
            phase: DPhase::Opening,
            counter: CLAIM_COUNTER,
            started_ms: now,
            last_renewal_ms: 0,
            renew_inflight: None,
            next_renew_ms: now,
            expect: Vec::new(),
            pending_written: None,
            observer: Observer::new(now),
            fence: Fence::new(t, cfg.management.policy, cfg.service.policy),
            mgmt: NetState::new("management", cfg.management.clone()),
            service: NetState::new("service", cfg.service.clone()),
            probe_out: None,
            collision: false,
            collision_msg: String::new(),
            reclaim: None,
            reclaim_note: String::new(),
            clear_after_renewal: false,
            clear_ready: false,
            last_state: HostState::Live,
            renew_error: String::new(),
            status_written_ms: 0,
            status_key: (HostState::Live, 0, String::new()),
            tracked: BTreeMap::new(),
            jobs: VecDeque::new(),
            job: None,
            inbox_renew: Vec::new(),
            inbox_release: Vec::new(),
            tick_seq: 0,
            last_table: None,
            observer_made_ms: now,
            first_sight: BTreeMap::new(),
            registry_seen: None,
            last_full_scan: 0,
        };
        self.host_mut(h).daemon = Some(d);
        self.log(
            &format!("h{h}"),
            format!("watchdog daemon starts (pid {pid})"),
        );
        let io = self.p.cfg.io_timeout;
        self.issue(
            h,
            Job::Open,
            Owner::Daemon {
                h,
                gen,
                what: DaemonCall::Open,
            },
            Some(io),
        );
    }

    pub fn daemon_result(&mut self, h: u16, gen: u64, what: DaemonCall, out: Outcome) {
        if !self.daemon_gen_ok(h, gen) {
            return;
        }
        match (what, out) {
            (DaemonCall::Open, Outcome::Unit(r)) => match r {
                Ok(()) => {
                    let phase = if self.mutation == Mutation::ClaimWithoutReadBack {
                        DPhase::OldClaiming {
                            first: None,
                            wait: 0,
                            start_ms: 0,
                        }
                    } else {
                        // After a collision fence, even our own record of
                        // this boot gets the claim delay.
                        let hs = self.host(h);
                        let t = self.p.cfg.timing;
                        let careful = hs.marker == Some(fence::Cause::HostIdCollision);
                        DPhase::Claiming(Box::new(Claim::new(
                            hs.host_id,
                            &hs.name,
                            &hs.boot_id,
                            t.host_dead_timeout,
                            self.p.cfg.io_timeout,
                            t.renew_interval,
                            careful,
                        )))
                    };
                    self.host_mut(h).daemon.as_mut().unwrap().phase = phase;
                    self.claim_read(h, gen);
                }
                Err(e) => self.daemon_exit(h, &format!("cannot open the lockspace: {e}"), true),
            },
            (DaemonCall::Claim, Outcome::Bytes(r)) => match r {
                Ok(raw) => self.claim_step(h, &raw, None),
                Err(e) => self.daemon_exit(h, &format!("claim: {e}"), true),
            },
            (DaemonCall::ClaimWrite, Outcome::Renewed(r)) => match r {
                Ok(io) => {
                    let host_id = self.host(h).host_id;
                    let own = own_slot(&io.raw, host_id);
                    let d = self.host_mut(h).daemon.as_mut().unwrap();
                    let written = d.pending_written.take().filter(|_| io.wrote);
                    self.claim_step(h, &own, written);
                }
                Err(e) => self.daemon_exit(h, &format!("claim: {e}"), true),
            },
            (DaemonCall::Renew { issued_ms }, Outcome::Renewed(r)) => {
                let d = self.host_mut(h).daemon.as_mut().unwrap();
                d.inbox_renew.push((issued_ms, RenewResult::Io(r)));
            }
            (DaemonCall::Renew { issued_ms }, Outcome::Table(r)) => {
                let d = self.host_mut(h).daemon.as_mut().unwrap();
                d.inbox_renew.push((issued_ms, RenewResult::Old(r)));
            }
            (DaemonCall::Release, Outcome::Matched(r)) => self.release_job_step(h, r),
            (DaemonCall::Leave, out) => {
                let msg = match out {
                    Outcome::Renewed(Ok(RenewDone {
                        collision: Some(c), ..
                    })) => format!("{c}; not publishing 'leaving'"),
                    Outcome::Renewed(Err(e)) | Outcome::Unit(Err(e)) => {
                        format!("could not publish 'leaving': {e}")
                    }
                    _ => "left the lockspace cleanly".into(),
                };
                self.log(&format!("h{h}"), msg);
                self.host_mut(h).wd_armed = false;
                self.daemon_gone(h);
            }
            (what, out) => panic!("daemon call {what:?} got {out:?}"),
        }
    }

    /// The end of `Daemon::start` and the start of `run`: `own` is our
    /// slot as the claim read it (unchanged while watched).
    pub(crate) fn daemon_run(&mut self, h: u16, own: Option<Slot>) {
        let now = self.local(h);
        let (name, boot) = (self.host(h).name.clone(), self.host(h).boot_id.clone());
        let mut clock = fence::clock_start(own.as_ref(), &name, &boot, now);
        if self.mutation == Mutation::RestartResetsFenceClock {
            clock = now;
        }
        if clock < now {
            self.log(
                &format!("h{h}"),
                format!(
                    "continuing the previous daemon's fence clock: last renewal {} ms ago",
                    now - clock
                ),
            );
        }
        // Opening the watchdog sets its timeout, which pings it.
        self.wd_arm(h);
        let marker = self.host(h).marker.clone();
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        if let Some(cause) = marker {
            d.fence.phase = Phase::Fenced { cause, since: now };
        }
        d.phase = DPhase::Running;
        d.started_ms = clock;
        d.next_renew_ms = now;
        d.observer = Observer::new(now);
        d.observer_made_ms = now;
        d.first_sight.clear();
        let gen = d.gen;
        d.tick_seq += 1;
        let seq = d.tick_seq;
        let host_id = self.host(h).host_id;
        self.log(
            &format!("h{h}"),
            format!("joined the lockspace as host {host_id}"),
        );
        self.at(self.now, Ev::Tick { h, gen, seq });
        self.at(self.now, Ev::Probe { h, gen });
        // libvirtd is ordered after the daemon's READY; a clone's libvirtd
        // autostarts the domains it was cloned with.
        let hs = self.host(h);
        if hs.clone_of.is_some() && hs.libvirtd_boot != hs.boot_no {
            let boot = hs.boot_no;
            self.host_mut(h).libvirtd_boot = boot;
            let d = self.rng.range(300, 1500) * MS;
            self.after(d, Ev::Autostart { h, boot });
        }
    }

    /// A clone's libvirtd starts: it autostarts the domains of the host
    /// it was cloned from that run there now.
    pub fn autostart(&mut self, h: u16, boot: u32) {
        let hs = self.host(h);
        let Some(of) = hs.clone_of else { return };
        if !hs.up || hs.boot_no != boot {
            return;
        }
        let vms: Vec<usize> = (0..self.vms.len())
            .filter(|&vm| {
                self.host(of).domains.contains_key(&vm) && !self.host(h).domains.contains_key(&vm)
            })
            .collect();
        for vm in vms {
            self.log(&format!("h{h}"), format!("libvirtd autostarts vm{vm}"));
            self.start_vm(vm, h, false);
        }
    }

    /// The daemon process ends (error exit or clean stop).
    pub(crate) fn daemon_exit(&mut self, h: u16, why: &str, restart: bool) {
        self.log(&format!("h{h}"), format!("watchdog daemon exits: {why}"));
        self.daemon_gone(h);
        if restart {
            self.schedule_restart(h);
        }
    }

    fn schedule_restart(&mut self, h: u16) {
        let boot = self.host(h).boot_no;
        let d = self.rng.range(self.p.restart_ms.0, self.p.restart_ms.1) * MS;
        self.after(d, Ev::DaemonSpawn { h, boot });
    }

    fn daemon_gone(&mut self, h: u16) {
        let Some(gen) = self.host(h).daemon.as_ref().map(|d| d.gen) else {
            return;
        };
        let calls: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| matches!(c.owner, Owner::Daemon { gen: g, .. } if g == gen))
            .map(|(id, _)| *id)
            .collect();
        for id in calls {
            self.abandon_call(id, false);
        }
        let hs = self.host_mut(h);
        hs.daemon = None;
        hs.daemon_hung_until = 0;
    }

    pub fn daemon_kill(&mut self, h: u16, restart: bool) {
        if !self.host(h).up || self.host(h).daemon.is_none() {
            return;
        }
        self.log(&format!("h{h}"), "watchdog daemon killed (SIGKILL)".into());
        self.daemon_gone(h);
        if restart {
            self.schedule_restart(h);
        }
    }

    /// SIGTERM: `Daemon::stop`, then (for a restart) a new start.
    pub fn daemon_sigterm(&mut self, h: u16, restart: bool) {
        let hs = self.host(h);
        if !hs.up || hs.frozen(self.now) {
            return;
        }
        let Some(d) = hs.daemon.as_ref() else {
            return;
        };
        if hs.daemon_hung_until > self.now || d.phase != DPhase::Running {
            // A stopped process does not handle the signal: systemd kills
            // it after its stop timeout; one not running yet just exits.
            self.daemon_kill(h, restart);
            return;
        }
        self.log(
            &format!("h{h}"),
            "watchdog daemon stopping (SIGTERM)".into(),
        );
        self.host_mut(h).status = None;
        self.reaper_scan_now(h);
        let alive = self.alive_processes(h).len();
        if alive > 0 {
            self.log(
                &format!("h{h}"),
                format!("stopping with {alive} leased QEMU(s) running: the watchdog stays armed"),
            );
            self.daemon_gone(h);
        } else {
            let old = self.mutation == Mutation::ClaimWithoutReadBack;
            let d = self.host(h).daemon.as_ref().unwrap();
            // After a collision the slot is not ours: nothing is written;
            // else only over the record we wrote last (the renewal's
            // check), under twice the I/O deadline.
            if d.last_renewal_ms > 0 && d.renew_inflight.is_none() && (!d.collision || old) {
                let gen = d.gen;
                let rec = {
                    let d = self.host_mut(h).daemon.as_mut().unwrap();
                    d.counter += 1;
                    d.phase = DPhase::Stopping;
                    self.record(h, HostState::Leaving)
                };
                let io = self.p.cfg.io_timeout;
                let d = self.host(h).daemon.as_ref().unwrap();
                let (job, deadline) = if old {
                    (Job::WriteHost(rec), io)
                } else {
                    let job = Job::Renew {
                        host_id: rec.host_id,
                        expect: d.expect.clone(),
                        rec: Some(rec),
                    };
                    (job, 2 * io)
                };
                self.issue(
                    h,
                    job,
                    Owner::Daemon {
                        h,
                        gen,
                        what: DaemonCall::Leave,
                    },
                    Some(deadline),
                );
                if restart {
                    self.schedule_restart(h);
                }
                return;
            }
            self.host_mut(h).wd_armed = false;
            self.daemon_gone(h);
        }
        if restart {
            self.schedule_restart(h);
        }
    }

    pub(crate) fn record(&self, h: u16, state: HostState) -> HostRecord {
        let hs = self.host(h);
        let d = hs.daemon.as_ref().unwrap();
        HostRecord {
            host_id: hs.host_id,
            host_name: hs.name.clone(),
            boot_id: hs.boot_id.clone(),
            incarnation: d.incarnation,
            counter: d.counter,
            state,
            timing: self.p.cfg.timing,
            unsafe_no_watchdog: false,
            mono_ms: hs.local_ms(self.now),
            wall: (1_700_000_000 + hs.wall_skew_s + (self.now / 1_000_000) as i64) as u64,
        }
    }

    // ---------------------------------------------------------------
    // The prober thread.

    pub fn probe_start(&mut self, h: u16, gen: u64) {
        if !self.daemon_gen_ok(h, gen) {
            return;
        }
        let up = self.sched.mgmt_up(h, self.now);
        let at_ms = self.local(h);
        let spent = if up {
            1
        } else {
            self.p.cfg.management.probe_timeout
        };
        let d = self.host(h).real(spent);
        self.after(d, Ev::ProbeDone { h, gen, at_ms, up });
    }

    pub fn probe_done(&mut self, h: u16, gen: u64, at_ms: u64, up: bool) {
        if !self.daemon_gen_ok(h, gen) {
            return;
        }
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        d.probe_out = Some(Round {
            at_ms,
            up: usize::from(up),
            total: 1,
            failures: if up {
                Vec::new()
            } else {
                vec!["tcp mgmt.sim:22: timed out".into()]
            },
        });
        let now = self.local(h);
        let interval = self.p.cfg.timing.renew_interval;
        let next = interval.saturating_sub(now.saturating_sub(at_ms)).max(10);
        let d = self.host(h).real(next);
        self.after(d, Ev::Probe { h, gen });
    }

    // ---------------------------------------------------------------
    // The reaper (src/daemon/reaper.rs).

    /// `ProcId::is_alive` as the daemon sees it (`proc_alive`: the
    /// production rule on the simulated /proc).
    fn qemu_alive(&self, h: u16, p: ProcId) -> bool {
        let boot = self.host(h).boot_no;
        let dead_on_kill = self.mutation == Mutation::DeadOnKill
            && self.qemus.iter().any(|q| {
                q.host == h
                    && q.boot == boot
                    && q.proc_id == p
                    && q.state == crate::libvirt::QState::Dying
            });
        self.proc_alive(h, p) && !dead_on_kill
    }

    /// `Reaper::scan`: cheap when nothing changed (one stat of the
    /// directory), a full reread at least every second.
    fn reaper_scan(&mut self, h: u16) {
        let now = self.local(h);
        let version = self.host(h).registry_version;
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        if d.registry_seen == Some(version) && now.saturating_sub(d.last_full_scan) < 1000 {
            return;
        }
        d.registry_seen = Some(version);
        d.last_full_scan = now;
        self.reaper_scan_now(h);
    }

    fn reaper_scan_now(&mut self, h: u16) {
        let entries: Vec<(ProcId, RegEntry)> = self
            .host(h)
            .registry
            .values()
            .map(|e| (e.proc_id, e.clone()))
            .collect();
        let mut newly_dead = Vec::new();
        for (p, e) in &entries {
            let alive = self.qemu_alive(h, *p);
            let d = self.host_mut(h).daemon.as_mut().unwrap();
            match d.tracked.get_mut(&pk(*p)) {
                Some(t) => t.entry = Some(e.clone()),
                None => {
                    d.tracked.insert(
                        pk(*p),
                        Tracked {
                            entry: Some(e.clone()),
                            dead: false,
                            releasing: false,
                            retry_at: 0,
                        },
                    );
                    if !alive {
                        newly_dead.push(*p);
                    }
                }
            }
        }
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        for p in newly_dead {
            d.tracked.get_mut(&pk(p)).unwrap().dead = true;
        }
        d.tracked
            .retain(|p, t| entries.iter().any(|(q, _)| pk(*q) == *p) || t.releasing);
    }

    fn alive_processes(&mut self, h: u16) -> Vec<ProcId> {
        let ids: Vec<ProcId> = self
            .host(h)
            .daemon
            .as_ref()
            .unwrap()
            .tracked
            .iter()
            .filter(|(_, t)| !t.dead)
            .map(|(p, _)| proc_id(*p))
            .collect();
        let mut out = Vec::new();
        for p in ids {
            if self.qemu_alive(h, p) {
                out.push(p);
            } else {
                let d = self.host_mut(h).daemon.as_mut().unwrap();
                d.tracked.get_mut(&pk(p)).unwrap().dead = true;
            }
        }
        out
    }

    /// A pidfd became readable: the loop wakes at once.
    pub fn daemon_notice_exit(&mut self, h: u16, p: ProcId) {
        let hs = self.host_mut(h);
        let Some(d) = hs.daemon.as_mut() else { return };
        if d.phase != DPhase::Running {
            return;
        }
        if let Some(t) = d.tracked.get_mut(&pk(p)) {
            if !t.dead {
                t.dead = true;
                d.tick_seq += 1;
                let (gen, seq) = (d.gen, d.tick_seq);
                self.at(self.now, Ev::Tick { h, gen, seq });
            }
        }
    }

    fn release_dead(&mut self, h: u16) {
        let now = self.local(h);
        let inbox = std::mem::take(&mut self.host_mut(h).daemon.as_mut().unwrap().inbox_release);
        for (p, res) in inbox {
            let hs = self.host_mut(h);
            let d = hs.daemon.as_mut().unwrap();
            let Some(t) = d.tracked.get_mut(&pk(p)) else {
                continue;
            };
            t.releasing = false;
            match res {
                Ok(keys) => {
                    d.tracked.remove(&pk(p));
                    hs.registry.remove(&pk(p));
                    hs.registry_version += 1;
                    if !keys.is_empty() {
                        self.log(
                            &format!("h{h}"),
                            format!(
                                "released {} lease(s) of exited QEMU pid {}",
                                keys.len(),
                                p.pid
                            ),
                        );
                    }
                }
                Err(_) => t.retry_at = now + 1000,
            }
        }
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        let mut send = Vec::new();
        for (p, t) in d.tracked.iter_mut() {
            if t.dead && !t.releasing && now >= t.retry_at {
                if let Some(e) = &t.entry {
                    send.push((proc_id(*p), e.clone()));
                    t.releasing = true;
                }
            }
        }
        d.jobs.extend(send);
        self.release_worker(h);
    }

    /// The release thread: one job at a time, one key after the other.
    fn release_worker(&mut self, h: u16) {
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        if d.job.is_some() {
            return;
        }
        let Some((p, entry)) = d.jobs.pop_front() else {
            return;
        };
        d.job = Some(ReleaseJob {
            p,
            entry,
            idx: 0,
            done: Vec::new(),
        });
        self.release_next_key(h);
    }

    fn release_next_key(&mut self, h: u16) {
        let hs = self.host(h);
        let d = hs.daemon.as_ref().unwrap();
        let job = d.job.as_ref().unwrap();
        if job.idx >= job.entry.keys.len() {
            let d = self.host_mut(h).daemon.as_mut().unwrap();
            let job = d.job.take().unwrap();
            d.inbox_release.push((job.p, Ok(job.done)));
            self.release_worker(h);
            return;
        }
        let key = job.entry.keys[job.idx].0.clone();
        let me = Holder {
            host_id: hs.host_id,
            boot_id: hs.boot_id.clone(),
            pid: job.p.pid,
            pid_start: job.p.start,
            domain_uuid: String::new(),
            domain_name: String::new(),
        };
        let gen = d.gen;
        self.issue(
            h,
            Job::ReleaseMatching { key, me },
            Owner::Daemon {
                h,
                gen,
                what: DaemonCall::Release,
            },
            None,
        );
    }

    fn release_job_step(&mut self, h: u16, r: Result<Vec<Holder>>) {
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        let Some(job) = d.job.as_mut() else { return };
        match r {
            Ok(gone) => {
                if !gone.is_empty() {
                    let k = job.entry.keys[job.idx].0.clone();
                    job.done.push(k);
                }
                job.idx += 1;
                self.release_next_key(h);
            }
            Err(e) => {
                let job = d.job.take().unwrap();
                d.inbox_release.push((job.p, Err(e)));
                self.release_worker(h);
            }
        }
    }

    // ---------------------------------------------------------------
    // The main loop.

    pub fn daemon_tick(&mut self, h: u16, gen: u64, seq: u64) {
        if !self.daemon_gen_ok(h, gen) {
            return;
        }
        {
            let d = self.host(h).daemon.as_ref().unwrap();
            if d.tick_seq != seq || d.phase != DPhase::Running {
                return;
            }
        }
        let now = self.local(h);
        let hs_name = format!("h{h}");
        self.collect_renewal(h, now);
        // collect_probes
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        if let Some(r) = d.probe_out.take() {
            d.mgmt.feed(r);
        }
        self.reaper_scan(h);
        let alive = {
            let d = self.host(h).daemon.as_ref().unwrap();
            d.tracked.values().filter(|t| !t.dead).count()
        };
        let clear = self.clear_input(h);
        let mutation = self.mutation;
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        let inputs = Inputs {
            now,
            last_renewal: d.last_renewal_ms,
            started: d.started_ms,
            mgmt_lost: d.mgmt.lost(now),
            service_lost: d.service.lost(now),
            mgmt_down: d.mgmt.down(),
            service_down: d.service.down(),
            collision: d.collision,
            // EBLOCKLISTED is not modelled: the simulated host fences at F.
            blocklisted: false,
            alive_leased: alive,
            clear_requested: clear,
        };
        let was_fencing = matches!(d.fence.phase, Phase::Fencing { .. });
        let mut act = d.fence.step(&inputs);
        if mutation == Mutation::KillTimeoutFromNow && !was_fencing {
            kill_timeout_from_now(&mut d.fence, &inputs, &mut act);
        }
        if self.mutation == Mutation::FencedCleanBeforeKill && act.state == HostState::Fencing {
            act.state = HostState::FencedClean;
        }
        if let Some(l) = &act.log {
            if l.starts_with("FENCING") {
                self.stats.fences += 1;
            }
            let l = l.clone();
            self.log(&hs_name, l);
        }
        if act.kill_all && self.mutation != Mutation::NoKillOnFence {
            for p in self.alive_processes(h) {
                if let Some(q) = self.qemu_by_proc(h, p) {
                    self.log(&hs_name, format!("fence: SIGKILL QEMU pid {}", p.pid));
                    self.kill_qemu(q);
                }
            }
        }
        if act.reset {
            self.reset(h, "fence: a leased QEMU survived kill_timeout");
            return;
        }
        if act.pet || self.mutation == Mutation::AlwaysPetWatchdog {
            self.wd_pet(h);
        }
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        if act.state != d.last_state {
            let from = d.last_state;
            d.last_state = act.state;
            let phase = d.fence.phase.clone();
            self.host_mut(h).marker = match &phase {
                Phase::Healthy => None,
                Phase::Fencing { cause, .. }
                | Phase::Fenced { cause, .. }
                | Phase::Reset { cause } => Some(cause.clone()),
            };
            let _ = fence::marker_path;
            self.log(&hs_name, format!("host state {from} -> {}", act.state));
        }
        self.maybe_renew(h, now, act.state);
        self.release_dead(h);
        // Status: on change and every R/2.
        let d = self.host(h).daemon.as_ref().unwrap();
        let key = (d.last_state, d.last_renewal_ms, d.renew_error.clone());
        let every = (self.p.cfg.timing.renew_interval / 2).clamp(50, 1000);
        if key != d.status_key || now.saturating_sub(d.status_written_ms) >= every {
            self.write_status(h, now);
            let d = self.host_mut(h).daemon.as_mut().unwrap();
            d.status_written_ms = now;
            d.status_key = key;
        }
        let tick = self.p.tick_ms;
        let dt = self.host(h).real(tick);
        self.after(dt, Ev::Tick { h, gen, seq });
    }

    fn qemu_by_proc(&self, h: u16, p: ProcId) -> Option<usize> {
        let boot = self.host(h).boot_no;
        self.qemus
            .iter()
            .find(|q| q.host == h && q.boot == boot && q.proc_id == p && q.alive())
            .map(|q| q.id)
    }

    fn collect_renewal(&mut self, h: u16, now: u64) {
        let inbox = std::mem::take(&mut self.host_mut(h).daemon.as_mut().unwrap().inbox_renew);
        for (issued, r) in inbox {
            let (raw, versions) = match r {
                RenewResult::Io(Ok(io)) => {
                    self.renewed(h, now, issued, &io);
                    (io.raw, io.versions)
                }
                RenewResult::Old(Ok((raw, versions))) => {
                    // Before issue 14: a collision is seen only if another
                    // write landed between ours and this read.
                    let host_id = self.host(h).host_id;
                    let d = self.host_mut(h).daemon.as_mut().unwrap();
                    d.renew_inflight = None;
                    let written = d.pending_written.take().unwrap_or_default();
                    if own_slot(&raw, host_id) != written {
                        d.collision = true;
                    } else {
                        d.renew_error.clear();
                        d.last_renewal_ms = issued;
                    }
                    (raw, versions)
                }
                RenewResult::Io(Err(e)) | RenewResult::Old(Err(e)) => {
                    let d = self.host_mut(h).daemon.as_mut().unwrap();
                    d.renew_inflight = None;
                    // A write that failed may have landed.
                    if let Some(w) = d.pending_written.take() {
                        if !d.expect.contains(&w) {
                            d.expect.push(w);
                        }
                        if d.expect.len() > MAX_EXPECT {
                            d.expect.remove(0);
                        }
                    }
                    d.renew_error = e.to_string();
                    continue;
                }
            };
            let slots = self.decode_table(&raw, &versions);
            let d = self.host_mut(h).daemon.as_mut().unwrap();
            for (i, s) in slots.iter().enumerate() {
                let id = i as u16 + 1;
                if d.observer.get(id).is_none() && !matches!(s, Slot::Empty) {
                    d.first_sight.insert(id, now);
                }
            }
            d.observer.update(now, &raw, &slots);
            d.last_table = Some(raw);
        }
        let io = self.p.cfg.io_timeout;
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        if let Some(issued) = d.renew_inflight {
            let age = now.saturating_sub(issued);
            if age > io {
                d.renew_error = "renewal I/O has not completed (storage hung?)".into();
            }
        }
    }

    /// One renewal's `RenewIo` (src/daemon/mod.rs `collect_renewal`).
    fn renewed(&mut self, h: u16, now: u64, issued: u64, io: &RenewDone) {
        let hs = self.host(h);
        let (host_id, name, boot) = (hs.host_id, hs.name.clone(), hs.boot_id.clone());
        let own = own_slot(&io.raw, host_id);
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        d.renew_inflight = None;
        let written = d.pending_written.take().unwrap_or_default();
        if d.reclaim.is_some() {
            // A re-claim's read, its claim write, or the claim write
            // refused (the slot changed).
            if io.wrote {
                d.expect = vec![written.clone()];
                self.step_reclaim(h, now, &own, Some(written));
            } else {
                self.step_reclaim(h, now, &own, None);
            }
        } else if let Some(c) = &io.collision {
            if !d.collision {
                d.collision_msg = c.to_string();
                d.collision = true;
                self.log(
                    &format!("h{h}"),
                    format!(
                        "{c}; this host ('{name}', boot {}) fences and stops writing the slot",
                        vmlease::collision::short(&boot)
                    ),
                );
            }
        } else if io.wrote {
            d.renew_error.clear();
            d.last_renewal_ms = issued;
            d.expect = vec![written];
            if d.clear_after_renewal {
                d.clear_after_renewal = false;
                d.clear_ready = true;
            }
        }
    }

    fn maybe_renew(&mut self, h: u16, now: u64, state: HostState) {
        let d = self.host(h).daemon.as_ref().unwrap();
        if d.renew_inflight.is_some() || now < d.next_renew_ms {
            return;
        }
        let r = self.p.cfg.timing.renew_interval;
        let old = self.mutation == Mutation::ClaimWithoutReadBack;
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        d.next_renew_ms = now + r;
        // After a collision the slot is not ours: read the table only (to
        // observe the others, and for a re-claim), write nothing - unless
        // the re-claim asks for its claim write.
        let rec = if d.collision && !old {
            match d.reclaim.as_ref().map(|c| c.pending_write()) {
                Some(Some(expect)) => {
                    d.expect = vec![expect];
                    d.counter = CLAIM_COUNTER;
                    Some(self.record(h, HostState::Live))
                }
                _ => None,
            }
        } else {
            d.counter += 1;
            Some(self.record(h, state))
        };
        let host_id = self.host(h).host_id;
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        d.pending_written = rec.as_ref().map(HostRecord::encode);
        d.renew_inflight = Some(now);
        let gen = d.gen;
        let job = match rec {
            Some(rec) if old => Job::OldRenew(rec),
            rec => Job::Renew {
                host_id,
                expect: d.expect.clone(),
                rec,
            },
        };
        self.issue(
            h,
            job,
            Owner::Daemon {
                h,
                gen,
                what: DaemonCall::Renew { issued_ms: now },
            },
            None,
        );
    }

    fn write_status(&mut self, h: u16, now: u64) {
        let hs = self.host(h);
        let d = hs.daemon.as_ref().unwrap();
        let reason = match &d.fence.phase {
            Phase::Healthy => d.renew_error.clone(),
            Phase::Fencing { cause, .. } | Phase::Fenced { cause, .. } | Phase::Reset { cause } => {
                let mut r = cause.describe().to_string();
                if *cause == fence::Cause::HostIdCollision && !d.collision_msg.is_empty() {
                    r = format!("{r}: {}", d.collision_msg);
                }
                if !d.reclaim_note.is_empty() {
                    r = format!("{r}; {}", d.reclaim_note);
                }
                r
            }
        };
        let t = self.p.cfg.timing;
        let st = Status {
            daemon_pid: d.pid,
            host_id: hs.host_id,
            boot_id: hs.boot_id.clone(),
            incarnation: d.incarnation,
            written_ms: now,
            last_renewal_ms: d.last_renewal_ms,
            state: d.last_state,
            reason,
            unsafe_no_watchdog: false,
            lockspace_dir: self.p.cfg.lockspace_dir.display().to_string(),
            lockspace_uuid: "sim-lockspace".into(),
            allow_local_lockspace: false,
            local_lockspace: String::new(),
            observing_since_ms: d.observer.since_ms,
            renew_interval_ms: t.renew_interval,
            renew_fail_timeout_ms: t.renew_fail_timeout,
            host_dead_timeout_ms: t.host_dead_timeout,
            networks: Vec::new(),
            peers: d.observer.peers(),
        };
        let st = if self.mutation == Mutation::FirstSightDatedToStart {
            first_sight_dated_to_start(st, d)
        } else {
            st
        };
        self.host_mut(h).status = Some(st);
    }
}

/// The mutation `first-sight-dated-to-start`: the observer as it was before
/// KB2's fix dated a slot it listed for the first time to its own creation
/// (and "empty since" too), not to the read that saw it.
fn first_sight_dated_to_start(mut st: Status, d: &Daemon) -> Status {
    st.observing_since_ms = d.observer_made_ms;
    for p in &mut st.peers {
        if d.first_sight.get(&p.host_id) == Some(&p.last_change_ms) {
            p.last_change_ms = d.observer_made_ms;
        }
    }
    st
}

/// The mutation `kill-timeout-from-now`: the fence as it was before KB4's
/// fix started K when it began killing - a tick late, or a whole daemon
/// lifetime late for a daemon restarted in the middle of a fence - and
/// never reset in the step that (re)started it.
fn kill_timeout_from_now(fence: &mut Fence, i: &Inputs, act: &mut fence::Actions) {
    let cause = match &fence.phase {
        Phase::Fencing { cause, .. } | Phase::Reset { cause } => cause.clone(),
        _ => return,
    };
    fence.phase = Phase::Fencing {
        cause,
        since: i.now,
    };
    let storage_ok = fence.renewal_age(i) <= fence.timing.renew_fail_timeout;
    act.state = HostState::Fencing;
    act.kill_all = true;
    act.reset = false;
    act.pet = storage_ok && !i.collision;
}

#[allow(dead_code)]
fn unused(_: Network) {}
