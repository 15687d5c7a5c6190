//! Acquire and release of resource leases: the read-modify-write of one
//! lease record under its short serialising lock, with the takeover rule
//! deciding about every current holder. Ownership is what the record says.
#![forbid(unsafe_code)]

use std::sync::Arc;

use crate::deadline::Cancel;
use crate::error::{Error, Result};
use crate::hosts::Slot;
use crate::lease::{Holder, LeaseRecord, Mode};
use crate::lockspace::Lockspace;
use crate::process::ProcId;
use crate::resource::Resource;
use crate::status::Status;
use crate::store::Store;
use crate::takeover::{Judge, Verdict};

/// Everything an operation needs; cheap to clone into an I/O thread.
///
/// Generic over the shared store (the real [`Lockspace`] by default, a
/// simulated one in `tests/sim`). The engine reads no clock: the only time
/// it uses is the one in `view` (when the daemon wrote its observations).
#[derive(Clone)]
pub struct Engine<S: Store = Lockspace> {
    pub ls: S,
    pub host_id: u16,
    pub boot_id: String,
    pub dead_ms: u64,
    /// `trust_unsafe_peers` (takeover rule 4 for hosts without a watchdog).
    pub trust_unsafe_peers: bool,
    pub lock_timeout_ms: u64,
    pub view: Option<Arc<Status>>,
    pub process_alive: Arc<dyn Fn(ProcId) -> bool + Send + Sync>,
}

/// The result of a successful acquire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    pub version: u64,
    /// False when this process already held it (idempotent re-acquire).
    pub changed: bool,
    /// Holders dropped by the takeover rule, with the reason.
    pub took_over: Vec<(Holder, String)>,
}

impl<S: Store> Engine<S> {
    fn judge(&self, h: &Holder) -> Result<(Verdict, Option<String>)> {
        if h.host_id > self.ls.max_hosts() {
            return Ok((
                Verdict::Held(format!("host id {} is outside this lockspace", h.host_id)),
                None,
            ));
        }
        let raw = self.ls.read_slot_raw(h.host_id)?;
        let alive = self.process_alive.clone();
        let judge = Judge {
            my_host_id: self.host_id,
            my_boot_id: &self.boot_id,
            my_dead_ms: self.dead_ms,
            trust_unsafe_peers: self.trust_unsafe_peers,
            view: self.view.as_deref(),
            process_alive: &move |p| alive(p),
        };
        let name = match crate::hosts::decode_slot(h.host_id, &raw) {
            Slot::Record(r) => Some(r.host_name),
            _ => None,
        };
        let v = crate::takeover::with_rule5(judge.judge(h, &raw), self.host_id, h, &raw, || {
            self.ls.read_storage_fence_raw(h.host_id)
        })?;
        Ok((v, name))
    }

    /// Acquires `res` for `me`. With `expect_version` (a handover state),
    /// an exclusive lease is only taken when its version is unchanged.
    pub fn acquire(
        &self,
        res: &Resource,
        me: &Holder,
        expect_version: Option<u64>,
    ) -> Result<Acquired> {
        self.acquire_inner(res, me, expect_version, None)
    }

    /// As [`Engine::acquire`], for a call its caller may abandon at a
    /// deadline (`cancel`), on behalf of a local process that may exit
    /// meanwhile. Under the record lock, right before the write, it checks
    /// that the caller still waits and that `me`'s process is alive: the
    /// daemon releases a dead QEMU's leases under the same lock, so a
    /// write that lands after that release would name a dead holder that
    /// nobody frees. A caller that gives up during the write gets the
    /// write undone, still under the lock.
    pub fn acquire_for(
        &self,
        res: &Resource,
        me: &Holder,
        expect_version: Option<u64>,
        cancel: &Cancel,
    ) -> Result<Acquired> {
        self.acquire_inner(res, me, expect_version, Some(cancel))
    }

    fn acquire_inner(
        &self,
        res: &Resource,
        me: &Holder,
        expect_version: Option<u64>,
        cancel: Option<&Cancel>,
    ) -> Result<Acquired> {
        let key = res.key();
        let _lock = self.ls.lock_record(&key, self.lock_timeout_ms)?;
        let rec = self.ls.read_lease(&key, &res.name)?;

        if let Some(cur) = rec.holders.iter().find(|h| h.same_process(me)) {
            let _ = cur;
            if rec.mode == Some(res.mode) {
                if let Some(c) = cancel {
                    if !c.complete() {
                        return Err(abandoned(res, "its caller gave up (deadline passed)"));
                    }
                }
                return Ok(Acquired {
                    version: rec.version,
                    changed: false,
                    took_over: Vec::new(),
                });
            }
        }
        if let Some(want) = expect_version {
            if res.mode == Mode::Exclusive && rec.version != want {
                return Err(Error::VersionMismatch {
                    resource: res.to_string(),
                    expected: want,
                    found: rec.version,
                });
            }
        }

        let mut keep = Vec::new();
        let mut took_over = Vec::new();
        let mut blocker: Option<String> = None;
        for h in &rec.holders {
            if h.same_process(me) {
                continue; // re-added below with the new mode
            }
            let (verdict, host_name) = self.judge(h)?;
            match verdict {
                Verdict::Free(why) => took_over.push((h.clone(), why.to_string())),
                Verdict::Held(why) => {
                    if blocker.is_none() {
                        let host = match host_name {
                            Some(n) => format!("host {} ({n})", h.host_id),
                            None => format!("host {}", h.host_id),
                        };
                        blocker = Some(format!(
                            "held by {host} for domain '{}' ({}), QEMU pid {}: {why}",
                            h.domain_name, h.domain_uuid, h.pid
                        ));
                    }
                    keep.push(h.clone());
                }
            }
        }
        let conflict = match res.mode {
            Mode::Exclusive => !keep.is_empty(),
            Mode::Shared => !keep.is_empty() && rec.mode == Some(Mode::Exclusive),
        };
        if conflict {
            return Err(Error::Busy {
                resource: res.to_string(),
                reason: blocker.unwrap_or_else(|| "held by another owner".into()),
            });
        }
        let mut new = rec.clone();
        keep.push(me.clone());
        new.holders = keep;
        new.mode = Some(res.mode);
        // Only a damaged or forged record has a version that cannot grow;
        // wrapping to 0 would let an old handover state match again.
        new.version = rec.version.checked_add(1).ok_or_else(|| {
            Error::Invalid(format!(
                "{res}: its lease version {} cannot grow (damaged record?)",
                rec.version
            ))
        })?;
        if let Some(c) = cancel {
            if c.is_abandoned() {
                return Err(abandoned(res, "its caller gave up (deadline passed)"));
            }
            if !(self.process_alive)(me.proc_id()) {
                return Err(abandoned(
                    res,
                    &format!("QEMU pid {} exited while the acquire waited", me.pid),
                ));
            }
        }
        self.ls.write_lease(&new, self.host_id)?;
        if let Some(c) = cancel {
            if !c.complete() {
                // The caller gave up while we wrote: undo it (a release:
                // the version stays).
                new.holders.retain(|h| !h.same_process(me));
                if new.holders.is_empty() {
                    new.mode = None;
                }
                self.ls.write_lease(&new, self.host_id)?;
                return Err(abandoned(
                    res,
                    "its caller gave up (deadline passed) during the write; undone",
                ));
            }
        }
        Ok(Acquired {
            version: new.version,
            changed: true,
            took_over,
        })
    }

    /// Releases `key` if `me` (same process) holds it. Returns the record's
    /// version (unchanged by a release) or `None` when `me` was not a holder.
    pub fn release(&self, key: &str, resource: &str, me: &Holder) -> Result<Option<u64>> {
        let _lock = self.ls.lock_record(key, self.lock_timeout_ms)?;
        let rec = self.ls.read_lease(key, resource)?;
        if !rec.holders.iter().any(|h| h.same_process(me)) {
            return Ok(None);
        }
        let mut new = rec.clone();
        new.holders.retain(|h| !h.same_process(me));
        if new.holders.is_empty() {
            new.mode = None;
        }
        self.ls.write_lease(&new, self.host_id)?;
        Ok(Some(new.version))
    }

    /// The version of `key` if `me` holds it.
    pub fn held_version(&self, key: &str, resource: &str, me: &Holder) -> Result<Option<u64>> {
        let rec = self.ls.read_lease(key, resource)?;
        Ok(rec
            .holders
            .iter()
            .any(|h| h.same_process(me))
            .then_some(rec.version))
    }

    /// Force-removes every holder of `key` that ran on `host_id` in boot
    /// `boot_id` with the given pid (admin release, daemon cleanup).
    pub fn release_matching(
        &self,
        key: &str,
        pred: &dyn Fn(&Holder) -> bool,
    ) -> Result<Vec<Holder>> {
        let _lock = self.ls.lock_record(key, self.lock_timeout_ms)?;
        let rec = self.ls.read_lease(key, "")?;
        let (gone, kept): (Vec<Holder>, Vec<Holder>) =
            rec.holders.iter().cloned().partition(|h| pred(h));
        if gone.is_empty() {
            return Ok(gone);
        }
        let mut new = rec;
        new.holders = kept;
        if new.holders.is_empty() {
            new.mode = None;
        }
        self.ls.write_lease(&new, self.host_id)?;
        Ok(gone)
    }
}

fn abandoned(res: &Resource, why: &str) -> Error {
    Error::Abandoned {
        resource: res.to_string(),
        why: why.to_string(),
    }
}

/// Reads a lease record for display (no lock).
pub fn peek(ls: &Lockspace, key: &str) -> Result<LeaseRecord> {
    ls.read_lease(key, "")
}

#[cfg(test)]
mod tests;
