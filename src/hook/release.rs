//! `release end`: the domain has stopped; release this host's leases of
//! it at once instead of waiting for the watchdog daemon's reaper. Only
//! holders whose QEMU process has exited go (named by pid and start time,
//! so a reused pid cannot keep or lose a lease). The exit status is always
//! 0 (libvirt ignores it); failures are reported and left to the daemon.
#![forbid(unsafe_code)]

use std::sync::Arc;

use super::say;
use crate::config::Config;
use crate::deadline;
use crate::engine::Engine;
use crate::lease::Holder;
use crate::lockspace::Lockspace;
use crate::process::{self, ProcId};
use crate::registry::{Entry, Registry};
use crate::resource::Resource;

pub fn run(cfg: &Config, name: &str, uuid: &str) -> i32 {
    let Some(me) = cfg.host_id else { return 0 };
    let reg = Registry::new(&cfg.state_dir);
    let mine: Vec<Entry> = match reg.list() {
        Ok(l) => l
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.domain_uuid.eq_ignore_ascii_case(uuid))
            .collect(),
        Err(e) => {
            say(&format!(
                "domain '{name}': {e}; the watchdog daemon releases its leases"
            ));
            return 0;
        }
    };
    let (running, gone): (Vec<Entry>, Vec<Entry>) =
        mine.into_iter().partition(|e| e.proc_id.is_alive());
    for e in &running {
        log::info!(
            "hook: QEMU pid {} of domain '{name}' still runs; its leases stay",
            e.proc_id.pid
        );
    }
    // The registry's keys of the exited processes, and the domain lease
    // even if the registry lost track of it.
    let mut keys: Vec<String> = gone
        .iter()
        .flat_map(|e| e.keys.iter().map(|(k, _)| k.clone()))
        .collect();
    if cfg.domain_lease {
        keys.push(Resource::domain(uuid).key());
    }
    keys.sort();
    keys.dedup();
    let boot = match process::boot_id() {
        Ok(b) => b,
        Err(e) => {
            say(&format!("domain '{name}': cannot read the boot id: {e}"));
            return 0;
        }
    };
    let dir = cfg.lockspace_dir.clone();
    let (lock_ms, dead_ms) = (cfg.lock_timeout, cfg.timing.host_dead_timeout);
    let budget = cfg.io_timeout + cfg.lock_timeout + 100 * keys.len() as u64;
    let domain = uuid.to_string();
    let res = deadline::run(budget, "release leases", &dir.clone(), move || {
        let eng = Engine {
            ls: Lockspace::open(&dir)?,
            host_id: me,
            boot_id: boot.clone(),
            dead_ms,
            // No view: rule 4 never applies here.
            trust_unsafe_peers: false,
            lock_timeout_ms: lock_ms,
            view: None,
            process_alive: Arc::new(|p: ProcId| p.is_alive()),
        };
        // This host's holders of the domain whose QEMU has exited.
        let stale = |h: &Holder| {
            h.host_id == me
                && h.boot_id == boot
                && h.domain_uuid.eq_ignore_ascii_case(&domain)
                && !ProcId {
                    pid: h.pid,
                    start: h.pid_start,
                }
                .is_alive()
        };
        let mut released = Vec::new();
        let mut failed = Vec::new();
        for key in &keys {
            match eng.release_matching(key, &stale) {
                Ok(gone) if !gone.is_empty() => released.push(key.clone()),
                Ok(_) => {}
                Err(e) => failed.push(e.to_string()),
            }
        }
        Ok((released, failed))
    });
    match res {
        Ok((released, failed)) => {
            if !released.is_empty() {
                log::info!(
                    "hook: released {} lease(s) of stopped domain '{name}' ({uuid}): {}",
                    released.len(),
                    released.join(", ")
                );
            }
            if failed.is_empty() {
                // An entry whose acquire may still be in flight stays:
                // the daemon sweeps its leases until that call ends.
                for e in gone
                    .iter()
                    .filter(|e| e.live_intents(&|c| c.is_alive()).is_empty())
                {
                    if let Err(err) = reg.remove(e.proc_id) {
                        say(&format!("domain '{name}': {err}"));
                    }
                }
            } else {
                say(&format!(
                    "domain '{name}': leases not released yet ({}); the watchdog daemon will",
                    failed.join("; ")
                ));
            }
        }
        Err(e) => say(&format!(
            "domain '{name}': leases not released yet ({e}); the watchdog daemon will"
        )),
    }
    0
}
