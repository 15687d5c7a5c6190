//! The `vmlease` command-line tool.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use crate::config;
use crate::lockspace::{Lockspace, DEFAULT_MAX_HOSTS};

/// Entry point of the `vmlease` binary; returns the exit code.
pub fn main(args: Vec<String>) -> i32 {
    let mut cfg_path = PathBuf::from(config::DEFAULT_PATH);
    let mut rest = Vec::new();
    let mut it = args.into_iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" => match it.next() {
                Some(p) => cfg_path = PathBuf::from(p),
                None => {
                    eprintln!("vmlease: --config needs a path");
                    return 2;
                }
            },
            _ => rest.push(a),
        }
    }
    match rest.first().map(String::as_str) {
        Some("check-config") => check_config(&cfg_path),
        Some("init") => init(&cfg_path),
        _ => {
            eprintln!("usage: vmlease [--config FILE] check-config|init");
            2
        }
    }
}

fn check_config(path: &std::path::Path) -> i32 {
    if !path.exists() {
        eprintln!("vmlease: {}: no such file", path.display());
        return 1;
    }
    match config::load(path) {
        Ok(c) => {
            for w in c.warnings() {
                println!("warning: {w}");
            }
            print!("{}", c.timing.timeline());
            if c.host_id.is_none() {
                return 1;
            }
            println!("{}: OK", path.display());
            0
        }
        Err(e) => {
            eprintln!("vmlease: {e}");
            1
        }
    }
}

fn init(path: &std::path::Path) -> i32 {
    let c = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vmlease: {e}");
            return 1;
        }
    };
    match Lockspace::init(&c.lockspace_dir, DEFAULT_MAX_HOSTS) {
        Ok(true) => {
            println!("initialised lockspace {}", c.lockspace_dir.display());
            0
        }
        Ok(false) => {
            println!(
                "lockspace {} is already initialised",
                c.lockspace_dir.display()
            );
            0
        }
        Err(e) => {
            eprintln!("vmlease: {e}");
            1
        }
    }
}
