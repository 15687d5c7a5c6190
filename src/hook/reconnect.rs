//! `reconnect begin`: libvirtd restarted and found the domain's QEMU still
//! running. libvirt never asks the lock manager here, so the hook checks:
//! if one of the domain's exclusive leases now names a holder on another
//! host, the lease was taken over while libvirtd was away and this QEMU
//! must not run on - exit 1 and libvirt kills it. Everything else keeps
//! the VM: leases still ours or released (a paused VM holds none), and
//! storage that does not answer in time (the watchdog fences if it is
//! really gone; killing VMs because storage is slow would be worse).
#![forbid(unsafe_code)]

use super::{say, KILL};
use crate::config::Config;
use crate::deadline;
use crate::error::Error;
use crate::lease::Mode;
use crate::lockspace::Lockspace;
use crate::registry::Registry;
use crate::resource::Resource;

pub fn run(cfg: &Config, name: &str, uuid: &str) -> i32 {
    let Some(me) = cfg.host_id else { return 0 };
    let reg = Registry::new(&cfg.state_dir);
    let entries: Vec<_> = reg
        .list()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.domain_uuid.eq_ignore_ascii_case(uuid) && e.proc_id.is_alive())
        .collect();
    // Every lease the registry lists for the domain's running QEMU, and
    // the domain lease even if the registry lost track of it.
    let mut keys: Vec<(String, String)> = entries.iter().flat_map(|e| e.keys.clone()).collect();
    if cfg.domain_lease {
        let d = Resource::domain(uuid);
        keys.push((d.key(), d.name));
    }
    keys.sort();
    keys.dedup();
    let dir = cfg.lockspace_dir.clone();
    let budget = cfg.io_timeout + 10 * keys.len() as u64;
    let res = deadline::run(budget, "check leases", &dir.clone(), move || {
        let ls = Lockspace::open(&dir)?;
        let mut lost = Vec::new();
        let mut unchecked = Vec::new();
        let mut free = Vec::new();
        for (key, resource) in &keys {
            let r = match ls.read_lease(key, resource) {
                Ok(r) => r,
                Err(e @ Error::Corrupt { .. }) => {
                    unchecked.push(e.to_string());
                    continue;
                }
                Err(e) => return Err(e),
            };
            if r.holders.is_empty() {
                free.push(r.resource.clone());
                continue;
            }
            // A shared lease has holders on other hosts by design.
            if r.mode != Some(Mode::Exclusive) {
                continue;
            }
            if let Some(other) = r.holders.iter().find(|h| h.host_id != me) {
                lost.push(format!(
                    "{} now belongs to host {} (domain '{}', QEMU pid {})",
                    r.resource, other.host_id, other.domain_name, other.pid
                ));
            }
        }
        Ok((lost, unchecked, free))
    });
    match res {
        Ok((lost, unchecked, free)) => {
            for u in &unchecked {
                say(&format!(
                    "domain '{name}': could not check a lease: {u}; keeping it"
                ));
            }
            if !free.is_empty() && lost.is_empty() {
                log::warn!(
                    "hook: domain '{name}' ({uuid}) runs without these leases held (paused?): {}",
                    free.join(", ")
                );
            }
            if lost.is_empty() {
                return 0;
            }
            let msg = format!(
                "domain '{name}' lost its leases while libvirtd was away: {}; this QEMU must not run on",
                lost.join("; ")
            );
            say(&msg);
            log::error!("hook: {msg}");
            KILL
        }
        Err(e) => {
            say(&format!(
                "domain '{name}': could not check its leases ({e}); keeping it"
            ));
            0
        }
    }
}
