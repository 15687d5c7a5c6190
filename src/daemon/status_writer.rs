//! The daemon's status thread: writes each status the main loop hands it
//! into the state directory, so that the main loop, which pets the
//! watchdog, never waits for a file system.
//!
//! Seen in the split-brain rig on Ceph's default MDS settings: a healthy
//! host's main loop sat 2 s in the fsync of its status file (a local
//! disk kept busy by the Ceph cluster, `ext4_sync_file` ->
//! `folio_wait_writeback`), its watchdog went unpetted for W and the host
//! was reset for nothing (docs/splitbrain.md, "Needless fences").
//!
//! The main loop only replaces the pending status (one slot, the newest
//! wins: a state change is never lost behind an older status). A status
//! write that hangs leaves the file stale, which every reader takes for
//! "not protected" (the plugin wants it younger than R + 0.5 s): a slow
//! state directory refuses VM starts, it never resets a healthy host.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::status::Status;

/// The thread's stack: one encode into a heap string and a file write;
/// every page of it is locked in memory with the rest of the daemon.
const STACK: usize = 64 * 1024;

enum Job {
    Write(Box<Status>),
    /// Remove the status file; nothing is written after it.
    Withdraw,
}

#[derive(Default)]
struct Slot {
    next: Option<Job>,
    /// A withdraw was asked: later offers are ignored.
    closing: bool,
    /// The withdraw is done (the thread has ended).
    withdrawn: bool,
}

pub struct StatusWriter {
    shared: Arc<(Mutex<Slot>, Condvar)>,
}

impl StatusWriter {
    /// Starts the thread that writes `state_dir/status`.
    pub fn spawn(state_dir: PathBuf) -> std::io::Result<StatusWriter> {
        let shared = Arc::new((Mutex::new(Slot::default()), Condvar::new()));
        let s = shared.clone();
        std::thread::Builder::new()
            .name("vmlease-status".into())
            .stack_size(STACK)
            .spawn(move || run(&s, &state_dir))?;
        Ok(StatusWriter { shared })
    }

    /// Hands the newest status to the thread, replacing one it has not
    /// started writing. Never waits for the write.
    pub fn offer(&self, st: Status) {
        let (m, cv) = &*self.shared;
        let mut slot = m.lock().unwrap_or_else(|e| e.into_inner());
        if slot.closing {
            return;
        }
        slot.next = Some(Job::Write(Box::new(st)));
        cv.notify_all();
    }

    /// Removes the status file after the write in progress, if any, and
    /// stops the thread; waits up to `wait`. False when it was not done
    /// by then (a status write hangs: the file may stay behind, stale).
    pub fn withdraw(&self, wait: Duration) -> bool {
        let (m, cv) = &*self.shared;
        let mut slot = m.lock().unwrap_or_else(|e| e.into_inner());
        if !slot.closing {
            slot.closing = true;
            slot.next = Some(Job::Withdraw);
            cv.notify_all();
        }
        let end = Instant::now() + wait;
        while !slot.withdrawn {
            let Some(left) = end.checked_duration_since(Instant::now()) else {
                return false;
            };
            slot = cv
                .wait_timeout(slot, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

fn run(shared: &(Mutex<Slot>, Condvar), state_dir: &std::path::Path) {
    let (m, cv) = shared;
    let mut last_err = String::new();
    loop {
        let job = {
            let mut slot = m.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(j) = slot.next.take() {
                    break j;
                }
                slot = cv.wait(slot).unwrap_or_else(|e| e.into_inner());
            }
        };
        match job {
            Job::Write(st) => match st.write(state_dir) {
                Ok(()) if !last_err.is_empty() => {
                    info!("writing the status again");
                    last_err.clear();
                }
                Ok(()) => {}
                Err(e) => {
                    let msg = e.to_string();
                    if msg != last_err {
                        warn!("cannot write status: {msg}");
                        last_err = msg;
                    }
                }
            },
            Job::Withdraw => {
                let _ = std::fs::remove_file(Status::path(state_dir));
                m.lock().unwrap_or_else(|e| e.into_inner()).withdrawn = true;
                cv.notify_all();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::core::{Core, Setup};

    fn status(now: u64) -> Status {
        let cfg = crate::config::parse(
            "lockspace_dir = \"/ls\"\nstate_dir = \"/st\"\n",
            "status-writer-test.conf",
        )
        .unwrap();
        let mut c = Core::new(
            Setup::new(&cfg, 1, "h1", "boot-a", 7),
            None,
            vec![0; crate::hosts::SLOT_SIZE],
            now,
            None,
        );
        c.begin(now, None);
        c.status(now, 42)
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let end = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < end, "waited 5 s for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The newest status is written; a withdraw removes it, and nothing
    /// offered after it is written again.
    #[test]
    fn writes_the_newest_and_nothing_after_a_withdraw() {
        let d = std::env::temp_dir().join(format!(
            "vmlease-status-writer-{}",
            crate::process::random_u64()
        ));
        std::fs::create_dir_all(&d).unwrap();
        let w = StatusWriter::spawn(d.clone()).unwrap();
        w.offer(status(1000));
        w.offer(status(2000));
        wait_for("the newest status", || {
            Status::read(&d).ok().flatten().map(|s| s.written_ms) == Some(2000)
        });
        assert!(w.withdraw(Duration::from_secs(5)), "withdraw timed out");
        assert!(!Status::path(&d).exists(), "the status is still there");
        w.offer(status(3000));
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !Status::path(&d).exists(),
            "a status offered after the withdraw was written"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
