//! `vmlease-ha`'s Prometheus metrics: what its agent and controller know,
//! as one text in the exposition format (0.0.4), served over HTTP by
//! `metrics_http` when `[ha] metrics_listen` is set.
//!
//! Pure: the main loop fills a [`Sample`] after every step and renders it;
//! the listener only hands out the last text. Counters count what this
//! process did (the events it wrote, the recoveries it finished as the
//! leader), so they restart at 0 with the process; sum them over the
//! hosts (`sum(increase(...))`): whichever host leads counts.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use super::events::kind;
use crate::metrics::{label, secs, Out};

/// Upper bounds (s) of the recovery duration histogram's buckets.
pub const RECOVERY_BOUNDS_S: [u64; 10] = [1, 2, 5, 10, 20, 30, 60, 120, 300, 600];

/// Every event kind, each exported (at 0 until it happens).
pub const KINDS: [&str; 21] = [
    kind::HOST_FAILED,
    kind::HOST_FENCED,
    kind::HOST_EVACUABLE,
    kind::HOST_ISOLATED,
    kind::HOST_BACK,
    kind::RECOVERY_STARTED,
    kind::ATTEMPT_FAILED,
    kind::VM_RECOVERED,
    kind::RECOVERY_FAILED,
    kind::MAINTENANCE_ENTERED,
    kind::MAINTENANCE_EXITED,
    kind::VM_MIGRATED,
    kind::MIGRATION_FAILED,
    kind::HOST_DRAINED,
    kind::STORAGE_FENCED,
    kind::STORAGE_FENCE_FAILED,
    kind::VM_CRASHED,
    kind::VM_RESTARTED,
    kind::VM_RESET,
    kind::GUEST_FAILED,
    kind::CORRUPT_VALUE,
];

/// Durations of finished recoveries (from the decision to the VM running
/// on its new host), as the leader that finished them saw them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryDurations {
    /// Per bucket of [`RECOVERY_BOUNDS_S`], not cumulative; one more for
    /// `+Inf`.
    pub counts: [u64; RECOVERY_BOUNDS_S.len() + 1],
    pub sum_ms: u64,
    pub count: u64,
}

impl RecoveryDurations {
    pub fn observe(&mut self, ms: u64) {
        let i = RECOVERY_BOUNDS_S
            .iter()
            .position(|&b| ms <= b * 1000)
            .unwrap_or(RECOVERY_BOUNDS_S.len());
        self.counts[i] += 1;
        self.sum_ms += ms;
        self.count += 1;
    }
}

/// Everything one scrape says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    pub host_name: String,
    /// This host's controller leads.
    pub leader: bool,
    /// This host is protected (its watchdog daemon runs and renews).
    pub protected: bool,
    /// The last step reached etcd (and libvirt).
    pub etcd_up: bool,
    /// Steps that failed on etcd (no endpoint, no quorum, refused).
    pub etcd_errors: u64,
    /// Steps that failed on libvirt or on a record.
    pub other_errors: u64,
    /// The leader's view (empty on the other hosts): hosts by the state
    /// they publish (`unreadable` for a record that does not decode).
    pub hosts: BTreeMap<String, usize>,
    /// Hosts whose VMs may need a new home (gone or unprotected).
    pub suspects: usize,
    /// HA-managed VMs in etcd.
    pub vms: usize,
    /// Recoveries decided and not finished.
    pub recoveries: usize,
    /// Events this process wrote, by kind.
    pub events: BTreeMap<String, u64>,
    pub recovery_durations: RecoveryDurations,
}

impl Sample {
    fn events(&self, k: &str) -> u64 {
        self.events.get(k).copied().unwrap_or(0)
    }
}

pub fn render(s: &Sample) -> String {
    let mut o = Out(String::with_capacity(4096));
    o.head(
        "vmlease_ha_info",
        "gauge",
        "This vmlease-ha's host name (always 1).",
    );
    o.line(
        "vmlease_ha_info",
        &format!("host_name=\"{}\"", label(&s.host_name)),
        1,
    );
    o.one(
        "vmlease_ha_leader",
        "gauge",
        "1 while this host's controller is the elected leader.",
        u8::from(s.leader),
    );
    o.one(
        "vmlease_ha_protected",
        "gauge",
        "1 while this host is protected (its watchdog daemon runs and renews); an unprotected host neither leads nor takes VMs.",
        u8::from(s.protected),
    );
    o.one(
        "vmlease_ha_etcd_up",
        "gauge",
        "1 when the last step reached etcd and libvirt.",
        u8::from(s.etcd_up),
    );
    o.one(
        "vmlease_ha_etcd_errors_total",
        "counter",
        "Steps that failed on etcd (no endpoint answered, no quorum, a refused request).",
        s.etcd_errors,
    );
    o.one(
        "vmlease_ha_other_errors_total",
        "counter",
        "Steps that failed on libvirt or on a record.",
        s.other_errors,
    );
    o.head(
        "vmlease_ha_hosts",
        "gauge",
        "Hosts in etcd by the state they publish, as the leader sees them (only the leader exports it).",
    );
    for (state, n) in &s.hosts {
        o.line(
            "vmlease_ha_hosts",
            &format!("state=\"{}\"", label(state)),
            n,
        );
    }
    if s.leader {
        o.one(
            "vmlease_ha_suspect_hosts",
            "gauge",
            "Hosts whose HA VMs may need a new home (gone from etcd or unprotected), as the leader sees them.",
            s.suspects,
        );
        o.one(
            "vmlease_ha_vms",
            "gauge",
            "HA-managed VMs in etcd, as the leader sees them.",
            s.vms,
        );
        o.one(
            "vmlease_ha_recoveries_in_progress",
            "gauge",
            "Recoveries decided and not finished, as the leader sees them.",
            s.recoveries,
        );
    }
    for (name, k, help) in [
        (
            "vmlease_ha_recoveries_started_total",
            kind::RECOVERY_STARTED,
            "VM restarts the controller assigned to a target host (each attempt).",
        ),
        (
            "vmlease_ha_recoveries_succeeded_total",
            kind::VM_RECOVERED,
            "Recovered VMs running on their new host.",
        ),
        (
            "vmlease_ha_recoveries_failed_total",
            kind::RECOVERY_FAILED,
            "VMs out of attempts, left to the operator (recovery-failed).",
        ),
    ] {
        o.one(name, "counter", help, s.events(k));
    }
    o.head(
        "vmlease_ha_storage_fences_total",
        "counter",
        "Storage-level fences (Ceph blocklist) of silent hosts, by result.",
    );
    o.line(
        "vmlease_ha_storage_fences_total",
        "result=\"fenced\"",
        s.events(kind::STORAGE_FENCED),
    );
    o.line(
        "vmlease_ha_storage_fences_total",
        "result=\"failed\"",
        s.events(kind::STORAGE_FENCE_FAILED),
    );
    o.head(
        "vmlease_ha_events_total",
        "counter",
        "Events this vmlease-ha wrote to etcd, by kind (docs/ha.md).",
    );
    for k in KINDS {
        o.line(
            "vmlease_ha_events_total",
            &format!("kind=\"{k}\""),
            s.events(k),
        );
    }
    let h = &s.recovery_durations;
    let name = "vmlease_ha_recovery_duration_seconds";
    o.head(
        name,
        "histogram",
        "Time from the decision to restart a VM to the VM running on its new host (recoveries this host finished as the leader).",
    );
    let mut cum = 0;
    for (i, b) in RECOVERY_BOUNDS_S.iter().enumerate() {
        cum += h.counts[i];
        o.line(&format!("{name}_bucket"), &format!("le=\"{b}\""), cum);
    }
    o.line(&format!("{name}_bucket"), "le=\"+Inf\"", h.count);
    o.line(&format!("{name}_sum"), "", secs(h.sum_ms));
    o.line(&format!("{name}_count"), "", h.count);
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_state_counters_and_a_cumulative_histogram() {
        let mut s = Sample {
            host_name: "a".into(),
            leader: true,
            protected: true,
            etcd_up: true,
            suspects: 1,
            vms: 3,
            recoveries: 1,
            ..Sample::default()
        };
        s.hosts.insert("live".into(), 2);
        s.hosts.insert("fencing".into(), 1);
        s.events.insert(kind::RECOVERY_STARTED.into(), 2);
        s.events.insert(kind::STORAGE_FENCED.into(), 1);
        s.recovery_durations.observe(1500);
        s.recovery_durations.observe(700_000);
        let t = render(&s);
        for want in [
            "vmlease_ha_info{host_name=\"a\"} 1\n",
            "vmlease_ha_leader 1\n",
            "vmlease_ha_hosts{state=\"live\"} 2\n",
            "vmlease_ha_hosts{state=\"fencing\"} 1\n",
            "vmlease_ha_suspect_hosts 1\n",
            "vmlease_ha_recoveries_started_total 2\n",
            "vmlease_ha_recoveries_failed_total 0\n",
            "vmlease_ha_storage_fences_total{result=\"fenced\"} 1\n",
            "vmlease_ha_events_total{kind=\"recovery-started\"} 2\n",
            "vmlease_ha_events_total{kind=\"corrupt-value\"} 0\n",
            "vmlease_ha_recovery_duration_seconds_bucket{le=\"1\"} 0\n",
            "vmlease_ha_recovery_duration_seconds_bucket{le=\"2\"} 1\n",
            "vmlease_ha_recovery_duration_seconds_bucket{le=\"600\"} 1\n",
            "vmlease_ha_recovery_duration_seconds_bucket{le=\"+Inf\"} 2\n",
            "vmlease_ha_recovery_duration_seconds_sum 701.5\n",
        ] {
            assert!(t.contains(want), "no {want:?} in:\n{t}");
        }
    }

    #[test]
    fn a_host_that_does_not_lead_exports_no_view() {
        let t = render(&Sample::default());
        assert!(t.contains("vmlease_ha_leader 0\n"));
        assert!(!t.contains("vmlease_ha_vms "), "{t}");
        assert!(!t.contains("vmlease_ha_hosts{"), "{t}");
    }
}
