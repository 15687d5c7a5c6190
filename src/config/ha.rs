//! The `[ha]` section: how `vmlease-ha` reaches etcd and how its
//! controller paces recoveries. Absent section: no recovery (the plugin,
//! the daemon and the CLI ignore it; `vmlease-ha` refuses to start).
#![forbid(unsafe_code)]

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::parse::{Builder, Seconds};
use crate::error::Result;

pub const DEFAULT_PREFIX: &str = "/vmlease/";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaConfig {
    /// etcd client URLs (`http://` or `https://`), tried in order.
    pub endpoints: Vec<String>,
    /// Client certificate and key (PEM) for etcd's `--client-cert-auth`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// CA (PEM) that signed the etcd members' certificates; needed for
    /// `https://` endpoints.
    pub ca_file: Option<PathBuf>,
    /// Every key vmlease-ha writes starts with this (ends with '/').
    pub prefix: String,
    /// TTL of the host's etcd lease (ms): the host's presence and the
    /// leader's claim go this long after its agent stops.
    pub host_ttl: u64,
    /// How often the agent publishes and the controller decides (ms).
    pub interval: u64,
    /// Recoveries in flight on one target host at a time.
    pub max_starts_per_host: u32,
    /// Attempts (each on another host when there is one) before a VM is
    /// marked recovery-failed.
    pub max_attempts: u32,
    /// Wait before the next attempt after a failed one (ms); doubles with
    /// every attempt.
    pub retry_backoff: u64,
    /// An assigned start that has not been reported in this long counts as
    /// failed (ms).
    pub start_timeout: u64,
    /// Deadline of one etcd request (ms).
    pub request_timeout: u64,
    /// Storage-level fencing (Ceph blocklist) of a host silent this long
    /// (ms) whose agent is gone from etcd too; None: off (wait D).
    pub storage_fence_after: Option<u64>,
    /// Every executable here runs on each event (None: no hooks).
    pub hooks_dir: Option<PathBuf>,
    /// A hook still running after this is killed (ms).
    pub hook_timeout: u64,
    /// Events stay in etcd this long (ms)...
    pub event_ttl: u64,
    /// ... and at most this many are kept.
    pub max_events: u32,
    /// The libvirt URI other hosts use to live-migrate to this one
    /// (default `qemu+ssh://HOST_NAME/system`).
    pub migration_uri: Option<String>,
    /// The address of this host for QEMU's migration stream
    /// (`--migrateuri tcp://ADDRESS`; default: libvirt's choice).
    pub migration_address: Option<String>,
    /// Extra `virsh migrate` options for drains (e.g. "--unsafe").
    pub migration_options: Vec<String>,
    /// Restarts of a VM whose QEMU died (crash loop limit): the next crash
    /// within `crash_window` makes it recovery-failed.
    pub crash_restarts: u32,
    /// The crash loop window (ms).
    pub crash_window: u64,
    /// Where `vmlease-ha` serves `/metrics` over HTTP (Prometheus text);
    /// None: no listener.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl HaConfig {
    /// One line for `check-config`.
    pub fn describe(&self) -> String {
        format!(
            "recovery (vmlease-ha): etcd {}{}, prefix {}, host lease {}, step {}, \
             at most {} start(s) per host, {} attempt(s), backoff {} doubling, start timeout {}, \
             at most {} crash restart(s) in {}",
            self.endpoints.join(","),
            if self.cert_file.is_some() {
                " with a client certificate"
            } else {
                ""
            },
            self.prefix,
            super::secs(self.host_ttl),
            super::secs(self.interval),
            self.max_starts_per_host,
            self.max_attempts,
            super::secs(self.retry_backoff),
            super::secs(self.start_timeout),
            self.crash_restarts,
            super::secs(self.crash_window)
        )
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHa {
    endpoints: Option<Spanned<Vec<Spanned<String>>>>,
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    prefix: Option<Spanned<String>>,
    host_ttl: Option<Spanned<Seconds>>,
    interval: Option<Spanned<Seconds>>,
    max_starts_per_host: Option<Spanned<i64>>,
    max_attempts: Option<Spanned<i64>>,
    retry_backoff: Option<Spanned<Seconds>>,
    start_timeout: Option<Spanned<Seconds>>,
    request_timeout: Option<Spanned<Seconds>>,
    storage_fence_after: Option<Spanned<Seconds>>,
    hooks_dir: Option<Spanned<String>>,
    hook_timeout: Option<Spanned<Seconds>>,
    event_ttl: Option<Spanned<Seconds>>,
    max_events: Option<Spanned<i64>>,
    migration_uri: Option<Spanned<String>>,
    migration_address: Option<Spanned<String>>,
    migration_options: Option<Spanned<Vec<Spanned<String>>>>,
    crash_restarts: Option<Spanned<i64>>,
    crash_window: Option<Spanned<Seconds>>,
    metrics_listen: Option<Spanned<String>>,
}

impl Builder<'_> {
    pub(super) fn ha(&self, raw: Option<Spanned<RawHa>>) -> Result<Option<HaConfig>> {
        let Some(raw) = raw else { return Ok(None) };
        let section = raw.span();
        let raw = raw.into_inner();
        let eps = raw
            .endpoints
            .ok_or_else(|| self.err("ha.endpoints", section.clone(), "is required in [ha]"))?;
        let eps_span = eps.span();
        let mut endpoints = Vec::new();
        for e in eps.into_inner() {
            let url = e.get_ref().trim_end_matches('/').to_string();
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"));
            match rest {
                Some(hp)
                    if !hp.is_empty() && !hp.contains('/') && hp.rsplit_once(':').is_some() => {}
                _ => {
                    return Err(self.err(
                        "ha.endpoints",
                        e.span(),
                        format!(
                        "'{url}' is not an etcd client URL (http://HOST:PORT or https://HOST:PORT)"
                    ),
                    ))
                }
            }
            endpoints.push(url);
        }
        if endpoints.is_empty() {
            return Err(self.err("ha.endpoints", eps_span, "needs at least one URL"));
        }
        let opt_path = |key: &str, v: &Option<Spanned<String>>| -> Result<Option<PathBuf>> {
            v.as_ref()
                .map(|s| self.abs_path(key, &Some(s.clone()), ""))
                .transpose()
        };
        let cert_file = opt_path("ha.cert_file", &raw.cert_file)?;
        let key_file = opt_path("ha.key_file", &raw.key_file)?;
        let ca_file = opt_path("ha.ca_file", &raw.ca_file)?;
        match (&raw.cert_file, &raw.key_file) {
            (Some(c), None) => {
                return Err(self.err("ha.cert_file", c.span(), "needs ha.key_file too"))
            }
            (None, Some(k)) => {
                return Err(self.err("ha.key_file", k.span(), "needs ha.cert_file too"))
            }
            _ => {}
        }
        let tls = endpoints.iter().any(|e| e.starts_with("https://"));
        if tls && ca_file.is_none() {
            return Err(self.err(
                "ha.endpoints",
                eps_span,
                "https:// endpoints need ha.ca_file (the CA of the etcd members)",
            ));
        }
        if !tls {
            for (key, v) in [
                ("ha.cert_file", &raw.cert_file),
                ("ha.ca_file", &raw.ca_file),
            ] {
                if let Some(s) = v {
                    return Err(self.err(key, s.span(), "only used with https:// endpoints"));
                }
            }
        }
        let prefix = match &raw.prefix {
            None => DEFAULT_PREFIX.to_string(),
            Some(p) => {
                let v = p.get_ref();
                if !v.starts_with('/')
                    || !v.ends_with('/')
                    || v.chars().any(|c| c.is_control() || c.is_whitespace())
                {
                    return Err(self.err(
                        "ha.prefix",
                        p.span(),
                        format!("must start and end with '/' and hold no spaces, got '{v}'"),
                    ));
                }
                v.clone()
            }
        };
        let count = |key: &str, v: &Option<Spanned<i64>>, default: u32, max: u32| -> Result<u32> {
            match v {
                None => Ok(default),
                Some(s) => {
                    let n = *s.get_ref();
                    if n < 1 || n > i64::from(max) {
                        return Err(self.err(
                            key,
                            s.span(),
                            format!("must be between 1 and {max}, got {n}"),
                        ));
                    }
                    Ok(n as u32)
                }
            }
        };
        let host_ttl = self.ms("ha.host_ttl", &raw.host_ttl, 10_000)?;
        if host_ttl < 2_000 {
            let span = raw.host_ttl.as_ref().map(|s| s.span()).unwrap_or(0..0);
            return Err(self.err(
                "ha.host_ttl",
                span,
                "must be at least 2 seconds (etcd leases count whole seconds)",
            ));
        }
        let interval = self.ms("ha.interval", &raw.interval, 1_000)?;
        if interval * 2 > host_ttl {
            let span = raw
                .interval
                .as_ref()
                .map(|s| s.span())
                .unwrap_or_else(|| raw.host_ttl.as_ref().map(|s| s.span()).unwrap_or(0..0));
            return Err(self.err(
                "ha.interval",
                span,
                format!(
                    "must be at most half of ha.host_ttl ({} ms), or a keepalive can come too late",
                    host_ttl
                ),
            ));
        }
        let hooks_dir = opt_path("ha.hooks_dir", &raw.hooks_dir)?;
        let mut migration_options = Vec::new();
        for o in raw
            .migration_options
            .map(|o| o.into_inner())
            .unwrap_or_default()
        {
            let v = o.get_ref();
            if !v.starts_with("--") || v.contains(char::is_whitespace) {
                return Err(self.err(
                    "ha.migration_options",
                    o.span(),
                    format!("'{v}' is not a virsh migrate option (--NAME or --NAME=VALUE)"),
                ));
            }
            migration_options.push(v.clone());
        }
        let text = |key: &str, v: &Option<Spanned<String>>| -> Result<Option<String>> {
            match v {
                None => Ok(None),
                Some(s) if s.get_ref().is_empty() || s.get_ref().contains(char::is_whitespace) => {
                    Err(self.err(key, s.span(), "must be non-empty, without spaces"))
                }
                Some(s) => Ok(Some(s.get_ref().clone())),
            }
        };
        Ok(Some(HaConfig {
            endpoints,
            cert_file,
            key_file,
            ca_file,
            prefix,
            host_ttl,
            interval,
            max_starts_per_host: count(
                "ha.max_starts_per_host",
                &raw.max_starts_per_host,
                4,
                1000,
            )?,
            max_attempts: count("ha.max_attempts", &raw.max_attempts, 3, 100)?,
            retry_backoff: self.ms("ha.retry_backoff", &raw.retry_backoff, 5_000)?,
            start_timeout: self.ms("ha.start_timeout", &raw.start_timeout, 60_000)?,
            request_timeout: self.ms("ha.request_timeout", &raw.request_timeout, 2_000)?,
            storage_fence_after: match &raw.storage_fence_after {
                None => None,
                Some(_) => Some(self.ms("ha.storage_fence_after", &raw.storage_fence_after, 0)?),
            },
            hooks_dir,
            hook_timeout: self.ms("ha.hook_timeout", &raw.hook_timeout, 10_000)?,
            event_ttl: self.ms("ha.event_ttl", &raw.event_ttl, 86_400_000)?,
            max_events: count("ha.max_events", &raw.max_events, 1000, 100_000)?,
            migration_uri: text("ha.migration_uri", &raw.migration_uri)?,
            migration_address: text("ha.migration_address", &raw.migration_address)?,
            migration_options,
            crash_restarts: count("ha.crash_restarts", &raw.crash_restarts, 3, 100)?,
            crash_window: self.ms("ha.crash_window", &raw.crash_window, 600_000)?,
            metrics_listen: match &raw.metrics_listen {
                None => None,
                Some(s) => Some(s.get_ref().parse().map_err(|_| {
                    self.err(
                        "ha.metrics_listen",
                        s.span(),
                        format!(
                            "'{}' is not an address and port (e.g. \"127.0.0.1:9478\" or \"[::1]:9478\")",
                            s.get_ref()
                        ),
                    )
                })?),
            },
        }))
    }
}

#[cfg(test)]
mod tests;
