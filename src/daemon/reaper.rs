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

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::SystemTime;

use log::{error, info, warn};

use crate::config::Config;
use crate::engine::Engine;
use crate::error::Result;
use crate::lockspace::Lockspace;
use crate::process::ProcId;
use crate::registry::{Entry, Intent, Registry};

/// How often the leases of an exited QEMU with an acquire still in flight
/// are released again.
pub const SWEEP_MS: u64 = 5_000;

struct Tracked {
    entry: Option<Entry>,
    pidfd: Option<OwnedFd>,
    dead: bool,
    releasing: bool,
    retry_at: u64,
    last_error: String,
    /// Kept because an acquire for it was in flight at the last pass.
    sweeping: bool,
}

/// One release pass over an exited QEMU's leases.
struct Pass {
    /// Keys released (this pass found the QEMU among their holders).
    released: Result<Vec<String>>,
    /// Acquires in flight when the pass began, by live callers.
    in_flight: Vec<Intent>,
}

pub struct Reaper {
    reg: Registry,
    tracked: HashMap<ProcId, Tracked>,
    dir_mtime: Option<SystemTime>,
    last_full_scan: u64,
    tx: Sender<(ProcId, Entry)>,
    rx: Receiver<(ProcId, Pass)>,
    /// Exited QEMU processes whose leases were released (metrics).
    pub released_total: u64,
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
            tracked: HashMap::new(),
            dir_mtime: None,
            last_full_scan: 0,
            tx,
            rx,
            released_total: 0,
        }
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
            .ok();
        if !force && mtime == self.dir_mtime && now.saturating_sub(self.last_full_scan) < 1000 {
            return;
        }
        self.dir_mtime = mtime;
        self.last_full_scan = now;
        let Ok(rd) = std::fs::read_dir(&self.reg.dir) else {
            return;
        };
        let mut present = Vec::new();
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            let Some(p) = parse_name(&name) else {
                continue;
            };
            present.push(p);
            let entry = match self.reg.read(p) {
                Ok(e) => e,
                Err(e) => {
                    warn!("registry entry {name}: {e}");
                    None
                }
            };
            match self.tracked.get_mut(&p) {
                Some(t) => {
                    if entry.is_some() {
                        t.entry = entry;
                    }
                }
                None => {
                    let pidfd = crate::sys::pidfd::open(p.pid).ok();
                    // The pidfd pins the process; check it is the one
                    // registered (pid reuse).
                    let dead = pidfd.is_none() || !p.is_alive();
                    if !dead {
                        if let Some(e) = &entry {
                            info!(
                                "watching QEMU pid {} of domain '{}' ({})",
                                p.pid, e.domain_name, e.domain_uuid
                            );
                        }
                    }
                    self.tracked.insert(
                        p,
                        Tracked {
                            entry,
                            pidfd: if dead { None } else { pidfd },
                            dead: false,
                            releasing: false,
                            retry_at: 0,
                            last_error: String::new(),
                            sweeping: false,
                        },
                    );
                    if dead {
                        // Exited before we first saw it.
                        self.mark_dead(p);
                    }
                }
            }
        }
        self.tracked
            .retain(|p, t| present.contains(p) || t.releasing);
    }

    /// Waits up to `ms` for a watched process to exit.
    pub fn wait(&mut self, ms: u64) {
        let mut fds = Vec::new();
        let mut ids = Vec::new();
        for (p, t) in &self.tracked {
            if let (false, Some(fd)) = (t.dead, &t.pidfd) {
                fds.push(fd.as_fd());
                ids.push(*p);
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
                self.mark_dead(ids[i]);
            }
        }
    }

    fn mark_dead(&mut self, p: ProcId) {
        if let Some(t) = self.tracked.get_mut(&p) {
            if !t.dead {
                t.dead = true;
                t.pidfd = None;
                let what = t
                    .entry
                    .as_ref()
                    .map(|e| format!("domain '{}' ({})", e.domain_name, e.domain_uuid))
                    .unwrap_or_else(|| "unknown domain".into());
                info!("QEMU pid {} of {what} exited; releasing its leases", p.pid);
            }
        }
    }

    /// Live leased processes (some thread left), re-checked against /proc.
    pub fn alive_processes(&mut self) -> Vec<(ProcId, String)> {
        let ids: Vec<ProcId> = self
            .tracked
            .iter()
            .filter(|(_, t)| !t.dead)
            .map(|(p, _)| *p)
            .collect();
        let mut out = Vec::new();
        for p in ids {
            if p.is_alive() {
                let what = self.tracked[&p]
                    .entry
                    .as_ref()
                    .map(|e| format!("domain '{}' ({})", e.domain_name, e.domain_uuid))
                    .unwrap_or_else(|| "unknown domain".into());
                out.push((p, what));
            } else {
                self.mark_dead(p);
            }
        }
        out
    }

    /// True while an exited QEMU's leases are swept (an acquire for it
    /// was still in flight at the last pass).
    pub fn is_sweeping(&self, p: ProcId) -> bool {
        self.tracked.get(&p).is_some_and(|t| t.sweeping)
    }

    /// Leases (domain and disk) that live QEMU processes of this host may
    /// hold, from their registry entries (metrics).
    pub fn alive_lease_count(&self) -> usize {
        self.tracked
            .values()
            .filter(|t| !t.dead)
            .filter_map(|t| t.entry.as_ref())
            .map(|e| e.keys.len())
            .sum()
    }

    pub fn alive_count(&self) -> usize {
        self.tracked.values().filter(|t| !t.dead).count()
    }

    /// Hands dead processes to the release thread and collects results.
    pub fn release_dead(&mut self) {
        while let Ok((p, res)) = self.rx.try_recv() {
            let Some(t) = self.tracked.get_mut(&p) else {
                continue;
            };
            t.releasing = false;
            let was_sweeping = t.sweeping;
            if !res.in_flight.is_empty() && !t.sweeping {
                let callers: Vec<String> = res
                    .in_flight
                    .iter()
                    .map(|i| i.caller.pid.to_string())
                    .collect();
                warn!(
                    "QEMU pid {} exited while an acquire for it is still in flight in process {} \
                     (stuck on storage?): its leases are swept every {} s until that acquire ends",
                    p.pid,
                    callers.join(", "),
                    SWEEP_MS / 1000
                );
                t.sweeping = true;
            }
            match res.released {
                Ok(keys) => {
                    if !keys.is_empty() && was_sweeping {
                        warn!(
                            "sweep: released {} lease(s) of exited QEMU pid {}: {}; an acquire that was \
                             still in flight when the QEMU exited wrote them afterwards (storage stall?)",
                            keys.len(),
                            p.pid,
                            keys.join(", ")
                        );
                    } else if !keys.is_empty() {
                        self.released_total += 1;
                        let (dom, uuid) = t
                            .entry
                            .as_ref()
                            .map(|e| (e.domain_name.as_str(), e.domain_uuid.as_str()))
                            .unwrap_or(("", ""));
                        info!(
                            event = "dead-qemu-release",
                            domain = dom, domain_uuid = uuid, resource = keys.join(" ").as_str();
                            "released {} lease(s) of exited QEMU pid {}: {}",
                            keys.len(),
                            p.pid,
                            keys.join(", ")
                        );
                    }
                    if !res.in_flight.is_empty() {
                        t.retry_at = crate::clock::boottime_ms() + SWEEP_MS;
                        continue;
                    }
                    if t.sweeping {
                        info!(
                            "sweep of exited QEMU pid {} done: no acquire for it is in flight any more",
                            p.pid
                        );
                    }
                    if let Err(e) = self.reg.remove(p) {
                        error!("{e}");
                    }
                    self.tracked.remove(&p);
                }
                Err(e) => {
                    let msg = e.to_string();
                    if msg != t.last_error {
                        error!(
                            "cannot release the leases of exited QEMU pid {}: {msg} (retrying)",
                            p.pid
                        );
                        t.last_error = msg;
                    }
                    t.retry_at = crate::clock::boottime_ms() + 1000;
                }
            }
        }
        let now = crate::clock::boottime_ms();
        for (p, t) in self.tracked.iter_mut() {
            if t.dead && !t.releasing && now >= t.retry_at {
                match &t.entry {
                    Some(e) => {
                        if self.tx.send((*p, e.clone())).is_ok() {
                            t.releasing = true;
                        }
                    }
                    None => {
                        if t.last_error.is_empty() {
                            error!("exited QEMU pid {} has a damaged registry entry: its leases must be released by hand ('vmlease release')", p.pid);
                            t.last_error = "damaged entry".into();
                        }
                    }
                }
            }
        }
    }
}

/// Notes the in-flight acquires first, then releases: a write that lands
/// after the release was issued by an acquire noted here, and the entry
/// is kept for the next sweep.
fn release_pass(eng: &Engine, reg: &Registry, p: ProcId, fallback: Entry) -> Pass {
    let e = match reg.read(p) {
        Ok(Some(e)) => e,
        _ => fallback,
    };
    let in_flight = e.live_intents(&|c| c.is_alive());
    Pass {
        released: release_all(eng, p, &e),
        in_flight,
    }
}

fn release_all(eng: &Engine, p: ProcId, e: &Entry) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for (key, _resource) in &e.keys {
        let gone = eng.release_matching(key, &|h| {
            h.host_id == eng.host_id
                && h.boot_id == eng.boot_id
                && h.pid == p.pid
                && h.pid_start == p.start
        })?;
        if !gone.is_empty() {
            done.push(key.clone());
        }
    }
    Ok(done)
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
