//! The `vmlease` command-line tool: this host's status, the cluster as
//! seen from the lockspace, leases, the evacuation signal for HA
//! controllers, config check, lockspace init, admin release, fence clear,
//! record dump, and the qemu hook's entry point.
//!
//! One file per command; `args` parses, `help` is the manual, `view` is
//! what every cluster command knows, `json` writes `--json` output,
//! `worker` runs the commands that read the lockspace in a worker process
//! ([`crate::detach`]).
#![forbid(unsafe_code)]

mod args;
mod cephfs;
mod completion;
mod dump;
pub mod evacuate;
mod fence;
mod ha;
mod ha_events;
mod ha_maintenance;
pub mod help;
mod hosts;
pub mod json;
mod leases;
mod release;
mod setup;
mod status;
pub mod storage_fence;
pub mod view;
mod worker;

use std::fmt::Display;

pub use args::Opts;
use args::{Args, Parsed};
use help::Command;

use crate::config::{self, Config};

/// Exit codes of `vmlease`.
pub mod exit {
    /// Success; for can-evacuate: safe now.
    pub const OK: i32 = 0;
    /// The answer is no (not safe yet, refused, not protected, corrupt).
    pub const NO: i32 = 1;
    /// Usage or configuration error.
    pub const USAGE: i32 = 2;
    /// Cannot tell: lockspace unreachable, no watchdog view.
    pub const UNKNOWN: i32 = 3;
}

/// Entry point of the `vmlease` binary; returns the exit code.
pub fn main(argv: Vec<String>) -> i32 {
    if let Some(code) = crate::rados::worker::run_if_asked(&argv) {
        return code;
    }
    let parsed = match args::parse(argv.get(1..).unwrap_or_default()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vmlease: {}", e.message);
            match e.command.and_then(help::find) {
                Some(c) if c.name != "help" => eprintln!(
                    "usage: vmlease [--config FILE] [--json] {} {}\n(see 'vmlease help {}')",
                    c.name, c.synopsis, c.name
                ),
                _ => eprintln!("see 'vmlease --help'"),
            }
            return exit::USAGE;
        }
    };
    let (opts, command, args) = match parsed {
        Parsed::Print(text) => {
            println!("{text}");
            return exit::OK;
        }
        Parsed::Run {
            opts,
            command,
            args,
        } => (opts, command, args),
    };
    // Syslog only: admin actions (release) are logged there.
    crate::logging::init(false, log::LevelFilter::Info);
    if worker::applies(command.command) && !worker::WORKER.is_this_process() {
        if let Ok(cfg) = config::load(&opts.config) {
            return worker::supervise(
                &opts,
                command,
                &cfg,
                &args,
                argv.get(1..).unwrap_or_default(),
            );
        }
    }
    let code = run(&opts, command.command, &args);
    worker::WORKER.finish(code);
    code
}

fn run(opts: &Opts, command: Command, args: &Args) -> i32 {
    match command {
        Command::Status => status::run(opts),
        Command::Hosts => hosts::run(opts),
        Command::Leases => leases::run(opts, args),
        Command::CanEvacuate => evacuate::run(opts, &args.positional[0]),
        Command::CheckConfig => setup::check_config(opts),
        Command::Init => setup::init(opts, args),
        Command::Release => release::run(opts, args),
        Command::ClearFence => fence::clear(opts),
        Command::StorageFence => storage_fence::run(opts, args),
        Command::Dump => dump::run(opts, &args.positional[0]),
        Command::Ha => ha::run(opts, args),
        Command::Events => ha_events::run(opts, args),
        Command::Maintenance => ha_maintenance::run(opts, args),
        Command::Hook => crate::hook::main(&opts.config, &args.positional),
        Command::Completion => completion::run(&args.positional[0]),
        // The parser answers `help` itself (Parsed::Print).
        Command::Help => {
            println!("{}", help::overview());
            exit::OK
        }
    }
}

/// Loads the configuration; on error prints it and gives the exit code.
fn load(opts: &Opts) -> Result<Config, i32> {
    config::load(&opts.config).map_err(|e| fail(exit::USAGE, e))
}

/// Loads the configuration and opens the lockspace with its deadline.
fn open(opts: &Opts) -> Result<view::Ctx, i32> {
    let cfg = load(opts)?;
    view::Ctx::open(cfg).map_err(|e| fail(exit::UNKNOWN, e))
}

/// Prints an error line and returns `code`.
fn fail(code: i32, e: impl Display) -> i32 {
    eprintln!("vmlease: {e}");
    code
}

fn print_json(j: impl serde::Serialize) {
    println!("{}", json::to_line(&j));
}

/// Prints rows as aligned columns (the last column is not padded).
fn table(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", format_table(header, rows));
}

fn format_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let pad = w[i].saturating_sub(c.chars().count());
                s.push_str(c);
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        format!("{}\n", s.trim_end())
    };
    let mut out = line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

/// Makes a value safe to print in a table cell (one line, no control
/// characters): names and reasons come from shared storage.
fn cell(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_on_characters() {
        let t = format_table(
            &["ID", "NAME", "STATE"],
            &[
                vec!["1".into(), "hôte-1".into(), "live".into()],
                vec!["12".into(), "h2".into(), "fenced-clean".into()],
            ],
        );
        assert_eq!(
            t,
            "ID  NAME    STATE\n1   hôte-1  live\n12  h2      fenced-clean\n"
        );
        assert_eq!(cell("a\nb\x1b"), "a?b?");
    }
}
