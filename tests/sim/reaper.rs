//! The simulated daemon's reaper: the production bookkeeping
//! (`daemon::reaper::tracker::Tracker`: when to reread the registry, which
//! QEMUs are watched and which have exited, which are due for a release
//! pass and when a failed one is retried) and the release thread's pass
//! (`ReleasePass`: one key after the other through the real
//! `Engine::release_matching`, the holders of this QEMU only), driven with
//! the simulated registry, `/proc` and storage calls.
//!
//! The sweep of an exited QEMU whose acquire is still in flight is not
//! exercised: the intents name libvirtd, which is no simulated process,
//! so none counts as in flight (src/daemon/reaper.rs has its unit test).

use vmlease::daemon::reaper::tracker::{Finished, ReleasePass};
use vmlease::error::Result;
use vmlease::lease::Holder;
use vmlease::process::ProcId;
use vmlease::registry::Entry as RegEntry;

use crate::calls::{DaemonCall, Job, Owner};
use crate::daemon::DPhase;
use crate::mutation::Mutation;
use crate::world::{pk, Ev, World};

impl World {
    /// `ProcId::is_alive` as the daemon sees it (`proc_alive`: the
    /// production rule on the simulated /proc).
    pub(crate) fn qemu_alive(&self, h: u16, p: ProcId) -> bool {
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

    /// `Reaper::scan`: cheap when nothing changed, a full reread at
    /// least every second.
    pub(crate) fn reaper_scan(&mut self, h: u16) {
        self.reaper_scan_inner(h, false)
    }

    /// `Reaper::scan_now`.
    pub(crate) fn reaper_scan_now(&mut self, h: u16) {
        self.reaper_scan_inner(h, true)
    }

    fn reaper_scan_inner(&mut self, h: u16, force: bool) {
        let now = self.local(h);
        let version = self.host(h).registry_version;
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        if !d.reaper.scan_due(now, Some(version), force) {
            return;
        }
        let present: Vec<(ProcId, Option<RegEntry>)> = self
            .host(h)
            .registry
            .values()
            .map(|e| (e.proc_id, Some(e.clone())))
            .collect();
        let alive: Vec<ProcId> = present
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| self.qemu_alive(h, *p))
            .collect();
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        d.reaper.scanned(present, |p| alive.contains(&p));
    }

    /// `Reaper::alive_processes`.
    pub(crate) fn alive_processes(&mut self, h: u16) -> Vec<ProcId> {
        let d = self.host(h).daemon.as_ref().unwrap();
        let alive: Vec<ProcId> = d
            .reaper
            .watched()
            .filter(|p| self.qemu_alive(h, *p))
            .collect();
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        d.reaper
            .alive(|p| alive.contains(&p))
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }

    /// A pidfd became readable: the loop wakes at once.
    pub fn daemon_notice_exit(&mut self, h: u16, p: ProcId) {
        let hs = self.host_mut(h);
        let Some(d) = hs.daemon.as_mut() else { return };
        if d.phase != DPhase::Running {
            return;
        }
        if d.reaper.mark_dead(p) {
            d.tick_seq += 1;
            let (gen, seq) = (d.gen, d.tick_seq);
            self.at(self.now, Ev::Tick { h, gen, seq });
        }
    }

    /// `Reaper::release_dead`: the passes that ended, then those due.
    pub(crate) fn release_dead(&mut self, h: u16) {
        let now = self.local(h);
        let inbox = std::mem::take(&mut self.host_mut(h).daemon.as_mut().unwrap().inbox_release);
        for (p, pass) in inbox {
            let n = pass.released.as_ref().map_or(0, Vec::len);
            let hs = self.host_mut(h);
            let d = hs.daemon.as_mut().unwrap();
            if d.reaper.finished(now, p, pass) == Finished::Released {
                hs.registry.remove(&pk(p));
                hs.registry_version += 1;
                if n > 0 {
                    self.log(
                        &format!("h{h}"),
                        format!("released {n} lease(s) of exited QEMU pid {}", p.pid),
                    );
                }
            }
        }
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        let due = d.reaper.due(now);
        d.jobs.extend(due);
        self.release_worker(h);
    }

    /// The release thread: one pass at a time.
    pub(crate) fn release_worker(&mut self, h: u16) {
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        if d.job.is_some() {
            return;
        }
        let Some((p, entry)) = d.jobs.pop_front() else {
            return;
        };
        let current = self.host(h).registry.get(&pk(p)).cloned();
        let pass = ReleasePass::new(p, entry, current, &|c| self.proc_alive(h, c));
        self.host_mut(h).daemon.as_mut().unwrap().job = Some(pass);
        self.release_next_key(h);
    }

    fn release_next_key(&mut self, h: u16) {
        let hs = self.host(h);
        let d = hs.daemon.as_ref().unwrap();
        let pass = d.job.as_ref().unwrap();
        let Some(key) = pass.next_key().map(str::to_string) else {
            let d = self.host_mut(h).daemon.as_mut().unwrap();
            let pass = d.job.take().unwrap();
            d.inbox_release.push((pass.proc_id(), pass.end(None)));
            self.release_worker(h);
            return;
        };
        let gen = d.gen;
        let job = Job::ReleaseMatching {
            key,
            p: pass.proc_id(),
            host_id: hs.host_id,
            boot_id: hs.boot_id.clone(),
        };
        self.issue(
            h,
            job,
            Owner::Daemon {
                h,
                gen,
                what: DaemonCall::Release,
            },
            None,
        );
    }

    pub(crate) fn release_job_step(&mut self, h: u16, r: Result<Vec<Holder>>) {
        let d = self.host_mut(h).daemon.as_mut().unwrap();
        let Some(pass) = d.job.as_mut() else { return };
        match r {
            Ok(gone) => {
                pass.released(&gone);
                self.release_next_key(h);
            }
            Err(e) => {
                let pass = d.job.take().unwrap();
                d.inbox_release.push((pass.proc_id(), pass.end(Some(e))));
                self.release_worker(h);
            }
        }
    }
}
