//! Watches the QEMU processes in the local registry: notices their death
//! at once through pidfds (no libvirt call exists for shutdown, destroy or
//! crash), releases their leases on a worker thread, and lists the live ones
//! for the fence.
//!
//! The sweep: an acquire for a QEMU may still be in flight when it exits
//! (libvirtd's I/O thread stuck on storage, abandoned at its deadline). Its
//! registry entry says so (`acquiring`, written before the lockspace is
//! touched). The entry of such a QEMU is kept, and its leases are released
//! again every [`SWEEP_MS`], until no caller of an in-flight acquire is
//! alive: a write that lands late is freed within one sweep, with a log
//! line that says why. Only this host's registry is read, never the whole
//! lease directory.
//!
//! Death means the whole thread group is gone (`ProcId::liveness`): a
//! pidfd turns readable only then, not when the main thread exits while
//! another thread (a killed QEMU's I/O thread in D) still runs. Both
//! signals agree, so a leader's exit is never taken for death here.

pub mod tracker;

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::UNIX_EPOCH;

use log::{error, warn};

use crate::config::Config;
use crate::engine::Engine;
use crate::lockspace::Lockspace;
use crate::process::ProcId;
use crate::registry::{Entry, Registry};
use tracker::{Finished, Pass, ReleasePass, Tracker};

/// How often the leases of an exited QEMU with an acquire still in flight
/// are released again.
pub const SWEEP_MS: u64 = 5_000;

/// The reaper's I/O: the registry directory, the pidfds, the release
/// thread; its bookkeeping is the [`Tracker`].
pub struct Reaper {
    reg: Registry,
    track: Tracker,
    pidfds: BTreeMap<ProcId, OwnedFd>,
    tx: Sender<(ProcId, Entry)>,
    rx: Receiver<(ProcId, Pass)>,
}

fn parse_name(name: &str) -> Option<ProcId> {
    let (p, s) = name.split_once('-')?;
    Some(ProcId {
        pid: p.parse().ok()?,
        start: s.parse().ok()?,
    })
}

impl Reaper {
    pub fn new(cfg: &Config, ls: Lockspace, host_id: u16, boot_id: &str) -> Reaper {
        let reg = Registry::new(&cfg.state_dir);
        let _ = reg.ensure_dir();
        let (tx, jobs) = mpsc::channel::<(ProcId, Entry)>();
        let (done_tx, rx) = mpsc::channel();
        let eng = Engine {
            ls,
            host_id,
            boot_id: boot_id.to_string(),
            dead_ms: cfg.timing.host_dead_timeout,
            trust_unsafe_peers: cfg.trust_unsafe_peers,
            lock_timeout_ms: cfg.lock_timeout,
            view: None,
            process_alive: std::sync::Arc::new(|p: ProcId| p.is_alive()),
        };
        let reg2 = reg.clone();
        std::thread::Builder::new()
            .name("vmlease-release".into())
            .stack_size(super::THREAD_STACK)
            .spawn(move || {
                for (p, e) in jobs {
                    let res = release_pass(&eng, &reg2, p, e);
                    if done_tx.send((p, res)).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn the release thread");
        Reaper {
            reg,
            track: Tracker::new(),
            pidfds: BTreeMap::new(),
            tx,
            rx,
        }
    }

    /// Exited QEMU processes whose leases were released (metrics).
    pub fn released_total(&self) -> u64 {
        self.track.released_total
    }

    /// Picks up new and removed registry entries (cheap when nothing
    /// changed: one stat of the directory).
    pub fn scan(&mut self) {
        self.scan_inner(false)
    }

    /// Rereads the whole registry now (before decisions that must not
    /// miss a process that registered a moment ago).
    pub fn scan_now(&mut self) {
        self.scan_inner(true)
    }

    fn scan_inner(&mut self, force: bool) {
        let now = crate::clock::boottime_ms();
        let mtime = std::fs::metadata(&self.reg.dir)
            .and_then(|m| m.modified())
            .ok()
            .map(|t| match t.duration_since(UNIX_EPOCH) {
                Ok(d) => d.as_nanos() as u64,
                Err(e) => u64::MAX - e.duration().as_nanos() as u64,
            });
        if !self.track.scan_due(now, mtime, force) {
            return;
        }
        let Ok(rd) = std::fs::read_dir(&self.reg.dir) else {
            return;
        };
        let mut present = Vec::new();
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            let Some(p) = parse_name(&name) else {
                continue;
            };
            let entry = match self.reg.read(p) {
                Ok(e) => e,
                Err(e) => {
                    warn!("registry entry {name}: {e}");
                    None
                }
            };
            present.push((p, entry));
        }
        let pidfds = &mut self.pidfds;
        self.track.scanned(present, |p| {
            // The pidfd pins the process; check it is the one
            // registered (pid reuse).
            match crate::sys::pidfd::open(p.pid) {
                Ok(fd) if p.is_alive() => {
                    pidfds.insert(p, fd);
                    true
                }
                _ => false,
            }
        });
        self.forget_pidfds();
    }

    /// Drops the pidfds of processes no longer watched.
    fn forget_pidfds(&mut self) {
        let track = &self.track;
        self.pidfds.retain(|p, _| track.is_watched(*p));
    }

    /// Waits up to `ms` for a watched process to exit.
    pub fn wait(&mut self, ms: u64) {
        let mut fds = Vec::new();
        let mut ids = Vec::new();
        for p in self.track.watched() {
            if let Some(fd) = self.pidfds.get(&p) {
                fds.push(fd.as_fd());
                ids.push(p);
            }
        }
        if fds.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            return;
        }
        // Readable: every thread of that process has exited.
        let Ok(ready) = crate::sys::poll::readable(&fds, ms) else {
            return;
        };
        for (i, r) in ready.into_iter().enumerate() {
            if r {
                self.track.mark_dead(ids[i]);
            }
        }
        self.forget_pidfds();
    }

    /// Live leased processes (some thread left), re-checked against /proc.
    pub fn alive_processes(&mut self) -> Vec<(ProcId, String)> {
        let out = self.track.alive(|p| p.is_alive());
        self.forget_pidfds();
        out
    }

    /// True while an exited QEMU's leases are swept (an acquire for it
    /// was still in flight at the last pass).
    pub fn is_sweeping(&self, p: ProcId) -> bool {
        self.track.is_sweeping(p)
    }

    /// Leases (domain and disk) that live QEMU processes of this host may
    /// hold, from their registry entries (metrics).
    pub fn alive_lease_count(&self) -> usize {
        self.track.alive_lease_count()
    }

    pub fn alive_count(&self) -> usize {
        self.track.alive_count()
    }

    /// Hands dead processes to the release thread and collects results.
    pub fn release_dead(&mut self) {
        while let Ok((p, res)) = self.rx.try_recv() {
            let now = crate::clock::boottime_ms();
            if self.track.finished(now, p, res) == Finished::Released {
                if let Err(e) = self.reg.remove(p) {
                    error!("{e}");
                }
            }
        }
        for job in self.track.due(crate::clock::boottime_ms()) {
            // The release thread ends only with the daemon.
            let _ = self.tx.send(job);
        }
    }
}

/// One pass of the release thread over an exited QEMU's leases.
fn release_pass(eng: &Engine, reg: &Registry, p: ProcId, handed: Entry) -> Pass {
    let current = reg.read(p).ok().flatten();
    let mut pass = ReleasePass::new(p, handed, current, &|c| c.is_alive());
    while let Some(key) = pass.next_key().map(str::to_string) {
        match eng.release_matching(&key, &|h| {
            ReleasePass::owns(p, eng.host_id, &eng.boot_id, h)
        }) {
            Ok(gone) => pass.released(&gone),
            Err(e) => return pass.end(Some(e)),
        }
    }
    pass.end(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::lease::Holder;
    use crate::resource::Resource;
    use std::time::{Duration, Instant};

    fn wait_for(what: &str, ms: u64, mut f: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !f() {
            assert!(
                t0.elapsed() < Duration::from_millis(ms),
                "waited {ms} ms for {what}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A lockspace and a config in a fresh temp directory.
    fn setup() -> (std::path::PathBuf, Lockspace, Config) {
        let base =
            std::env::temp_dir().join(format!("vmlease-reaper-{}", crate::process::random_u64()));
        let ls_dir = base.join("ls");
        let state = base.join("state");
        Lockspace::init(&ls_dir, 4).unwrap();
        let ls = Lockspace::open(&ls_dir).unwrap();
        let cfg = crate::config::parse(
            &format!(
                "host_id = 1\nlockspace_dir = \"{}\"\nstate_dir = \"{}\"\n",
                ls_dir.display(),
                state.display()
            ),
            "test",
        )
        .unwrap();
        (base, ls, cfg)
    }

    /// A QEMU registers in the same tick of the registry directory's
    /// coarse mtime as the reaper's last scan (made exact here by setting
    /// the mtime back). A fence whose kills are done must not publish
    /// fenced-clean while that QEMU runs.
    #[test]
    fn fenced_clean_only_after_a_fresh_registry_scan() {
        use crate::daemon::fence::{Cause, Fence, Inputs, Phase};
        use crate::hosts::HostState;
        let (base, ls, cfg) = setup();
        let boot = crate::process::boot_id().unwrap();
        let mut reaper = Reaper::new(&cfg, ls, 1, &boot);
        let reg = Registry::new(&cfg.state_dir);
        reg.ensure_dir().unwrap();
        reaper.scan_now();
        let mtime = std::fs::metadata(&reg.dir).unwrap().modified().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let p = ProcId::of(child.id()).unwrap();
        reg.write(&Entry::new(p, "uuid-late", "late")).unwrap();
        std::fs::File::open(&reg.dir)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let mut fence = Fence::new(cfg.timing, cfg.management.policy, cfg.service.policy);
        fence.phase = Phase::Fencing {
            cause: Cause::Storage,
            since: 0,
        };
        // What the daemon loop does each tick.
        reaper.scan();
        let mut inputs = Inputs {
            now: 10_000,
            alive_leased: reaper.alive_count(),
            ..Inputs::default()
        };
        let act = fence.step_counted(&mut inputs, || {
            reaper.scan_now();
            reaper.alive_count()
        });
        let _ = child.kill();
        let _ = child.wait();
        std::fs::remove_dir_all(&base).unwrap();
        assert_ne!(
            act.state,
            HostState::FencedClean,
            "published fenced-clean while leased QEMU pid {} runs",
            p.pid
        );
        assert!(act.kill_all, "{act:?}");
    }

    /// A QEMU dies while an acquire for it is stuck on storage; the
    /// reaper finds nothing to release; then the stuck write lands and
    /// names the dead QEMU. The sweep must free that record.
    #[test]
    fn sweep_frees_a_record_written_after_the_qemu_died() {
        let (base, ls, cfg) = setup();
        let state = cfg.state_dir.clone();
        let boot = crate::process::boot_id().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let p = ProcId::of(child.id()).unwrap();
        let disk = Resource::disk("/images/late.qcow2", false);
        let reg = Registry::new(&state);
        let mut entry = Entry::new(p, "uuid-web", "web");
        entry.keys = vec![(disk.key(), disk.name.clone())];
        reg.write(&entry).unwrap();
        // The plugin notes its acquire (this process stands for libvirtd).
        let me_caller = ProcId::of(std::process::id()).unwrap();
        reg.begin_acquire(&entry, 77, me_caller).unwrap();
        let mut reaper = Reaper::new(&cfg, ls.clone(), 1, &boot);
        reaper.scan_now();
        child.kill().unwrap();
        child.wait().unwrap();
        let step = |reaper: &mut Reaper| {
            reaper.wait(20);
            reaper.scan();
            reaper.release_dead();
        };
        wait_for("the reaper to handle the exit", 5000, || {
            step(&mut reaper);
            reaper.is_sweeping(p)
        });
        assert!(
            reg.read(p).unwrap().is_some(),
            "entry dropped while an acquire is in flight"
        );
        // The stuck acquire's write lands now.
        let eng = Engine {
            ls: ls.clone(),
            host_id: 1,
            boot_id: boot.clone(),
            dead_ms: 4000,
            trust_unsafe_peers: false,
            lock_timeout_ms: 500,
            view: None,
            process_alive: std::sync::Arc::new(|_| true),
        };
        let me = Holder {
            host_id: 1,
            boot_id: boot.clone(),
            pid: p.pid,
            pid_start: p.start,
            domain_uuid: "uuid-web".into(),
            domain_name: "web".into(),
        };
        eng.acquire(&disk, &me, None).unwrap();
        let t0 = Instant::now();
        let limit = Duration::from_millis(SWEEP_MS + 3000);
        loop {
            step(&mut reaper);
            let rec = ls.read_lease(&disk.key(), &disk.name).unwrap();
            if rec.holders.is_empty() {
                break;
            }
            assert!(
                t0.elapsed() < limit,
                "after {limit:?} the record still names the exited QEMU: {:?}",
                rec.holders
            );
        }
        // The stuck call ends: the next sweep drops the entry.
        reg.end_acquire(p, 77, None).unwrap();
        wait_for(
            "the entry to go once no acquire is in flight",
            SWEEP_MS + 3000,
            || {
                step(&mut reaper);
                reg.read(p).unwrap().is_none()
            },
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
