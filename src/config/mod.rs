//! The configuration file, `/etc/libvirt/qemu-vmlease.conf` (TOML), shared
//! by the plugin, the daemon and the CLI.
//!
//! Loading is two steps: [`parse`] turns text into a [`Config`] (unknown
//! keys and wrong types are errors naming the key and the line), and its
//! builder checks ranges and the timing inequality
//! ([`timing::Timing::check`]), again naming the key and the line.
#![forbid(unsafe_code)]

pub mod ha;
mod parse;
mod quorum;
pub mod timing;

use std::path::PathBuf;

pub use ha::HaConfig;
pub use parse::{load, parse};
pub use timing::{secs, Timing};

use crate::error::{Error, Result};

/// Where libvirt's QEMU driver looks for our config.
pub const DEFAULT_PATH: &str = "/etc/libvirt/qemu-vmlease.conf";
pub const DEFAULT_LOCKSPACE: &str = "/var/lib/vmlease/lockspace";
pub const DEFAULT_STATE_DIR: &str = "/run/vmlease";
pub const DEFAULT_WATCHDOG_DEVICE: &str = "/dev/watchdog";
pub const MAX_HOST_ID: u16 = 2000;

/// How the daemon reaches RADOS for the host table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RadosSettings {
    /// `ceph_conf` (default `/etc/ceph/ceph.conf`).
    pub conf: PathBuf,
    /// `ceph_client_id` (default `admin`): the identity of the lockspace
    /// mount, which may read and write the file system's data pool.
    pub client_id: String,
}

/// What to do when a (non-storage) network is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Publish the isolation in the liveness record; leave the VMs alone.
    Report,
    /// Kill the leased VMs, release their leases, publish `fenced-clean`.
    Fence,
}

/// How the host resets itself when killing is not enough.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetAction {
    /// `echo b > /proc/sysrq-trigger` (the production default).
    Sysrq,
    /// Append a line to a file instead of resetting (tests and demos only).
    Record(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeKind {
    /// TCP connect to `host:port`.
    Tcp(String),
    /// ICMP echo to an address.
    Icmp(String),
    /// Carrier state of a network interface.
    Carrier(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub probes: Vec<ProbeKind>,
    /// The network is up while at least this many probes succeed.
    pub min_up: usize,
    /// The network is lost after being down this long (ms).
    pub timeout: u64,
    /// Timeout of one probe (ms).
    pub probe_timeout: u64,
    pub policy: Policy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub path: Option<PathBuf>,
    /// 1..=2000; `None` when the file does not set it (nothing may be leased).
    pub host_id: Option<u16>,
    /// Overrides the kernel host name in the liveness record.
    pub host_name: Option<String>,
    pub lockspace_dir: PathBuf,
    /// Accept a lockspace that is not on a shared filesystem (tests and
    /// single-host demos only; loud in logs and status).
    pub allow_local_lockspace: bool,
    /// Read and write the host table through RADOS (`liveness_rados =
    /// true`, `ceph_conf`, `ceph_client_id`) instead of through this
    /// host's CephFS client, so that no other host's hung client can
    /// stall this host's renewal (src/rados/).
    pub liveness_rados: Option<RadosSettings>,
    pub state_dir: PathBuf,
    pub timing: Timing,
    /// Deadline of one lockspace operation (ms).
    pub io_timeout: u64,
    /// How long an acquire waits for a record's serialising lock (ms).
    pub lock_timeout: u64,
    pub domain_lease: bool,
    pub disk_leases: bool,
    pub require_lease_for_disks: bool,
    /// Start a domain for which nothing would be leased (domain_lease =
    /// false and only network or read-only disks). Off: such a start is
    /// refused, since the VM would run unprotected.
    pub allow_unleased_domains: bool,
    pub unsafe_no_watchdog: bool,
    /// Apply takeover rule 4 to hosts running with `unsafe_no_watchdog`
    /// (tests and demos only): nothing resets such a host when its daemon
    /// hangs, so its silence alone proves nothing.
    pub trust_unsafe_peers: bool,
    pub watchdog_device: PathBuf,
    pub reset_action: ResetAction,
    pub storage: Network,
    pub management: Network,
    pub service: Network,
    /// The `[ha]` section (vmlease-ha); `None` when absent.
    pub ha: Option<HaConfig>,
    /// This host's Ceph client IP addresses (storage network), published
    /// for storage-level fencing; empty: not storage-fenceable.
    pub storage_fence_addrs: Vec<String>,
    /// Where the daemon writes its Prometheus textfile (`vmlease.prom`)
    /// for node_exporter's textfile collector; `None`: no metrics.
    pub metrics_dir: Option<PathBuf>,
}

impl Config {
    /// The host id, or an error saying the file must set it.
    pub fn require_host_id(&self) -> Result<u16> {
        self.host_id.ok_or_else(|| {
            Error::Config(format!(
                "{}: host_id is not set (every host needs a unique host_id between 1 and {MAX_HOST_ID})",
                self.path
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| format!("{DEFAULT_PATH} (missing)"))
            ))
        })
    }

    /// Warnings that do not make the config invalid.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.unsafe_no_watchdog {
            w.push("unsafe_no_watchdog = true: this host cannot reset itself if killing fails; for tests and demos only".into());
        }
        if self.allow_local_lockspace {
            w.push("allow_local_lockspace = true: a lockspace on a local filesystem is accepted, which protects nothing across hosts; for tests and demos only".into());
        }
        if self.trust_unsafe_peers {
            w.push("trust_unsafe_peers = true: this host takes over the leases of hosts without a hardware watchdog after host_dead_timeout, although nothing resets them if their daemon hangs; for tests and demos only".into());
        }
        w.extend(quorum::warnings(self));
        if let ResetAction::Record(p) = &self.reset_action {
            w.push(format!(
                "reset_action = \"record\": a reset is only written to {}; for tests and demos only",
                p.display()
            ));
        }
        if self.host_id.is_none() {
            w.push("host_id is not set: this host cannot take leases".into());
        }
        if !self.domain_lease {
            w.push(if self.allow_unleased_domains {
                "domain_lease = false and allow_unleased_domains = true: a domain whose disks are all network (RBD) \
                 or read-only disks runs with no lease at all, unprotected against a second start elsewhere"
                    .into()
            } else {
                "domain_lease = false: network (RBD) disks are never leased; a domain with nothing else to lease \
                 is refused at start (allow_unleased_domains = true would run it unprotected)"
                    .into()
            });
        }
        w
    }
}

#[cfg(test)]
mod tests;
