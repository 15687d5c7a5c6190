//! What the core publishes: the status the plugin and the CLI read, and
//! the metrics snapshot.

use super::Core;
use crate::config::Policy;
use crate::daemon::fence::{Cause, Phase};
use crate::metrics::{NetSample, PeerSample, Snapshot};
use crate::status::{NetView, PeerKind, Status};

/// Appended to a network's detail in the status while its fence policy
/// is disarmed by maintenance (vmlease-ha's agent waits for it).
pub const DISARMED_NOTE: &str = " (fence disarmed: maintenance)";

impl Core {
    /// Why the host is not protected or was fenced ("" when fine).
    fn reason(&self) -> String {
        match &self.fence.phase {
            Phase::Healthy => self.last_renew_error.clone(),
            Phase::Fencing { cause, .. } | Phase::Fenced { cause, .. } | Phase::Reset { cause } => {
                let mut r = cause.describe().to_string();
                if *cause == Cause::HostIdCollision && !self.collision_msg.is_empty() {
                    r = format!("{r}: {}", self.collision_msg);
                }
                if !self.reclaim_note.is_empty() {
                    r = format!("{r}; {}", self.reclaim_note);
                }
                r
            }
        }
    }

    /// The status as of `now`, written by daemon `pid`.
    pub fn status(&self, now: u64, pid: u32) -> Status {
        let s = &self.setup;
        Status {
            daemon_pid: pid,
            host_id: s.host_id,
            boot_id: s.boot_id.clone(),
            incarnation: s.incarnation,
            written_ms: now,
            last_renewal_ms: self.last_renewal_ms,
            state: self.last_state,
            reason: self.reason(),
            unsafe_no_watchdog: s.unsafe_no_watchdog,
            lockspace_dir: s.lockspace_dir.clone(),
            lockspace_uuid: s.lockspace_uuid.clone(),
            allow_local_lockspace: s.allow_local_lockspace,
            local_lockspace: s.local_lockspace.clone(),
            observing_since_ms: self.observer.since_ms,
            renew_interval_ms: s.timing.renew_interval,
            renew_fail_timeout_ms: s.timing.renew_fail_timeout,
            host_dead_timeout_ms: s.timing.host_dead_timeout,
            networks: self
                .nets
                .iter()
                .map(|n| {
                    let (state, mut detail) = n.describe(now);
                    let fences = match n.name {
                        "management" => s.management.policy,
                        "service" => s.service.policy,
                        _ => Policy::Report,
                    };
                    if self.maintenance && fences == Policy::Fence {
                        detail.push_str(DISARMED_NOTE);
                    }
                    NetView {
                        name: n.name.to_string(),
                        state,
                        detail,
                    }
                })
                .collect(),
            peers: self.observer.peers(),
        }
    }

    /// The metrics snapshot as of `now`; the counts of leased processes
    /// and their leases come from the reaper.
    pub fn snapshot(&self, now: u64, leased_processes: usize, leases: usize) -> Snapshot {
        let s = &self.setup;
        let t = &s.timing;
        Snapshot {
            host_id: s.host_id,
            host_name: s.host_name.clone(),
            state: self.last_state,
            fenced: self.fence_cause().is_some(),
            renewal_age_ms: now.saturating_sub(self.last_renewal_ms.max(self.started_ms)),
            renew_interval_ms: t.renew_interval,
            renew_fail_timeout_ms: t.renew_fail_timeout,
            host_dead_timeout_ms: t.host_dead_timeout,
            watchdog_timeout_ms: t.watchdog_timeout,
            unsafe_no_watchdog: s.unsafe_no_watchdog,
            maintenance: self.maintenance,
            leased_processes,
            leases,
            counters: self.counters.clone(),
            networks: self
                .nets
                .iter()
                .map(|n| NetSample {
                    name: n.name,
                    state: n.describe(now).0,
                    probes_up: n.last.as_ref().map(|r| r.up).unwrap_or(0),
                    probes: n.net.probes.len(),
                })
                .collect(),
            peers: self
                .observer
                .peers()
                .into_iter()
                .filter(|p| p.host_id != s.host_id && p.kind != PeerKind::Empty)
                .map(|p| PeerSample {
                    host_id: p.host_id,
                    host_name: p.host_name,
                    published: match (p.kind, p.state) {
                        (PeerKind::Corrupt, _) => "corrupt".into(),
                        (_, Some(st)) => st.as_str().into(),
                        (_, None) => "unknown".into(),
                    },
                    silent_ms: now.saturating_sub(p.last_change_ms),
                    dead_timeout_ms: p.dead_timeout_ms,
                })
                .collect(),
        }
    }
}
