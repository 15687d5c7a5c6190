//! The simulated daemon's reaper (src/daemon/reaper.rs): the registry
//! scan (cheap when nothing changed, a full reread at least every second),
//! the pidfd notice of a QEMU's exit, the list of live leased QEMUs for the
//! fence, and the release thread (one job at a time, one key after the
//! other, through the real `Engine::release_matching`).

use vmlease::error::Result;
use vmlease::lease::Holder;
use vmlease::process::ProcId;
use vmlease::registry::Entry as RegEntry;

use crate::calls::{DaemonCall, Job, Owner};
use crate::daemon::{DPhase, ReleaseJob, Tracked};
use crate::mutation::Mutation;
use crate::world::{pk, proc_id, Ev, World};

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

    /// `Reaper::scan`: cheap when nothing changed (one stat of the
    /// directory), a full reread at least every second.
    pub(crate) fn reaper_scan(&mut self, h: u16) {
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

    pub(crate) fn reaper_scan_now(&mut self, h: u16) {
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

    pub(crate) fn alive_processes(&mut self, h: u16) -> Vec<ProcId> {
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

    pub(crate) fn release_dead(&mut self, h: u16) {
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
    pub(crate) fn release_worker(&mut self, h: u16) {
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

    pub(crate) fn release_next_key(&mut self, h: u16) {
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

    pub(crate) fn release_job_step(&mut self, h: u16, r: Result<Vec<Holder>>) {
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
}
