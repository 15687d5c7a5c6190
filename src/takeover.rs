//! The takeover rule (SPEC section 2): when may a lease held by someone be
//! treated as free? Exactly when one of these holds:
//!
//! 1. the holder's host published `fenced-clean` (or `leaving`) after
//!    killing that QEMU (a released holder is simply absent): the record
//!    must have been written after that QEMU started, both times on the
//!    holder host's boot clock - a record read before the host cleared its
//!    fence (or while a read still shows the previous version) says
//!    nothing about a QEMU started after the clear;
//! 2. the holder's host record shows a different boot id (it rebooted) -
//!    unless that record has not finished its claim (counter 0: a machine
//!    that may yet find the id in use), or this host's watchdog has seen
//!    two machines take turns writing the slot (a host id collision:
//!    another boot id there proves nothing about the holder, `collision`);
//!    rule 4 still applies to such a slot;
//! 3. the holder is this host and that QEMU process is gone (pid + start);
//! 4. this host's watchdog has observed the holder's record unchanged for at
//!    least the holder's `host_dead_timeout` on its own monotonic clock -
//!    unless the holder's host runs with `unsafe_no_watchdog`: nothing
//!    resets such a host when its daemon hangs, so its silence proves
//!    nothing (`trust_unsafe_peers = true` on this host applies rule 4 to
//!    it anyway, for tests and demos).
//! 5. the holder's host has a `storage-fenced` verdict (Ceph blocklist,
//!    [`crate::storage_fence`]) for the holder's boot, written after the
//!    blocklist was committed and delivered, the host has not renewed
//!    since, and the holder's QEMU started before the host's last renewal
//!    ([`crate::storage_fence::rule5`]; docs/design.md has the argument).
//!
//! Everything else - including a damaged or missing host record that has
//! not been observed unchanged for long enough - keeps the lease held.
#![forbid(unsafe_code)]

pub mod host;

use std::fmt;

use crate::config::secs;
use crate::hosts::{self, HostState, Slot};
use crate::lease::Holder;
use crate::process::ProcId;
use crate::status::Status;

/// Why a holder no longer counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FreeBecause {
    FencedClean,
    Leaving,
    Rebooted { now: String },
    ProcessGone,
    ObservedDead { unchanged_ms: u64, dead_ms: u64 },
    StorageFenced { by: u16, epoch: u64 },
}

impl fmt::Display for FreeBecause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FreeBecause::FencedClean => write!(f, "its host published fenced-clean"),
            FreeBecause::Leaving => write!(f, "its host left the lockspace cleanly"),
            FreeBecause::Rebooted { now } => write!(f, "its host rebooted (boot id now {now})"),
            FreeBecause::ProcessGone => write!(f, "its QEMU process on this host is gone"),
            FreeBecause::ObservedDead {
                unchanged_ms,
                dead_ms,
            } => write!(
                f,
                "its host's liveness record was observed unchanged for {} (host_dead_timeout {})",
                secs(*unchanged_ms),
                secs(*dead_ms)
            ),
            FreeBecause::StorageFenced { by, epoch } => write!(
                f,
                "its host was storage-fenced by host {by} (Ceph blocklist committed in osdmap epoch {epoch})"
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Free(FreeBecause),
    /// Still held; the text explains why, for the user.
    Held(String),
}

/// Clock ticks per second of `/proc/PID/stat`'s starttime (USER_HZ, 100
/// on every Linux architecture vmlease runs on).
pub const USER_HZ: u64 = 100;

/// Did the holder's QEMU certainly start before its host wrote a record
/// stamped `mono_ms`? Both are on the holder host's CLOCK_BOOTTIME of the
/// same boot (the caller has checked the boot id); the start time is
/// truncated to a tick, so one tick is added. A QEMU that started later
/// was not killed by the fence that record reports (KB5,
/// docs/simulation.md).
pub fn started_before(h: &Holder, mono_ms: u64) -> bool {
    (h.pid_start + 1).saturating_mul(1000 / USER_HZ) <= mono_ms
}

/// What the judge needs to know about the world.
pub struct Judge<'a> {
    pub my_host_id: u16,
    pub my_boot_id: &'a str,
    /// This host's own host_dead_timeout: a floor for every holder's D.
    pub my_dead_ms: u64,
    /// Apply rule 4 to holders whose host has no hardware watchdog.
    pub trust_unsafe_peers: bool,
    /// The local daemon's published view (None: no observation at all).
    pub view: Option<&'a Status>,
    /// Liveness of a local process.
    pub process_alive: &'a dyn Fn(ProcId) -> bool,
}

impl Judge<'_> {
    /// Why rule 2 must not free `h` although its slot shows another boot
    /// (None: it may).
    fn rule2_blocked(&self, h: &Holder, r: &hosts::HostRecord) -> Option<String> {
        if let Some(c) = self
            .view
            .and_then(|v| v.peer(h.host_id))
            .filter(|p| !p.collision.is_empty())
        {
            return Some(format!(
                "host id {} collision: {}; its slot showing boot {} says nothing about the holder \
                 (boot {}); held until the slot is silent for host_dead_timeout",
                h.host_id,
                c.collision,
                crate::collision::short(&r.boot_id),
                crate::collision::short(&h.boot_id)
            ));
        }
        if r.counter == crate::collision::CLAIM_COUNTER {
            return Some(format!(
                "host '{}' (boot {}) is still claiming host id {}: it may find the id in use by the holder",
                r.host_name,
                crate::collision::short(&r.boot_id),
                h.host_id
            ));
        }
        None
    }

    /// Judges one holder given the holder host's slot, read *now* under the
    /// lease's record lock (raw bytes).
    pub fn judge(&self, h: &Holder, raw_slot: &[u8]) -> Verdict {
        let slot = hosts::decode_slot(h.host_id, raw_slot);
        // Rule 2 held back (a claim in progress, a collision): the slot is
        // not the holder's record, so rule 1 does not apply either, but
        // rule 4 does - a slot nobody writes for D is silence like any
        // other (a claimer that died after its claim write must not hold
        // the holder's leases forever).
        let mut rule2_held = None;
        if let Slot::Record(r) = &slot {
            if r.boot_id != h.boot_id {
                match self.rule2_blocked(h, r) {
                    None => {
                        return Verdict::Free(FreeBecause::Rebooted {
                            now: r.boot_id.clone(),
                        })
                    }
                    Some(held) => rule2_held = Some(held),
                }
            } else {
                let before = started_before(h, r.mono_ms);
                match r.state {
                    HostState::FencedClean if before => {
                        return Verdict::Free(FreeBecause::FencedClean)
                    }
                    HostState::Leaving if before => return Verdict::Free(FreeBecause::Leaving),
                    _ => {}
                }
            }
        }
        match (self.judge_rules_3_4(h, &slot, raw_slot), rule2_held) {
            (Verdict::Held(why), Some(held)) => Verdict::Held(format!("{held}; {why}")),
            (v, _) => v,
        }
    }

    /// Rules 3 and 4 (see `judge`).
    fn judge_rules_3_4(&self, h: &Holder, slot: &Slot, raw_slot: &[u8]) -> Verdict {
        if h.host_id == self.my_host_id && h.boot_id == self.my_boot_id {
            let p = ProcId {
                pid: h.pid,
                start: h.pid_start,
            };
            return if (self.process_alive)(p) {
                Verdict::Held(format!("its QEMU process {} is alive on this host", h.pid))
            } else {
                Verdict::Free(FreeBecause::ProcessGone)
            };
        }
        let holder_dead_ms = match slot {
            Slot::Record(r) => r.timing.host_dead_timeout,
            _ => self
                .view
                .and_then(|v| v.peer(h.host_id))
                .map(|p| p.dead_timeout_ms)
                .unwrap_or(0),
        };
        let dead_ms = holder_dead_ms.max(self.my_dead_ms);
        let Some(view) = self.view else {
            return Verdict::Held(
                "this host has no observation of the holder (watchdog daemon not running)".into(),
            );
        };
        match view.observed_unchanged_ms(h.host_id, raw_slot) {
            None => Verdict::Held(match slot {
                Slot::Record(r) => format!("its host is alive (state {}, renewing)", r.state),
                _ => "its host's record changed recently".into(),
            }),
            Some(unchanged) if !self.trust_unsafe_peers && unwatched(slot) => {
                Verdict::Held(format!(
                    "its host runs without a hardware watchdog (unsafe_no_watchdog = true): \
                     nothing resets it if its daemon hangs, so its silence ({}) proves nothing; \
                     it may be taken over once it publishes fenced-clean or reboots \
                     (trust_unsafe_peers = true on this host would trust it: tests and demos only)",
                    secs(unchanged)
                ))
            }
            Some(unchanged) if unchanged >= dead_ms => Verdict::Free(FreeBecause::ObservedDead {
                unchanged_ms: unchanged,
                dead_ms,
            }),
            Some(unchanged) => Verdict::Held(format!(
                "its host has not renewed for {} as observed here; it may be taken over after {} (in {})",
                secs(unchanged),
                secs(dead_ms),
                secs(dead_ms - unchanged)
            )),
        }
    }
}

/// Does the holder's host say it has no hardware watchdog?
pub fn unwatched(slot: &Slot) -> bool {
    matches!(slot, Slot::Record(r) if r.unsafe_no_watchdog)
}

/// Takeover rule 5 on top of a verdict of rules 1-4: a holder still held
/// on another host is free when that host's storage-fence verdict
/// (`fence_raw`, read under the record lock; None: no verdict) frees it.
/// A damaged verdict frees nothing; the reason says so.
pub fn with_rule5(
    v: Verdict,
    my_host_id: u16,
    h: &Holder,
    raw_slot: &[u8],
    fence_raw: impl FnOnce() -> crate::error::Result<Option<Vec<u8>>>,
) -> crate::error::Result<Verdict> {
    let Verdict::Held(why) = v else {
        return Ok(v);
    };
    if h.host_id == my_host_id {
        return Ok(Verdict::Held(why));
    }
    let raw = fence_raw()?;
    Ok(
        match crate::storage_fence::decode_verdict(h.host_id, raw.as_deref()) {
            crate::storage_fence::Found::None => Verdict::Held(why),
            crate::storage_fence::Found::Damaged(d) => Verdict::Held(format!(
                "{why}; its storage-fence verdict is damaged ({d}) and frees nothing"
            )),
            crate::storage_fence::Found::Valid(f) => {
                match crate::storage_fence::rule5(h, raw_slot, &f) {
                    Ok(()) => Verdict::Free(FreeBecause::StorageFenced {
                        by: f.writer_host,
                        epoch: f.osdmap_epoch,
                    }),
                    Err(no) => Verdict::Held(format!("{why}; storage fence: {no}")),
                }
            }
        },
    )
}
