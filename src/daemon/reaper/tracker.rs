//! The reaper's bookkeeping, without I/O: which QEMU processes of the
//! registry are watched, which have exited, which are handed to the
//! release thread, when a failed release is retried and when an exited
//! QEMU's leases are swept; and the release thread's pass over one exited
//! QEMU's keys. The driver (`super::Reaper` in the daemon, the simulator's
//! daemon) reads the registry, opens pidfds, judges liveness and calls the
//! engine; every decision about what that means is made here, so both run
//! the same rules.

use std::collections::BTreeMap;

use log::{error, info, warn};

use super::SWEEP_MS;
use crate::error::Result;
use crate::lease::Holder;
use crate::process::ProcId;
use crate::registry::{Entry, Intent};

/// A full reread of the registry at least this often, even when its
/// directory looks unchanged (a coarse mtime may hide a change).
pub const FULL_SCAN_MS: u64 = 1_000;

/// How long after a failed release it is retried.
pub const RETRY_MS: u64 = 1_000;

struct Tracked {
    entry: Option<Entry>,
    dead: bool,
    releasing: bool,
    retry_at: u64,
    last_error: String,
    /// Kept because an acquire for it was in flight at the last pass.
    sweeping: bool,
}

/// One release pass over an exited QEMU's leases, as it ended.
#[derive(Debug)]
pub struct Pass {
    /// Keys released (this pass found the QEMU among their holders).
    pub released: Result<Vec<String>>,
    /// Acquires in flight when the pass began, by live callers.
    pub in_flight: Vec<Intent>,
}

/// What became of an exited QEMU after a release pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// Its leases are released: remove its registry entry.
    Released,
    /// Kept: an acquire for it may still write, or the pass failed.
    Kept,
}

/// The watched processes of one host's registry.
#[derive(Default)]
pub struct Tracker {
    tracked: BTreeMap<ProcId, Tracked>,
    dir_version: Option<u64>,
    last_full_scan: Option<u64>,
    /// Exited QEMU processes whose leases were released (metrics).
    pub released_total: u64,
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// Whether a scan at `now` must reread the registry: always when
    /// `force`d, else when its directory changed (`version`, e.g. its
    /// mtime) or the last full reread is [`FULL_SCAN_MS`] old. A reread
    /// is counted from here.
    pub fn scan_due(&mut self, now: u64, version: Option<u64>, force: bool) -> bool {
        let recent = self
            .last_full_scan
            .is_some_and(|t| now.saturating_sub(t) < FULL_SCAN_MS);
        if !force && version == self.dir_version && recent {
            return false;
        }
        self.dir_version = version;
        self.last_full_scan = Some(now);
        true
    }

    /// The registry as just read: every process it lists, with its entry
    /// (None: unreadable). `alive` judges a process seen for the first
    /// time (the driver pins it first, e.g. with a pidfd). Returns the
    /// processes first seen alive (to watch) and forgets those gone from
    /// the registry that are not being released.
    pub fn scanned(
        &mut self,
        present: Vec<(ProcId, Option<Entry>)>,
        mut alive: impl FnMut(ProcId) -> bool,
    ) -> Vec<ProcId> {
        let mut watch = Vec::new();
        let mut exited = Vec::new();
        let ids: Vec<ProcId> = present.iter().map(|(p, _)| *p).collect();
        for (p, entry) in present {
            match self.tracked.get_mut(&p) {
                Some(t) => {
                    if entry.is_some() {
                        t.entry = entry;
                    }
                }
                None => {
                    let live = alive(p);
                    if live {
                        if let Some(e) = &entry {
                            info!(
                                "watching QEMU pid {} of domain '{}' ({})",
                                p.pid, e.domain_name, e.domain_uuid
                            );
                        }
                        watch.push(p);
                    } else {
                        // Exited before we first saw it.
                        exited.push(p);
                    }
                    self.tracked.insert(
                        p,
                        Tracked {
                            entry,
                            dead: false,
                            releasing: false,
                            retry_at: 0,
                            last_error: String::new(),
                            sweeping: false,
                        },
                    );
                }
            }
        }
        for p in exited {
            self.mark_dead(p);
        }
        self.tracked.retain(|p, t| ids.contains(p) || t.releasing);
        watch
    }

    /// The processes watched and not known dead (the driver waits on
    /// their pidfds).
    pub fn watched(&self) -> impl Iterator<Item = ProcId> + '_ {
        self.tracked
            .iter()
            .filter(|(_, t)| !t.dead)
            .map(|(p, _)| *p)
    }

    /// Whether `p` is tracked and still counted alive.
    pub fn is_watched(&self, p: ProcId) -> bool {
        self.tracked.get(&p).is_some_and(|t| !t.dead)
    }

    /// `p` has exited (its whole thread group: a pidfd turned readable,
    /// or /proc says so). True if that is news.
    pub fn mark_dead(&mut self, p: ProcId) -> bool {
        let Some(t) = self.tracked.get_mut(&p) else {
            return false;
        };
        if t.dead {
            return false;
        }
        t.dead = true;
        info!(
            "QEMU pid {} of {} exited; releasing its leases",
            p.pid,
            describe(t.entry.as_ref())
        );
        true
    }

    /// Live leased processes (some thread left), each re-checked with
    /// `alive` (/proc); the dead ones are marked so. With what each is.
    pub fn alive(&mut self, alive: impl Fn(ProcId) -> bool) -> Vec<(ProcId, String)> {
        let ids: Vec<ProcId> = self.watched().collect();
        let mut out = Vec::new();
        for p in ids {
            if alive(p) {
                out.push((p, describe(self.tracked[&p].entry.as_ref())));
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

    /// Live leased processes as last seen (no /proc check).
    pub fn alive_count(&self) -> usize {
        self.tracked.values().filter(|t| !t.dead).count()
    }

    /// The release thread's pass over `p` ended at `now`.
    pub fn finished(&mut self, now: u64, p: ProcId, res: Pass) -> Finished {
        let Some(t) = self.tracked.get_mut(&p) else {
            return Finished::Kept;
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
                    t.retry_at = now + SWEEP_MS;
                    return Finished::Kept;
                }
                if t.sweeping {
                    info!(
                        "sweep of exited QEMU pid {} done: no acquire for it is in flight any more",
                        p.pid
                    );
                }
                self.tracked.remove(&p);
                Finished::Released
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
                t.retry_at = now + RETRY_MS;
                Finished::Kept
            }
        }
    }

    /// Exited processes due for a release pass at `now`, with their
    /// registry entries: hand each to the release thread (they count as
    /// being released until [`Tracker::finished`]).
    pub fn due(&mut self, now: u64) -> Vec<(ProcId, Entry)> {
        let mut out = Vec::new();
        for (p, t) in self.tracked.iter_mut() {
            if t.dead && !t.releasing && now >= t.retry_at {
                match &t.entry {
                    Some(e) => {
                        out.push((*p, e.clone()));
                        t.releasing = true;
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
        out
    }
}

fn describe(e: Option<&Entry>) -> String {
    e.map(|e| format!("domain '{}' ({})", e.domain_name, e.domain_uuid))
        .unwrap_or_else(|| "unknown domain".into())
}

/// The release thread's pass over one exited QEMU, one key after the
/// other: the driver releases [`ReleasePass::next_key`] from the records
/// whose holders are this QEMU ([`ReleasePass::owns`]), and reports each with
/// [`ReleasePass::released`]. The in-flight acquires are noted first, so
/// that a write landing after the release was issued by one noted here
/// (the entry is kept for the next sweep).
pub struct ReleasePass {
    p: ProcId,
    entry: Entry,
    in_flight: Vec<Intent>,
    idx: usize,
    done: Vec<String>,
}

impl ReleasePass {
    /// `current`: the registry entry as read now (None when gone or
    /// unreadable: the one handed over is used); `caller_alive` judges
    /// the callers of in-flight acquires.
    pub fn new(
        p: ProcId,
        handed: Entry,
        current: Option<Entry>,
        caller_alive: &dyn Fn(ProcId) -> bool,
    ) -> ReleasePass {
        let entry = current.unwrap_or(handed);
        let in_flight = entry.live_intents(caller_alive);
        ReleasePass {
            p,
            entry,
            in_flight,
            idx: 0,
            done: Vec::new(),
        }
    }

    pub fn proc_id(&self) -> ProcId {
        self.p
    }

    /// The next key to release, None when the pass is over.
    pub fn next_key(&self) -> Option<&str> {
        self.entry.keys.get(self.idx).map(|(k, _)| k.as_str())
    }

    /// Whether holder `h` is QEMU `p` of host `host_id` in boot
    /// `boot_id`: the holders a pass releases.
    pub fn owns(p: ProcId, host_id: u16, boot_id: &str, h: &Holder) -> bool {
        h.host_id == host_id && h.boot_id == boot_id && h.pid == p.pid && h.pid_start == p.start
    }

    /// The release of the current key ended: `gone` holders dropped.
    pub fn released(&mut self, gone: &[Holder]) {
        if let (false, Some((k, _))) = (gone.is_empty(), self.entry.keys.get(self.idx)) {
            self.done.push(k.clone());
        }
        self.idx += 1;
    }

    /// The pass as it ended (`failed`: the release that stopped it).
    pub fn end(self, failed: Option<crate::error::Error>) -> Pass {
        Pass {
            released: match failed {
                None => Ok(self.done),
                Some(e) => Err(e),
            },
            in_flight: self.in_flight,
        }
    }
}

#[cfg(test)]
mod tests;
