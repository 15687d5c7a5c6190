//! `vmlease events [--follow]`: the events vmlease-ha's leader stored in
//! etcd, then (with --follow) new ones through an etcd watch.
#![forbid(unsafe_code)]

use super::args::Args;
use super::Opts;
#[cfg(feature = "ha")]
use super::{exit, fail};

#[cfg(not(feature = "ha"))]
pub fn run(_opts: &Opts, _args: &Args) -> i32 {
    super::ha::without_ha()
}

#[cfg(feature = "ha")]
pub fn run(opts: &Opts, args: &Args) -> i32 {
    use std::io::Write;

    use crate::ha::etcd::WatchEvent;
    use crate::ha::event_store::{self, events_prefix};
    use crate::ha::events::Event;

    let (ha, etcd) = match super::ha::etcd_of(opts) {
        Ok(he) => he,
        Err(code) => return code,
    };
    let print = |e: &Event| -> bool {
        let line = if opts.json {
            serde_json::to_string(e).expect("events serialise")
        } else {
            e.line()
        };
        // A closed pipe (| head) ends the command quietly.
        writeln!(std::io::stdout(), "{line}").is_ok()
    };
    let (events, bad, rev) = match event_store::read(&etcd, &ha.prefix) {
        Ok(r) => r,
        Err(e) => return fail(exit::UNKNOWN, format!("cannot reach etcd: {e}")),
    };
    for e in &events {
        if !print(e) {
            return exit::OK;
        }
    }
    for b in &bad {
        eprintln!("vmlease: corrupt event: {b}");
    }
    if args.flag("--follow").is_none() {
        return exit::OK;
    }
    let prefix = events_prefix(&ha.prefix);
    let mut from = rev + 1;
    let mut warned = false;
    loop {
        let mut open = true;
        let r = etcd.watch(&prefix, from, |we, r| {
            from = r + 1;
            if let WatchEvent::Put(kv) = we {
                match serde_json::from_slice::<Event>(&kv.value) {
                    Ok(e) => open = print(&e),
                    Err(e) => eprintln!("vmlease: corrupt event: {}: {e}", kv.key),
                }
            }
            open
        });
        if !open {
            return exit::OK;
        }
        if let Err(e) = r {
            // Reconnect (another endpoint, the same revision): nothing is
            // missed while etcd keeps the history.
            if !warned {
                eprintln!("vmlease: {e}; reconnecting");
                warned = true;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
            let _ = etcd.first_keys(&prefix, 1); // moves to an endpoint that answers
        } else {
            warned = false;
        }
    }
}
