//! The watchdog daemon of one simulated host, driving the production
//! core (`vmlease::daemon::core::Core`): this file is its driver as
//! src/daemon/mod.rs is in production, with the threads replaced by
//! storage calls and events. The start's claim loop (`claim::Join`,
//! tests/sim/claim.rs) and the reaper's bookkeeping and release passes
//! (`reaper::tracker`, tests/sim/reaper.rs) are production code too; the
//! prober is simulated. Every decision of the loop - renewals, the records
//! the slot may hold, collisions and the re-claim, the fence and the order
//! of kill, reset, pet and renew, the status, the stop path - is the
//! core's.
//!
//! The mutations of daemon rules go through the core's test-only seam
//! (`core::Tamper`); those of what the daemon observes (a QEMU dead once
//! killed, the old observer's dates) stay here.

use std::collections::{BTreeMap, VecDeque};

use vmlease::collision::{Collision, CLAIM_COUNTER};
use vmlease::daemon::claim::{slow_storage, watch_time, Claim, Join};
use vmlease::daemon::core::{self, Command, Core, RenewReq, Renewed, StopNext, Tamper, TickIn};
use vmlease::daemon::fence::{self, Actions, Fence, Inputs, Phase};
use vmlease::daemon::probes::Round;
use vmlease::daemon::reaper::tracker::{Pass, ReleasePass, Tracker};
use vmlease::daemon::renew::{own_slot, RenewIo};
use vmlease::error::Result;
use vmlease::hosts::{HostRecord, HostState, Slot};
use vmlease::process::ProcId;
use vmlease::registry::Entry as RegEntry;
use vmlease::status::Status;

use crate::calls::{DaemonCall, Job, Outcome, Owner, RenewDone};
use crate::mutation::Mutation;
use crate::params::MS;
use crate::world::{Ev, World};

/// What a renewal returned: `renew_io`'s result, or (mutation
/// `claim-without-read-back`) the table read after the write.
pub enum RenewResult {
    Io(Result<RenewDone>),
    Old(Result<(Vec<u8>, Vec<u64>)>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DPhase {
    Opening,
    /// `claim::claim`: the production claim loop (`Daemon::join`),
    /// stepped with each read of the slot and with its write.
    Claiming,
    Running,
    Stopping,
}

pub struct Daemon {
    pub gen: u64,
    pub pid: u32,
    pub incarnation: u64,
    pub phase: DPhase,
    /// The claim loop, until it joins.
    pub join: Option<Join>,
    /// The loop's state and decisions, from the claim's end on.
    pub core: Option<Core>,
    /// The record the claim write (or, for the mutation, the old renewal)
    /// in flight asked to write.
    pub pending_written: Option<Vec<u8>>,
    pub probe_out: Option<Round>,
    /// The reaper's bookkeeping.
    pub reaper: Tracker,
    /// The release thread's queue and its pass in progress.
    pub jobs: VecDeque<(ProcId, RegEntry)>,
    pub job: Option<ReleasePass>,
    pub inbox_renew: Vec<RenewResult>,
    pub inbox_release: Vec<(ProcId, Pass)>,
    pub tick_seq: u64,
    /// The last table read fed to the observer (for a mutation).
    pub last_table: Option<Vec<u8>>,
    /// When the observer was made, and when (local ms) it first saw each
    /// slot: the mutation `first-sight-dated-to-start` (KB2) uses them.
    pub observer_made_ms: u64,
    pub first_sight: BTreeMap<u16, u64>,
}

impl Daemon {
    fn core(&mut self) -> &mut Core {
        self.core
            .as_mut()
            .expect("the core runs once the claim joined")
    }
}

/// The daemon mutations, through the core's seam.
struct SimTamper(Mutation);

impl Tamper for SimTamper {
    fn fence_clock(&self, clock: u64, now: u64) -> u64 {
        if self.0 == Mutation::RestartResetsFenceClock {
            now
        } else {
            clock
        }
    }

    fn actions(&self, fence: &mut Fence, i: &Inputs, was_fencing: bool, act: &mut Actions) {
        match self.0 {
            Mutation::KillTimeoutFromNow if !was_fencing => kill_timeout_from_now(fence, i, act),
            Mutation::FencedCleanBeforeKill if act.state == HostState::Fencing => {
                act.state = HostState::FencedClean
            }
            Mutation::NoKillOnFence => act.kill_all = false,
            Mutation::AlwaysPetWatchdog => act.pet = true,
            _ => {}
        }
    }

    fn old_collision_rules(&self) -> bool {
        self.0 == Mutation::ClaimWithoutReadBack
    }

    fn watch_time(
        &self,
        slot: &Slot,
        my_name: &str,
        my_boot: &str,
        my_dead_ms: u64,
        io_ms: u64,
    ) -> Option<(u64, String)> {
        if self.0 == Mutation::ClaimWithoutReadBack {
            crate::mutation::old_watch_time(slot, my_name, my_boot, my_dead_ms, io_ms)
        } else {
            watch_time(slot, my_name, my_boot, my_dead_ms, io_ms)
        }
    }
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
        let d = Daemon {
            gen,
            pid,
            incarnation: self.rng.next_u64(),
            phase: DPhase::Opening,
            join: None,
            core: None,
            pending_written: None,
            probe_out: None,
            reaper: Tracker::new(),
            jobs: VecDeque::new(),
            job: None,
            inbox_renew: Vec::new(),
            inbox_release: Vec::new(),
            tick_seq: 0,
            last_table: None,
            observer_made_ms: now,
            first_sight: BTreeMap::new(),
        };
        self.host_mut(h).daemon = Some(d);
        self.host_mut(h).abandoned = false;
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
                    // After a collision fence, even our own record of
                    // this boot gets the claim delay.
                    let hs = self.host(h);
                    let t = self.p.cfg.timing;
                    let io = self.p.cfg.io_timeout;
                    let careful = hs.marker == Some(fence::Cause::HostIdCollision);
                    let claim = Claim::new(
                        hs.host_id,
                        &hs.name,
                        &hs.boot_id,
                        t.host_dead_timeout,
                        io,
                        t.renew_interval,
                        careful,
                    );
                    let join = Join::new(claim, io, self.tamper());
                    let d = self.host_mut(h).daemon.as_mut().unwrap();
                    d.phase = DPhase::Claiming;
                    d.join = Some(join);
                    self.claim_read(h, gen);
                }
                Err(e) => self.daemon_exit(h, &format!("cannot open the lockspace: {e}"), true),
            },
            (DaemonCall::Claim, Outcome::Bytes(r)) => match r {
                Ok(raw) => self.claim_got(h, &raw),
                Err(e) if slow_storage(&e) => self.claim_slow(h, e),
                Err(e) => self.daemon_exit(h, &format!("claim: {e}"), true),
            },
            (DaemonCall::ClaimWrite, Outcome::Renewed(r)) => match r {
                Ok(io) => self.claim_wrote(h, io),
                Err(e) if slow_storage(&e) => self.claim_write_slow(h, e),
                Err(e) => self.daemon_exit(h, &format!("claim: {e}"), true),
            },
            (DaemonCall::Renew { .. }, Outcome::Renewed(r)) => {
                let d = self.host_mut(h).daemon.as_mut().unwrap();
                d.inbox_renew.push(RenewResult::Io(r));
            }
            (DaemonCall::Renew { .. }, Outcome::Table(r)) => {
                let d = self.host_mut(h).daemon.as_mut().unwrap();
                d.inbox_renew.push(RenewResult::Old(r));
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

    /// The daemon mutations' seam, for the claim and the core.
    fn tamper(&self) -> Option<Box<dyn Tamper>> {
        match self.mutation {
            Mutation::None => None,
            m => Some(Box::new(SimTamper(m))),
        }
    }

    /// The end of `Daemon::start` and the start of `run`: `own` is our
    /// slot as the claim first read it, `written` the record it holds
    /// now (`JoinIo::Joined`).
    pub(crate) fn daemon_run(&mut self, h: u16, own: Slot, written: Vec<u8>) {
        let now = self.local(h);
        let hs = self.host(h);
        let d = hs.daemon.as_ref().unwrap();
        let mut setup = core::Setup::new(
            &self.p.cfg,
            hs.host_id,
            &hs.name,
            &hs.boot_id,
            d.incarnation,
        );
        setup.lockspace_uuid = "sim-lockspace".into();
        let mut core = Core::new(setup, Some(&own), written, now, self.tamper());
        let clock = core.fence_clock();
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
        core.begin(now, self.host(h).marker.clone());
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        d.core = Some(core);
        d.phase = DPhase::Running;
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
        } else if !self.host(h).wd_armed {
            // No systemd restart and no watchdog to reboot the host.
            self.host_mut(h).abandoned = true;
        }
    }

    /// SIGTERM: `Daemon::stop` (the core's stop path), then (for a
    /// restart) a new start.
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
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        d.phase = DPhase::Stopping;
        d.tick_seq += 1;
        if restart {
            // systemd starts the new one once this one has exited.
            self.schedule_restart(h);
        }
        self.daemon_stop_step(h);
    }

    /// The stop path, as far as it goes without waiting.
    fn daemon_stop_step(&mut self, h: u16) {
        let now = self.local(h);
        let wall = self.wall_secs(h);
        self.collect_renewal(h, now);
        let mut leased = None;
        loop {
            let d = self.host_mut(h).daemon.as_mut().unwrap();
            match d.core().stop(now, wall, leased.take()) {
                StopNext::Withdraw => {
                    self.host_mut(h).status = None;
                    self.reaper_scan_now(h);
                    leased = Some(self.alive_processes(h).len());
                }
                StopNext::Count => {
                    self.reaper_scan_now(h);
                    leased = Some(self.alive_processes(h).len());
                }
                StopNext::WaitRenewal => {
                    let d = self.host_mut(h).daemon.as_mut().unwrap();
                    d.tick_seq += 1;
                    let (gen, seq) = (d.gen, d.tick_seq);
                    let dt = self.host(h).real(5);
                    self.after(dt, Ev::Tick { h, gen, seq });
                    return;
                }
                StopNext::StayArmed(alive) => {
                    self.log(
                        &format!("h{h}"),
                        format!("stopping with {alive} leased QEMU(s) running: the watchdog stays armed"),
                    );
                    self.daemon_gone(h);
                    return;
                }
                StopNext::Leave(req) => {
                    self.leave(h, req);
                    return;
                }
                StopNext::Disarm => {
                    self.host_mut(h).wd_armed = false;
                    self.daemon_gone(h);
                    return;
                }
            }
        }
    }

    /// Publishes 'leaving' under twice the I/O deadline (before issue 14,
    /// for the mutation: a plain write under the I/O deadline).
    fn leave(&mut self, h: u16, req: RenewReq) {
        let rec = req.rec.expect("'leaving' is a write");
        let io = self.p.cfg.io_timeout;
        let (job, deadline) = if self.mutation == Mutation::ClaimWithoutReadBack {
            (Job::WriteHost(rec), io)
        } else {
            let job = Job::Renew {
                host_id: rec.host_id,
                expect: req.expect,
                rec: Some(rec),
            };
            (job, 2 * io)
        };
        let gen = self.host(h).daemon.as_ref().unwrap().gen;
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
    }

    /// This host's wall clock in seconds.
    fn wall_secs(&self, h: u16) -> u64 {
        let hs = self.host(h);
        (1_700_000_000 + hs.wall_skew_s + (self.now / 1_000_000) as i64) as u64
    }

    /// A record of this host (the claim's).
    pub(crate) fn record(&self, h: u16, state: HostState) -> HostRecord {
        let hs = self.host(h);
        let d = hs.daemon.as_ref().unwrap();
        HostRecord {
            host_id: hs.host_id,
            host_name: hs.name.clone(),
            boot_id: hs.boot_id.clone(),
            incarnation: d.incarnation,
            counter: CLAIM_COUNTER,
            state,
            timing: self.p.cfg.timing,
            unsafe_no_watchdog: false,
            mono_ms: hs.local_ms(self.now),
            wall: self.wall_secs(h),
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
    // The main loop (src/daemon/mod.rs `Daemon::run`).

    fn qemu_by_proc(&self, h: u16, p: ProcId) -> Option<usize> {
        let boot = self.host(h).boot_no;
        self.qemus
            .iter()
            .find(|q| q.host == h && q.boot == boot && q.proc_id == p && q.alive())
            .map(|q| q.id)
    }

    pub fn daemon_tick(&mut self, h: u16, gen: u64, seq: u64) {
        if !self.daemon_gen_ok(h, gen) {
            return;
        }
        let phase = {
            let d = self.host(h).daemon.as_ref().unwrap();
            if d.tick_seq != seq {
                return;
            }
            d.phase.clone()
        };
        match phase {
            DPhase::Running => {}
            DPhase::Stopping => return self.daemon_stop_step(h),
            _ => return,
        }
        let now = self.local(h);
        self.collect_renewal(h, now);
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        if let Some(r) = d.probe_out.take() {
            d.core().probe_round("management", r);
        }
        self.reaper_scan(h);
        let input = TickIn {
            now,
            wall_secs: self.wall_secs(h),
            alive_leased: self.host(h).daemon.as_ref().unwrap().reaper.alive_count(),
            clear_asked: std::mem::take(&mut self.host_mut(h).clear_request),
            maintenance: false,
        };
        // The core is lent out while it runs, so that its fresh count can
        // scan the registry.
        let mut core = self
            .host_mut(h)
            .daemon
            .as_mut()
            .unwrap()
            .core
            .take()
            .unwrap();
        let cmds = core.tick(input, || {
            self.reaper_scan_now(h);
            self.host(h).daemon.as_ref().unwrap().reaper.alive_count()
        });
        self.host_mut(h).daemon.as_mut().unwrap().core = Some(core);
        for c in cmds {
            if !self.daemon_command(h, now, c) {
                return;
            }
        }
        self.release_dead(h);
        let tick = self.p.tick_ms;
        let dt = self.host(h).real(tick);
        self.after(dt, Ev::Tick { h, gen, seq });
    }

    /// Does one command of the core; false when the host went down.
    fn daemon_command(&mut self, h: u16, now: u64, c: Command) -> bool {
        let who = format!("h{h}");
        match c {
            Command::FenceLog { line, .. } => {
                if line.starts_with("FENCING") {
                    self.stats.fences += 1;
                }
                self.log(&who, line);
            }
            Command::KillAll => {
                for p in self.alive_processes(h) {
                    if let Some(q) = self.qemu_by_proc(h, p) {
                        self.log(&who, format!("fence: SIGKILL QEMU pid {}", p.pid));
                        self.kill_qemu(q);
                    }
                }
            }
            // The simulated QEMUs write through the store, not TCP: the
            // abort has nothing to drop here (tests/tcp_abort.rs tests it).
            Command::AbortSockets => {
                self.log(&who, "fence: abort the killed QEMUs' TCP sockets".into())
            }
            Command::Reset { .. } => {
                self.reset(h, "fence: a leased QEMU survived kill_timeout");
                return false;
            }
            Command::Pet => self.wd_pet(h),
            Command::State { from, to } => {
                let d = self.host_mut(h).daemon.as_mut().unwrap();
                let marker = d.core().fence_cause();
                self.host_mut(h).marker = marker;
                self.log(&who, format!("host state {from} -> {to}"));
            }
            Command::Renew(req) => self.renew(h, req),
            Command::WriteStatus => {
                let mutation = self.mutation;
                let d = self.host(h).daemon.as_ref().unwrap();
                let st = d.core.as_ref().unwrap().status(now, d.pid);
                let st = if mutation == Mutation::FirstSightDatedToStart {
                    first_sight_dated_to_start(st, d)
                } else {
                    st
                };
                self.host_mut(h).status = Some(st);
            }
        }
        true
    }

    /// Hands a renewal to the (simulated) renewal thread.
    fn renew(&mut self, h: u16, req: RenewReq) {
        let host_id = self.host(h).host_id;
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        d.pending_written = req.rec.as_ref().map(HostRecord::encode);
        let gen = d.gen;
        let job = match req.rec {
            Some(rec) if self.mutation == Mutation::ClaimWithoutReadBack => Job::OldRenew(rec),
            rec => Job::Renew {
                host_id,
                expect: req.expect,
                rec,
            },
        };
        self.issue(
            h,
            job,
            Owner::Daemon {
                h,
                gen,
                what: DaemonCall::Renew {
                    issued_ms: req.issued_ms,
                },
            },
            None,
        );
    }

    /// The renewal thread's results, fed to the core.
    fn collect_renewal(&mut self, h: u16, now: u64) {
        let host_id = self.host(h).host_id;
        let inbox = std::mem::take(&mut self.host_mut(h).daemon.as_mut().unwrap().inbox_renew);
        for r in inbox {
            let written = self
                .host_mut(h)
                .daemon
                .as_mut()
                .unwrap()
                .pending_written
                .take();
            let (result, versions) = match r {
                RenewResult::Io(Ok(io)) => (
                    Ok(RenewIo {
                        table: io.raw,
                        wrote: io.wrote,
                        collision: io.collision,
                    }),
                    io.versions,
                ),
                RenewResult::Old(Ok((raw, versions))) => {
                    // Before issue 14: a collision is seen only if another
                    // write landed between ours and this read.
                    let own = own_slot(&raw, host_id);
                    let collision = (Some(&own) != written.as_ref()).then(|| Collision {
                        host_id,
                        found: "another record".into(),
                    });
                    let io = RenewIo {
                        table: raw,
                        wrote: collision.is_none(),
                        collision,
                    };
                    (Ok(io), versions)
                }
                RenewResult::Io(Err(e)) | RenewResult::Old(Err(e)) => (Err(e), Vec::new()),
            };
            let slots = match &result {
                Ok(io) => self.decode_table(&io.table, &versions),
                Err(_) => Vec::new(),
            };
            let d = self.host_mut(h).daemon.as_mut().unwrap();
            let core = d.core.as_mut().unwrap();
            for (i, s) in slots.iter().enumerate() {
                let id = i as u16 + 1;
                if core.observer.get(id).is_none() && !matches!(s, Slot::Empty) {
                    d.first_sight.insert(id, now);
                }
            }
            if let Ok(io) = &result {
                d.last_table = Some(io.table.clone());
            }
            let core = d.core.as_mut().unwrap();
            core.renewed(
                now,
                Renewed {
                    result,
                    slots,
                    took_ms: 0,
                },
            );
        }
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        d.core().check_late(now);
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
fn kill_timeout_from_now(fence: &mut Fence, i: &Inputs, act: &mut Actions) {
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
