//! The hook's lockspace work runs in a worker ([`crate::detach`]): libvirtd
//! waits, under the domain's lock, for the hook process to exit, which a
//! thread stuck in D on hung storage would keep it from ever doing. The
//! hook answers libvirt as soon as the worker has answered, or at the
//! deadline with the operation's safe status; a stuck worker is left
//! behind, not killed (its own backstop ends it when it can).
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;

use super::say;
use crate::detach::{Outcome, Worker};

/// The hook's worker: `VMLEASE_HOOK_WORKER=1` in its environment.
pub const WORKER: Worker = Worker {
    env: "VMLEASE_HOOK_WORKER",
    kill: false,
};

/// Runs `vmlease --config CONFIG hook ARGS` as a worker with `xml` on its
/// stdin, relays its stderr and returns its exit status; after `budget_ms`
/// returns `safe` instead, with a line saying so (`what` names the
/// operation).
pub fn run(
    config: &Path,
    args: &[String],
    xml: &[u8],
    budget_ms: u64,
    safe: i32,
    what: &str,
) -> i32 {
    let mut argv: Vec<OsString> = vec!["--config".into(), config.into(), "hook".into()];
    argv.extend(args.iter().map(OsString::from));
    let relay = |stderr: &[u8]| {
        let _ = std::io::stderr().lock().write_all(stderr);
    };
    match WORKER.run(&argv, Some(xml), budget_ms) {
        Outcome::Answered { code, stderr, .. } => {
            relay(&stderr);
            code.unwrap_or(safe)
        }
        Outcome::Exited { status, stderr, .. } => {
            relay(&stderr);
            status.code().unwrap_or(safe)
        }
        Outcome::NoAnswer { pid, stderr, .. } => {
            relay(&stderr);
            say(&format!(
                "{what}: no answer within {budget_ms} ms (storage hung?); giving up ({}); \
                 worker pid {pid} is left to finish when the storage answers",
                if safe == 0 { "going on" } else { "refusing" },
            ));
            safe
        }
        Outcome::Failed(e) => {
            say(&format!("{what}: {e}"));
            safe
        }
    }
}
