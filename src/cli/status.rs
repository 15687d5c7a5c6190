//! `vmlease status`: this host's protection, its watchdog daemon, and the
//! leases of the QEMU processes it tracks.
#![forbid(unsafe_code)]

use super::json::Json;
use super::{cell, exit, load, print_json, table, Opts};
use crate::clock::boottime_ms;
use crate::config::secs;
use crate::error::{Error, Result};
use crate::process;
use crate::registry::{Entry, Registry};
use crate::status::Status;

mod shared;

use shared::{read_shared, resource_text, LeaseState, Shared};

pub fn run(opts: &Opts) -> i32 {
    show(opts, None)
}

/// The status from this host's own files only (the daemon's status, the
/// registry, the fence marker): the lockspace did not answer (`why`).
pub fn run_local(opts: &Opts, why: String) -> i32 {
    show(opts, Some(why))
}

fn show(opts: &Opts, no_lockspace: Option<String>) -> i32 {
    let cfg = match load(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let protected = crate::status::protected_status(&cfg);
    let now = boottime_ms();
    let st = Status::read(&cfg.state_dir);
    let reg = Registry::new(&cfg.state_dir);
    let mut reg_errors = Vec::new();
    let entries: Vec<Entry> = match reg.list() {
        Ok(list) => list
            .into_iter()
            .filter_map(|e| e.map_err(|e| reg_errors.push(e.to_string())).ok())
            .collect(),
        Err(e) => {
            reg_errors.push(e.to_string());
            Vec::new()
        }
    };
    let fenced = crate::daemon::fence::load_marker(&cfg.state_dir);
    let boot = process::boot_id().unwrap_or_default();
    let shared = match no_lockspace {
        None => read_shared(&cfg, cfg.host_id, &boot, &entries),
        Some(why) => Err(Error::Lockspace {
            path: cfg.lockspace_dir.clone(),
            reason: why,
        }),
    };
    // A fenced host: was it storage-fenced (blocklisted) by another host?
    let storage_fenced: Option<String> = match (&fenced, daemon_uuid(&st)) {
        (
            Some(crate::daemon::fence::Cause::Storage | crate::daemon::fence::Cause::StorageFenced),
            uuid,
        ) => {
            match super::storage_fence::own_verdict(&cfg, &uuid, shared.is_ok()) {
                Ok(Some((v, from))) => {
                    Some(format!("{} (verdict read from the {from})", v.describe()))
                }
                Ok(None) => None,
                // A damaged verdict is neither "fenced" nor "not fenced".
                Err(e) if e.contains("damaged") => Some(format!("cannot tell: {e}")),
                // No Ceph to ask (not a Ceph lockspace, no ceph CLI).
                Err(_) => None,
            }
        }
        _ => None,
    };
    let lease_of = |i: usize| -> Vec<LeaseState> {
        match &shared {
            Ok(s) => s.leases[i].clone(),
            Err(e) => entries[i]
                .keys
                .iter()
                .map(|(k, r)| LeaseState {
                    key: k.clone(),
                    resource: r.clone(),
                    state: "unknown",
                    version: None,
                    detail: e.to_string(),
                })
                .collect(),
        }
    };
    let code = if protected.is_ok() {
        exit::OK
    } else {
        exit::NO
    };
    let daemon = match &st {
        Ok(Some(s)) => Some(s),
        _ => None,
    };
    let opt_str = |s: Option<String>| s.map(Json::Str).unwrap_or(Json::Null);
    if opts.json {
        let daemon_json = match daemon {
            None => Json::Null,
            Some(s) => Json::obj(vec![
                ("daemon_pid", Json::num(s.daemon_pid)),
                ("state", Json::str(s.state.as_str())),
                ("reason", Json::str(s.reason.clone())),
                ("status_age_ms", Json::num(now.saturating_sub(s.written_ms))),
                (
                    "renewal_age_ms",
                    if s.last_renewal_ms == 0 {
                        Json::Null
                    } else {
                        Json::num(now.saturating_sub(s.last_renewal_ms))
                    },
                ),
                ("unsafe_no_watchdog", Json::Bool(s.unsafe_no_watchdog)),
                ("lockspace_dir", Json::str(s.lockspace_dir.clone())),
                (
                    "lockspace_uuid",
                    opt_str(Some(s.lockspace_uuid.clone()).filter(|u| !u.is_empty())),
                ),
                ("allow_local_lockspace", Json::Bool(s.allow_local_lockspace)),
                (
                    "local_lockspace",
                    opt_str(Some(s.local_lockspace.clone()).filter(|u| !u.is_empty())),
                ),
                (
                    "networks",
                    Json::Arr(
                        s.networks
                            .iter()
                            .map(|n| {
                                Json::obj(vec![
                                    ("name", Json::str(n.name.clone())),
                                    ("state", Json::str(n.state.clone())),
                                    ("detail", Json::str(n.detail.clone())),
                                ])
                            })
                            .collect(),
                    ),
                ),
            ]),
        };
        let processes = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                Json::obj(vec![
                    ("pid", Json::num(e.proc_id.pid)),
                    ("alive", Json::Bool(e.proc_id.is_alive())),
                    ("domain_uuid", Json::str(e.domain_uuid.clone())),
                    ("domain_name", Json::str(e.domain_name.clone())),
                    (
                        "leases",
                        Json::Arr(e.keys.iter().map(|(k, _)| Json::str(k.clone())).collect()),
                    ),
                    (
                        "lease_records",
                        Json::Arr(
                            lease_of(i)
                                .into_iter()
                                .map(|l| {
                                    Json::obj(vec![
                                        ("key", Json::str(l.key)),
                                        ("resource", Json::str(l.resource)),
                                        ("state", Json::str(l.state)),
                                        ("version", Json::opt_num(l.version)),
                                        ("detail", Json::str(l.detail)),
                                    ])
                                })
                                .collect(),
                        ),
                    ),
                ])
            })
            .collect();
        let (host_name, host_state) = match &shared {
            Ok(s) => (s.host_name.clone(), s.host_state.clone()),
            Err(_) => (None, None),
        };
        print_json(Json::obj(vec![
            ("host_id", Json::opt_num(cfg.host_id.map(u64::from))),
            ("host_name", opt_str(host_name)),
            ("host_state", opt_str(host_state)),
            ("protected", Json::Bool(protected.is_ok())),
            (
                "not_protected_because",
                opt_str(protected.as_ref().err().map(|e| e.to_string())),
            ),
            (
                "fenced",
                opt_str(fenced.as_ref().map(|c| c.as_str().into())),
            ),
            ("storage_fenced", opt_str(storage_fenced.clone())),
            ("daemon", daemon_json),
            (
                "lockspace",
                Json::obj(vec![
                    ("dir", Json::str(cfg.lockspace_dir.display().to_string())),
                    ("reachable", Json::Bool(shared.is_ok())),
                    (
                        "error",
                        opt_str(shared.as_ref().err().map(|e| e.to_string())),
                    ),
                ]),
            ),
            ("processes", Json::Arr(processes)),
            (
                "registry_errors",
                Json::Arr(reg_errors.iter().cloned().map(Json::Str).collect()),
            ),
        ]));
        return code;
    }

    let name = match &shared {
        Ok(Shared {
            host_name: Some(n), ..
        }) => format!(" ({})", cell(n)),
        _ => String::new(),
    };
    match cfg.host_id {
        Some(h) => println!("host:        {h}{name}"),
        None => println!("host:        host_id not set in {}", opts.config.display()),
    }
    match &protected {
        Ok(_) => println!("protected:   yes"),
        Err(e) => println!("protected:   NO - {e}"),
    }
    match &st {
        Ok(None) => println!(
            "watchdog:    not running (no status in {})",
            cfg.state_dir.display()
        ),
        Err(e) => println!("watchdog:    unusable status: {e}"),
        Ok(Some(s)) => {
            let why = if s.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", cell(&s.reason))
            };
            if s.lockspace_uuid.is_empty() {
                println!(
                    "watchdog:    pid {}, not joined: {}, last report {} ago",
                    s.daemon_pid,
                    cell(&s.reason),
                    secs(now.saturating_sub(s.written_ms))
                );
            } else {
                println!(
                    "watchdog:    pid {}, state {}{why}, last report {} ago",
                    s.daemon_pid,
                    s.state,
                    secs(now.saturating_sub(s.written_ms))
                );
            }
            if s.last_renewal_ms == 0 {
                println!("renewal:     none yet");
            } else {
                println!(
                    "renewal:     {} ago (every {}; fencing starts after {} without one)",
                    secs(now.saturating_sub(s.last_renewal_ms)),
                    secs(s.renew_interval_ms),
                    secs(s.renew_fail_timeout_ms)
                );
            }
            if s.unsafe_no_watchdog {
                println!("WARNING:     no hardware watchdog (unsafe_no_watchdog = true)");
            }
            if s.allow_local_lockspace {
                let why = if s.local_lockspace.is_empty() {
                    "a lockspace not on a shared filesystem would be accepted".to_string()
                } else {
                    cell(&s.local_lockspace)
                };
                println!("WARNING:     local lockspace (allow_local_lockspace = true): {why}");
            }
            if !s.lockspace_uuid.is_empty() {
                println!(
                    "joined:      lockspace {} (UUID {})",
                    cell(&s.lockspace_dir),
                    s.lockspace_uuid
                );
            }
            for n in &s.networks {
                println!(
                    "network:     {:<11} {:<11} {}",
                    cell(&n.name),
                    cell(&n.state),
                    cell(&n.detail)
                );
            }
        }
    }
    match &fenced {
        Some(c) => println!(
            "fence:       {} (after the cause is over: 'vmlease clear-fence')",
            c.describe()
        ),
        None => println!("fence:       none"),
    }
    if let Some(s) = &storage_fenced {
        println!(
            "storage:     {} ('vmlease clear-fence' removes the blocklist once this host's QEMUs are dead)",
            cell(s)
        );
    }
    match &shared {
        Ok(s) => println!(
            "lockspace:   {} (reachable; this host's record: {})",
            cfg.lockspace_dir.display(),
            s.host_state.as_deref().unwrap_or("none yet")
        ),
        Err(e) => println!("lockspace:   {}: {e}", cfg.lockspace_dir.display()),
    }
    for e in &reg_errors {
        println!("registry:    {e}");
    }
    println!();
    let mut rows = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let qemu = if e.proc_id.is_alive() {
            "running"
        } else {
            "exited"
        };
        for l in lease_of(i) {
            let lease = match (l.state, l.version) {
                ("held", Some(v)) => format!("held (version {v})"),
                ("other-holder", _) => format!("NOT held: {}", cell(&l.detail)),
                ("not-held", _) => "not held".to_string(),
                (s, _) => format!("{s}: {}", cell(&l.detail)),
            };
            rows.push(vec![
                e.proc_id.pid.to_string(),
                qemu.into(),
                cell(&e.domain_name),
                cell(&resource_text(&l.key, &l.resource)),
                lease,
            ]);
        }
        if e.keys.is_empty() {
            rows.push(vec![
                e.proc_id.pid.to_string(),
                qemu.into(),
                cell(&e.domain_name),
                "-".into(),
                "-".into(),
            ]);
        }
    }
    if rows.is_empty() {
        println!("no leased QEMU processes on this host");
    } else {
        table(&["PID", "QEMU", "DOMAIN", "RESOURCE", "LEASE"], &rows);
    }
    code
}

/// The lockspace UUID the daemon published ("-" when unknown).
fn daemon_uuid(st: &Result<Option<Status>>) -> String {
    match st {
        Ok(Some(s)) if !s.lockspace_uuid.is_empty() => s.lockspace_uuid.clone(),
        _ => "-".into(),
    }
}
