//! `vmlease release --domain UUID`: the administrative release of this
//! host's leases of a domain whose QEMU is gone. Never while it runs.
#![forbid(unsafe_code)]

use std::sync::Arc;

use super::args::Args;
use serde::Serialize;

use super::leases::HolderJson;
use super::leases::{holder_json, holder_text};
use super::{cell, exit, fail, open, print_json, Opts};
use crate::deadline;
use crate::engine::Engine;
use crate::lease::Holder;
use crate::process::ProcId;
use crate::registry::Registry;
use crate::resource::is_uuid;

fn proc_of(h: &Holder) -> ProcId {
    ProcId {
        pid: h.pid,
        start: h.pid_start,
    }
}

pub fn run(opts: &Opts, args: &Args) -> i32 {
    let domain = match args.flag("--domain") {
        Some(d) if is_uuid(d) => d.to_ascii_lowercase(),
        Some(d) => return fail(exit::USAGE, format!("--domain takes a UUID, got '{d}'")),
        None => return fail(exit::USAGE, "release needs --domain UUID"),
    };
    let ctx = match open(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let me = match ctx.cfg.require_host_id() {
        Ok(id) => id,
        Err(e) => return fail(exit::USAGE, e),
    };
    let reg = Registry::new(&ctx.cfg.state_dir);
    let entries: Vec<_> = match reg.list() {
        Ok(l) => l
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.domain_uuid.eq_ignore_ascii_case(&domain))
            .collect(),
        Err(e) => return fail(exit::NO, e),
    };
    if let Some(live) = entries.iter().find(|e| e.proc_id.is_alive()) {
        return fail(
            exit::NO,
            format!(
                "refusing: QEMU pid {} of domain '{}' runs on this host and holds or may hold these leases; stop the domain first",
                live.proc_id.pid,
                cell(&live.domain_name)
            ),
        );
    }
    let all = match ctx.leases() {
        Ok(a) => a,
        Err(e) => return fail(exit::UNKNOWN, e),
    };
    let boot = ctx.boot_id.clone();
    let ours = {
        let (domain, boot) = (domain.clone(), boot.clone());
        move |h: &Holder| {
            h.host_id == me && h.boot_id == boot && h.domain_uuid.eq_ignore_ascii_case(&domain)
        }
    };
    let eng = Engine {
        ls: ctx.ls.clone(),
        host_id: me,
        boot_id: boot.clone(),
        dead_ms: ctx.cfg.timing.host_dead_timeout,
        trust_unsafe_peers: ctx.cfg.trust_unsafe_peers,
        lock_timeout_ms: ctx.cfg.lock_timeout,
        view: None,
        process_alive: Arc::new(|p: ProcId| p.is_alive()),
    };
    let budget = ctx.cfg.io_timeout + ctx.cfg.lock_timeout;
    let mut released = Vec::new();
    let mut problems = Vec::new();
    for (key, rec) in all {
        let r = match rec {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("not checked: {e}"));
                continue;
            }
        };
        if !r.holders.iter().any(&ours) {
            continue;
        }
        if let Some(h) = r.holders.iter().find(|h| ours(h) && proc_of(h).is_alive()) {
            problems.push(format!(
                "refusing to release {}: its QEMU pid {} runs on this host",
                cell(&r.resource),
                h.pid
            ));
            continue;
        }
        // Only holders whose process is gone, re-checked under the lock.
        let pred = {
            let ours = ours.clone();
            move |h: &Holder| ours(h) && !proc_of(h).is_alive()
        };
        let (e2, k2) = (eng.clone(), key.clone());
        match deadline::run(
            budget,
            "release lease",
            &ctx.ls.lease_path(&key),
            move || e2.release_matching(&k2, &pred),
        ) {
            Ok(gone) if gone.is_empty() => {}
            Ok(gone) => {
                log::warn!(
                    "admin release of {} for domain {domain}: {}",
                    r.resource,
                    gone.iter().map(holder_text).collect::<Vec<_>>().join("; ")
                );
                released.push((key, r.resource.clone(), gone));
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    let mut removed = 0;
    if problems.is_empty() {
        for e in &entries {
            match reg.remove(e.proc_id) {
                Ok(()) => removed += 1,
                Err(err) => problems.push(err.to_string()),
            }
        }
    }
    let code = if problems.is_empty() {
        exit::OK
    } else {
        exit::NO
    };
    if opts.json {
        print_json(ReleaseJson {
            domain_uuid: domain,
            released: released
                .iter()
                .map(|(k, r, gone)| ReleasedJson {
                    key: k.clone(),
                    resource: r.clone(),
                    holders: gone.iter().map(holder_json).collect(),
                })
                .collect(),
            registry_entries_removed: removed as u64,
            problems,
        });
        return code;
    }
    for (_, resource, gone) in &released {
        println!(
            "released {} ({})",
            cell(resource),
            gone.iter().map(holder_text).collect::<Vec<_>>().join("; ")
        );
    }
    for p in &problems {
        eprintln!("vmlease: {p}");
    }
    if released.is_empty() && problems.is_empty() {
        println!("no lease of domain {domain} is held by this host");
    }
    code
}

/// `release --json`.
#[derive(Serialize)]
struct ReleaseJson {
    domain_uuid: String,
    released: Vec<ReleasedJson>,
    registry_entries_removed: u64,
    problems: Vec<String>,
}

#[derive(Serialize)]
struct ReleasedJson {
    key: String,
    resource: String,
    holders: Vec<HolderJson>,
}
