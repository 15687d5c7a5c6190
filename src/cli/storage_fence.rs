//! `vmlease storage-fence HOST`: stop a silent host's writes at the
//! storage layer (a Ceph blocklist of the addresses it published) and
//! write the `storage-fenced` verdict that frees its leases (takeover
//! rule 5). The sequence is [`crate::storage_fence::fence_host`]; this
//! is the shell around it.
#![forbid(unsafe_code)]

use std::time::Duration;

use super::json::Json;
use super::view::Ctx;
use super::{exit, fail, open, print_json, Args, Opts};
use crate::config::secs;
use crate::storage_fence::ceph::{verdict_key, CephCli};
use crate::storage_fence::{fence_host, FenceError, FenceOpts, Found, Verdict};
use crate::takeover::host::Silence;

/// Default lifetime of the blocklist entries: a week (they must outlive
/// the fenced host's host_dead_timeout; `clear-fence` removes them).
pub const DEFAULT_EXPIRE_S: u64 = 7 * 86_400;

/// How long the fence waits for the blocklist to be committed and
/// delivered, by default (`--timeout`).
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// The deadline of each ceph command of a fence with `--timeout` `t` ms.
pub fn ceph_timeout_ms(t: u64) -> u64 {
    t.min(10_000)
}

/// The least silence that allows a fence, by default: three renewals and
/// a margin (a host one renewal late is slow, not gone).
pub fn default_min_silence_ms(ctx: &Ctx) -> u64 {
    3 * ctx.cfg.timing.renew_interval + 1000
}

/// A flag given in seconds, in ms; `default` when absent.
pub fn secs_flag_ms(args: &Args, flag: &str, default: u64) -> Result<u64, String> {
    match args.flag(flag) {
        None => Ok(default),
        Some(v) => v
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .map(|x| (x * 1000.0) as u64)
            .ok_or_else(|| format!("{flag} {v}: not a number of seconds")),
    }
}

pub fn run(opts: &Opts, args: &Args) -> i32 {
    let ctx = match open(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(me) = ctx.cfg.host_id else {
        return fail(exit::USAGE, "host_id is not set in the configuration");
    };
    let num = |flag: &str, default: u64| -> Result<u64, i32> {
        secs_flag_ms(args, flag, default).map_err(|e| fail(exit::USAGE, e))
    };
    let expire_ms = match num("--expire", DEFAULT_EXPIRE_S * 1000) {
        Ok(v) => v,
        Err(c) => return c,
    };
    let after_ms = match num("--after", default_min_silence_ms(&ctx)) {
        Ok(v) => v,
        Err(c) => return c,
    };
    let timeout_ms = match num("--timeout", DEFAULT_TIMEOUT_MS) {
        Ok(v) => v,
        Err(c) => return c,
    };
    let table = match ctx.table() {
        Ok(t) => t,
        Err(e) => return fail(exit::UNKNOWN, e),
    };
    let host = match table.find_host(&args.positional[0]) {
        Ok(h) => h,
        Err(e) => return fail(exit::USAGE, e),
    };
    let silence = match ctx.silence(&table, host) {
        Silence::Silent(ms) => Some(ms),
        Silence::Renewing => Some(0),
        Silence::Unknown => None,
    };
    let o = FenceOpts {
        expire_s: expire_ms / 1000,
        timeout: Duration::from_millis(timeout_ms),
        client_asoks: args
            .flag("--client-asok")
            .map(|a| vec![a.into()])
            .unwrap_or_default(),
        observed_silence_ms: silence,
        min_silence_ms: after_ms,
        writer_host: me,
        writer_name: ctx
            .cfg
            .host_name
            .clone()
            .unwrap_or_else(crate::process::hostname),
        wall: crate::clock::Clock::wall_secs(&crate::clock::SystemClock),
    };
    let ceph = CephCli {
        timeout: Duration::from_millis(ceph_timeout_ms(timeout_ms)),
    };
    match fence_host(&fence_view(&ctx), &ceph, host, &o) {
        Ok(f) => {
            let v = &f.verdict;
            // A copy the fenced host can read while blocklisted.
            let key = verdict_key(ctx.ls.uuid.as_deref().unwrap_or("-"), v.host_id);
            let text = String::from_utf8_lossy(&v.encode()).into_owned();
            if let Err(e) = ceph.config_key_set(&key, &text) {
                eprintln!(
                    "vmlease: warning: the verdict's copy for host {}: {e}",
                    v.host_id
                );
            }
            if opts.json {
                print_json(Json::obj(vec![
                    ("fenced", Json::Bool(true)),
                    ("host_id", Json::num(v.host_id)),
                    ("boot_id", Json::str(&v.boot_id)),
                    ("addrs", Json::Arr(v.addrs.iter().map(Json::str).collect())),
                    ("osdmap_epoch", Json::num(v.osdmap_epoch)),
                    ("commit_ms", Json::num(f.commit_ms)),
                    ("delivered_ms", Json::num(f.delivered_ms)),
                    ("total_ms", Json::num(f.total_ms)),
                ]));
            } else {
                println!(
                    "host {} ({}) storage-fenced: blocklisted {} (osdmap epoch {}, committed after {}, delivered after {}); its leases are free now (takeover rule 5)",
                    v.host_id,
                    super::cell(&v.host_name),
                    v.addrs.join(" "),
                    v.osdmap_epoch,
                    secs(f.commit_ms),
                    secs(f.delivered_ms)
                );
            }
            exit::OK
        }
        Err(e) => {
            if opts.json {
                print_json(Json::obj(vec![
                    ("fenced", Json::Bool(false)),
                    ("host_id", Json::num(host)),
                    ("refused", Json::Bool(matches!(e, FenceError::Refused(_)))),
                    ("message", Json::str(e.to_string())),
                ]));
                exit::NO
            } else {
                fail(exit::NO, e)
            }
        }
    }
}

/// The lockspace as the fence reads it: with `liveness_rados`, the
/// silent host's records are read around the MDS (through RADOS, in a
/// worker child of this program, as the daemon's renewals), so that its
/// CephFS capabilities cannot hold the fence until its session times out.
fn fence_view(ctx: &Ctx) -> crate::lockspace::Lockspace {
    match &ctx.cfg.liveness_rados {
        Some(r) => ctx.ls.clone().via_rados(crate::rados::RadosConf {
            conf: r.conf.clone(),
            client_id: r.client_id.clone(),
            timeout_ms: ctx.cfg.io_timeout,
            worker: crate::rados::RadosConf::DAEMON_EXE.into(),
        }),
        None => ctx.ls.clone(),
    }
}

/// How long `status` and `clear-fence` wait for the monitors' copy of a
/// verdict.
pub const VERDICT_LOOKUP_MS: u64 = 2_500;

/// This host's own storage-fence verdict, and where it was found: the
/// lockspace (when `lockspace_ok`; bounded by the I/O deadline) or, when
/// that cannot be read (a blocklisted host), the monitors' copy.
pub fn own_verdict(
    cfg: &crate::config::Config,
    uuid: &str,
    lockspace_ok: bool,
) -> Result<Option<(Verdict, &'static str)>, String> {
    let Some(me) = cfg.host_id else {
        return Ok(None);
    };
    if lockspace_ok {
        let dir = cfg.lockspace_dir.clone();
        let path = crate::storage_fence::verdict_path(&dir, me);
        let r = crate::deadline::run(
            cfg.io_timeout,
            "read storage-fence verdict",
            &path,
            move || crate::storage_fence::read_verdict(&dir, me),
        );
        match r {
            Ok(Found::Valid(v)) => return Ok(Some((v, "lockspace"))),
            Ok(Found::Damaged(why)) => {
                return Err(format!("damaged verdict in the lockspace: {why}"))
            }
            Ok(Found::None) => return Ok(None),
            Err(_) => {} // ask the monitors
        }
    }
    let ceph = CephCli {
        timeout: Duration::from_millis(VERDICT_LOOKUP_MS),
    };
    match ceph.config_key_get(&verdict_key(uuid, me))? {
        None => Ok(None),
        Some(text) => match crate::storage_fence::decode_verdict(me, Some(text.as_bytes())) {
            Found::Valid(v) => Ok(Some((v, "Ceph monitors"))),
            Found::Damaged(why) => Err(format!("damaged verdict copy on the monitors: {why}")),
            Found::None => Ok(None),
        },
    }
}

/// What `clear-fence` did about a storage fence of this host.
pub enum Cleared {
    /// This host has no storage-fence verdict.
    NotStorageFenced,
    /// Blocklist entries and verdict removed (the message says which).
    Done(String),
    /// Not (fully) cleared: exit code and the message with what to do.
    Blocked(i32, String),
}

/// The storage half of `clear-fence` on a storage-fenced host: once its
/// daemon reports every leased QEMU dead (fenced-clean), removes the
/// blocklist entries of the verdict, then the verdict itself through the
/// lockspace mount - which works only once that mount is a new client
/// (a blocklisted CephFS client stays fenced): otherwise it prints the
/// commands that remount it.
pub fn clear(cfg: &crate::config::Config) -> Cleared {
    let st = crate::status::Status::read(&cfg.state_dir).ok().flatten();
    let uuid = st
        .as_ref()
        .map(|s| s.lockspace_uuid.clone())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "-".into());
    let (v, _) = match own_verdict(cfg, &uuid, true) {
        Ok(Some(x)) => x,
        Ok(None) => return Cleared::NotStorageFenced,
        Err(e) if e.contains("damaged") => {
            return Cleared::Blocked(
                exit::NO,
                format!("{e}: inspect it ('vmlease dump'); not cleared"),
            )
        }
        Err(_) => return Cleared::NotStorageFenced,
    };
    let state = st.as_ref().map(|s| s.state);
    if state != Some(crate::hosts::HostState::FencedClean) {
        return Cleared::Blocked(
            exit::NO,
            format!(
                "{}; this host's daemon reports {} - the blocklist stays until every leased QEMU is dead (fenced-clean)",
                v.describe(),
                state.map(|s| s.to_string()).unwrap_or_else(|| "nothing (not running)".into())
            ),
        );
    }
    let ceph = CephCli {
        timeout: Duration::from_secs(10),
    };
    for a in &v.addrs {
        if let Err(e) = crate::storage_fence::ceph::Ceph::blocklist_rm(&ceph, a) {
            if !e.contains("isn't blocklisted") && !e.contains("not blocklisted") {
                return Cleared::Blocked(
                    exit::NO,
                    format!("{}; removing the blocklist entry failed: {e}", v.describe()),
                );
            }
        }
    }
    let dir = cfg.lockspace_dir.clone();
    let me = v.host_id;
    let path = crate::storage_fence::verdict_path(&dir, me);
    let removed = crate::deadline::run(
        cfg.io_timeout,
        "remove storage-fence verdict",
        &path,
        move || crate::storage_fence::remove_verdict(&dir, me),
    );
    if let Err(e) = removed {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mp = crate::sharedfs::find_mount(&mountinfo, &cfg.lockspace_dir)
            .map(|m| m.mount_point.display().to_string())
            .unwrap_or_else(|| "MOUNTPOINT".into());
        return Cleared::Blocked(
            exit::NO,
            format!(
                "blocklist entries {} removed; the lockspace mount is still the blocklisted client ({e}). \
                 Remount it, then run 'vmlease clear-fence' again:\n  \
                 umount -l {mp} && mount {mp}\n  \
                 (ceph-fuse by hand: fusermount -uz {mp} && ceph-fuse {mp})",
                v.addrs.join(" ")
            ),
        );
    }
    let _ = ceph.config_key_rm(&verdict_key(&uuid, me));
    Cleared::Done(format!(
        "storage fence by host {} removed (blocklist entries {} and the verdict)",
        v.writer_host,
        v.addrs.join(" ")
    ))
}

/// How long this host's daemon has seen `host` (id or name) silent
/// (None: unknown host, no view, or the lockspace unreadable).
pub fn observed_silence(cfg: &crate::config::Config, host: &str) -> Option<u64> {
    let ctx = Ctx::open(cfg.clone()).ok()?;
    let table = ctx.table().ok()?;
    let id = table.find_host(host).ok()?;
    match ctx.silence(&table, id) {
        Silence::Silent(ms) => Some(ms),
        Silence::Renewing => Some(0),
        Silence::Unknown => None,
    }
}

/// The fence as the controller runs it: `host` (id or name) silent for
/// at least `after_ms` as observed here. Ok: a one-line summary.
pub fn fence_named(
    cfg: &crate::config::Config,
    host: &str,
    after_ms: u64,
) -> Result<String, String> {
    let ctx = Ctx::open(cfg.clone()).map_err(|e| e.to_string())?;
    let me = cfg.host_id.ok_or("host_id is not set")?;
    let table = ctx.table().map_err(|e| e.to_string())?;
    let id = table.find_host(host)?;
    let silence = match ctx.silence(&table, id) {
        Silence::Silent(ms) => Some(ms),
        Silence::Renewing => Some(0),
        Silence::Unknown => None,
    };
    let o = FenceOpts {
        expire_s: DEFAULT_EXPIRE_S,
        timeout: Duration::from_secs(30),
        client_asoks: Vec::new(),
        observed_silence_ms: silence,
        min_silence_ms: after_ms,
        writer_host: me,
        writer_name: cfg
            .host_name
            .clone()
            .unwrap_or_else(crate::process::hostname),
        wall: crate::clock::Clock::wall_secs(&crate::clock::SystemClock),
    };
    let ceph = CephCli {
        timeout: Duration::from_secs(10),
    };
    let f = fence_host(&fence_view(&ctx), &ceph, id, &o).map_err(|e| e.to_string())?;
    let v = &f.verdict;
    let key = verdict_key(ctx.ls.uuid.as_deref().unwrap_or("-"), v.host_id);
    let _ = ceph.config_key_set(&key, &String::from_utf8_lossy(&v.encode()));
    Ok(format!(
        "blocklisted {} (osdmap epoch {}, committed after {}, delivered after {})",
        v.addrs.join(" "),
        v.osdmap_epoch,
        secs(f.commit_ms),
        secs(f.delivered_ms)
    ))
}
