//! The `vmlease` command-line tool: status of this host, the cluster as
//! seen from the lockspace, leases, the evacuation signal for HA
//! controllers, config check, lockspace init, admin release, fence clear,
//! record dump, and the qemu hook's entry point.
#![forbid(unsafe_code)]

mod commands;
pub mod json;
pub mod view;

use std::path::PathBuf;

use crate::config;

/// Exit codes of `vmlease`.
pub mod exit {
    /// Success; for can-evacuate: safe now.
    pub const OK: i32 = 0;
    /// The answer is no (not safe yet, refused, damaged record found).
    pub const NO: i32 = 1;
    /// Usage or configuration error.
    pub const USAGE: i32 = 2;
    /// Cannot tell: lockspace unreachable, no watchdog view.
    pub const UNKNOWN: i32 = 3;
}

pub const USAGE: &str = "usage: vmlease [--config FILE] [--json] COMMAND [ARGS]

Commands:
  status                 this host: watchdog health, host id, renewal age,
                         networks, fence state, the leases it holds
  hosts                  every host in the lockspace: state, observed age of
                         its last renewal, what a controller may do
  leases [--host N] [--domain UUID]
                         lease records and their holders
  can-evacuate HOST      exit 0 only if restarting HOST's VMs elsewhere is
                         split-brain safe now (HOST: host id or name);
                         else exit 1 with the reason and the time until safe
  check-config           validate the configuration, print the fence timeline
  init                   create the lockspace layout (once per lockspace)
  release --domain UUID  admin: free this host's leases of a domain whose
                         QEMU is not running here
  clear-fence            let a fenced host run protected VMs again once the
                         cause is gone
  dump FILE              decode a lease record, host table, status or
                         registry entry
  hook qemu NAME OP SUBOP EXTRA
                         the libvirt qemu hook (installed as
                         /etc/libvirt/hooks/qemu.d/vmlease)

Options:
  --config FILE          default /etc/libvirt/qemu-vmlease.conf
  --json                 machine-readable output (see docs/cli.md)

Exit codes: 0 yes/success, 1 no (not safe yet, refused, damaged record),
2 usage or configuration error, 3 cannot tell (lockspace unreachable, no
watchdog view on this host).";

pub struct Opts {
    pub config: PathBuf,
    pub json: bool,
}

/// Entry point of the `vmlease` binary; returns the exit code.
pub fn main(args: Vec<String>) -> i32 {
    let mut opts = Opts {
        config: PathBuf::from(config::DEFAULT_PATH),
        json: false,
    };
    let mut rest = Vec::new();
    let mut it = args.into_iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" => match it.next() {
                Some(p) => opts.config = PathBuf::from(p),
                None => {
                    eprintln!("vmlease: --config needs a path\n{USAGE}");
                    return exit::USAGE;
                }
            },
            "--json" => opts.json = true,
            "--help" | "-h" | "help" if rest.is_empty() => {
                println!("{USAGE}");
                return exit::OK;
            }
            _ => rest.push(a),
        }
    }
    let Some(cmd) = rest.first().cloned() else {
        eprintln!("{USAGE}");
        return exit::USAGE;
    };
    let args = &rest[1..];
    match cmd.as_str() {
        "check-config" => commands::check_config(&opts),
        "init" => commands::init(&opts),
        "status" => commands::status(&opts),
        "hosts" => commands::hosts(&opts),
        "leases" => commands::leases(&opts, args),
        "can-evacuate" => commands::can_evacuate(&opts, args),
        "release" => commands::release(&opts, args),
        "clear-fence" => commands::clear_fence(&opts),
        "dump" => commands::dump(&opts, args),
        "hook" => crate::hook::main(&opts.config, args),
        other => {
            eprintln!("vmlease: unknown command '{other}'\n{USAGE}");
            exit::USAGE
        }
    }
}

/// Prints rows as aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}
