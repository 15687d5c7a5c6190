//! `vmlease clear-fence`: ask the watchdog daemon to end a fence whose
//! cause is over. The daemon decides; this command asks and waits.
#![forbid(unsafe_code)]

use std::time::Duration;

use serde::Serialize;

use super::{exit, load, print_json, Opts};
use crate::clock::boottime_ms;
use crate::daemon::fence::{load_marker, Cause};
use crate::error::Error;
use crate::status::Status;

/// How long the daemon gets to answer (it looks at every tick).
const WAIT_MS: u64 = 5_000;

/// `clear-fence --json`.
#[derive(Serialize)]
struct ClearedJson<'a> {
    cleared: bool,
    cause: Option<&'a str>,
    message: String,
}

pub fn clear(opts: &Opts) -> i32 {
    let cfg = match load(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let report = |code: i32, cleared: bool, cause: Option<&str>, msg: String| {
        if opts.json {
            print_json(ClearedJson {
                cleared,
                cause,
                message: msg,
            });
        } else if code == exit::OK {
            println!("{msg}");
        } else {
            eprintln!("vmlease: {msg}");
        }
        code
    };
    let Some(cause) = load_marker(&cfg.state_dir) else {
        return report(exit::OK, false, None, "this host is not fenced".into());
    };
    // Storage-fenced by another host: the blocklist and the verdict go
    // first (the daemon's renewals cannot succeed before).
    if matches!(cause, Cause::Storage | Cause::StorageFenced) {
        match super::storage_fence::clear(&cfg) {
            super::storage_fence::Cleared::NotStorageFenced => {}
            super::storage_fence::Cleared::Done(msg) if opts.json => eprintln!("{msg}"),
            super::storage_fence::Cleared::Done(msg) => println!("{msg}"),
            super::storage_fence::Cleared::Blocked(code, msg) => {
                return report(code, false, Some(cause.as_str()), msg)
            }
        }
    }
    let req = cfg.state_dir.join("clear-fence");
    if let Err(e) = std::fs::write(&req, b"") {
        let e = Error::io("write", &req, e);
        return report(exit::NO, false, Some(cause.as_str()), e.to_string());
    }
    // A host id collision is cleared by claiming the slot again, as at
    // start: watching it for up to host_dead_timeout, then the claim wait.
    let collision = cause == Cause::HostIdCollision;
    let wait_ms = if collision {
        let t = &cfg.timing;
        WAIT_MS
            + t.host_dead_timeout
            + crate::collision::claim_wait_ms(cfg.io_timeout, t.renew_interval, None)
            + 2 * t.renew_interval
    } else {
        WAIT_MS
    };
    if collision && !opts.json {
        println!(
            "re-claiming host id {}: this takes up to {} while the daemon makes sure no other machine writes its slot",
            cfg.host_id.unwrap_or(0),
            crate::config::secs(wait_ms - WAIT_MS)
        );
    }
    let start = boottime_ms();
    let mut consumed_at = None;
    let mut why = String::new();
    while boottime_ms() - start < wait_ms {
        if load_marker(&cfg.state_dir).is_none() {
            return report(
                exit::OK,
                true,
                Some(cause.as_str()),
                format!(
                    "fence cleared ({} is over); this host may run protected VMs again",
                    cause.describe()
                ),
            );
        }
        // The daemon takes the request at the start of a tick and decides
        // in it: once a status written after that tick shows the fence
        // still there, it was refused.
        if consumed_at.is_none() && !req.exists() {
            consumed_at = Some(boottime_ms());
        }
        if let Some(t) = consumed_at {
            let st = Status::read(&cfg.state_dir).ok().flatten();
            let written = st.as_ref().map(|s| s.written_ms).unwrap_or(0);
            let reason = st.map(|s| s.reason).unwrap_or_default();
            let reclaiming = collision && reason.contains("re-claiming");
            if written > t && load_marker(&cfg.state_dir).is_some() && !reclaiming {
                if let Some((_, w)) = reason.split_once("fence not cleared: ") {
                    why = format!(": {w}");
                }
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(&req);
    report(
        exit::NO,
        false,
        Some(cause.as_str()),
        format!(
            "the fence was not cleared: {} still holds, or the watchdog daemon is not running{why}",
            cause.describe()
        ),
    )
}
