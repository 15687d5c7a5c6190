//! `vmlease clear-fence`: ask the watchdog daemon to end a fence whose
//! cause is over. The daemon decides; this command asks and waits.
#![forbid(unsafe_code)]

use std::time::Duration;

use super::json::Json;
use super::{exit, load, print_json, Opts};
use crate::clock::boottime_ms;
use crate::daemon::fence::load_marker;
use crate::error::Error;
use crate::status::Status;

/// How long the daemon gets to answer (it looks at every tick).
const WAIT_MS: u64 = 5_000;

pub fn clear(opts: &Opts) -> i32 {
    let cfg = match load(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let report = |code: i32, cleared: bool, cause: Option<&str>, msg: String| {
        if opts.json {
            print_json(Json::obj(vec![
                ("cleared", Json::Bool(cleared)),
                ("cause", cause.map(Json::str).unwrap_or(Json::Null)),
                ("message", Json::str(msg)),
            ]));
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
    let req = cfg.state_dir.join("clear-fence");
    if let Err(e) = std::fs::write(&req, b"") {
        let e = Error::io("write", &req, e);
        return report(exit::NO, false, Some(cause.as_str()), e.to_string());
    }
    let start = boottime_ms();
    let mut consumed_at = None;
    while boottime_ms() - start < WAIT_MS {
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
            let written = Status::read(&cfg.state_dir)
                .ok()
                .flatten()
                .map(|s| s.written_ms)
                .unwrap_or(0);
            if written > t && load_marker(&cfg.state_dir).is_some() {
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
            "the fence was not cleared: {} still holds, or the watchdog daemon is not running",
            cause.describe()
        ),
    )
}
