//! The libvirt qemu hook: `vmlease hook qemu NAME OPERATION SUB-OPERATION
//! EXTRA`, run by /etc/libvirt/hooks/qemu.d/vmlease with the domain XML on
//! stdin (reference: libvirt-lock-abi.md section 6).
//!
//! libvirt runs hooks synchronously, under the domain's lock, with no
//! timeout, and a hook must not call back into libvirt. So: every
//! lockspace access has a deadline, a backstop ends the whole hook with
//! its operation's safe status if anything else hangs, and operations
//! vmlease does not care about return at once.
//!
//! Exit 0 lets libvirt go on; exit 1 aborts `prepare` and `migrate` and,
//! for `reconnect`, makes libvirt kill that QEMU.
//!
//! The lockspace work runs in a worker process (`worker`, over
//! [`crate::detach`]): a thread stuck in D on hung storage would keep the
//! hook's own process, and libvirtd waiting for it, from ever exiting.
//!
//! Files: `protect` (prepare, migrate), `release`, `reconnect`, `xml`
//! (the domain's UUID), `gate` (is vmlease libvirt's lock manager?),
//! `worker` (the worker process and its deadline).
#![forbid(unsafe_code)]

pub mod gate;
mod protect;
mod reconnect;
mod release;
mod worker;
pub mod xml;

use std::io::{IsTerminal, Read};
use std::path::Path;
use std::time::Duration;

use crate::config;

/// Refuse the start or the incoming migration.
pub const REFUSE: i32 = 1;
/// libvirt kills the reconnected QEMU.
pub const KILL: i32 = 1;
/// Bad invocation (never from libvirt).
pub const USAGE: i32 = 2;

/// The qemu hook operations libvirt knows (9.0 to 11.x).
const KNOWN: &[&str] = &[
    "prepare",
    "start",
    "started",
    "stopped",
    "release",
    "migrate",
    "restore",
    "reconnect",
    "attach",
];

/// One line on stderr: libvirt puts it in the error virsh shows. Values
/// from configs and records may hold newlines; they are folded.
pub(crate) fn say(msg: &str) {
    let one: String = msg
        .replace('\n', "; ")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    eprintln!("vmlease: {one}");
}

/// Ends the process with `code` after `ms`, whatever the hook is doing.
fn arm_backstop(ms: u64, code: i32, what: String) {
    let _ = std::thread::Builder::new()
        .name("vmlease-hook-backstop".into())
        .spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            say(&format!(
                "{what}: no answer within {ms} ms; giving up ({})",
                if code == 0 { "going on" } else { "refusing" }
            ));
            // A thread stuck in D may keep this process from exiting:
            // the parent takes the answer from here.
            worker::WORKER.finish(code);
            std::process::exit(code);
        });
}

/// Reads the XML libvirt writes to every hook. Always read to the end, so
/// that libvirt never writes into a closed pipe; not from a terminal.
fn read_stdin() -> Result<String, String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err("no domain XML on stdin (it is a terminal)".into());
    }
    let mut buf = Vec::new();
    stdin
        .lock()
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read the domain XML on stdin: {e}"))?;
    String::from_utf8(buf).map_err(|_| "the domain XML on stdin is not UTF-8".into())
}

/// Entry point: `args` = ["qemu", NAME, OPERATION, SUB-OPERATION, EXTRA...].
pub fn main(config_path: &Path, args: &[String]) -> i32 {
    crate::logging::init(false, log::LevelFilter::Info);
    let (Some(object), Some(name), Some(op)) = (args.first(), args.get(1), args.get(2)) else {
        say("usage: vmlease hook qemu NAME OPERATION SUB-OPERATION [EXTRA...]");
        return USAGE;
    };
    let sub = args.get(3).map(String::as_str).unwrap_or("-");
    let name: String = name
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    let stdin = read_stdin();
    if object != "qemu" {
        say(&format!(
            "only the qemu hook is handled, not '{object}'; ignoring"
        ));
        return 0;
    }
    let action = match (op.as_str(), sub) {
        ("prepare", "begin") => Action::Protect("start"),
        ("migrate", "begin") => Action::Protect("accept an incoming migration of"),
        ("release", "end") => Action::Release,
        ("reconnect", "begin") => Action::Reconnect,
        (o, _) if KNOWN.contains(&o) => return 0,
        (o, s) => {
            say(&format!(
                "unknown hook operation '{o} {s}' for domain '{name}': nothing to do"
            ));
            return 0;
        }
    };
    let (enabled, why) = gate::vmlease_enabled();
    if !enabled {
        log::debug!("hook: {why}: vmlease is not libvirt's lock manager; nothing to do");
        return 0;
    }
    let cfg = config::load(config_path);
    let (io, lock) = cfg
        .as_ref()
        .map(|c| (c.io_timeout, c.lock_timeout))
        .unwrap_or((5_000, 5_000));
    let budget = io + lock + 2_000;
    if !worker::WORKER.is_this_process() {
        let (safe, what) = match action {
            Action::Protect(what) => (REFUSE, format!("refusing to {what} '{name}'")),
            Action::Release | Action::Reconnect => (0, format!("domain '{name}': {op} {sub}")),
        };
        let xml = match (&stdin, action) {
            (Ok(x), _) => x.as_bytes(),
            (Err(_), Action::Protect(_)) => &[],
            (Err(e), _) => {
                say(&format!("domain '{name}' ({op} {sub}): {e}; nothing done"));
                return 0;
            }
        };
        // The worker's own backstop speaks first when it can still exit.
        return worker::run(config_path, args, xml, budget + 500, safe, &what);
    }
    let code = work(action, cfg, stdin, &name, op, sub, budget);
    worker::WORKER.finish(code);
    code
}

/// The worker's part: the operation itself.
fn work(
    action: Action,
    cfg: crate::error::Result<config::Config>,
    stdin: Result<String, String>,
    name: &str,
    op: &str,
    sub: &str,
    budget: u64,
) -> i32 {
    match action {
        Action::Protect(what) => {
            arm_backstop(budget, REFUSE, format!("refusing to {what} '{name}'"));
            protect::run(&cfg, name, what)
        }
        Action::Release | Action::Reconnect => {
            arm_backstop(budget, 0, format!("domain '{name}': {op} {sub}"));
            let cfg = match cfg {
                Ok(c) => c,
                Err(e) => {
                    say(&format!("domain '{name}': {e}"));
                    return 0;
                }
            };
            let uuid = match stdin.and_then(|x| xml::parse(&x)) {
                Ok(d) => d.uuid,
                Err(e) => {
                    say(&format!("domain '{name}' ({op} {sub}): {e}; nothing done"));
                    return 0;
                }
            };
            if matches!(action, Action::Release) {
                release::run(&cfg, name, &uuid)
            } else {
                reconnect::run(&cfg, name, &uuid)
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Action {
    Protect(&'static str),
    Release,
    Reconnect,
}
