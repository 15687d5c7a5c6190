//! Events: what an operator, a monitoring system or a notification hook
//! should hear about (a host failed, was fenced, may be evacuated, a VM
//! was recovered or could not be). Every event is an
//! [`super::decide::Action::Event`] of the controller's pure
//! step - the one way to emit one - built with [`Event::host`] or
//! [`Event::vm`]:
//!
//! ```
//! use vmlease::ha::events::{kind, Event};
//! let e = Event::vm(kind::VM_RECOVERED, 1_700_000_000_000, "host-b", "0000-...", "web", "runs on host-b");
//! assert_eq!(e.kind, "vm-recovered");
//! ```
//!
//! The leader writes each one to etcd under `P/events/` (bounded: see
//! [`EventStore`](super::event_store)) and hands it to the notification
//! hooks (`hooks.rs`); `vmlease events [--follow]` reads them back.
//!
//! Host events come from [`host_events`]: the condition of every host the
//! controller knows, compared with the last one it reported (`P/seen/NAME`,
//! written with the event), so that a new leader neither repeats nor
//! misses one.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

use super::decide::{Action, ClusterView, Verdict};

/// The kinds of event (the `kind` field; hooks switch on it). New kinds
/// may be added; none is renamed.
pub mod kind {
    /// A host is gone from etcd or no longer protected (fencing, no
    /// watchdog): its VMs are not restarted before the lockspace agrees.
    pub const HOST_FAILED: &str = "host-failed";
    /// A host published `fenced-clean`: it killed its leased VMs.
    pub const HOST_FENCED: &str = "host-fenced";
    /// The lockspace says a failed host's leases may be taken now (the
    /// verdict of `vmlease can-evacuate`): the moment an external
    /// controller (Masakari, Nova evacuate) may act.
    pub const HOST_EVACUABLE: &str = "host-evacuable";
    /// A host lost its management or service network but still renews
    /// (policy `report`): its VMs are not restarted elsewhere.
    pub const HOST_ISOLATED: &str = "host-isolated";
    /// A host is live and protected again.
    pub const HOST_BACK: &str = "host-back";
    /// The controller assigned a failed host's VM to a target.
    pub const RECOVERY_STARTED: &str = "recovery-started";
    /// One attempt failed; another follows after the backoff.
    pub const ATTEMPT_FAILED: &str = "attempt-failed";
    /// A recovered VM runs on its new host.
    pub const VM_RECOVERED: &str = "vm-recovered";
    /// Out of attempts: the VM is left to the operator.
    pub const RECOVERY_FAILED: &str = "recovery-failed";
    /// `vmlease maintenance enter`: no placements, network fences
    /// disarmed, HA VMs drained.
    pub const MAINTENANCE_ENTERED: &str = "maintenance-entered";
    /// `vmlease maintenance exit`: a target again.
    pub const MAINTENANCE_EXITED: &str = "maintenance-exited";
    /// A VM was live-migrated off a host in maintenance.
    pub const VM_MIGRATED: &str = "vm-migrated";
    /// A drain migration failed (retried on another host, then left).
    pub const MIGRATION_FAILED: &str = "migration-failed";
    /// Every HA VM has left a host in maintenance.
    pub const HOST_DRAINED: &str = "host-drained";
    /// The controller fenced a silent host at the storage (Ceph blocklist).
    pub const STORAGE_FENCED: &str = "storage-fenced";
    /// A storage fence failed; its VMs wait for host_dead_timeout.
    pub const STORAGE_FENCE_FAILED: &str = "storage-fence-failed";
    /// An HA VM's QEMU died on a live host (crash, OOM kill, `kill -9`);
    /// its host restarts it (or a crash loop ends `recovery-failed`).
    pub const VM_CRASHED: &str = "vm-crashed";
    /// A VM whose QEMU died runs again on the same host.
    pub const VM_RESTARTED: &str = "vm-restarted";
    /// Its guest agent was silent for the heartbeat timeout: reset.
    pub const VM_RESET: &str = "vm-reset";
    /// The guest panicked, or its `<watchdog>` device fired (QEMU acted).
    pub const GUEST_FAILED: &str = "guest-failed";
    /// A value in etcd does not decode (the key is in the reason): the
    /// host is neither live nor failed, the VM unmanaged, until the
    /// value is written again.
    pub const CORRUPT_VALUE: &str = "corrupt-value";
}

/// One event, as stored in etcd, printed by `vmlease events --json` and
/// given to hooks (JSON on stdin, `VMLEASE_EVENT_*` in the environment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// One of [`kind`].
    pub kind: String,
    /// Wall-clock ms when the controller decided it.
    pub time_ms: u64,
    /// The host it is about (a VM's failed or source host), or "".
    pub host: String,
    /// The domain's UUID and name, or "" for host events.
    pub uuid: String,
    pub name: String,
    /// Why, in words.
    pub reason: String,
}

impl Event {
    /// An event about a host.
    pub fn host(kind: &str, now_ms: u64, host: &str, reason: impl Into<String>) -> Event {
        Event::vm(kind, now_ms, host, "", "", reason)
    }

    /// An event about a domain (on `host`).
    pub fn vm(
        kind: &str,
        now_ms: u64,
        host: &str,
        uuid: &str,
        name: &str,
        reason: impl Into<String>,
    ) -> Event {
        Event {
            kind: kind.into(),
            time_ms: now_ms,
            host: host.into(),
            uuid: uuid.into(),
            name: name.into(),
            reason: reason.into(),
        }
    }

    /// One line for logs and `vmlease events`.
    pub fn line(&self) -> String {
        let mut s = format!("{} {}", rfc3339(self.time_ms), self.kind);
        if !self.host.is_empty() {
            s.push_str(&format!(" host={}", self.host));
        }
        if !self.name.is_empty() {
            s.push_str(&format!(" domain={} ({})", self.name, self.uuid));
        }
        if !self.reason.is_empty() {
            s.push_str(&format!(": {}", self.reason));
        }
        s
    }

    /// The environment a hook gets.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("VMLEASE_EVENT_KIND", self.kind.clone()),
            ("VMLEASE_EVENT_TIME", rfc3339(self.time_ms)),
            ("VMLEASE_EVENT_TIME_MS", self.time_ms.to_string()),
            ("VMLEASE_EVENT_HOST", self.host.clone()),
            ("VMLEASE_EVENT_DOMAIN_UUID", self.uuid.clone()),
            ("VMLEASE_EVENT_DOMAIN_NAME", self.name.clone()),
            ("VMLEASE_EVENT_REASON", self.reason.clone()),
        ]
    }
}

/// The event for a value under `prefix` that does not decode: about the
/// host or the domain its key names.
pub fn corrupt(now_ms: u64, prefix: &str, key: &str, error: &str) -> Event {
    let rest = key.strip_prefix(prefix).unwrap_or(key);
    let (host, uuid, what) = if let Some(h) = rest.strip_prefix("hosts/") {
        (
            h,
            "",
            "the host is neither live nor failed (no decision about it)",
        )
    } else if let Some(u) = rest.strip_prefix("vms/") {
        ("", u, "the domain is unmanaged (not recovered)")
    } else {
        ("", "", "the record is ignored")
    };
    Event::vm(
        kind::CORRUPT_VALUE,
        now_ms,
        host,
        uuid,
        "",
        format!("{key}: {error}; {what} until it is written again"),
    )
}

/// `2026-12-07T00:01:02.345Z` (UTC) from wall-clock ms.
pub fn rfc3339(ms: u64) -> String {
    let (y, m, d, hh, mm, ss) = crate::clock::utc_parts(ms / 1000);
    format!(
        "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{:03}Z",
        ms % 1000
    )
}

/// A host's condition as the controller reports it (`P/seen/NAME`).
fn condition(v: &ClusterView, name: &str) -> (&'static str, String) {
    // Evacuable stays evacuable while the host stays down: its leases do
    // not come back before it is live again (and the controller asks the
    // lockspace only about hosts that still need an answer).
    let failed_or = |cond: &'static str, why: String| {
        let safe = v.verdicts.get(name) == Some(&Verdict::Safe)
            || v.seen.get(name).map(String::as_str) == Some("evacuable");
        if safe {
            ("evacuable", why)
        } else {
            (cond, why)
        }
    };
    match v.hosts.get(name) {
        None => failed_or(
            "failed",
            "gone from etcd (its vmlease-ha lease expired: host down or cut off)".into(),
        ),
        Some(_) if v.maintenance.contains_key(name) => {
            if super::maintenance::drained(v, name) {
                ("drained", String::new())
            } else {
                ("maintenance", String::new())
            }
        }
        Some(h) if h.state == "fenced-clean" => failed_or("fenced", h.reason.clone()),
        Some(h) if !h.protected && h.state == "live" => failed_or("failed", h.reason.clone()),
        Some(h) if !h.protected => failed_or("failed", format!("{}: {}", h.state, h.reason)),
        Some(h) if h.state == "mgmt-isolated" || h.state == "service-isolated" => {
            ("isolated", h.state.clone())
        }
        Some(_) => ("live", String::new()),
    }
}

/// Hosts the controller should ask the lockspace about for the
/// `host-evacuable` event: failed or fenced, not yet reported evacuable.
pub fn to_judge(v: &ClusterView) -> Vec<String> {
    v.hosts
        .keys()
        .chain(v.seen.keys())
        .filter(|n| !v.unreadable.contains(*n))
        .filter(|n| matches!(condition(v, n).0, "failed" | "fenced"))
        .filter(|n| v.seen.get(*n).map(String::as_str) != Some("evacuable"))
        .cloned()
        .collect()
}

/// The host events of this step: every known host whose condition
/// differs from the one last reported, and an [`Action::Seen`] to record
/// the new one. A host seen for the first time is recorded silently
/// (unless it is already failed).
pub fn host_events(v: &ClusterView, now_ms: u64) -> Vec<Action> {
    let mut names: Vec<&String> = v.hosts.keys().chain(v.seen.keys()).collect();
    names.sort();
    names.dedup();
    let mut out = Vec::new();
    for name in names {
        if v.unreadable.contains(name) {
            continue;
        }
        let (cond, why) = condition(v, name);
        let before = v.seen.get(name).map(String::as_str);
        if before == Some(cond) {
            continue;
        }
        let ev = |k: &str, r: &str| Action::Event(Event::host(k, now_ms, name, r));
        let was_down = matches!(before, Some("failed" | "fenced" | "evacuable"));
        let was_maint = matches!(before, Some("maintenance" | "drained"));
        let is_maint = matches!(cond, "maintenance" | "drained");
        if was_maint && !is_maint {
            out.push(ev(kind::MAINTENANCE_EXITED, "a placement target again"));
        }
        if is_maint && !was_maint {
            out.push(ev(
                kind::MAINTENANCE_ENTERED,
                "no placements; network fences disarmed; its HA VMs are drained",
            ));
        }
        match cond {
            "live" if before.is_some_and(|b| b != "maintenance" && b != "drained") => {
                out.push(ev(kind::HOST_BACK, "live and protected again"));
            }
            "drained" => out.push(ev(
                kind::HOST_DRAINED,
                "no HA VM runs on it any more",
            )),
            "live" | "maintenance" => {}
            "isolated" => out.push(ev(
                kind::HOST_ISOLATED,
                &format!("{why}: it still renews its lease; its VMs keep running there"),
            )),
            "failed" => out.push(ev(kind::HOST_FAILED, &why)),
            "fenced" => {
                if !was_down {
                    out.push(ev(kind::HOST_FAILED, &why));
                }
                out.push(ev(kind::HOST_FENCED, "it killed its leased VMs (fenced-clean)"));
            }
            _ /* evacuable */ => {
                if !was_down {
                    out.push(ev(kind::HOST_FAILED, &why));
                }
                out.push(ev(
                    kind::HOST_EVACUABLE,
                    "the lockspace says its leases may be taken: its VMs may run elsewhere",
                ));
            }
        }
        out.push(Action::Seen {
            host: name.clone(),
            condition: cond.to_string(),
        });
    }
    out
}

#[cfg(test)]
mod tests;
