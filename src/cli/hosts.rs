//! `vmlease hosts`: every host in the lockspace, its state, how long this
//! host has seen it silent, and what a controller may do with its VMs.
#![forbid(unsafe_code)]

use serde::Serialize;

use super::view::host_verdict;
use super::{cell, exit, fail, open, print_json, table, Opts};
use crate::config::secs;
use crate::hosts::Slot;
use crate::takeover::host::{HostVerdict, Silence};

/// One host of `hosts --json`.
#[derive(Serialize)]
struct HostJson {
    host_id: u16,
    host_name: String,
    state: String,
    concluded_state: &'static str,
    boot_id: String,
    counter: Option<u64>,
    observed: bool,
    silent_for_ms: Option<u64>,
    verdict: &'static str,
    safe_in_ms: Option<u64>,
    detail: String,
}

pub fn run(opts: &Opts) -> i32 {
    let ctx = match open(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let t = match ctx.table() {
        Ok(t) => t,
        Err(e) => return fail(exit::UNKNOWN, e),
    };
    let mut rows = Vec::new();
    let mut js = Vec::new();
    for (i, slot) in t.slots.iter().enumerate() {
        if matches!(slot, Slot::Empty) {
            continue;
        }
        let id = i as u16 + 1;
        let v = host_verdict(&ctx, &t, id);
        let silence = ctx.silence(&t, id);
        let (name, state, boot, counter) = match slot {
            Slot::Record(r) => (
                r.host_name.clone(),
                r.state.to_string(),
                r.boot_id.clone(),
                Some(r.counter),
            ),
            Slot::Corrupt(why) => ("?".into(), format!("CORRUPT ({why})"), String::new(), None),
            Slot::Empty => unreachable!("skipped above"),
        };
        let state = match &v {
            HostVerdict::Collision(_) => format!("COLLISION ({state})"),
            _ => state,
        };
        let concluded = concluded(&v, slot);
        let silent_text = match silence {
            Silence::Unknown => "?".into(),
            Silence::Renewing => "-".into(),
            Silence::Silent(ms) => secs(ms),
        };
        rows.push(vec![
            id.to_string(),
            cell(&name),
            cell(concluded),
            cell(&state),
            silent_text,
            cell(&boot.chars().take(8).collect::<String>()),
            cell(&v.text()),
        ]);
        js.push(HostJson {
            host_id: id,
            host_name: name,
            state,
            concluded_state: concluded,
            boot_id: boot,
            counter,
            observed: silence != Silence::Unknown,
            silent_for_ms: match silence {
                Silence::Silent(ms) => Some(ms),
                _ => None,
            },
            verdict: v.word(),
            safe_in_ms: v.safe_in(),
            detail: v.text(),
        });
    }
    if opts.json {
        print_json(js);
        return exit::OK;
    }
    if let Some(note) = &ctx.view_note {
        eprintln!("vmlease: note: {note}");
    }
    if rows.is_empty() {
        println!(
            "no host has joined lockspace {}",
            ctx.cfg.lockspace_dir.display()
        );
    } else {
        table(
            &[
                "ID",
                "NAME",
                "STATE",
                "PUBLISHED",
                "SILENT",
                "BOOT",
                "VMS ELSEWHERE?",
            ],
            &rows,
        );
    }
    exit::OK
}

/// What this host concludes about a host (the STATE column): its
/// published state only while it renews; `silent` once its record stopped
/// changing, `dead` past its host_dead_timeout. The published state has
/// its own column (a host silent past D still publishes `live`).
fn concluded(v: &HostVerdict, slot: &Slot) -> &'static str {
    match v {
        HostVerdict::ThisHost | HostVerdict::Alive(_) => match slot {
            Slot::Record(r) => r.state.as_str(),
            _ => "changing",
        },
        HostVerdict::Safe(w) if w.starts_with("dead") => "dead",
        HostVerdict::Safe(w) if w == "left" => "leaving",
        HostVerdict::Safe(_) => "fenced-clean",
        HostVerdict::NotYet { .. } | HostVerdict::Unwatched { .. } => "silent",
        HostVerdict::Unknown(_) => "unknown",
        HostVerdict::Collision(_) => "collision",
    }
}
