//! `prepare begin` and `migrate begin`: refuse to start (or receive) a
//! domain on a host that is not protected, with one line virsh shows.
#![forbid(unsafe_code)]

use super::{say, REFUSE};
use crate::config::Config;
use crate::deadline;
use crate::error::{Error, Result};
use crate::lockspace::Lockspace;

/// Why this host may not run protected VMs now, if it may not: the
/// plugin's own check (configuration, watchdog status, renewal age, host
/// state), then the lockspace within io_timeout.
pub fn unprotected_because(cfg: &Result<Config>) -> Option<String> {
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => return Some(e.to_string()),
    };
    let status = match crate::status::protected_status(cfg) {
        Ok((_, _, st)) => st,
        Err(e) => return Some(e.to_string()),
    };
    let dir = cfg.lockspace_dir.clone();
    match deadline::run(cfg.io_timeout, "open lockspace", &dir.clone(), move || {
        Lockspace::open(&dir)
    }) {
        Ok(ls) => status
            .check_same_lockspace(&ls)
            .err()
            .map(|why| Error::Unprotected(why).to_string()),
        Err(e) => Some(e.to_string()),
    }
}

/// `what`: "start" or "accept an incoming migration of".
pub fn run(cfg: &Result<Config>, name: &str, what: &str) -> i32 {
    match unprotected_because(cfg) {
        None => 0,
        Some(why) => {
            say(&format!("refusing to {what} '{name}': {why}"));
            log::warn!("hook: refused to {what} domain '{name}': {why}");
            REFUSE
        }
    }
}
