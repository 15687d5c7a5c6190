//! `vmlease leases`: the lease records and their holders. A record that
//! cannot be decoded is shown as CORRUPT, never as free.
#![forbid(unsafe_code)]

use super::args::Args;
use serde::Serialize;

use super::{cell, exit, fail, open, print_json, table, Opts};
use crate::error::Error;
use crate::lease::Holder;
use crate::resource::is_uuid;

pub fn holder_text(h: &Holder) -> String {
    format!(
        "host {} pid {} domain {} ({})",
        h.host_id,
        h.pid,
        cell(&h.domain_name),
        cell(&h.domain_uuid)
    )
}

/// One holder in `--json` output (leases, dump, release).
#[derive(Serialize)]
pub struct HolderJson {
    host_id: u16,
    boot_id: String,
    pid: u32,
    pid_start: u64,
    domain_uuid: String,
    domain_name: String,
}

pub fn holder_json(h: &Holder) -> HolderJson {
    HolderJson {
        host_id: h.host_id,
        boot_id: h.boot_id.clone(),
        pid: h.pid,
        pid_start: h.pid_start,
        domain_uuid: h.domain_uuid.clone(),
        domain_name: h.domain_name.clone(),
    }
}

/// One record of `leases --json`: a readable record, or one that is not.
#[derive(Serialize)]
#[serde(untagged)]
enum RecordJson {
    Record {
        key: String,
        resource: String,
        mode: String,
        version: u64,
        holders: Vec<HolderJson>,
    },
    Unreadable {
        key: String,
        corrupt: bool,
        error: String,
    },
}

pub fn run(opts: &Opts, args: &Args) -> i32 {
    let domain = match args.flag("--domain") {
        Some(d) if is_uuid(d) => Some(d.to_ascii_lowercase()),
        Some(d) => return fail(exit::USAGE, format!("--domain takes a UUID, got '{d}'")),
        None => None,
    };
    let ctx = match open(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let host = match args.flag("--host") {
        None => None,
        Some(h) => {
            let t = match ctx.table() {
                Ok(t) => t,
                Err(e) => return fail(exit::UNKNOWN, e),
            };
            match t.find_host(h) {
                Ok(id) => Some(id),
                Err(why) => return fail(exit::USAGE, why),
            }
        }
    };
    let all = match ctx.leases() {
        Ok(a) => a,
        Err(e) => return fail(exit::UNKNOWN, e),
    };
    let keep = |h: &Holder| {
        host.map(|x| h.host_id == x).unwrap_or(true)
            && domain
                .as_ref()
                .map(|d| h.domain_uuid.eq_ignore_ascii_case(d))
                .unwrap_or(true)
    };
    let filtered = host.is_some() || domain.is_some();
    let (mut corrupt, mut unreadable) = (0, 0);
    let mut rows = Vec::new();
    let mut js = Vec::new();
    for (key, rec) in all {
        match rec {
            Ok(r) => {
                if filtered && !r.holders.iter().any(keep) {
                    continue;
                }
                let mode = r
                    .mode
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "free".into());
                let holders = if r.holders.is_empty() {
                    "-".to_string()
                } else {
                    r.holders
                        .iter()
                        .map(holder_text)
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                rows.push(vec![
                    cell(&r.resource),
                    mode.clone(),
                    r.version.to_string(),
                    holders,
                ]);
                js.push(RecordJson::Record {
                    key,
                    resource: r.resource.clone(),
                    mode,
                    version: r.version,
                    holders: r.holders.iter().map(holder_json).collect(),
                });
            }
            // Shown even when filtering: it may be one of the wanted ones.
            Err(e) => {
                let is_corrupt = matches!(e, Error::Corrupt { .. });
                if is_corrupt {
                    corrupt += 1;
                } else {
                    unreadable += 1;
                }
                rows.push(vec![
                    key.clone(),
                    if is_corrupt { "CORRUPT" } else { "UNREADABLE" }.into(),
                    "-".into(),
                    cell(&e.to_string()),
                ]);
                js.push(RecordJson::Unreadable {
                    key,
                    corrupt: is_corrupt,
                    error: e.to_string(),
                });
            }
        }
    }
    if opts.json {
        print_json(js);
    } else if rows.is_empty() {
        println!("no lease records");
    } else {
        table(&["RESOURCE", "MODE", "VERSION", "HOLDERS"], &rows);
    }
    if corrupt > 0 {
        eprintln!(
            "vmlease: {corrupt} CORRUPT lease record(s): never treated as free; inspect with 'vmlease dump'"
        );
    }
    if unreadable > 0 {
        eprintln!("vmlease: {unreadable} lease record(s) could not be read");
        exit::UNKNOWN
    } else if corrupt > 0 {
        exit::NO
    } else {
        exit::OK
    }
}
