//! Prometheus metrics of the daemon, as a node_exporter textfile
//! (`metrics_dir/vmlease.prom`).
//!
//! The fence-critical daemon grows no network listener: it writes this
//! text for node_exporter's textfile collector, which serves it. This
//! module is the pure part - the counters the daemon's loop keeps, the
//! snapshot it hands to its metrics thread, and the text format
//! (Prometheus exposition format 0.0.4, which the textfile collector
//! parses); `daemon::metrics` writes the file.
#![forbid(unsafe_code)]

use std::fmt::Write as _;

use crate::hosts::HostState;

/// The file node_exporter reads (it reads only `*.prom`).
pub const FILE_NAME: &str = "vmlease.prom";

/// Upper bounds (ms) of the renewal latency histogram's buckets; the
/// last bucket, `+Inf`, is implicit. Renewals take milliseconds on a
/// healthy CephFS; io_timeout is seconds.
pub const LATENCY_BOUNDS_MS: [u64; 11] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000];

/// A cumulative histogram of durations in ms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Per bucket of [`LATENCY_BOUNDS_MS`], not cumulative; one more for
    /// `+Inf`.
    pub counts: [u64; LATENCY_BOUNDS_MS.len() + 1],
    pub sum_ms: u64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, ms: u64) {
        let i = LATENCY_BOUNDS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        self.counts[i] += 1;
        self.sum_ms += ms;
        self.count += 1;
    }
}

/// The fence causes, in the order of [`Counters::fences`].
pub const FENCE_REASONS: [&str; 5] = [
    "storage",
    "management",
    "service",
    "host-id-collision",
    "storage-fenced",
];

/// What the daemon's loop counts (plain integers: counting costs the
/// fence path nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub renewals: u64,
    pub renewal_failures: u64,
    pub renewal_latency: Histogram,
    pub watchdog_pets: u64,
    pub watchdog_pet_failures: u64,
    /// Fences begun, by cause ([`FENCE_REASONS`]).
    pub fences: [u64; 5],
    /// QEMU processes killed by a fence.
    pub fence_kills: u64,
    /// Dead QEMU processes whose leases were released.
    pub dead_qemu_released: u64,
}

/// One network as the daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSample {
    pub name: &'static str,
    /// up, down, lost, unknown or unmonitored.
    pub state: String,
    pub probes_up: usize,
    pub probes: usize,
}

/// One other host as this daemon observes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSample {
    pub host_id: u16,
    pub host_name: String,
    /// The state it published last ("corrupt" for an unreadable slot).
    pub published: String,
    /// How long its slot has not changed (ms).
    pub silent_ms: u64,
    /// Its own host_dead_timeout (ms).
    pub dead_timeout_ms: u64,
}

/// Everything one textfile says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub host_id: u16,
    pub host_name: String,
    pub state: HostState,
    /// Fencing or fenced (kills done or under way; starts refused).
    pub fenced: bool,
    /// Time since the last successful renewal (or since the fence clock
    /// started, before the first).
    pub renewal_age_ms: u64,
    pub renew_interval_ms: u64,
    pub renew_fail_timeout_ms: u64,
    pub host_dead_timeout_ms: u64,
    pub watchdog_timeout_ms: u64,
    pub unsafe_no_watchdog: bool,
    pub maintenance: bool,
    /// Live QEMU processes holding leases on this host.
    pub leased_processes: usize,
    /// Leases those processes may hold (registry).
    pub leases: usize,
    pub counters: Counters,
    pub networks: Vec<NetSample>,
    pub peers: Vec<PeerSample>,
}

const STATES: [HostState; 6] = [
    HostState::Live,
    HostState::MgmtIsolated,
    HostState::ServiceIsolated,
    HostState::Fencing,
    HostState::FencedClean,
    HostState::Leaving,
];

const NET_STATES: [&str; 5] = ["up", "down", "lost", "unknown", "unmonitored"];

/// Label values are escaped as the exposition format requires.
pub(crate) fn label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

pub(crate) fn secs(ms: u64) -> String {
    format!("{}", ms as f64 / 1000.0)
}

/// A text in the exposition format, being written.
pub(crate) struct Out(pub String);

impl Out {
    pub(crate) fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    pub(crate) fn line(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }
    pub(crate) fn one(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        value: impl std::fmt::Display,
    ) {
        self.head(name, kind, help);
        self.line(name, "", value);
    }
}

/// The textfile for one snapshot.
pub fn render(s: &Snapshot) -> String {
    let mut o = Out(String::with_capacity(4096));
    let c = &s.counters;
    o.head(
        "vmlease_host_info",
        "gauge",
        "This host's id and name in the lockspace (always 1).",
    );
    o.line(
        "vmlease_host_info",
        &format!(
            "host_id=\"{}\",host_name=\"{}\"",
            s.host_id,
            label(&s.host_name)
        ),
        1,
    );
    o.head(
        "vmlease_host_state",
        "gauge",
        "The state this host publishes in its liveness record (1 for the current one).",
    );
    for st in STATES {
        let v = u8::from(st == s.state);
        o.line(
            "vmlease_host_state",
            &format!("state=\"{}\"", st.as_str()),
            v,
        );
    }
    o.one(
        "vmlease_fenced",
        "gauge",
        "1 while this host fences or is fenced (its VMs killed, starts refused until 'vmlease clear-fence').",
        u8::from(s.fenced),
    );
    o.one(
        "vmlease_maintenance",
        "gauge",
        "1 while network-policy fences are disarmed by maintenance.",
        u8::from(s.maintenance),
    );
    o.one(
        "vmlease_unsafe_no_watchdog",
        "gauge",
        "1 when the daemon runs without a hardware watchdog (tests and demos only).",
        u8::from(s.unsafe_no_watchdog),
    );
    o.one(
        "vmlease_last_renewal_age_seconds",
        "gauge",
        "Time since this host's last successful liveness renewal; the host fences at vmlease_renew_fail_timeout_seconds.",
        secs(s.renewal_age_ms),
    );
    o.one(
        "vmlease_renew_interval_seconds",
        "gauge",
        "Configured renew_interval (R).",
        secs(s.renew_interval_ms),
    );
    o.one(
        "vmlease_renew_fail_timeout_seconds",
        "gauge",
        "Configured renew_fail_timeout (F).",
        secs(s.renew_fail_timeout_ms),
    );
    o.one(
        "vmlease_host_dead_timeout_seconds",
        "gauge",
        "Configured host_dead_timeout (D).",
        secs(s.host_dead_timeout_ms),
    );
    o.one(
        "vmlease_watchdog_timeout_seconds",
        "gauge",
        "Configured watchdog_timeout (W).",
        secs(s.watchdog_timeout_ms),
    );
    o.one(
        "vmlease_renewals_total",
        "counter",
        "Successful liveness renewals.",
        c.renewals,
    );
    o.one(
        "vmlease_renewal_failures_total",
        "counter",
        "Liveness renewals that failed.",
        c.renewal_failures,
    );
    histogram(
        &mut o,
        "vmlease_renewal_latency_seconds",
        "Duration of successful liveness renewals (one write and one table read).",
        &c.renewal_latency,
    );
    o.one(
        "vmlease_watchdog_pets_total",
        "counter",
        "Pets of the hardware watchdog.",
        c.watchdog_pets,
    );
    o.one(
        "vmlease_watchdog_pet_failures_total",
        "counter",
        "Pets of the hardware watchdog that failed.",
        c.watchdog_pet_failures,
    );
    o.head(
        "vmlease_fences_total",
        "counter",
        "Fences this daemon began, by cause.",
    );
    for (i, r) in FENCE_REASONS.iter().enumerate() {
        o.line(
            "vmlease_fences_total",
            &format!("reason=\"{r}\""),
            c.fences[i],
        );
    }
    o.one(
        "vmlease_fence_kills_total",
        "counter",
        "Leased QEMU processes killed by a fence.",
        c.fence_kills,
    );
    o.one(
        "vmlease_dead_qemu_released_total",
        "counter",
        "Exited QEMU processes whose leases the daemon released.",
        c.dead_qemu_released,
    );
    o.one(
        "vmlease_leased_processes",
        "gauge",
        "Live QEMU processes holding leases on this host.",
        s.leased_processes,
    );
    o.one(
        "vmlease_leases",
        "gauge",
        "Leases (domain and disk) that live QEMU processes on this host may hold.",
        s.leases,
    );
    o.head(
        "vmlease_network_state",
        "gauge",
        "Each network's state as the probes see it (1 for the current one).",
    );
    for n in &s.networks {
        for st in NET_STATES {
            o.line(
                "vmlease_network_state",
                &format!("network=\"{}\",state=\"{st}\"", n.name),
                u8::from(n.state == st),
            );
        }
    }
    o.head(
        "vmlease_network_probes_up",
        "gauge",
        "Probes of each network that succeeded in the last round.",
    );
    for n in &s.networks {
        o.line(
            "vmlease_network_probes_up",
            &format!("network=\"{}\"", n.name),
            n.probes_up,
        );
    }
    o.head(
        "vmlease_network_probes",
        "gauge",
        "Probes configured for each network.",
    );
    for n in &s.networks {
        o.line(
            "vmlease_network_probes",
            &format!("network=\"{}\"", n.name),
            n.probes,
        );
    }
    o.head(
        "vmlease_peer_silence_seconds",
        "gauge",
        "How long this host has seen each other host's liveness record unchanged.",
    );
    for p in &s.peers {
        o.line(
            "vmlease_peer_silence_seconds",
            &peer_labels(p),
            secs(p.silent_ms),
        );
    }
    o.head(
        "vmlease_peer_dead_timeout_seconds",
        "gauge",
        "Each other host's own host_dead_timeout: silent this long, its leases may be taken over.",
    );
    for p in &s.peers {
        o.line(
            "vmlease_peer_dead_timeout_seconds",
            &peer_labels(p),
            secs(p.dead_timeout_ms),
        );
    }
    o.head(
        "vmlease_peer_state",
        "gauge",
        "The state each other host published last (1).",
    );
    for p in &s.peers {
        o.line(
            "vmlease_peer_state",
            &format!("{},state=\"{}\"", peer_labels(p), label(&p.published)),
            1,
        );
    }
    o.0
}

/// The plugin's counters (`plugin::counters`), appended to the daemon's
/// textfile.
pub fn render_plugin(c: &crate::plugin::counters::PluginCounters) -> String {
    let mut o = Out(String::with_capacity(1024));
    histogram(
        &mut o,
        "vmlease_plugin_acquire_latency_seconds",
        "Duration of the plugin's successful lease acquires in libvirtd (every lease of a domain start, resume or incoming migration).",
        &c.latency,
    );
    o.head(
        "vmlease_plugin_refusals_total",
        "counter",
        "Acquires the plugin refused (a start, resume, migration or hotplug failed), by reason.",
    );
    for (r, n) in crate::plugin::counters::REASONS.iter().zip(c.refusals) {
        o.line(
            "vmlease_plugin_refusals_total",
            &format!("reason=\"{r}\""),
            n,
        );
    }
    o.one(
        "vmlease_plugin_takeovers_total",
        "counter",
        "Leases the plugin took over from another holder (a dead, rebooted or fenced host, or an exited QEMU).",
        c.takeovers,
    );
    o.0
}

fn histogram(o: &mut Out, name: &str, help: &str, h: &Histogram) {
    o.head(name, "histogram", help);
    let bucket = format!("{name}_bucket");
    let mut cum = 0;
    for (i, b) in LATENCY_BOUNDS_MS.iter().enumerate() {
        cum += h.counts[i];
        o.line(&bucket, &format!("le=\"{}\"", secs(*b)), cum);
    }
    o.line(&bucket, "le=\"+Inf\"", h.count);
    o.line(&format!("{name}_sum"), "", secs(h.sum_ms));
    o.line(&format!("{name}_count"), "", h.count);
}

fn peer_labels(p: &PeerSample) -> String {
    format!(
        "host_id=\"{}\",host_name=\"{}\"",
        p.host_id,
        label(&p.host_name)
    )
}

#[cfg(test)]
pub(crate) fn sample() -> Snapshot {
    tests::snap()
}

#[cfg(test)]
mod tests;
