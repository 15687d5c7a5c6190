//! Reading the file: the raw, spanned form as it appears in the file
//! (unknown keys and wrong types are errors naming the key and the line),
//! then the builder that checks ranges and the timing inequality and makes
//! the [`Config`]. The network sections are checked in `parse/network.rs`,
//! the `[ha]` section in `ha.rs`.

mod network;

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::{
    ha, secs, Config, Policy, RadosSettings, ResetAction, Timing, DEFAULT_LOCKSPACE,
    DEFAULT_STATE_DIR, DEFAULT_WATCHDOG_DEVICE, MAX_HOST_ID,
};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy)]
pub(super) struct Seconds(f64);

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

pub(super) struct Builder<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Builder<'_> {
    pub(super) fn err(&self, key: &str, span: Range<usize>, msg: impl std::fmt::Display) -> Error {
        Error::Config(format!(
            "{}:{}: {key}: {msg}",
            self.origin,
            line_of(self.text, span.start)
        ))
    }

    pub(super) fn ms(&self, key: &str, v: &Option<Spanned<Seconds>>, default: u64) -> Result<u64> {
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

    pub(super) fn abs_path(
        &self,
        key: &str,
        v: &Option<Spanned<String>>,
        default: &str,
    ) -> Result<PathBuf> {
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
