//! VM-level failures, sans IO: what libvirt's domain events mean for an
//! HA VM (a crashed QEMU is restarted, an operator's or a guest's stop is
//! not), the crash-loop count, and the guest heartbeat's timer. The
//! driver (`vmmon.rs`) reads the events from `virsh event`, asks libvirt
//! for the state reason, and carries out the steps.
//!
//! | libvirt says | meaning | vmlease-ha |
//! |---|---|---|
//! | `Stopped Failed` + state `shut off (crashed)` | QEMU died (crash, OOM kill, `kill -9`) | restart (same host first) |
//! | `Stopped Failed` + `shut off (failed)` | a start that failed | nothing (the starter sees it) |
//! | `Stopped Crashed` | the guest panicked, `<on_crash>destroy` | restart |
//! | `Stopped Shutdown` | `virsh shutdown` or the guest powered off | nothing: a stop on purpose |
//! | `Stopped Destroyed` | `virsh destroy` | nothing |
//! | `Stopped Saved/Migrated/Snapshot` | the VM lives on elsewhere | nothing |
//! | `Crashed ...` | a guest panic (its `<on_crash>` acts) | event |
//! | `watchdog` | a `<watchdog>` device fired (QEMU acted) | event |
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use super::policy;

/// One line of `virsh event --loop --all [--timestamp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainEvent {
    pub domain: String,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// `lifecycle`: the event and its detail (`Stopped`, `Failed`).
    Lifecycle { event: String, detail: String },
    /// A `<watchdog>` device fired; QEMU took `action` already.
    Watchdog { action: String },
    /// Any other event type (reboot, agent-lifecycle, ...), by name.
    Other { name: String, text: String },
}

/// Parses `[TIMESTAMP: ]event 'TYPE' for domain 'NAME'[: TEXT]`; `None`
/// for anything else (virsh's own messages).
pub fn parse_event(line: &str) -> Option<DomainEvent> {
    let at = line.find("event '")?;
    let rest = &line[at + "event '".len()..];
    let (name, rest) = rest.split_once("' for domain '")?;
    // A domain name may hold "': " itself: the text starts after the last.
    // Some events have no text (`event 'reboot' for domain 'NAME'`).
    let (domain, text) = match rest.rfind("': ") {
        Some(split) => (rest[..split].to_string(), rest[split + 3..].trim()),
        None => (rest.trim_end().strip_suffix('\'')?.to_string(), ""),
    };
    let kind = match name {
        "lifecycle" => {
            let (event, detail) = text.split_once(' ').unwrap_or((text, ""));
            EventKind::Lifecycle {
                event: event.to_string(),
                detail: detail.to_string(),
            }
        }
        "watchdog" => EventKind::Watchdog {
            action: text.to_string(),
        },
        other => EventKind::Other {
            name: other.to_string(),
            text: text.to_string(),
        },
    };
    Some(DomainEvent { domain, kind })
}

/// What a lifecycle event means for an HA VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Meaning {
    /// Its QEMU died, not on purpose: restart it.
    Crash,
    /// `Stopped Failed`: a crash only if libvirt's state reason says
    /// `crashed` (a start that failed says `failed`).
    CrashIfReasonSaysSo,
    /// Stopped on purpose (operator or guest): leave it down.
    StoppedOnPurpose(String),
    /// Started (by anyone).
    Started,
    /// A guest panic; its `<on_crash>` action follows as its own event.
    GuestCrashed(String),
    /// Nothing to do.
    Nothing,
}

pub fn meaning(event: &str, detail: &str) -> Meaning {
    match (event, detail) {
        ("Stopped", "Failed") => Meaning::CrashIfReasonSaysSo,
        ("Stopped", "Crashed") => Meaning::Crash,
        ("Stopped", d) => Meaning::StoppedOnPurpose(d.to_string()),
        ("Started", _) => Meaning::Started,
        ("Crashed", d) => Meaning::GuestCrashed(d.to_string()),
        _ => Meaning::Nothing,
    }
}

/// `virsh domstate --reason` after a stop: did QEMU die (not a failed start,
/// not a stop on purpose)?
pub fn reason_is_crash(domstate_reason: &str) -> bool {
    domstate_reason.trim() == "shut off (crashed)"
}

/// The crash-loop limit (`[ha] crash_restarts`, `crash_window`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashLimits {
    pub max_restarts: u32,
    pub window_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashStep {
    /// Restart it: the `n`th restart in the window.
    Restart { n: u32 },
    /// `n` restarts in the window already: a crash loop, recovery-failed.
    GiveUp { n: u32 },
}

/// Restarts after crashes, per domain UUID, on this host's monotonic clock.
#[derive(Debug, Default)]
pub struct CrashHistory {
    restarts: BTreeMap<String, Vec<u64>>,
}

impl CrashHistory {
    /// Its QEMU died at `now_ms`: restart, or give up.
    pub fn on_crash(&mut self, uuid: &str, now_ms: u64, lim: CrashLimits) -> CrashStep {
        let h = self.restarts.entry(uuid.to_string()).or_default();
        h.retain(|t| now_ms.saturating_sub(*t) < lim.window_ms);
        let n = h.len() as u32;
        if n >= lim.max_restarts {
            return CrashStep::GiveUp { n };
        }
        h.push(now_ms);
        CrashStep::Restart { n: n + 1 }
    }

    /// Started by an operator after a crash loop: count afresh.
    pub fn forget(&mut self, uuid: &str) {
        self.restarts.remove(uuid);
    }
}

/// A VM's guest heartbeat (`heartbeat="guest-agent" timeout="S"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Silence (no answer to `guest-ping`) after which the VM is reset,
    /// counted from the first answer after each (re)start or reset.
    pub timeout_ms: u64,
}

/// Shortest heartbeat timeout: a ping's own deadline must fit in it.
pub const MIN_HEARTBEAT_MS: u64 = 3_000;

/// The heartbeat settings of a domain XML (`Ok(None)`: none).
pub fn heartbeat(xml: &str) -> Result<Option<Heartbeat>, String> {
    let kind = policy::ha_attr(xml, "heartbeat")?;
    let timeout = policy::ha_attr(xml, "timeout")?;
    match (kind.as_deref(), timeout) {
        (None, None) => Ok(None),
        (None, Some(_)) => {
            Err("vmlease metadata: timeout=\"...\" needs heartbeat=\"guest-agent\"".into())
        }
        (Some("guest-agent"), t) => {
            let t =
                t.ok_or("vmlease metadata: heartbeat=\"guest-agent\" needs timeout=\"SECONDS\"")?;
            let ms = t
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && (0.0..=86_400.0).contains(s))
                .map(|s| (s * 1000.0).round() as u64)
                .filter(|ms| *ms >= MIN_HEARTBEAT_MS)
                .ok_or_else(|| {
                    format!(
                        "vmlease metadata: timeout=\"{t}\" (expected seconds, {} to 86400)",
                        MIN_HEARTBEAT_MS / 1000
                    )
                })?;
            Ok(Some(Heartbeat { timeout_ms: ms }))
        }
        (Some(other), _) => Err(format!(
            "vmlease metadata: heartbeat=\"{other}\" (expected \"guest-agent\")"
        )),
    }
}

/// Deadline of one `guest-ping` (whole seconds, as virsh takes it).
pub fn ping_timeout_s(hb: Heartbeat) -> u64 {
    (hb.timeout_ms / 3000).clamp(1, 5)
}

/// Where a watched guest is: booting (its heartbeat disarmed until its
/// agent first answers), or armed (reset after `timeout_ms` of silence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Started, reset or rebooted at `since_ms`, no answer since. A guest
    /// is never reset before its agent answered once: its boot (and the
    /// start of its agent) may take longer than the timeout, and a guest
    /// without a working agent would be reset forever.
    Booting {
        since_ms: u64,
        told: bool,
    },
    Armed {
        last_ok_ms: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HbState {
    hb: Heartbeat,
    phase: Phase,
}

/// The heartbeat timers of the running VMs that have one, by domain name.
#[derive(Debug, Default)]
pub struct Heartbeats {
    vms: BTreeMap<String, HbState>,
}

impl Heartbeats {
    /// The VMs to watch now (running here, with a heartbeat): new ones
    /// start booting (disarmed), gone ones are dropped.
    pub fn watch(&mut self, now: &BTreeMap<String, Heartbeat>, now_ms: u64) {
        self.vms.retain(|n, _| now.contains_key(n));
        for (name, hb) in now {
            let e = self.vms.entry(name.clone()).or_insert(HbState {
                hb: *hb,
                phase: Phase::Booting {
                    since_ms: now_ms,
                    told: false,
                },
            });
            e.hb = *hb;
        }
    }

    /// The guest answered a ping (sent after its last start or reset):
    /// armed, silent from now on.
    pub fn answered(&mut self, name: &str, now_ms: u64) {
        if let Some(s) = self.vms.get_mut(name) {
            let last = match s.phase {
                Phase::Armed { last_ok_ms } => last_ok_ms.max(now_ms),
                Phase::Booting { .. } => now_ms,
            };
            s.phase = Phase::Armed { last_ok_ms: last };
        }
    }

    /// (Re)started or rebooted: booting again, disarmed until it answers.
    pub fn restart(&mut self, name: &str, now_ms: u64) {
        if let Some(s) = self.vms.get_mut(name) {
            s.phase = Phase::Booting {
                since_ms: now_ms,
                told: false,
            };
        }
    }

    pub fn watched(&self) -> impl Iterator<Item = (&String, Heartbeat)> {
        self.vms.iter().map(|(n, s)| (n, s.hb))
    }

    /// The armed VMs silent for their timeout, with how long: to reset.
    /// Each is booting again from now (its reboot after the reset).
    pub fn due(&mut self, now_ms: u64) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for (name, s) in &mut self.vms {
            if let Phase::Armed { last_ok_ms } = s.phase {
                let silent = now_ms.saturating_sub(last_ok_ms);
                if silent >= s.hb.timeout_ms {
                    out.push((name.clone(), silent));
                    s.phase = Phase::Booting {
                        since_ms: now_ms,
                        told: false,
                    };
                }
            }
        }
        out
    }

    /// The VMs booting for longer than their timeout without an answer,
    /// each once per boot, with how long: worth a log line (not a reset).
    pub fn slow_boots(&mut self, now_ms: u64) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for (name, s) in &mut self.vms {
            if let Phase::Booting { since_ms, told } = &mut s.phase {
                let up = now_ms.saturating_sub(*since_ms);
                if !*told && up >= s.hb.timeout_ms {
                    *told = true;
                    out.push((name.clone(), up));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
