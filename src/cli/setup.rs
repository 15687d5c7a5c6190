//! `check-config` and `init`: the two commands an operator runs before a
//! host may lease anything.
#![forbid(unsafe_code)]

use std::path::Path;

use std::time::Duration;

use super::args::Args;
use super::cephfs;
use super::json::Json;
use super::{exit, fail, load, print_json, Opts};
use crate::config::{secs, Config, MAX_HOST_ID};
use crate::deadline;
use crate::error::Error;
use crate::lockspace::{Lockspace, Made, DEFAULT_MAX_HOSTS};
use crate::sharedfs::{self, Mount};

/// How long `check-config` waits for the Ceph cluster's answers.
const CEPH_QUERY_TIMEOUT: Duration = Duration::from_secs(15);

/// What `check-config` found at lockspace_dir.
struct Probe {
    state: &'static str,
    detail: String,
    mount: Option<Mount>,
    uuid: Option<String>,
    /// The shared-filesystem rule: Err(why the daemon and init refuse it),
    /// Ok(why it is local, when allow_local_lockspace lets it pass).
    verdict: Result<Option<String>, String>,
}

fn probe_lockspace(cfg: &Config) -> Probe {
    let dir = cfg.lockspace_dir.clone();
    let allow = cfg.allow_local_lockspace;
    let r = deadline::run(cfg.io_timeout, "open lockspace", &dir.clone(), move || {
        let mount = sharedfs::mount_of(&dir);
        let verdict = sharedfs::check(&dir, allow).map(|p| p.local);
        Ok((Lockspace::open(&dir), mount, verdict))
    });
    match r {
        Ok((Ok(ls), mount, verdict)) => Probe {
            state: "ok",
            detail: format!("initialised, {} host slots", ls.max_hosts),
            mount,
            uuid: ls.uuid,
            verdict,
        },
        Ok((Err(e), mount, verdict)) => {
            let state = match &e {
                Error::Lockspace { reason, .. } if reason.starts_with("not initialised") => {
                    "not-initialised"
                }
                Error::Lockspace { .. } => "missing",
                Error::Corrupt { .. } => "corrupt",
                _ => "error",
            };
            Probe {
                state,
                detail: e.to_string(),
                mount,
                uuid: None,
                verdict,
            }
        }
        Err(e) => Probe {
            state: "unreachable",
            detail: e.to_string(),
            mount: None,
            uuid: None,
            verdict: Ok(None),
        },
    }
}

fn mount_json(m: &Option<Mount>) -> (Json, Json) {
    match m {
        Some(m) => (
            Json::obj(vec![
                ("type", Json::str(m.fstype.clone())),
                ("source", Json::str(m.source.clone())),
                (
                    "mount_point",
                    Json::str(m.mount_point.display().to_string()),
                ),
            ]),
            Json::Bool(m.is_shared()),
        ),
        None => (Json::Null, Json::Null),
    }
}

/// The warning for a lockspace the shared-filesystem rule refuses, or
/// lets pass only because of allow_local_lockspace.
fn local_warning(verdict: &Result<Option<String>, String>) -> Option<String> {
    match verdict {
        Err(why) => Some(format!(
            "the watchdog daemon and 'vmlease init' refuse this lockspace: {why}"
        )),
        Ok(Some(why)) => Some(format!(
            "local lockspace, accepted only because allow_local_lockspace = true: {why}; \
             it protects nothing across hosts"
        )),
        Ok(None) => None,
    }
}

pub fn check_config(opts: &Opts) -> i32 {
    if !opts.config.exists() {
        return fail(
            exit::USAGE,
            format!("{}: no such file", opts.config.display()),
        );
    }
    let c = match load(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let ok = c.host_id.is_some();
    let opt_str = |s: Option<String>| s.map(Json::Str).unwrap_or(Json::Null);
    let probe = probe_lockspace(&c);
    let mut warnings = c.warnings();
    warnings.extend(local_warning(&probe.verdict));
    // On CephFS: the MDS settings that decide how long a hung client can
    // hold up the other hosts must fit the timing.
    let ceph = probe
        .mount
        .as_ref()
        .filter(|m| m.is_cephfs())
        .map(|_| cephfs::query(CEPH_QUERY_TIMEOUT));
    match &ceph {
        Some(Ok(s)) => warnings.extend(cephfs::warnings(&c.timing, s, c.liveness_rados.is_some())),
        Some(Err(why)) => warnings.push(cephfs::unknown_warning(why)),
        None => {}
    }
    if opts.json {
        let t = c.timing;
        let (fs, shared) = mount_json(&probe.mount);
        print_json(Json::obj(vec![
            ("config", Json::str(opts.config.display().to_string())),
            ("valid", Json::Bool(ok)),
            ("host_id", Json::opt_num(c.host_id.map(u64::from))),
            (
                "warnings",
                Json::Arr(warnings.into_iter().map(Json::Str).collect()),
            ),
            ("renew_interval_ms", Json::num(t.renew_interval)),
            ("renew_fail_timeout_ms", Json::num(t.renew_fail_timeout)),
            ("kill_timeout_ms", Json::num(t.kill_timeout)),
            ("watchdog_timeout_ms", Json::num(t.watchdog_timeout)),
            ("host_dead_timeout_ms", Json::num(t.host_dead_timeout)),
            ("last_write_bound_ms", Json::num(t.last_write_bound())),
            ("io_timeout_ms", Json::num(c.io_timeout)),
            ("lock_timeout_ms", Json::num(c.lock_timeout)),
            (
                "lockspace",
                Json::obj(vec![
                    ("dir", Json::str(c.lockspace_dir.display().to_string())),
                    ("state", Json::str(probe.state)),
                    ("detail", Json::str(probe.detail)),
                    ("filesystem", fs),
                    ("shared", shared),
                    ("uuid", opt_str(probe.uuid.clone())),
                    ("allow_local_lockspace", Json::Bool(c.allow_local_lockspace)),
                    (
                        "refused_because",
                        opt_str(probe.verdict.as_ref().err().cloned()),
                    ),
                ]),
            ),
            (
                "cephfs",
                ceph.as_ref().map(cephfs::json).unwrap_or(Json::Null),
            ),
            (
                "ha",
                c.ha.as_ref()
                    .map(|h| Json::str(h.describe()))
                    .unwrap_or(Json::Null),
            ),
        ]));
    } else {
        for w in &warnings {
            println!("warning: {w}");
        }
        print!("{}", c.timing.timeline());
        if let Some(after) = c.ha.as_ref().and_then(|h| h.storage_fence_after) {
            println!(
                "storage fence (vmlease-ha, Ceph): fault -> suspicion at {} (silent as observed, and gone from etcd) \
                 -> blocklist committed and delivered (about 3 s measured) -> restart elsewhere at about {}; \
                 a slow host is never blocklisted; if the blocklist fails: restart after {} as above",
                secs(after),
                secs(after + 3000),
                secs(c.timing.host_dead_timeout)
            );
        }
        let on = probe
            .mount
            .as_ref()
            .map(|m| format!(" on {}", m.describe()))
            .unwrap_or_default();
        let uuid = probe
            .uuid
            .as_ref()
            .map(|u| format!("; UUID {u}"))
            .unwrap_or_default();
        println!(
            "lockspace {}: {}{on}{uuid}",
            c.lockspace_dir.display(),
            match probe.state {
                "ok" => probe.detail,
                s => format!("{s}: {}", probe.detail),
            }
        );
        if let Some(Ok(s)) = &ceph {
            println!("{}", cephfs::describe(s));
        }
        match &c.ha {
            Some(h) => println!("{}", h.describe()),
            None => println!("recovery (vmlease-ha): not configured (no [ha] section)"),
        }
        if ok {
            println!("{}: OK", opts.config.display());
        } else {
            println!(
                "{}: valid, but host_id is not set: this host cannot take leases",
                opts.config.display()
            );
        }
    }
    if ok {
        exit::OK
    } else {
        exit::NO
    }
}

pub fn init(opts: &Opts, args: &Args) -> i32 {
    let max_hosts = match args.flag("--max-hosts") {
        None => None,
        Some(v) => match v.parse::<u16>() {
            Ok(n) if (1..=MAX_HOST_ID).contains(&n) => Some(n),
            _ => {
                return fail(
                    exit::USAGE,
                    format!("--max-hosts must be between 1 and {MAX_HOST_ID}, got '{v}'"),
                )
            }
        },
    };
    let c = match load(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let dir = c.lockspace_dir.clone();
    let want = max_hosts.unwrap_or(DEFAULT_MAX_HOSTS);
    let d2 = dir.clone();
    let allow = c.allow_local_lockspace;
    let res = deadline::run(4 * c.io_timeout, "initialise lockspace", &dir, move || {
        let parent = d2
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| "/".into());
        if !parent.is_dir() {
            return Ok(Err(format!(
                "{} does not exist: is the shared filesystem mounted? \
                 (init creates only the lockspace directory itself)",
                parent.display()
            )));
        }
        // The rule the daemon applies: never a lockspace each host would
        // have its own copy of (a local disk, a missing mount).
        let placement = match sharedfs::check(&d2, allow) {
            Ok(p) => p,
            Err(why) => return Ok(Err(why)),
        };
        let made = Lockspace::create(&d2, want)?;
        let ls = Lockspace::open(&d2)?;
        Ok(Ok((made, ls, placement)))
    });
    let (made, ls, placement) = match res {
        Ok(Ok(x)) => x,
        Ok(Err(why)) => {
            return fail(
                exit::NO,
                format!("cannot initialise {}: {why}", dir.display()),
            )
        }
        Err(e @ Error::Timeout { .. }) => return fail(exit::UNKNOWN, e),
        Err(e) => return fail(exit::NO, e),
    };
    let (created, slots, mount) = (
        made == Made::Created,
        ls.max_hosts,
        Some(placement.mount.clone()),
    );
    let uuid = ls.uuid.clone().unwrap_or_default();
    let mut warnings: Vec<String> = local_warning(&Ok(placement.local)).into_iter().collect();
    if made == Made::AddedUuid {
        warnings.push(format!(
            "the lockspace was initialised by an older vmlease without a UUID; added UUID {uuid} \
             (restart vmlease-watchdog and libvirtd on hosts that run an older vmlease)"
        ));
    }
    if !created && max_hosts.is_some_and(|n| n != slots) {
        warnings.push(format!(
            "the lockspace was initialised before with {slots} host slots; --max-hosts {want} is ignored"
        ));
    }
    if opts.json {
        let (fs, shared) = mount_json(&mount);
        print_json(Json::obj(vec![
            ("lockspace", Json::str(dir.display().to_string())),
            ("created", Json::Bool(created)),
            ("uuid", Json::str(uuid.clone())),
            ("max_hosts", Json::num(slots)),
            ("filesystem", fs),
            ("shared", shared),
            (
                "warnings",
                Json::Arr(warnings.into_iter().map(Json::Str).collect()),
            ),
        ]));
    } else {
        for w in &warnings {
            println!("warning: {w}");
        }
        let on = mount
            .as_ref()
            .map(|m| format!(" on {}", m.describe()))
            .unwrap_or_default();
        if created {
            println!(
                "initialised lockspace {} ({slots} host slots){on}",
                dir.display()
            );
        } else {
            println!(
                "lockspace {} is already initialised ({slots} host slots){on}",
                dir.display()
            );
        }
        println!("lockspace UUID {uuid}");
    }
    exit::OK
}
