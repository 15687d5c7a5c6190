//! The plugin's acquire, as decisions a driver runs step by step: the
//! checks before the lockspace is touched ([`Acquire::begin`]), the
//! lockspace check, then the keys and intents in one registry write once
//! it is open ([`Acquire::opened`]), one read-modify-write per record
//! ([`acquire_record`], on its own I/O thread in libvirtd, all at once),
//! each call's intent end handed to the waiting caller once the call is
//! over ([`end_record`]), and the verdict once every record answered
//! ([`Acquire::finish`]): the handed-over ends in one registry write, and
//! all or nothing, so a part failure rolls back what this call took.
//!
//! Generic over the store and the [`Host`]: libvirtd runs it on the
//! lockspace with threads and deadlines (`plugin::acquire`), the simulator
//! on its simulated store and world.
#![forbid(unsafe_code)]

use log::{info, warn};

use crate::config::Config;
use crate::deadline::Cancel;
use crate::engine::{Acquired, Engine};
use crate::error::{Error, Result};
use crate::lease::Holder;
use crate::process::ProcId;
use crate::registry::{Entries, Entry, IntentEnds};
use crate::resource::Resource;
use crate::state_string::LockState;
use crate::status::Status;
use crate::store::Store;

use super::host::Host;
use super::Manager;

/// One record's acquire.
#[derive(Debug, Clone)]
pub struct RecordCall {
    pub resource: Resource,
    /// The version a handover state (or an earlier acquire by this QEMU)
    /// requires.
    pub want: Option<u64>,
    /// Its intent in the registry (set by [`Acquire::opened`]).
    pub intent: u64,
}

/// An acquire in progress, for one QEMU.
#[derive(Debug)]
pub struct Acquire {
    pub p: ProcId,
    pub host_id: u16,
    pub boot_id: String,
    /// The daemon's status: the view the engine judges other hosts by.
    pub view: Status,
    pub me: Holder,
    /// One call per record, sorted by key, no key twice.
    pub calls: Vec<RecordCall>,
    /// Where the calls leave their intents' ends while this acquire
    /// waits for them (each call's driver gets a clone).
    pub ends: IntentEnds,
    results: Vec<Option<Result<Acquired>>>,
}

/// A failed acquire: what it took must be given back before `error` goes
/// to libvirt.
#[derive(Debug)]
pub struct Rollback {
    pub error: Error,
    pub newly: Vec<Resource>,
}

impl Acquire {
    /// The real acquire in libvirtd, on behalf of QEMU's pid, up to the
    /// lockspace: the protected check, the disk policy, the state, the
    /// versions an earlier acquire of this QEMU took (the registry, read).
    pub fn begin<H: Host>(
        host: &H,
        cfg: &Config,
        m: &Manager,
        state: Option<&str>,
    ) -> Result<Acquire> {
        let (host_id, boot_id, status) = host.protected(cfg)?;
        m.check_disk_policy(cfg)?;
        let expect = match state {
            Some(s) => LockState::parse(s)?,
            None => LockState::default(),
        };
        let p = host
            .proc_id(m.pid)
            .map_err(|e| Error::io("identify QEMU process", format!("/proc/{}", m.pid), e))?;
        let mut resources = m.all_resources(cfg, true);
        resources.sort_by_key(|r| r.key());
        resources.dedup_by_key(|r| r.key());
        let reg = host.registry();
        // Without a state (a start, a hotplug, or a resume after a pause
        // whose release failed: libvirt then keeps none), a lease this
        // QEMU held before must still have the version it held it at.
        let held_before: Vec<(String, u64)> = match (state, reg.read(p)?) {
            (None, Some(e)) => e.acquired,
            _ => Vec::new(),
        };
        let calls: Vec<RecordCall> = resources
            .into_iter()
            .map(|r| {
                let want = expect.versions.get(&r.key()).copied().or_else(|| {
                    held_before
                        .iter()
                        .find(|(k, _)| *k == r.key())
                        .map(|(_, v)| *v)
                });
                RecordCall {
                    resource: r,
                    want,
                    intent: 0,
                }
            })
            .collect();
        Ok(Acquire {
            p,
            me: m.holder(host_id, &boot_id, p),
            host_id,
            boot_id,
            view: status,
            results: calls.iter().map(|_| None).collect(),
            calls,
            ends: IntentEnds::default(),
        })
    }

    /// The lockspace `ls` is open. It must hold the lockspace the daemon
    /// renews in. Then the keys and one intent per record, all noted in
    /// one registry write before the lockspace is touched: the daemon
    /// keeps sweeping this QEMU's leases after it exits while any of these
    /// calls may still write.
    pub fn opened<H: Host, S: Store>(&mut self, host: &H, ls: &S) -> Result<()> {
        let (dir, uuid) = ls.identity();
        self.view
            .check_same_uuid(&dir, uuid.as_deref())
            .map_err(Error::Unprotected)?;
        let caller = host.caller()?;
        for c in &mut self.calls {
            c.intent = host.intent_id();
        }
        let ids: Vec<u64> = self.calls.iter().map(|c| c.intent).collect();
        let keys: Vec<(String, String)> = self
            .calls
            .iter()
            .map(|c| (c.resource.key(), c.resource.name.clone()))
            .collect();
        host.registry()
            .begin_domain_acquire(&self.base_entry(), &keys, &ids, caller)
    }

    fn base_entry(&self) -> Entry {
        Entry::new(self.p, &self.me.domain_uuid, &self.me.domain_name)
    }

    /// Call `i` answered (or its caller gave up on it).
    pub fn record_done(&mut self, i: usize, r: Result<Acquired>) {
        self.results[i] = Some(r);
    }

    /// Call `i` never started (an earlier call is stuck, or no thread):
    /// its intent ends with the others, and `e` is its answer.
    pub fn not_started<H: Host>(&mut self, host: &H, i: usize, e: Error) {
        let c = &self.calls[i];
        let _ = self.ends.end(host.registry(), self.p, c.intent, None);
        self.record_done(i, Err(e));
    }

    /// Calls not answered yet.
    pub fn waiting(&self) -> usize {
        self.results.iter().filter(|r| r.is_none()).count()
    }

    /// Every call answered: the intents' ends handed over so far in one
    /// registry write (calls still running end their own later). Ok when
    /// all took their record (the release state is then obsolete, and
    /// cleared in that write), with how many leases were taken over from
    /// another holder; else what to roll back and the first error (in key
    /// order).
    pub fn finish<H: Host>(self, host: &H) -> std::result::Result<usize, Rollback> {
        let ends = self.ends.close();
        let all_ok = self.results.iter().all(|r| matches!(r, Some(Ok(_))));
        if !ends.is_empty() || all_ok {
            if let Err(e) = host.registry().end_acquires(self.p, &ends, all_ok) {
                warn!("{e}");
            }
        }
        let (host_id, me) = (self.host_id, &self.me);
        let (name, uuid) = (me.domain_name.as_str(), me.domain_uuid.as_str());
        let mut newly = Vec::new();
        let mut first_err = None;
        let mut took_over = 0;
        for (c, res) in self.calls.iter().zip(self.results) {
            let r = &c.resource;
            let res = res.unwrap_or_else(|| {
                Err(Error::Invalid(format!("the acquire of {r} never answered")))
            });
            match res {
                Ok(a) => {
                    took_over += a.took_over.len();
                    for (h, why) in &a.took_over {
                        warn!(
                            event = "takeover", host_id = host_id, resource:% = r,
                            holder_host = h.host_id, domain = name,
                            domain_uuid = uuid;
                            "took over {r} from host {} (domain '{}' pid {}): {why}",
                            h.host_id, h.domain_name, h.pid
                        );
                    }
                    if a.changed {
                        info!(
                            "acquired {r} ({}) for domain '{name}' ({uuid}) pid {} version {}",
                            r.mode, me.pid, a.version
                        );
                        newly.push(r.clone());
                    }
                }
                Err(e) => {
                    warn!(
                        event = "lease-refused", host_id = host_id, resource:% = r,
                        domain = name, domain_uuid = uuid;
                        "acquire of {r} for domain '{name}' ({uuid}) failed: {e}"
                    );
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(error) = first_err {
            // All or nothing: give back what this call took.
            return Err(Rollback { error, newly });
        }
        Ok(took_over)
    }
}

/// One record's acquire, as its I/O thread runs it: the engine's
/// `acquire_for` (nothing written for a caller that gave up or a QEMU that
/// exited). Once it returned (its last lockspace write done), the call
/// ends its intent with [`end_record`].
pub fn acquire_record<S: Store>(
    eng: &Engine<S>,
    c: &RecordCall,
    me: &Holder,
    cancel: &Cancel,
) -> Result<Acquired> {
    let res = eng.acquire_for(&c.resource, me, c.want, cancel);
    if let Err(e) = &res {
        if cancel.is_abandoned() {
            warn!(
                "abandoned acquire of {} for QEMU pid {}: {e}",
                c.resource, me.pid
            );
        }
    }
    res
}

/// The end of a record call's intent, once the call is over: handed to
/// the caller while it waits (it writes every end in one registry write,
/// [`Acquire::finish`]), else written here, whether or not the caller
/// still waits.
pub fn end_record<R: Entries>(
    ends: &IntentEnds,
    reg: &R,
    c: &RecordCall,
    me: &Holder,
    res: &Result<Acquired>,
) {
    let done = res.as_ref().ok().map(|a| (c.resource.key(), a.version));
    if let Err(e) = ends.end(reg, me.proc_id(), c.intent, done) {
        warn!("{e}");
    }
}

/// [`acquire_record`] then [`end_record`]: what one I/O thread runs.
pub fn run_record<S: Store, R: Entries>(
    eng: &Engine<S>,
    reg: &R,
    ends: &IntentEnds,
    c: &RecordCall,
    me: &Holder,
    cancel: &Cancel,
) -> Result<Acquired> {
    let res = acquire_record(eng, c, me, cancel);
    end_record(ends, reg, c, me, &res);
    res
}

/// The outcome of one rollback release, for the log.
pub fn rolled_back(r: &Resource, res: &Result<Option<u64>>) {
    match res {
        Ok(_) => info!("rolled back {r}"),
        Err(e) => {
            warn!("could not roll back {r}: {e}; the watchdog daemon releases it when QEMU exits")
        }
    }
}

#[cfg(test)]
mod tests;
