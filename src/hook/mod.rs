//! The libvirt qemu hook (`vmlease hook qemu NAME OP SUBOP EXTRA`, run by
//! /etc/libvirt/hooks/qemu.d/vmlease with the domain XML on stdin).
//!
//! It runs under libvirt's domain lock with no timeout, so every lockspace
//! access has a deadline and every unknown operation succeeds at once.
//! Exit 0 lets libvirt go on; exit 1 aborts `prepare` and `migrate` and,
//! for `reconnect`, makes libvirt kill that QEMU.
#![forbid(unsafe_code)]

use std::io::Read;
use std::path::Path;

use crate::config;
use crate::engine::Engine;
use crate::lease::Holder;
use crate::lockspace::Lockspace;
use crate::process::{self, ProcId};
use crate::registry::Registry;

/// Extracts the domain's `<uuid>` from its XML (libvirt's own output: the
/// first `<uuid>` element is the domain's).
pub fn domain_uuid(xml: &str) -> Result<String, String> {
    let start = xml.find("<domain").ok_or("no <domain> element on stdin")?;
    let rest = &xml[start..];
    let open = rest.find("<uuid>").ok_or("the domain XML has no <uuid>")?;
    let after = &rest[open + 6..];
    let close = after.find("</uuid>").ok_or("unterminated <uuid> element")?;
    let uuid = after[..close].trim().to_ascii_lowercase();
    if !crate::resource::is_uuid(&uuid) {
        return Err(format!("'{uuid}' is not a UUID"));
    }
    Ok(uuid)
}

fn say(msg: &str) {
    // One line on stderr: libvirt puts it in the error virsh shows.
    eprintln!("vmlease: {msg}");
}

/// Entry point: `args` = ["qemu", NAME, OP, SUBOP, EXTRA...].
pub fn main(config_path: &Path, args: &[String]) -> i32 {
    crate::logging::init(false, log::LevelFilter::Info);
    let (Some(obj), Some(name), Some(op)) = (args.first(), args.get(1), args.get(2)) else {
        say("usage: vmlease hook qemu NAME OPERATION SUB-OPERATION EXTRA");
        return 2;
    };
    if obj != "qemu" {
        // Other drivers' hooks: nothing to do.
        return 0;
    }
    let sub = args.get(3).map(String::as_str).unwrap_or("-");
    // libvirt writes the domain XML to every hook: read it all, so that
    // libvirt never writes into a closed pipe.
    let xml = read_stdin();
    match (op.as_str(), sub) {
        ("prepare", "begin") => protected(config_path, name, "start"),
        // Empty stdout keeps libvirt's XML unchanged.
        ("migrate", "begin") => protected(config_path, name, "accept an incoming migration of"),
        ("release", "end") => release(config_path, name, xml),
        ("reconnect", "begin") => reconnect(config_path, name, xml),
        _ => 0,
    }
}

fn read_stdin() -> Result<String, String> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|e| format!("cannot read the domain XML on stdin: {e}"))?;
    Ok(s)
}

fn protected(config_path: &Path, name: &str, what: &str) -> i32 {
    let cfg = match config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            say(&format!("refusing to {what} '{name}': {e}"));
            return 1;
        }
    };
    if let Err(e) = crate::plugin::protected_status(&cfg) {
        say(&format!("refusing to {what} '{name}': {e}"));
        return 1;
    }
    let dir = cfg.lockspace_dir.clone();
    if let Err(e) =
        crate::deadline::run(cfg.io_timeout, "open lockspace", &dir.clone(), move || {
            Lockspace::open(&dir)
        })
    {
        say(&format!("refusing to {what} '{name}': {e}"));
        return 1;
    }
    0
}

fn uuid_of(name: &str, xml: Result<String, String>) -> Result<String, String> {
    domain_uuid(&xml?).map_err(|e| format!("domain '{name}': {e}"))
}

fn release(config_path: &Path, name: &str, xml: Result<String, String>) -> i32 {
    let uuid = match uuid_of(name, xml) {
        Ok(u) => u,
        Err(e) => {
            say(&e);
            return 0; // libvirt ignores this hook's status anyway
        }
    };
    let Ok(cfg) = config::load(config_path) else {
        return 0;
    };
    let Some(me) = cfg.host_id else { return 0 };
    let reg = Registry::new(&cfg.state_dir);
    let entries: Vec<_> = reg
        .list()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.domain_uuid == uuid && !e.proc_id.is_alive())
        .collect();
    if entries.is_empty() {
        return 0;
    }
    let boot = process::boot_id().unwrap_or_default();
    let dir = cfg.lockspace_dir.clone();
    let (lock_ms, dead_ms) = (cfg.lock_timeout, cfg.timing.host_dead_timeout);
    let work = entries.clone();
    let res = crate::deadline::run(
        cfg.io_timeout + cfg.lock_timeout,
        "release leases",
        &dir.clone(),
        move || {
            let eng = Engine {
                ls: Lockspace::open(&dir)?,
                host_id: me,
                boot_id: boot.clone(),
                dead_ms,
                lock_timeout_ms: lock_ms,
                view: None,
                process_alive: std::sync::Arc::new(|p: ProcId| p.is_alive()),
            };
            for e in &work {
                let p = e.proc_id;
                for (key, _) in &e.keys {
                    eng.release_matching(key, &|h: &Holder| {
                        h.host_id == me
                            && h.boot_id == boot
                            && h.pid == p.pid
                            && h.pid_start == p.start
                    })?;
                }
            }
            Ok(())
        },
    );
    match res {
        Ok(()) => {
            for e in &entries {
                let _ = reg.remove(e.proc_id);
            }
            log::info!("hook: released the leases of stopped domain '{name}' ({uuid})");
        }
        Err(e) => say(&format!(
            "domain '{name}': leases not released yet ({e}); the watchdog daemon will"
        )),
    }
    0
}

fn reconnect(config_path: &Path, name: &str, xml: Result<String, String>) -> i32 {
    let uuid = match uuid_of(name, xml) {
        Ok(u) => u,
        Err(e) => {
            say(&e);
            return 0;
        }
    };
    let Ok(cfg) = config::load(config_path) else {
        return 0;
    };
    let Some(me) = cfg.host_id else { return 0 };
    let boot = process::boot_id().unwrap_or_default();
    let reg = Registry::new(&cfg.state_dir);
    let entries: Vec<_> = reg
        .list()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.domain_uuid == uuid && e.proc_id.is_alive())
        .collect();
    let dir = cfg.lockspace_dir.clone();
    let res = crate::deadline::run(cfg.io_timeout, "check leases", &dir.clone(), move || {
        let ls = Lockspace::open(&dir)?;
        let mut lost = Vec::new();
        for e in &entries {
            for (key, resource) in &e.keys {
                let r = ls.read_lease(key, resource)?;
                let ours = r.holders.iter().any(|h| {
                    h.host_id == me
                        && h.boot_id == boot
                        && h.pid == e.proc_id.pid
                        && h.pid_start == e.proc_id.start
                });
                let others: Vec<&Holder> = r.holders.iter().filter(|h| h.host_id != me).collect();
                if !ours && r.mode == Some(crate::lease::Mode::Exclusive) && !others.is_empty() {
                    lost.push(format!(
                        "{} now belongs to host {} (domain '{}', pid {})",
                        r.resource, others[0].host_id, others[0].domain_name, others[0].pid
                    ));
                }
            }
        }
        Ok(lost)
    });
    match res {
        Ok(lost) if lost.is_empty() => 0,
        Ok(lost) => {
            say(&format!(
                "domain '{name}' lost its leases while libvirtd was away: {}; this QEMU must not run",
                lost.join("; ")
            ));
            1
        }
        Err(e) => {
            // Slow storage is no reason to kill a VM; the daemon fences if
            // the storage is really gone.
            say(&format!(
                "domain '{name}': could not check its leases ({e}); keeping it"
            ));
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_domain_uuid() {
        let xml = "<domain type='kvm'>\n  <name>x</name>\n  <uuid>C7A5FDBD-EDAF-9455-926A-D65C16DB1809</uuid>\n<devices><disk/></devices></domain>";
        assert_eq!(
            domain_uuid(xml).unwrap(),
            "c7a5fdbd-edaf-9455-926a-d65c16db1809"
        );
        assert!(domain_uuid("garbage").unwrap_err().contains("no <domain>"));
        assert!(domain_uuid("<domain><uuid>nope</uuid></domain>")
            .unwrap_err()
            .contains("not a UUID"));
        assert!(domain_uuid("<domain><uuid>c7a5")
            .unwrap_err()
            .contains("unterminated"));
    }
}
