//! The configuration file, `/etc/libvirt/qemu-vmlease.conf` (TOML), shared
//! by the plugin, the daemon and the CLI.
//!
//! Loading is two steps: [`parse`] turns text into a [`Config`] (unknown
//! keys and wrong types are errors naming the key and the line), and its
//! builder checks ranges and the timing inequality
//! ([`timing::Timing::check`]), again naming the key and the line.
#![forbid(unsafe_code)]

pub mod ha;
mod quorum;
pub mod timing;

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

pub use ha::HaConfig;
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

// ---------------------------------------------------------------------------
// Raw, spanned form as it appears in the file.

#[derive(Debug, Clone, Copy)]
struct Seconds(f64);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Seconds;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of seconds (e.g. 2 or 0.5)")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Seconds, E> {
                Ok(Seconds(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Seconds, E> {
                Ok(Seconds(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Seconds, E> {
                Ok(Seconds(v))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    target: Option<Spanned<String>>,
    interface: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    probes: Option<Vec<Spanned<RawProbe>>>,
    min_up: Option<Spanned<i64>>,
    timeout: Option<Spanned<Seconds>>,
    probe_timeout: Option<Spanned<Seconds>>,
    policy: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Raw {
    host_id: Option<Spanned<i64>>,
    host_name: Option<Spanned<String>>,
    lockspace_dir: Option<Spanned<String>>,
    allow_local_lockspace: Option<bool>,
    liveness_rados: Option<bool>,
    ceph_conf: Option<Spanned<String>>,
    ceph_client_id: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    renew_interval: Option<Spanned<Seconds>>,
    renew_fail_timeout: Option<Spanned<Seconds>>,
    kill_timeout: Option<Spanned<Seconds>>,
    watchdog_timeout: Option<Spanned<Seconds>>,
    host_dead_timeout: Option<Spanned<Seconds>>,
    io_timeout: Option<Spanned<Seconds>>,
    lock_timeout: Option<Spanned<Seconds>>,
    domain_lease: Option<bool>,
    disk_leases: Option<bool>,
    require_lease_for_disks: Option<bool>,
    allow_unleased_domains: Option<bool>,
    unsafe_no_watchdog: Option<bool>,
    trust_unsafe_peers: Option<bool>,
    watchdog_device: Option<Spanned<String>>,
    reset_action: Option<Spanned<String>>,
    reset_record_file: Option<Spanned<String>>,
    storage: Option<RawNetwork>,
    management: Option<RawNetwork>,
    service: Option<RawNetwork>,
    ha: Option<Spanned<ha::RawHa>>,
    storage_fence_addrs: Option<Spanned<Vec<String>>>,
    metrics_dir: Option<Spanned<String>>,
}

/// Parses the text of a config file. `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Config> {
    let raw: Raw = toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|s| format!(":{}", line_of(text, s.start)))
            .unwrap_or_default();
        let msg = e.message().trim_end().replace('\n', " ");
        // A wrong type names only the line: name the key too.
        let key = e
            .span()
            .and_then(|s| key_at(text, s.start))
            .filter(|k| !msg.contains(k.as_str()))
            .map(|k| format!("{k}: "))
            .unwrap_or_default();
        Error::Config(format!("{origin}{at}: {key}{msg}"))
    })?;
    Builder { text, origin }.build(raw)
}

/// Loads and validates a config file. A missing file yields the defaults
/// (with no host id), so that libvirtd can start; acquires then fail.
pub fn load(path: &Path) -> Result<Config> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut c = parse(&text, &path.display().to_string())?;
            c.path = Some(path.to_path_buf());
            Ok(c)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut c = parse("", &path.display().to_string())?;
            c.path = None;
            Ok(c)
        }
        Err(e) => Err(Error::io("read config", path, e)),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The key of the `key = value` line holding `offset`, if it is one.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    (!key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then(|| key.to_string())
}

struct Builder<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Builder<'_> {
    fn err(&self, key: &str, span: Range<usize>, msg: impl std::fmt::Display) -> Error {
        Error::Config(format!(
            "{}:{}: {key}: {msg}",
            self.origin,
            line_of(self.text, span.start)
        ))
    }

    fn ms(&self, key: &str, v: &Option<Spanned<Seconds>>, default: u64) -> Result<u64> {
        match v {
            None => Ok(default),
            Some(s) => {
                let secs = s.get_ref().0;
                if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 {
                    return Err(self.err(
                        key,
                        s.span(),
                        format!("must be between 0 and 86400 seconds, got {secs}"),
                    ));
                }
                let ms = (secs * 1000.0).round() as u64;
                if ms == 0 {
                    return Err(self.err(key, s.span(), "must be at least 1 ms"));
                }
                Ok(ms)
            }
        }
    }

    fn rados(
        &self,
        on: Option<bool>,
        conf: &Option<Spanned<String>>,
        client_id: &Option<Spanned<String>>,
    ) -> Result<Option<RadosSettings>> {
        if on != Some(true) {
            for (key, v) in [("ceph_conf", conf), ("ceph_client_id", client_id)] {
                if let Some(v) = v {
                    return Err(self.err(key, v.span(), "only used with liveness_rados = true"));
                }
            }
            return Ok(None);
        }
        let client_id = match client_id {
            None => "admin".to_string(),
            Some(s) => {
                let id = s.get_ref();
                if id.is_empty()
                    || id.starts_with("client.")
                    || !id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                {
                    return Err(self.err(
                        "ceph_client_id",
                        s.span(),
                        "must be a Ceph client id without 'client.' (letters, digits, '._-')",
                    ));
                }
                id.clone()
            }
        };
        Ok(Some(RadosSettings {
            conf: self.abs_path("ceph_conf", conf, "/etc/ceph/ceph.conf")?,
            client_id,
        }))
    }

    fn abs_path(&self, key: &str, v: &Option<Spanned<String>>, default: &str) -> Result<PathBuf> {
        match v {
            None => Ok(PathBuf::from(default)),
            Some(s) => {
                let p = PathBuf::from(s.get_ref());
                if !p.is_absolute() {
                    return Err(self.err(key, s.span(), "must be an absolute path"));
                }
                Ok(p)
            }
        }
    }

    fn network(
        &self,
        name: &str,
        raw: Option<RawNetwork>,
        default_policy: Policy,
    ) -> Result<Network> {
        let raw = raw.unwrap_or_default();
        let mut probes = Vec::new();
        for p in raw.probes.unwrap_or_default() {
            let span = p.span();
            let p = p.into_inner();
            let key = format!("{name}.probes");
            let kind = p.kind.get_ref().as_str();
            let probe = match kind {
                "tcp" | "icmp" => {
                    if let Some(i) = &p.interface {
                        return Err(self.err(
                            &key,
                            i.span(),
                            format!("a {kind} probe takes 'target', not 'interface'"),
                        ));
                    }
                    let t = p.target.ok_or_else(|| {
                        self.err(&key, span.clone(), format!("a {kind} probe needs 'target'"))
                    })?;
                    let target = t.get_ref().clone();
                    if kind == "tcp" {
                        if target
                            .rsplit_once(':')
                            .and_then(|(_, port)| port.parse::<u16>().ok())
                            .is_none()
                        {
                            return Err(self.err(
                                &key,
                                t.span(),
                                format!("tcp target must be HOST:PORT, got '{target}'"),
                            ));
                        }
                        ProbeKind::Tcp(target)
                    } else {
                        if target.parse::<std::net::IpAddr>().is_err() {
                            return Err(self.err(
                                &key,
                                t.span(),
                                format!("icmp target must be an IP address, got '{target}'"),
                            ));
                        }
                        ProbeKind::Icmp(target)
                    }
                }
                "carrier" => {
                    if let Some(t) = &p.target {
                        return Err(self.err(
                            &key,
                            t.span(),
                            "a carrier probe takes 'interface', not 'target'",
                        ));
                    }
                    let i = p.interface.ok_or_else(|| {
                        self.err(&key, span.clone(), "a carrier probe needs 'interface'")
                    })?;
                    let ifname = i.get_ref().clone();
                    if ifname.is_empty() || ifname.len() > 15 || ifname.contains('/') {
                        return Err(self.err(
                            &key,
                            i.span(),
                            format!("'{ifname}' is not an interface name"),
                        ));
                    }
                    ProbeKind::Carrier(ifname)
                }
                other => {
                    return Err(self.err(
                        &key,
                        p.kind.span(),
                        format!("unknown probe type '{other}' (expected tcp, icmp or carrier)"),
                    ))
                }
            };
            probes.push(probe);
        }
        let min_up = match raw.min_up {
            None => 1,
            Some(m) => {
                let v = *m.get_ref();
                if v < 1 || (v as usize) > probes.len().max(1) {
                    return Err(self.err(
                        &format!("{name}.min_up"),
                        m.span(),
                        format!(
                            "must be between 1 and the number of probes ({}), got {v}",
                            probes.len()
                        ),
                    ));
                }
                v as usize
            }
        };
        let policy = match raw.policy {
            None => default_policy,
            Some(p) => match p.get_ref().as_str() {
                "report" if name != "storage" => Policy::Report,
                "fence" => Policy::Fence,
                "report" => {
                    return Err(self.err(
                        "storage.policy",
                        p.span(),
                        "storage loss always fences; only \"fence\" is allowed",
                    ))
                }
                other => {
                    return Err(self.err(
                        &format!("{name}.policy"),
                        p.span(),
                        format!("unknown policy '{other}' (expected \"report\" or \"fence\")"),
                    ))
                }
            },
        };
        Ok(Network {
            probes,
            min_up,
            timeout: self.ms(&format!("{name}.timeout"), &raw.timeout, 10_000)?,
            probe_timeout: self.ms(&format!("{name}.probe_timeout"), &raw.probe_timeout, 1_000)?,
            policy,
        })
    }

    fn build(&self, raw: Raw) -> Result<Config> {
        let host_id = match &raw.host_id {
            None => None,
            Some(h) => {
                let v = *h.get_ref();
                if !(1..=MAX_HOST_ID as i64).contains(&v) {
                    return Err(self.err(
                        "host_id",
                        h.span(),
                        format!("must be between 1 and {MAX_HOST_ID}, got {v}"),
                    ));
                }
                Some(v as u16)
            }
        };
        let host_name = match &raw.host_name {
            None => None,
            Some(n) => {
                let v = n.get_ref();
                if let Err(why) = crate::hosts::check_host_name(v) {
                    return Err(self.err("host_name", n.span(), why));
                }
                Some(v.clone())
            }
        };
        let r = self.ms("renew_interval", &raw.renew_interval, 2_000)?;
        let f = self.ms("renew_fail_timeout", &raw.renew_fail_timeout, 10 * r)?;
        let k = self.ms("kill_timeout", &raw.kill_timeout, 10_000)?;
        let w = self.ms("watchdog_timeout", &raw.watchdog_timeout, 15_000)?;
        let derived = raw.host_dead_timeout.is_none();
        let d = self.ms(
            "host_dead_timeout",
            &raw.host_dead_timeout,
            Timing::derive_dead(r, f, k, w),
        )?;
        let timing = Timing {
            renew_interval: r,
            renew_fail_timeout: f,
            kill_timeout: k,
            watchdog_timeout: w,
            host_dead_timeout: d,
            host_dead_derived: derived,
        };
        if let Err(msg) = timing.check() {
            // Name the key most likely at fault, with its line.
            let (key, span) = [
                (
                    "host_dead_timeout",
                    raw.host_dead_timeout.as_ref().map(|s| s.span()),
                ),
                (
                    "renew_fail_timeout",
                    raw.renew_fail_timeout.as_ref().map(|s| s.span()),
                ),
                (
                    "renew_interval",
                    raw.renew_interval.as_ref().map(|s| s.span()),
                ),
            ]
            .into_iter()
            .find_map(|(k, s)| s.map(|s| (k, s)))
            .unwrap_or(("timing", 0..0));
            return Err(self.err(key, span, format!("{msg}\n{}", timing.timeline())));
        }
        let io_timeout = self.ms("io_timeout", &raw.io_timeout, (f / 2).min(5_000))?;
        if io_timeout >= f {
            let span = raw.io_timeout.as_ref().map(|s| s.span()).unwrap_or(0..0);
            return Err(self.err(
                "io_timeout",
                span,
                format!("must be below renew_fail_timeout ({})", secs(f)),
            ));
        }
        let lock_timeout = self.ms("lock_timeout", &raw.lock_timeout, 5_000)?;

        let reset_action = match &raw.reset_action {
            None => ResetAction::Sysrq,
            Some(a) => match a.get_ref().as_str() {
                "sysrq" => ResetAction::Sysrq,
                "record" => {
                    let p = raw.reset_record_file.as_ref().ok_or_else(|| {
                        self.err(
                            "reset_action",
                            a.span(),
                            "\"record\" needs reset_record_file",
                        )
                    })?;
                    ResetAction::Record(self.abs_path("reset_record_file", &Some(p.clone()), "")?)
                }
                other => {
                    return Err(self.err(
                        "reset_action",
                        a.span(),
                        format!(
                            "unknown reset action '{other}' (expected \"sysrq\" or \"record\")"
                        ),
                    ))
                }
            },
        };
        if let (Some(p), false) = (
            &raw.reset_record_file,
            matches!(reset_action, ResetAction::Record(_)),
        ) {
            return Err(self.err(
                "reset_record_file",
                p.span(),
                "only used with reset_action = \"record\"",
            ));
        }

        Ok(Config {
            path: None,
            host_id,
            host_name,
            lockspace_dir: self.abs_path("lockspace_dir", &raw.lockspace_dir, DEFAULT_LOCKSPACE)?,
            allow_local_lockspace: raw.allow_local_lockspace.unwrap_or(false),
            liveness_rados: self.rados(raw.liveness_rados, &raw.ceph_conf, &raw.ceph_client_id)?,
            state_dir: self.abs_path("state_dir", &raw.state_dir, DEFAULT_STATE_DIR)?,
            timing,
            io_timeout,
            lock_timeout,
            domain_lease: raw.domain_lease.unwrap_or(true),
            disk_leases: raw.disk_leases.unwrap_or(true),
            require_lease_for_disks: raw.require_lease_for_disks.unwrap_or(true),
            allow_unleased_domains: raw.allow_unleased_domains.unwrap_or(false),
            unsafe_no_watchdog: raw.unsafe_no_watchdog.unwrap_or(false),
            trust_unsafe_peers: raw.trust_unsafe_peers.unwrap_or(false),
            watchdog_device: self.abs_path(
                "watchdog_device",
                &raw.watchdog_device,
                DEFAULT_WATCHDOG_DEVICE,
            )?,
            reset_action,
            storage: self.network("storage", raw.storage, Policy::Fence)?,
            management: self.network("management", raw.management, Policy::Report)?,
            service: self.network("service", raw.service, Policy::Report)?,
            ha: self.ha(raw.ha)?,
            storage_fence_addrs: match raw.storage_fence_addrs {
                None => Vec::new(),
                Some(a) => {
                    for ip in a.get_ref() {
                        crate::storage_fence::ceph::whole_ip_entry(ip)
                            .map_err(|e| self.err("storage_fence_addrs", a.span(), e))?;
                    }
                    a.into_inner()
                }
            },
            metrics_dir: match &raw.metrics_dir {
                None => None,
                Some(_) => Some(self.abs_path("metrics_dir", &raw.metrics_dir, "")?),
            },
        })
    }
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
