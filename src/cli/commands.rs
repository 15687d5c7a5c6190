//! The CLI commands (each returns the exit code).
#![forbid(unsafe_code)]

use std::time::Duration;

use super::json::Json;
use super::view::{find_host, host_verdict, Ctx, HostVerdict};
use super::{exit, table, Opts};
use crate::clock::boottime_ms;
use crate::config::{self, secs, Config};
use crate::engine::Engine;
use crate::error::Error;
use crate::hosts::{HostRecord, Slot};
use crate::lease::{Holder, LeaseRecord};
use crate::lockspace::{Lockspace, DEFAULT_MAX_HOSTS};
use crate::process::ProcId;
use crate::registry::Registry;
use crate::resource::is_uuid;
use crate::status::Status;
use crate::takeover::Verdict;

fn load(opts: &Opts) -> Result<Config, i32> {
    config::load(&opts.config).map_err(|e| {
        eprintln!("vmlease: {e}");
        exit::USAGE
    })
}

fn open(opts: &Opts) -> Result<Ctx, i32> {
    let cfg = load(opts)?;
    Ctx::open(cfg).map_err(|e| {
        eprintln!("vmlease: {e}");
        exit::UNKNOWN
    })
}

fn print_json(j: Json) {
    println!("{}", j.render());
}

pub fn check_config(opts: &Opts) -> i32 {
    if !opts.config.exists() {
        eprintln!("vmlease: {}: no such file", opts.config.display());
        return exit::USAGE;
    }
    let c = match load(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let ok = c.host_id.is_some();
    if opts.json {
        let t = c.timing;
        print_json(Json::obj(vec![
            ("config", Json::str(opts.config.display().to_string())),
            ("valid", Json::Bool(ok)),
            ("host_id", Json::opt_num(c.host_id.map(u64::from))),
            (
                "warnings",
                Json::Arr(c.warnings().into_iter().map(Json::Str).collect()),
            ),
            ("renew_interval_ms", Json::num(t.renew_interval)),
            ("renew_fail_timeout_ms", Json::num(t.renew_fail_timeout)),
            ("kill_timeout_ms", Json::num(t.kill_timeout)),
            ("watchdog_timeout_ms", Json::num(t.watchdog_timeout)),
            ("host_dead_timeout_ms", Json::num(t.host_dead_timeout)),
            ("last_write_bound_ms", Json::num(t.last_write_bound())),
        ]));
    } else {
        for w in c.warnings() {
            println!("warning: {w}");
        }
        print!("{}", c.timing.timeline());
        if ok {
            println!("{}: OK", opts.config.display());
        }
    }
    if ok {
        exit::OK
    } else {
        exit::NO
    }
}

pub fn init(opts: &Opts) -> i32 {
    let c = match load(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match Lockspace::init(&c.lockspace_dir, DEFAULT_MAX_HOSTS) {
        Ok(true) => {
            println!("initialised lockspace {}", c.lockspace_dir.display());
            exit::OK
        }
        Ok(false) => {
            println!(
                "lockspace {} is already initialised",
                c.lockspace_dir.display()
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("vmlease: {e}");
            exit::NO
        }
    }
}

pub fn status(opts: &Opts) -> i32 {
    let cfg = match load(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let now = boottime_ms();
    let protected = crate::plugin::protected_status(&cfg);
    let st = Status::read(&cfg.state_dir).ok().flatten();
    let reg = Registry::new(&cfg.state_dir);
    let entries: Vec<_> = reg
        .list()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| e.ok())
        .collect();
    let fenced = crate::daemon::fence::load_marker(&cfg.state_dir);
    if opts.json {
        let st_json = match &st {
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
        print_json(Json::obj(vec![
            ("host_id", Json::opt_num(cfg.host_id.map(u64::from))),
            ("protected", Json::Bool(protected.is_ok())),
            (
                "not_protected_because",
                protected
                    .as_ref()
                    .err()
                    .map(|e| Json::str(e.to_string()))
                    .unwrap_or(Json::Null),
            ),
            (
                "fenced",
                fenced
                    .as_ref()
                    .map(|c| Json::str(c.as_str()))
                    .unwrap_or(Json::Null),
            ),
            ("daemon", st_json),
            (
                "processes",
                Json::Arr(
                    entries
                        .iter()
                        .map(|e| {
                            Json::obj(vec![
                                ("pid", Json::num(e.proc_id.pid)),
                                ("alive", Json::Bool(e.proc_id.is_alive())),
                                ("domain_uuid", Json::str(e.domain_uuid.clone())),
                                ("domain_name", Json::str(e.domain_name.clone())),
                                (
                                    "leases",
                                    Json::Arr(
                                        e.keys.iter().map(|(k, _)| Json::str(k.clone())).collect(),
                                    ),
                                ),
                            ])
                        })
                        .collect(),
                ),
            ),
        ]));
    } else {
        println!(
            "host id:     {}",
            cfg.host_id
                .map(|h| h.to_string())
                .unwrap_or_else(|| "not set".into())
        );
        match &protected {
            Ok(_) => println!("protected:   yes"),
            Err(e) => println!("protected:   NO - {e}"),
        }
        match &st {
            None => println!(
                "watchdog:    not running (no status in {})",
                cfg.state_dir.display()
            ),
            Some(s) => {
                println!(
                    "watchdog:    pid {}, state {}{}, status {} old",
                    s.daemon_pid,
                    s.state,
                    if s.reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", s.reason)
                    },
                    secs(now.saturating_sub(s.written_ms))
                );
                if s.last_renewal_ms == 0 {
                    println!("renewal:     none yet");
                } else {
                    println!(
                        "renewal:     {} ago",
                        secs(now.saturating_sub(s.last_renewal_ms))
                    );
                }
                if s.unsafe_no_watchdog {
                    println!("WARNING:     no hardware watchdog (unsafe_no_watchdog = true)");
                }
                for n in &s.networks {
                    println!("network:     {:<10} {:<11} {}", n.name, n.state, n.detail);
                }
            }
        }
        if let Some(c) = &fenced {
            println!(
                "fenced:      {} (clear with 'vmlease clear-fence' once it is over)",
                c.describe()
            );
        }
        let rows: Vec<Vec<String>> = entries
            .iter()
            .map(|e| {
                vec![
                    e.proc_id.pid.to_string(),
                    if e.proc_id.is_alive() {
                        "running".into()
                    } else {
                        "exited".into()
                    },
                    e.domain_name.clone(),
                    e.domain_uuid.clone(),
                    e.keys.len().to_string(),
                ]
            })
            .collect();
        println!();
        if rows.is_empty() {
            println!("no leased QEMU processes on this host");
        } else {
            table(&["PID", "PROCESS", "DOMAIN", "UUID", "LEASES"], &rows);
        }
    }
    if protected.is_ok() {
        exit::OK
    } else {
        exit::NO
    }
}

pub fn hosts(opts: &Opts) -> i32 {
    let ctx = match open(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (raw, slots) = match ctx.hosts() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("vmlease: {e}");
            return exit::UNKNOWN;
        }
    };
    let mut rows = Vec::new();
    let mut js = Vec::new();
    for (i, slot) in slots.iter().enumerate() {
        if matches!(slot, Slot::Empty) {
            continue;
        }
        let id = i as u16 + 1;
        let sraw = ctx.slot_raw(&raw, id);
        let v = host_verdict(&ctx, id, slot, sraw);
        let age = ctx.observed_age(id, sraw);
        let (name, state, boot) = match slot {
            Slot::Record(r) => (r.host_name.clone(), r.state.to_string(), r.boot_id.clone()),
            Slot::Corrupt(why) => ("?".into(), format!("DAMAGED ({why})"), String::new()),
            Slot::Empty => unreachable!(),
        };
        let age_text = match (&ctx.status, age) {
            (None, _) => "?".into(),
            (Some(_), None) => "renewing".into(),
            (Some(_), Some(a)) => secs(a),
        };
        rows.push(vec![
            id.to_string(),
            name.clone(),
            state.clone(),
            age_text,
            boot.chars().take(8).collect(),
            v.text(),
        ]);
        js.push(Json::obj(vec![
            ("host_id", Json::num(id)),
            ("host_name", Json::str(name)),
            ("state", Json::str(state)),
            ("boot_id", Json::str(boot)),
            ("silent_for_ms", Json::opt_num(age)),
            ("verdict", Json::str(v.word())),
            ("detail", Json::str(v.text())),
        ]));
    }
    if opts.json {
        print_json(Json::Arr(js));
    } else if rows.is_empty() {
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
                "SILENT",
                "BOOT",
                "RESTART ITS VMS ELSEWHERE?",
            ],
            &rows,
        );
    }
    exit::OK
}

fn holder_text(h: &Holder) -> String {
    format!(
        "host {} pid {} domain {} ({})",
        h.host_id, h.pid, h.domain_name, h.domain_uuid
    )
}

fn holder_json(h: &Holder) -> Json {
    Json::obj(vec![
        ("host_id", Json::num(h.host_id)),
        ("boot_id", Json::str(h.boot_id.clone())),
        ("pid", Json::num(h.pid)),
        ("domain_uuid", Json::str(h.domain_uuid.clone())),
        ("domain_name", Json::str(h.domain_name.clone())),
    ])
}

fn flag(args: &[String], name: &str) -> Result<Option<String>, i32> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => args.get(i + 1).cloned().map(Some).ok_or_else(|| {
            eprintln!("vmlease: {name} needs a value");
            exit::USAGE
        }),
    }
}

pub fn leases(opts: &Opts, args: &[String]) -> i32 {
    let (host, domain) = match (flag(args, "--host"), flag(args, "--domain")) {
        (Ok(h), Ok(d)) => (h, d),
        (Err(c), _) | (_, Err(c)) => return c,
    };
    let host: Option<u16> = match host.map(|h| h.parse::<u16>()) {
        None => None,
        Some(Ok(h)) => Some(h),
        Some(Err(_)) => {
            eprintln!("vmlease: --host takes a host id");
            return exit::USAGE;
        }
    };
    let ctx = match open(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let all = match ctx.leases() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vmlease: {e}");
            return exit::UNKNOWN;
        }
    };
    let mut damaged = 0;
    let mut rows = Vec::new();
    let mut js = Vec::new();
    for (key, rec) in all {
        match rec {
            Ok(r) => {
                let keep = |h: &Holder| {
                    host.map(|x| h.host_id == x).unwrap_or(true)
                        && domain
                            .as_ref()
                            .map(|d| h.domain_uuid.eq_ignore_ascii_case(d))
                            .unwrap_or(true)
                };
                if (host.is_some() || domain.is_some()) && !r.holders.iter().any(keep) {
                    continue;
                }
                let mode = r
                    .mode
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "free".into());
                rows.push(vec![
                    r.resource.clone(),
                    mode.clone(),
                    r.version.to_string(),
                    if r.holders.is_empty() {
                        "-".into()
                    } else {
                        r.holders
                            .iter()
                            .map(holder_text)
                            .collect::<Vec<_>>()
                            .join("; ")
                    },
                ]);
                js.push(Json::obj(vec![
                    ("key", Json::str(key)),
                    ("resource", Json::str(r.resource.clone())),
                    ("mode", Json::str(mode)),
                    ("version", Json::num(r.version)),
                    (
                        "holders",
                        Json::Arr(r.holders.iter().map(holder_json).collect()),
                    ),
                ]));
            }
            Err(e) => {
                damaged += 1;
                rows.push(vec![
                    key.clone(),
                    "DAMAGED".into(),
                    "-".into(),
                    e.to_string(),
                ]);
                js.push(Json::obj(vec![
                    ("key", Json::str(key)),
                    ("error", Json::str(e.to_string())),
                ]));
            }
        }
    }
    if opts.json {
        print_json(Json::Arr(js));
    } else if rows.is_empty() {
        println!("no lease records");
    } else {
        table(&["RESOURCE", "MODE", "VERSION", "HOLDERS"], &rows);
    }
    if damaged > 0 {
        eprintln!("vmlease: {damaged} damaged lease record(s): they are never treated as free");
        exit::NO
    } else {
        exit::OK
    }
}

pub fn can_evacuate(opts: &Opts, args: &[String]) -> i32 {
    let Some(want) = args.first() else {
        eprintln!("vmlease: can-evacuate needs a host id or name");
        return exit::USAGE;
    };
    let ctx = match open(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (raw, slots) = match ctx.hosts() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("vmlease: cannot tell: {e}");
            return exit::UNKNOWN;
        }
    };
    let Some(id) = find_host(&slots, want) else {
        eprintln!(
            "vmlease: no host '{want}' in lockspace {}",
            ctx.cfg.lockspace_dir.display()
        );
        return exit::USAGE;
    };
    let sraw = ctx.slot_raw(&raw, id).to_vec();
    let hv = host_verdict(&ctx, id, &slots[id as usize - 1], &sraw);
    let all = match ctx.leases() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vmlease: cannot tell: {e}");
            return exit::UNKNOWN;
        }
    };
    // The exact rule the plugin applies, for every lease the host holds.
    let mut held = Vec::new();
    let mut free = 0;
    let mut damaged = Vec::new();
    for (key, rec) in &all {
        match rec {
            Ok(r) => {
                for h in r.holders.iter().filter(|h| h.host_id == id) {
                    match ctx.judge(h, &sraw) {
                        Verdict::Free(_) => free += 1,
                        Verdict::Held(why) => held.push(format!("{}: {why}", r.resource)),
                    }
                }
            }
            Err(e) => damaged.push(format!("{key}: {e}")),
        }
    }
    let safe_in = match &hv {
        HostVerdict::NotYet(_, ms) => *ms,
        _ => None,
    };
    let (code, answer) = if !damaged.is_empty() {
        (
            exit::UNKNOWN,
            format!(
                "cannot tell: damaged lease records ({})",
                damaged.join("; ")
            ),
        )
    } else if !held.is_empty() {
        let why = match &hv {
            HostVerdict::Unknown(w) => w.clone(),
            _ => held[0].clone(),
        };
        let code = if matches!(hv, HostVerdict::Unknown(_)) {
            exit::UNKNOWN
        } else {
            exit::NO
        };
        (
            code,
            format!(
                "not yet: {} of {} lease(s) still held; {why}",
                held.len(),
                held.len() + free
            ),
        )
    } else if free > 0 {
        (
            exit::OK,
            format!(
                "yes: all {free} lease(s) of host {id} may be taken over now ({})",
                hv.text()
            ),
        )
    } else {
        match &hv {
            HostVerdict::Safe(w) => (exit::OK, format!("yes: host {id} holds no leases; {w}")),
            HostVerdict::ThisHost => (exit::NO, "no: that is this host".into()),
            HostVerdict::Unknown(w) => (exit::UNKNOWN, format!("cannot tell: {w}")),
            other => (
                exit::NO,
                format!("no: host {id} holds no leases but is {}", other.text()),
            ),
        }
    };
    if opts.json {
        print_json(Json::obj(vec![
            ("host_id", Json::num(id)),
            ("safe", Json::Bool(code == exit::OK)),
            ("answer", Json::str(answer.clone())),
            ("host_verdict", Json::str(hv.word())),
            ("leases_held", Json::num(held.len() as u64)),
            ("leases_takeable", Json::num(free as u64)),
            (
                "safe_in_ms",
                Json::opt_num(safe_in.filter(|_| code != exit::OK)),
            ),
        ]));
    } else if code == exit::OK {
        println!("{answer}");
    } else {
        let when = safe_in
            .map(|ms| format!(" (safe in {} if it stays silent)", secs(ms)))
            .unwrap_or_default();
        eprintln!("{answer}{when}");
    }
    code
}

pub fn release(opts: &Opts, args: &[String]) -> i32 {
    let domain = match flag(args, "--domain") {
        Ok(Some(d)) if is_uuid(&d) => d.to_ascii_lowercase(),
        Ok(_) => {
            eprintln!("vmlease: release needs --domain UUID");
            return exit::USAGE;
        }
        Err(c) => return c,
    };
    let ctx = match open(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(me) = ctx.cfg.host_id else {
        eprintln!("vmlease: host_id is not set in {}", opts.config.display());
        return exit::USAGE;
    };
    let reg = Registry::new(&ctx.cfg.state_dir);
    let entries: Vec<_> = reg
        .list()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.domain_uuid.eq_ignore_ascii_case(&domain))
        .collect();
    if let Some(live) = entries.iter().find(|e| e.proc_id.is_alive()) {
        eprintln!(
            "vmlease: refusing: QEMU pid {} of domain '{}' is running on this host and holds these leases",
            live.proc_id.pid, live.domain_name
        );
        return exit::NO;
    }
    let eng = Engine {
        ls: ctx.ls.clone(),
        host_id: me,
        boot_id: ctx.boot_id.clone(),
        dead_ms: ctx.cfg.timing.host_dead_timeout,
        lock_timeout_ms: ctx.cfg.lock_timeout,
        view: None,
        process_alive: std::sync::Arc::new(|p: ProcId| p.is_alive()),
    };
    let all = match ctx.leases() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vmlease: {e}");
            return exit::UNKNOWN;
        }
    };
    let mut released = 0;
    let mut code = exit::OK;
    for (key, rec) in all {
        let Ok(r) = rec else { continue };
        let ours = |h: &Holder| {
            h.host_id == me
                && h.boot_id == ctx.boot_id
                && h.domain_uuid.eq_ignore_ascii_case(&domain)
        };
        if !r.holders.iter().any(ours) {
            continue;
        }
        // Never free a holder whose process still runs here.
        if r.holders.iter().filter(|h| ours(h)).any(|h| {
            ProcId {
                pid: h.pid,
                start: h.pid_start,
            }
            .is_alive()
        }) {
            eprintln!(
                "vmlease: refusing to release {}: its QEMU is running",
                r.resource
            );
            code = exit::NO;
            continue;
        }
        let (e2, k2) = (eng.clone(), key.clone());
        let pred_dom = domain.clone();
        let (me2, boot2) = (me, ctx.boot_id.clone());
        let res = crate::deadline::run(
            ctx.cfg.io_timeout + ctx.cfg.lock_timeout,
            "release lease",
            &ctx.ls.lease_path(&key),
            move || {
                e2.release_matching(&k2, &move |h: &Holder| {
                    h.host_id == me2
                        && h.boot_id == boot2
                        && h.domain_uuid.eq_ignore_ascii_case(&pred_dom)
                })
            },
        );
        match res {
            Ok(gone) if !gone.is_empty() => {
                released += 1;
                println!(
                    "released {} ({})",
                    r.resource,
                    gone.iter().map(holder_text).collect::<Vec<_>>().join("; ")
                );
                log::warn!("admin release of {} for domain {domain}", r.resource);
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("vmlease: {e}");
                code = exit::NO;
            }
        }
    }
    for e in &entries {
        let _ = reg.remove(e.proc_id);
    }
    if released == 0 && code == exit::OK {
        println!("no lease of domain {domain} is held by this host");
    }
    code
}

pub fn clear_fence(opts: &Opts) -> i32 {
    let cfg = match load(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(cause) = crate::daemon::fence::load_marker(&cfg.state_dir) else {
        println!("this host is not fenced");
        return exit::OK;
    };
    let req = cfg.state_dir.join("clear-fence");
    if let Err(e) = std::fs::write(&req, b"") {
        eprintln!("vmlease: {}", Error::io("write", &req, e));
        return exit::NO;
    }
    // The daemon consumes the request at its next tick.
    let start = boottime_ms();
    while boottime_ms() - start < 5_000 {
        if crate::daemon::fence::load_marker(&cfg.state_dir).is_none() {
            println!(
                "fence cleared ({} is over); this host may run protected VMs again",
                cause.describe()
            );
            return exit::OK;
        }
        if !req.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(&req);
    eprintln!(
        "vmlease: the fence was not cleared: {} still holds, or the watchdog daemon is not running",
        cause.describe()
    );
    exit::NO
}

pub fn dump(opts: &Opts, args: &[String]) -> i32 {
    let Some(path) = args.first() else {
        eprintln!("vmlease: dump needs a file");
        return exit::USAGE;
    };
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("vmlease: {}", Error::io("read", path, e));
            return exit::USAGE;
        }
    };
    let text_start = String::from_utf8_lossy(&data[..data.len().min(32)]).to_string();
    let result: Result<Json, String> = if text_start.starts_with("vmlease-lease") {
        LeaseRecord::decode(&data).map(|r| {
            Json::obj(vec![
                ("kind", Json::str("lease")),
                ("key", Json::str(r.key)),
                ("resource", Json::str(r.resource)),
                ("version", Json::num(r.version)),
                (
                    "mode",
                    Json::str(
                        r.mode
                            .map(|m| m.to_string())
                            .unwrap_or_else(|| "free".into()),
                    ),
                ),
                (
                    "holders",
                    Json::Arr(r.holders.iter().map(holder_json).collect()),
                ),
            ])
        })
    } else if text_start.starts_with("vmlease-status") {
        Status::decode(&data).map(|s| {
            Json::obj(vec![
                ("kind", Json::str("status")),
                ("host_id", Json::num(s.host_id)),
                ("state", Json::str(s.state.as_str())),
                ("peers", Json::num(s.peers.len() as u64)),
            ])
        })
    } else if text_start.starts_with("vmlease-proc") {
        crate::registry::Entry::decode(&data).map(|e| {
            Json::obj(vec![
                ("kind", Json::str("registry entry")),
                ("pid", Json::num(e.proc_id.pid)),
                ("domain_name", Json::str(e.domain_name)),
                (
                    "keys",
                    Json::Arr(e.keys.into_iter().map(|(k, _)| Json::str(k)).collect()),
                ),
            ])
        })
    } else if data.len() % crate::hosts::SLOT_SIZE == 0 && !data.is_empty() {
        let slots = crate::hosts::decode_table(&data);
        Ok(Json::Arr(
            slots
                .iter()
                .enumerate()
                .filter(|(_, s)| !matches!(s, Slot::Empty))
                .map(|(i, s)| match s {
                    Slot::Record(r) => host_json(r),
                    Slot::Corrupt(why) => Json::obj(vec![
                        ("host_id", Json::num(i as u64 + 1)),
                        ("error", Json::str(why.clone())),
                    ]),
                    Slot::Empty => Json::Null,
                })
                .collect(),
        ))
    } else {
        Err("not a vmlease record (unknown format)".into())
    };
    match result {
        Ok(j) => {
            if opts.json {
                print_json(j);
            } else {
                print!("{}", String::from_utf8_lossy(&data).trim_end_matches('\0'));
                if !text_start.starts_with("vmlease-") {
                    println!("{}", j.render());
                }
                println!("-- {path}: valid");
            }
            exit::OK
        }
        Err(why) => {
            eprintln!("vmlease: {path}: DAMAGED: {why}");
            exit::NO
        }
    }
}

fn host_json(r: &HostRecord) -> Json {
    Json::obj(vec![
        ("host_id", Json::num(r.host_id)),
        ("host_name", Json::str(r.host_name.clone())),
        ("boot_id", Json::str(r.boot_id.clone())),
        ("counter", Json::num(r.counter)),
        ("state", Json::str(r.state.as_str())),
        (
            "host_dead_timeout_ms",
            Json::num(r.timing.host_dead_timeout),
        ),
    ])
}
