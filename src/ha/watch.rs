//! Wakes `vmlease-ha`'s loop when anything under the prefix changes: a
//! thread holds an etcd watch of the prefix (the gateway's `/v3/watch`
//! stream) and raises a flag on every change; the loop reads etcd when the
//! flag is up (schedule.rs), not at every step.
//!
//! The watch only says "something changed": the loop then reads as it
//! always did, so nothing is decided from a watch event and a missed or
//! doubled one costs a read, never a decision. The thread starts each
//! stream from the store's revision + 1 and raises the flag once the
//! revision is known (a read after that sees everything before it, the
//! stream everything after); a stream that breaks (a member down, no
//! quorum, a compacted revision) raises it too, and the next one starts
//! from the then current revision, on whichever endpoint answers.
//!
//! The thread is never joined: it is blocked in a read most of the time,
//! and it must hold up neither a shutdown (SIGTERM) nor a step-down. A
//! [`Watcher::restart`] starts a new stream; the old thread ends at its
//! next event or error.
#![forbid(unsafe_code)]

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::etcd::Etcd;
use crate::config::HaConfig;

#[derive(Default)]
struct State {
    changed: bool,
    /// The live thread's number; older ones stop.
    generation: u64,
    /// Changes delivered (every stream), for the log and tests.
    changes: u64,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn raise(&self, gen: u64) -> bool {
        let mut s = self.lock();
        if s.generation != gen {
            return false;
        }
        s.changed = true;
        s.changes += 1;
        self.cv.notify_all();
        true
    }
}

pub struct Watcher {
    ha: HaConfig,
    shared: Arc<Shared>,
}

impl Watcher {
    /// Starts watching `ha.prefix`. The flag is up at first.
    pub fn start(ha: &HaConfig) -> Watcher {
        let w = Watcher {
            ha: ha.clone(),
            shared: Arc::default(),
        };
        w.shared.lock().changed = true;
        w.restart();
        w
    }

    /// A new stream (and thread); the old one stops at its next event.
    pub fn restart(&self) {
        let gen = {
            let mut s = self.shared.lock();
            s.generation += 1;
            s.changed = true;
            s.generation
        };
        let (ha, shared) = (self.ha.clone(), self.shared.clone());
        let spawned = std::thread::Builder::new()
            .name("etcd-watch".into())
            .stack_size(256 * 1024)
            .spawn(move || run(&ha, &shared, gen));
        if let Err(e) = spawned {
            // The loop still reads at every resync.
            log::error!("vmlease-ha: cannot start the etcd watch thread: {e}");
        }
    }

    /// Did anything change since the last call? Lowers the flag.
    pub fn take_changed(&self) -> bool {
        std::mem::take(&mut self.shared.lock().changed)
    }

    /// Is the flag up (without lowering it)?
    pub fn changed(&self) -> bool {
        self.shared.lock().changed
    }

    /// Changes delivered so far.
    pub fn changes(&self) -> u64 {
        self.shared.lock().changes
    }
}

fn run(ha: &HaConfig, shared: &Shared, gen: u64) {
    let etcd = match Etcd::new(ha) {
        Ok(e) => e,
        Err(e) => {
            log::error!("vmlease-ha: etcd watch: {e}");
            return;
        }
    };
    let current = || shared.lock().generation == gen;
    let first = Duration::from_millis(ha.interval.max(100));
    let mut backoff = first;
    let mut last_error = String::new();
    while current() {
        let from = match etcd.revision(&ha.prefix) {
            Ok(r) => r + 1,
            Err(e) => {
                note(&mut last_error, e.to_string());
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(ha.host_ttl / 2));
                continue;
            }
        };
        // Whatever happened before `from` is seen by the loop's next read.
        if !shared.raise(gen) {
            return;
        }
        if !last_error.is_empty() {
            log::info!("vmlease-ha: etcd watch of {} again", ha.prefix);
            last_error.clear();
        }
        backoff = first;
        match etcd.watch(&ha.prefix, from, |_, _| shared.raise(gen)) {
            Ok(_) => return, // replaced by a newer stream
            Err(e) => {
                // What changed meanwhile is unknown: read.
                shared.raise(gen);
                note(&mut last_error, e.to_string());
                std::thread::sleep(backoff);
            }
        }
    }
}

/// Logs an error of the watch once while it stays the same.
fn note(last: &mut String, e: String) {
    if *last != e {
        log::warn!("vmlease-ha: etcd watch: {e}; reconnecting");
        *last = e;
    }
}
