//! The invariants, checked as the world changes (docs/simulation.md):
//!
//! 1. single-writer: at most one QEMU of a VM runs its CPUs at any
//!    instant, and a running QEMU is always named by its lease records;
//! 2. fresh-liveness: a QEMU writes only while its host's liveness record
//!    landed within max(F + K, F + W) (plus two daemon ticks and clock
//!    drift) - the premise of the safety inequality;
//! 3. safe-takeover: a holder is dropped by rule 4 only once the holder's
//!    host has not renewed for D (on the taker's clock, real time), and by
//!    rules 1-3 only if its QEMU is really dead (rule 5, storage fencing,
//!    frees a QEMU that may live: invariant 4 checks that none of its
//!    writes lands afterwards);
//! 4. fenced-before-writes: once a QEMU begins writing a disk, no write of
//!    an earlier owner lands on it (writes in flight count);
//! 5. handover: a resumed or migrated VM writes only if nobody else wrote
//!    its disk since it stopped (what the lease version protects);
//! 6. liveness (at the end): every VM runs somewhere once the faults have
//!    healed for the promised time;
//! 7. intent-kept: the plugin's registry notes an acquire call in flight
//!    (its intent) from before the call touches the lockspace until its
//!    last write there landed, and no longer: a lease write never lands
//!    after its intent ended (the daemon's reaper keeps sweeping an exited
//!    QEMU only while an intent says a write may still land), and an
//!    intent whose call is over is ended (handed to the waiting caller,
//!    which writes every end in one write, or written by the call itself
//!    once the caller stopped waiting).

use std::fmt;

use vmlease::lease::Holder;
use vmlease::resource::Resource;

use crate::calls::Job;
use crate::libvirt::Proc;
use crate::params::{Us, MS};
use crate::world::{pk, World};

#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: &'static str,
    pub at: Us,
    pub text: String,
    /// A protocol bug already reported (docs/simulation.md, "Findings"):
    /// the violation matches its precise signature.
    pub known: Option<&'static str>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {:.3}s: {}{}",
            self.invariant,
            self.at as f64 / 1e6,
            self.text,
            self.known
                .map(|k| format!(" [known bug {k}]"))
                .unwrap_or_default()
        )
    }
}

impl World {
    /// Real microseconds that `ms` of some host's clock can take at most.
    fn slow_real(&self, ms: u64) -> Us {
        ms * MS + ms * MS * 2 * self.p.drift_ppm as u64 / 1_000_000
    }

    /// Real microseconds that `ms` of some host's clock take at least.
    fn fast_real(&self, ms: u64) -> Us {
        (ms * MS) * 1_000_000 / (1_000_000 + self.p.drift_ppm as u64)
    }

    fn qemu_name(&self, q: usize) -> String {
        let qm = &self.qemus[q];
        format!(
            "QEMU pid {} of vm{} on h{} ({:?})",
            qm.proc_id.pid, qm.vm, qm.host, qm.state
        )
    }

    fn names(&self, q: usize, rec: &vmlease::lease::LeaseRecord) -> bool {
        let qm = &self.qemus[q];
        let hs = self.host(qm.host);
        rec.holders.iter().any(|h| {
            h.host_id == hs.host_id
                && h.boot_id == hs.boot_id
                && h.pid == qm.proc_id.pid
                && h.pid_start == qm.proc_id.start
        })
    }

    pub fn check_running_start(&mut self, q: usize) {
        let vm = self.qemus[q].vm;
        let other = self
            .qemus
            .iter()
            .find(|o| {
                o.vm == vm
                    && o.id != q
                    && o.running()
                    // Blocklisted: runs, but writes nothing (invariant 4).
                    && !self.store.fences.contains_key(&o.host)
            })
            .map(|o| o.id);
        if let Some(o) = other {
            let text = format!(
                "{} starts its CPUs while {} runs",
                self.qemu_name(q),
                self.qemu_name(o)
            );
            let hosts = [self.qemus[q].host, self.qemus[o].host];
            self.violate_on("single-writer", text, &hosts);
        }
        for r in self.vms[vm].resources.clone() {
            let ok = self
                .store
                .lease(&r.key())
                .map(|rec| self.names(q, rec))
                .unwrap_or(false);
            if !ok {
                let text = format!(
                    "{} runs but the record of {r} does not name it",
                    self.qemu_name(q)
                );
                self.violate_on("single-writer", text, &[]);
            }
        }
        let l = self.qemus[q].lineage;
        let gen = self.vms[vm].disk_gen;
        if self.qemus[q].continues {
            let want = self.lineages[l].expect_gen;
            if gen != want {
                let text = format!(
                    "{} resumes from memory that predates {} write(s) to its disk by another QEMU",
                    self.qemu_name(q),
                    gen - want
                );
                self.violate_on("handover", text, &[]);
            }
        } else {
            self.lineages[l].expect_gen = gen;
        }
        let v = &mut self.vms[vm];
        v.epoch_owner = Some(q);
        v.epoch_start = self.now;
    }

    pub fn check_write_issue(&mut self, q: usize) {
        let h = self.qemus[q].host;
        let t = self.p.cfg.timing;
        let bound_ms =
            t.renew_fail_timeout + t.kill_timeout.max(t.watchdog_timeout) + 2 * self.p.tick_ms;
        let bound = self.slow_real(bound_ms) + MS;
        let last = self.host(h).last_landed;
        if last == 0 || self.now > last + bound {
            let text = if last == 0 {
                format!(
                    "{} writes but its host has no liveness record of this boot",
                    self.qemu_name(q)
                )
            } else {
                format!(
                    "{} writes {} ms after its host's liveness record last landed (bound {} ms = max(F + K, F + W) + 2 ticks)",
                    self.qemu_name(q),
                    (self.now - last) / MS,
                    bound_ms
                )
            };
            self.violate_on("fresh-liveness", text, &[h]);
        }
    }

    pub fn check_write_landed(&mut self, q: usize) {
        let vm = self.qemus[q].vm;
        if let Some(owner) = self.vms[vm].epoch_owner {
            if owner != q && self.vms[vm].epoch_start <= self.now {
                let text = format!(
                    "a write of {} lands {} ms after {} began writing the disk",
                    self.qemu_name(q),
                    (self.now - self.vms[vm].epoch_start) / MS,
                    self.qemu_name(owner)
                );
                let hosts = [self.qemus[q].host, self.qemus[owner].host];
                self.violate_on("fenced-before-writes", text, &hosts);
                return;
            }
        }
        let v = &mut self.vms[vm];
        v.disk_gen += 1;
        let l = self.qemus[q].lineage;
        self.lineages[l].expect_gen = self.vms[vm].disk_gen;
    }

    /// `holder` was dropped from `res` by `me`'s acquire on `h`, for `why`.
    ///
    /// Whatever the rule, the holder's QEMU must be dead (a process that
    /// still exists may still write). Rule 4 must also wait D after the
    /// last liveness record the holder's host wrote while that QEMU lived
    /// (records written after its death do not extend its life).
    pub fn check_takeover(
        &mut self,
        h: u16,
        res: &Resource,
        me: &Holder,
        holder: &Holder,
        why: &str,
    ) {
        // Machines are told apart by their boot ids (two may share a host
        // id: `Fault::Clone`).
        let hq = self.qemus.iter().find(|q| {
            let hs = self.host(q.host);
            hs.host_id == holder.host_id
                && hs.boot_id == holder.boot_id
                && q.proc_id.pid == holder.pid
                && q.proc_id.start == holder.pid_start
        });
        let alive = hq.map(|q| q.alive()).unwrap_or(false);
        let who = hq
            .map(|q| self.qemu_name(q.id))
            .unwrap_or_else(|| format!("{holder}"));
        let last = match hq {
            Some(q) if !q.alive() => q.host_landed_at_death,
            _ => self.landed.get(&holder.boot_id).copied().unwrap_or(0),
        };
        self.log(
            &format!("h{h}"),
            format!("takes over {res} from {who} for pid {}: {why}", me.pid),
        );
        // Rule 2 says the holder's host rebooted: a machine still up on
        // that boot has not (another machine wrote its host id's slot).
        let live_host = self
            .hosts
            .iter()
            .find(|hs| hs.up && hs.host_id == holder.host_id && hs.boot_id == holder.boot_id)
            .map(|hs| hs.id);
        let rule2 = why.starts_with("its host rebooted");
        // Rule 5 frees a holder whose QEMU may still exist: its host is
        // blocklisted, so none of its writes may land any more - which
        // invariant 4 (fenced-before-writes) checks on every write.
        let storage_fenced = why.contains("storage-fenced");
        if alive && !storage_fenced {
            let text = match live_host {
                Some(lh) if rule2 => format!(
                    "h{h} takes {res} from {who} by rule 2 while h{lh} still runs boot {}: {why}",
                    holder.boot_id
                ),
                _ => format!("h{h} takes {res} from {who}, which is alive: {why}"),
            };
            self.violate_on("safe-takeover", text, &[holder.host_id]);
        } else if why.contains("observed unchanged") {
            let d = self.p.cfg.timing.host_dead_timeout;
            let safe = last + self.fast_real(d);
            if self.now + MS < safe {
                let text = format!(
                    "h{h} takes {res} from {who} {} ms after the holder's liveness record last landed (D = {d} ms): {why}",
                    (self.now - last) / MS
                );
                self.violate_on("safe-takeover", text, &[holder.host_id]);
            }
        }
    }

    /// The signature of an open protocol bug (docs/simulation.md,
    /// "Findings") a violation matches, so that long runs count it apart
    /// from new ones. None is open: KB1 and KB2 are fixed, and a violation
    /// that looks like them is a new bug (their old behaviour lives on as
    /// the mutations `restart-resets-fence-clock` and
    /// `first-sight-dated-to-start`).
    pub fn known_bug(&self, invariant: &'static str, hosts: &[u16]) -> Option<&'static str> {
        let _ = (invariant, hosts);
        None
    }

    /// A lease record landed: every running QEMU must still hold its own.
    pub fn check_lease_landed(&mut self, writer: u16, key: &str) {
        let rec = self.store.lease(key).cloned();
        let mut bad = None;
        // A QEMU on a storage-fenced (blocklisted) host may run without its
        // lease: rule 5 took it, and invariant 4 checks it writes nothing.
        let fenced = |h: u16| self.store.fences.contains_key(&h);
        for q in self.qemus.iter().filter(|q| q.running() && !fenced(q.host)) {
            if self.vms[q.vm].keys.iter().any(|k| k == key) {
                let named = rec.as_ref().map(|r| self.names(q.id, r)).unwrap_or(false);
                if !named {
                    bad = Some(q.id);
                    break;
                }
            }
        }
        if let Some(q) = bad {
            let holders = rec
                .map(|r| {
                    r.holders
                        .iter()
                        .map(|h| format!("{h}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            let text = format!(
                "a write by h{writer} left {key} naming [{holders}] while {} runs",
                self.qemu_name(q)
            );
            let hosts = [writer, self.qemus[q].host];
            self.violate_on("single-writer", text, &hosts);
        }
    }

    pub fn check_liveness(&mut self) {
        if self.hosts.iter().all(|h| !h.up || h.retired || h.abandoned) {
            // Every host was left without a daemon (killed before it armed
            // its watchdog, and not restarted): nothing may run anywhere
            // until an operator starts one; nothing is promised.
            self.stats.unpromised += 1;
            return;
        }
        let mut worst = 0;
        for vm in 0..self.vms.len() {
            match self.running_qemu_of(vm) {
                Some(q) => {
                    let since = self.qemus[q].running_since;
                    worst = worst.max(since.saturating_sub(self.heal));
                }
                None => {
                    let mut why = Vec::new();
                    for r in &self.vms[vm].resources {
                        let holders = self
                            .store
                            .lease(&r.key())
                            .map(|rec| {
                                rec.holders
                                    .iter()
                                    .map(|h| format!("{h}"))
                                    .collect::<Vec<_>>()
                                    .join("; ")
                            })
                            .unwrap_or_default();
                        why.push(format!("{r}: [{holders}]"));
                    }
                    for h in &self.hosts {
                        why.push(format!(
                            "h{}: up {} daemon {} status {:?}",
                            h.id,
                            h.up,
                            h.daemon.is_some(),
                            h.status.as_ref().map(|s| (s.state, s.reason.clone()))
                        ));
                    }
                    let text = format!(
                        "vm{vm} does not run {} ms after the faults healed (promised {} ms); {}",
                        (self.now - self.heal) / MS,
                        self.p.settle_ms,
                        why.join(", ")
                    );
                    self.violate_on("liveness", text, &[]);
                    return;
                }
            }
        }
        self.stats.recovery_ms = worst / MS;
    }

    /// Acquire call `id` is about to land its writes: its intent must
    /// still be in the registry (invariant 7).
    pub fn check_intent_kept(&mut self, id: u64) {
        let Some(c) = self.calls.get(&id) else { return };
        let Job::Acquire { call, me, .. } = &c.job else {
            return;
        };
        let h = c.host;
        if self.host(h).boot_no != c.boot {
            return;
        }
        let Some(e) = self.host(h).registry.get(&pk(me.proc_id())) else {
            // The reaper dropped the entry of an exited QEMU.
            return;
        };
        if e.acquiring.iter().any(|i| i.id == call.intent) {
            return;
        }
        let text = format!(
            "a write of the acquire of {} for pid {} on h{h} lands after its intent {} ended in the registry",
            call.resource, me.pid, call.intent
        );
        self.violate_on("intent-kept", text, &[h]);
    }

    /// Every intent in `h`'s registry belongs to a call still in flight,
    /// or to an acquire whose caller still collects its calls' ends
    /// (invariant 7: no end is lost).
    pub fn check_intents(&mut self, h: u16) {
        let boot = self.host(h).boot_no;
        let mut open: Vec<u64> = self
            .calls
            .values()
            .filter(|c| c.host == h && c.boot == boot)
            .filter_map(|c| match &c.job {
                Job::Acquire { call, .. } => Some(call.intent),
                _ => None,
            })
            .collect();
        for op in self.ops.values() {
            if let Some(Proc::Acquire(ap)) = &op.proc_ {
                if let Some(aop) = ap.op.as_ref().filter(|a| !a.ends.is_closed()) {
                    open.extend(aop.calls.iter().map(|c| c.intent));
                }
            }
        }
        let lost = self.host(h).registry.values().find_map(|e| {
            e.acquiring
                .iter()
                .find(|i| !open.contains(&i.id))
                .map(|i| (e.proc_id.pid, i.id))
        });
        if let Some((pid, id)) = lost {
            let text = format!(
                "h{h}'s registry notes acquire intent {id} for pid {pid}, whose call is over"
            );
            self.violate_on("intent-kept", text, &[h]);
        }
    }
}
