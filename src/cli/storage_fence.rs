//! `vmlease storage-fence HOST`: stop a silent host's writes at the
//! storage layer (a Ceph blocklist of the addresses it published) and
//! write the `storage-fenced` verdict that frees its leases (takeover
//! rule 5). The sequence is [`crate::storage_fence::fence_host`]; this
//! is the shell around it.
#![forbid(unsafe_code)]

use std::time::Duration;

use super::json::Json;
use super::view::{Ctx, Silence};
use super::{exit, fail, open, print_json, Args, Opts};
use crate::config::secs;
use crate::storage_fence::ceph::CephCli;
use crate::storage_fence::{fence_host, FenceError, FenceOpts};

/// Default lifetime of the blocklist entries: a week (they must outlive
/// the fenced host's host_dead_timeout; `clear-fence` removes them).
pub const DEFAULT_EXPIRE_S: u64 = 7 * 86_400;

/// The least silence that allows a fence, by default: three renewals and
/// a margin (a host one renewal late is slow, not gone).
pub fn default_min_silence_ms(ctx: &Ctx) -> u64 {
    3 * ctx.cfg.timing.renew_interval + 1000
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
        match args.flag(flag) {
            None => Ok(default),
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .map(|x| (x * 1000.0) as u64)
                .ok_or_else(|| fail(exit::USAGE, format!("{flag} {v}: not a number of seconds"))),
        }
    };
    let expire_ms = match num("--expire", DEFAULT_EXPIRE_S * 1000) {
        Ok(v) => v,
        Err(c) => return c,
    };
    let after_ms = match num("--after", default_min_silence_ms(&ctx)) {
        Ok(v) => v,
        Err(c) => return c,
    };
    let timeout_ms = match num("--timeout", 30_000) {
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
        timeout: Duration::from_millis(timeout_ms.min(10_000)),
    };
    match fence_host(&ctx.ls, &ceph, host, &o) {
        Ok(f) => {
            let v = &f.verdict;
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
