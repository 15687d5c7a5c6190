//! `vmlease dump FILE`: decode and check any vmlease file, for debugging
//! (a lease record, the host table, the lockspace header, the watchdog's
//! status, a registry entry).
#![forbid(unsafe_code)]

use serde::Serialize;

use super::json::{to_line, Json};
use super::leases::{holder_json, HolderJson};
use super::{cell, exit, fail, print_json, table, Opts};
use crate::codec;
use crate::error::Error;
use crate::hosts::{self, Slot, SLOT_SIZE};
use crate::lease::LeaseRecord;
use crate::registry::Entry;
use crate::status::Status;

const HEADER_MAGIC: &str = "vmlease-lockspace v1";

/// `dump --json` of a lease record.
#[derive(Serialize)]
struct LeaseJson {
    kind: &'static str,
    key: String,
    resource: String,
    version: u64,
    mode: &'static str,
    holders: Vec<HolderJson>,
}

/// What a file turned out to be.
struct Decoded {
    kind: &'static str,
    /// The `--json` line.
    json: String,
    /// Human form: (key, value) lines, or a table for the host table.
    lines: Vec<(String, String)>,
    rows: Option<Vec<Vec<String>>>,
}

fn fields_of(data: &[u8], magic: &str) -> Vec<(String, String)> {
    codec::parse(data, magic)
        .map(|f| f.fields)
        .unwrap_or_default()
}

fn decode(data: &[u8]) -> Result<Decoded, (&'static str, String)> {
    let head = String::from_utf8_lossy(&data[..data.len().min(32)]).to_string();
    if head.starts_with("vmlease-lease ") {
        let r = LeaseRecord::decode(data).map_err(|e| ("lease record", e))?;
        Ok(Decoded {
            kind: "lease record",
            lines: fields_of(data, "vmlease-lease v1"),
            rows: None,
            json: to_line(&LeaseJson {
                kind: "lease",
                mode: r.mode.map(|m| m.as_str()).unwrap_or("free"),
                holders: r.holders.iter().map(holder_json).collect(),
                key: r.key,
                resource: r.resource,
                version: r.version,
            }),
        })
    } else if head.starts_with("vmlease-status ") {
        let s = Status::decode(data).map_err(|e| ("watchdog status", e))?;
        Ok(Decoded {
            kind: "watchdog status",
            lines: fields_of(data, "vmlease-status v1"),
            rows: None,
            json: Json::obj(vec![
                ("kind", Json::str("status")),
                ("daemon_pid", Json::num(s.daemon_pid)),
                ("host_id", Json::num(s.host_id)),
                ("boot_id", Json::str(s.boot_id)),
                ("state", Json::str(s.state.as_str())),
                ("reason", Json::str(s.reason)),
                ("written_ms", Json::num(s.written_ms)),
                ("last_renewal_ms", Json::num(s.last_renewal_ms)),
                (
                    "peers",
                    Json::Arr(
                        s.peers
                            .iter()
                            .map(|p| {
                                Json::obj(vec![
                                    ("host_id", Json::num(p.host_id)),
                                    ("last_change_ms", Json::num(p.last_change_ms)),
                                    ("counter", Json::num(p.counter)),
                                    (
                                        "state",
                                        p.state
                                            .map(|s| Json::str(s.as_str()))
                                            .unwrap_or(Json::Null),
                                    ),
                                ])
                            })
                            .collect(),
                    ),
                ),
            ])
            .render(),
        })
    } else if head.starts_with("vmlease-proc ") {
        let e = Entry::decode(data).map_err(|e| ("registry entry", e))?;
        Ok(Decoded {
            kind: "registry entry",
            lines: fields_of(data, "vmlease-proc v1"),
            rows: None,
            json: Json::obj(vec![
                ("kind", Json::str("registry entry")),
                ("pid", Json::num(e.proc_id.pid)),
                ("pid_start", Json::num(e.proc_id.start)),
                ("domain_uuid", Json::str(e.domain_uuid)),
                ("domain_name", Json::str(e.domain_name)),
                (
                    "keys",
                    Json::Arr(e.keys.into_iter().map(|(k, _)| Json::str(k)).collect()),
                ),
            ])
            .render(),
        })
    } else if head.starts_with("vmlease-storage-fenced ") {
        let v = crate::storage_fence::Verdict::decode(data)
            .map_err(|e| ("storage-fenced verdict", e))?;
        Ok(Decoded {
            kind: "storage-fenced verdict",
            lines: fields_of(data, "vmlease-storage-fenced 1"),
            rows: None,
            json: Json::obj(vec![
                ("kind", Json::str("storage-fenced")),
                ("host_id", Json::num(v.host_id)),
                ("boot_id", Json::str(v.boot_id)),
                ("counter", Json::num(v.counter)),
                (
                    "addrs",
                    Json::Arr(v.addrs.into_iter().map(Json::Str).collect()),
                ),
                ("osdmap_epoch", Json::num(v.osdmap_epoch)),
                ("writer_host", Json::num(v.writer_host)),
                ("wall", Json::num(v.wall)),
            ])
            .render(),
        })
    } else if head.starts_with("vmlease-storage-target ") {
        let t =
            crate::storage_fence::Target::decode(data).map_err(|e| ("storage-fence target", e))?;
        Ok(Decoded {
            kind: "storage-fence target",
            lines: fields_of(data, "vmlease-storage-target 1"),
            rows: None,
            json: Json::obj(vec![
                ("kind", Json::str("storage-target")),
                ("host_id", Json::num(t.host_id)),
                ("boot_id", Json::str(t.boot_id)),
                (
                    "addrs",
                    Json::Arr(t.addrs.into_iter().map(Json::Str).collect()),
                ),
            ])
            .render(),
        })
    } else if head.starts_with("vmlease-lockspace ") {
        let f = codec::parse(data, HEADER_MAGIC).map_err(|e| ("lockspace header", e))?;
        let n = |k: &str| f.req_u64(k).map_err(|e| ("lockspace header", e));
        let (max_hosts, slot_size) = (n("max_hosts")?, n("slot_size")?);
        Ok(Decoded {
            kind: "lockspace header",
            lines: f.fields.clone(),
            rows: None,
            json: Json::obj(vec![
                ("kind", Json::str("lockspace header")),
                ("max_hosts", Json::num(max_hosts)),
                ("slot_size", Json::num(slot_size)),
                (
                    "uuid",
                    f.get("uuid")
                        .map(|u| Json::str(u.to_string()))
                        .unwrap_or(Json::Null),
                ),
            ])
            .render(),
        })
    } else if !data.is_empty() && data.len().is_multiple_of(SLOT_SIZE) {
        let slots = hosts::decode_table(data);
        let bad = slots
            .iter()
            .filter(|s| matches!(s, Slot::Corrupt(_)))
            .count();
        let mut rows = Vec::new();
        let mut js = Vec::new();
        for (i, s) in slots.iter().enumerate() {
            let id = i as u64 + 1;
            match s {
                Slot::Empty => {}
                Slot::Record(r) => {
                    rows.push(vec![
                        id.to_string(),
                        cell(&r.host_name),
                        r.state.to_string(),
                        cell(&r.boot_id),
                        r.counter.to_string(),
                        r.timing.host_dead_timeout.to_string(),
                    ]);
                    js.push(Json::obj(vec![
                        ("host_id", Json::num(id)),
                        ("host_name", Json::str(r.host_name.clone())),
                        ("boot_id", Json::str(r.boot_id.clone())),
                        // Random 64 bits: a string, as JSON readers may hold only
                        // 53-bit integers.
                        ("incarnation", Json::str(format!("{:016x}", r.incarnation))),
                        ("counter", Json::num(r.counter)),
                        ("state", Json::str(r.state.as_str())),
                        (
                            "host_dead_timeout_ms",
                            Json::num(r.timing.host_dead_timeout),
                        ),
                    ]));
                }
                Slot::Corrupt(why) => {
                    rows.push(vec![
                        id.to_string(),
                        "?".into(),
                        "CORRUPT".into(),
                        cell(why),
                        "-".into(),
                        "-".into(),
                    ]);
                    js.push(Json::obj(vec![
                        ("host_id", Json::num(id)),
                        ("error", Json::str(why.clone())),
                    ]));
                }
            }
        }
        Ok(Decoded {
            kind: if bad > 0 {
                "host table with CORRUPT slots"
            } else {
                "host table"
            },
            lines: Vec::new(),
            rows: Some(rows),
            json: Json::obj(vec![
                ("kind", Json::str("host table")),
                ("slots", Json::num(slots.len() as u64)),
                ("hosts", Json::Arr(js)),
            ])
            .render(),
        })
    } else {
        Err(("file", "not a vmlease file (unknown format)".into()))
    }
}

fn print_table(rows: &[Vec<String>]) {
    table(&["ID", "NAME", "STATE", "BOOT", "COUNTER", "DEAD_MS"], rows);
}

pub fn run(opts: &Opts, path: &str) -> i32 {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) => return fail(exit::USAGE, Error::io("read", path, e)),
    };
    match decode(&data) {
        Ok(d) => {
            let corrupt = d.kind.contains("CORRUPT");
            if opts.json {
                println!("{}", d.json);
            } else {
                if let Some(rows) = &d.rows {
                    print_table(rows);
                }
                for (k, v) in &d.lines {
                    println!("{k}: {}", cell(v));
                }
                if !corrupt {
                    println!("-- {path}: valid {}", d.kind);
                }
            }
            if corrupt {
                fail(exit::NO, format!("{path}: {}", d.kind))
            } else {
                exit::OK
            }
        }
        Err((kind, why)) => {
            if opts.json {
                print_json(Json::obj(vec![
                    ("kind", Json::str(kind)),
                    ("error", Json::str(why.clone())),
                ]));
            } else {
                let text = String::from_utf8_lossy(&data);
                for line in text.trim_end_matches('\0').lines() {
                    println!("{}", cell(line));
                }
            }
            fail(exit::NO, format!("{path}: CORRUPT {kind}: {why}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_fence_records_are_decoded_and_damage_named() {
        let v = crate::storage_fence::Verdict {
            host_id: 2,
            host_name: "h2".into(),
            boot_id: "b".into(),
            incarnation: 1,
            counter: 3,
            slot_mono_ms: 4,
            addrs: vec!["192.0.2.2:0/0".into()],
            osdmap_epoch: 9,
            expire_s: 60,
            wall: 0,
            writer_host: 1,
            writer_name: "h1".into(),
        };
        let d = decode(&v.encode()).unwrap();
        assert_eq!(d.kind, "storage-fenced verdict");
        let mut bad = v.encode();
        bad.truncate(bad.len() - 2);
        assert_eq!(decode(&bad).err().unwrap().0, "storage-fenced verdict");
        let t = crate::storage_fence::Target {
            host_id: 2,
            boot_id: "b".into(),
            addrs: vec!["192.0.2.2".into()],
        };
        assert_eq!(decode(&t.encode()).unwrap().kind, "storage-fence target");
    }
}
