//! `vmlease can-evacuate HOST`: may HOST's VMs be restarted elsewhere now
//! without a split brain? The rule (also in `vmlease help can-evacuate`):
//!
//! 1. every lease record must be readable (a corrupt one may be HOST's);
//! 2. if HOST holds leases: safe exactly when the takeover rule (the one
//!    the plugin applies when another host acquires) frees every one;
//! 3. if HOST holds none: vmlease protects none of its VMs and knows
//!    nothing of unleased ones, so safe only when HOST itself is known to
//!    be down (fenced-clean, left, or silent for host_dead_timeout);
//! 4. a host without a hardware watchdog (`unsafe_no_watchdog`) is never
//!    safe by silence alone: no, with why (unless `trust_unsafe_peers`);
//! 5. otherwise not yet, with the reason and the time until safe.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;

use super::json::Json;
use super::view::{host_verdict, Ctx, Table};
use super::{cell, exit, load, print_json, Opts};
use crate::config::secs;
use crate::error::Error;
use crate::hosts::Slot;
use crate::lease::{Holder, LeaseRecord};
use crate::takeover::host::HostVerdict;
use crate::takeover::Verdict;

/// One lease HOST holds, judged.
#[derive(Debug, Clone)]
pub struct LeaseCheck {
    pub key: String,
    pub resource: String,
    pub holder: Holder,
    pub takeable: bool,
    pub reason: String,
}

/// The answer, with everything the outputs show.
#[derive(Debug, Clone)]
pub struct Answer {
    pub code: i32,
    pub host_id: Option<u16>,
    pub host_name: Option<String>,
    /// One line: "yes: ...", "not yet: ...", "no: ...", "cannot tell: ...".
    pub answer: String,
    pub host_verdict: Option<HostVerdict>,
    pub leases: Vec<LeaseCheck>,
    pub safe_in_ms: Option<u64>,
}

impl Answer {
    fn early(code: i32, answer: String) -> Answer {
        Answer {
            code,
            host_id: None,
            host_name: None,
            answer,
            host_verdict: None,
            leases: Vec::new(),
            safe_in_ms: None,
        }
    }
}

type Records = [(String, Result<LeaseRecord, Error>)];

/// Applies the rule to host `id`, given every record and a table read
/// after them.
pub fn decide(ctx: &Ctx, t: &Table, records: &Records, id: u16) -> Answer {
    let slot = t.slot(id);
    let host_name = slot.record().map(|r| r.host_name.clone());
    let who = match &host_name {
        Some(n) => format!("host {id} ({})", cell(n)),
        None => format!("host {id}"),
    };
    let hv = host_verdict(ctx, t, id);
    let mut a = Answer {
        code: exit::NO,
        host_id: Some(id),
        host_name,
        answer: String::new(),
        host_verdict: Some(hv.clone()),
        leases: Vec::new(),
        safe_in_ms: None,
    };

    // 1. Every record readable.
    let bad: Vec<String> = records
        .iter()
        .filter_map(|(k, r)| r.as_ref().err().map(|e| format!("{k}: {e}")))
        .collect();
    if let Some(first) = bad.first() {
        a.code = exit::UNKNOWN;
        a.answer = format!(
            "cannot tell: {} lease record(s) cannot be read and may be {who}'s ({})",
            bad.len(),
            cell(first)
        );
        return a;
    }

    // 2. The leases HOST holds, under the plugin's takeover rule.
    for (key, r) in records {
        let Ok(r) = r else { continue };
        for h in r.holders.iter().filter(|h| h.host_id == id) {
            let (takeable, reason) = match ctx.judge(t, h) {
                Verdict::Free(why) => (true, why.to_string()),
                Verdict::Held(why) => (false, why),
            };
            a.leases.push(LeaseCheck {
                key: key.clone(),
                resource: r.resource.clone(),
                holder: h.clone(),
                takeable,
                reason,
            });
        }
    }
    if !a.leases.is_empty() {
        let n = a.leases.len();
        let held: Vec<&LeaseCheck> = a.leases.iter().filter(|l| !l.takeable).collect();
        if held.is_empty() {
            let why: BTreeSet<&str> = a.leases.iter().map(|l| l.reason.as_str()).collect();
            a.code = exit::OK;
            a.answer = format!(
                "yes: all {n} lease(s) of {who} may be taken over now ({})",
                why.into_iter().collect::<Vec<_>>().join("; ")
            );
            return a;
        }
        let first = format!(
            "{} held by pid {} of domain '{}': {}",
            resource_text(&held[0].key, &held[0].resource),
            held[0].holder.pid,
            cell(&held[0].holder.domain_name),
            held[0].reason
        );
        // Only holders on other hosts need this host's observation.
        let mine = ctx.cfg.host_id == Some(id);
        if ctx.view.is_none() && !mine {
            a.code = exit::UNKNOWN;
            a.answer = format!(
                "cannot tell: {}; {} of {n} lease(s) of {who} are held ({first})",
                ctx.view_note
                    .as_deref()
                    .unwrap_or("no watchdog view on this host"),
                held.len()
            );
            return a;
        }
        if let HostVerdict::Unwatched { .. } = hv {
            a.answer = format!(
                "no: {who} is {}; {} of {n} lease(s) are held ({first})",
                hv.reason(),
                held.len()
            );
            return a;
        }
        a.safe_in_ms = hv.safe_in();
        a.answer = format!(
            "not yet: {} of {n} lease(s) of {who} are held ({first})",
            held.len()
        );
        return a;
    }

    // 3. No lease: only a host known to be down is safe.
    if matches!(slot, Slot::Empty) {
        a.code = exit::USAGE;
        a.answer = format!(
            "{who} has no liveness record and holds no lease in this lockspace: \
             vmlease knows nothing about its VMs"
        );
        return a;
    }
    let state = slot
        .record()
        .map(|r| r.state.to_string())
        .unwrap_or_else(|| "corrupt".into());
    match &hv {
        HostVerdict::Safe(_) => {
            a.code = exit::OK;
            a.answer = format!("yes: {who} holds no lease and is down: {}", hv.reason());
        }
        HostVerdict::ThisHost => {
            a.answer = format!(
                "no: {who} is this host and it is running (state {state}); ask from another host"
            );
        }
        HostVerdict::Alive(s) if s == "fencing" => {
            a.answer = format!("no: {who} holds no lease and is fencing: wait for fenced-clean");
        }
        HostVerdict::Alive(_) => {
            a.answer = format!(
                "no: {who} holds no lease but is renewing (state {state}): VMs it runs without leases may still run"
            );
        }
        HostVerdict::NotYet { .. } => {
            a.safe_in_ms = hv.safe_in();
            a.answer = format!("not yet: {who} holds no lease and has been {}", hv.reason());
        }
        HostVerdict::Unknown(w) => {
            a.code = exit::UNKNOWN;
            a.answer = format!("cannot tell: {who} holds no lease; {w}");
        }
        HostVerdict::Unwatched { .. } => {
            a.answer = format!(
                "no: {who} holds no lease and is {}; restart its VMs only once it publishes \
                 fenced-clean or has rebooted",
                hv.reason()
            );
        }
        HostVerdict::Collision(w) => {
            a.answer = format!("no: {who}: host id collision: {w}");
        }
    }
    a
}

fn resource_text(key: &str, resource: &str) -> String {
    if key.starts_with("domain-") {
        format!("domain {}", cell(resource))
    } else if key.starts_with("disk-") {
        format!("disk {}", cell(resource))
    } else if key.starts_with("lease-") {
        format!("lease {}", cell(resource))
    } else {
        cell(resource)
    }
}

fn answer_for(opts: &Opts, want: &str) -> Answer {
    match load(opts) {
        Ok(cfg) => answer(cfg, want),
        Err(code) => Answer::early(code, "cannot read the configuration".into()),
    }
}

/// The verdict on host `want` (id or name) from this host: the lockspace
/// with its deadlines and this host's watchdog view. `vmlease-ha`'s
/// controller asks this before it restarts a host's VMs elsewhere.
pub fn answer(cfg: crate::config::Config, want: &str) -> Answer {
    let ctx = match Ctx::open(cfg) {
        Ok(c) => c,
        Err(e) => return Answer::early(exit::UNKNOWN, format!("cannot tell: {e}")),
    };
    let t = match ctx.table() {
        Ok(t) => t,
        Err(e) => return Answer::early(exit::UNKNOWN, format!("cannot tell: {e}")),
    };
    let id = match t.find_host(want) {
        Ok(id) => id,
        Err(why) => return Answer::early(exit::USAGE, why),
    };
    let records = match ctx.leases() {
        Ok(r) => r,
        Err(e) => {
            let mut a = Answer::early(exit::UNKNOWN, format!("cannot tell: {e}"));
            a.host_id = Some(id);
            return a;
        }
    };
    // Judge against a table read after the records, as the plugin reads
    // the holder's slot after the record: a slot older than a holder
    // could make a holder of a new boot look like one of the old.
    let t = match ctx.table() {
        Ok(t) => t,
        Err(e) => return Answer::early(exit::UNKNOWN, format!("cannot tell: {e}")),
    };
    decide(&ctx, &t, &records, id)
}

pub fn run(opts: &Opts, want: &str) -> i32 {
    let a = answer_for(opts, want);
    if opts.json {
        let held = a.leases.iter().filter(|l| !l.takeable).count();
        print_json(Json::obj(vec![
            ("host_id", Json::opt_num(a.host_id.map(u64::from))),
            (
                "host_name",
                a.host_name.clone().map(Json::Str).unwrap_or(Json::Null),
            ),
            ("safe", Json::Bool(a.code == exit::OK)),
            ("exit_code", Json::num(a.code)),
            ("answer", Json::str(a.answer.clone())),
            (
                "host_verdict",
                a.host_verdict
                    .as_ref()
                    .map(|v| Json::str(v.word()))
                    .unwrap_or(Json::Null),
            ),
            ("leases_held", Json::num(held as u64)),
            ("leases_takeable", Json::num((a.leases.len() - held) as u64)),
            ("safe_in_ms", Json::opt_num(a.safe_in_ms)),
            (
                "leases",
                Json::Arr(
                    a.leases
                        .iter()
                        .map(|l| {
                            Json::obj(vec![
                                ("key", Json::str(l.key.clone())),
                                ("resource", Json::str(l.resource.clone())),
                                ("domain_uuid", Json::str(l.holder.domain_uuid.clone())),
                                ("domain_name", Json::str(l.holder.domain_name.clone())),
                                ("pid", Json::num(l.holder.pid)),
                                ("takeable", Json::Bool(l.takeable)),
                                ("reason", Json::str(l.reason.clone())),
                            ])
                        })
                        .collect(),
                ),
            ),
        ]));
        return a.code;
    }
    if a.code == exit::USAGE && a.host_id.is_none() {
        eprintln!("vmlease: {}", a.answer);
        return a.code;
    }
    match a.safe_in_ms {
        Some(ms) if a.code != exit::OK => {
            println!("{}; safe in {} if it stays silent", a.answer, secs(ms))
        }
        _ => println!("{}", a.answer),
    }
    const SHOWN: usize = 20;
    for l in a.leases.iter().filter(|l| !l.takeable).take(SHOWN) {
        println!(
            "  held: {} (domain '{}' pid {}): {}",
            resource_text(&l.key, &l.resource),
            cell(&l.holder.domain_name),
            l.holder.pid,
            l.reason
        );
    }
    let more = a.leases.iter().filter(|l| !l.takeable).count();
    if more > SHOWN {
        println!("  ... and {} more held lease(s)", more - SHOWN);
    }
    a.code
}

#[cfg(test)]
mod tests;
