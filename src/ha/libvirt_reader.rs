//! libvirt's running domains and the node's size, read on a thread of its
//! own every `[ha] interval`: the agent's step publishes the latest reading
//! instead of waiting for `virsh domstats`, which waits for every domain
//! being started here (each start holds its domain's job) - seconds with a
//! few recovery starts at once, during which the loop made no step: no
//! report, no assignment taken up, and on the leader no decision.
//!
//! A reading is never newer than the truth: it is dated from when its
//! `virsh` began. One older than `max_age` is an error, as a `virsh` that
//! does not answer was before.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::error::{Error, Result};
use super::lock;
use super::virsh::{self, Running};

/// One reading: when it began, the running domains, (CPUs, memory KiB).
#[derive(Debug, Clone)]
pub struct Reading {
    pub at: Instant,
    pub running: Vec<Running>,
    pub node: (u32, u64),
}

type Latest = Arc<Mutex<Option<std::result::Result<Reading, String>>>>;

pub struct LibvirtReader {
    latest: Latest,
    stop: Arc<AtomicBool>,
    max_age: Duration,
}

impl LibvirtReader {
    /// Starts the thread; the first reading is taken before returning
    /// (the caller's first step needs one).
    pub fn start(every: Duration, max_age: Duration) -> Result<LibvirtReader> {
        let latest: Latest = Arc::new(Mutex::new(Some(read())));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (Arc::clone(&latest), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("vmlease-ha-libvirt".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let r = read();
                    *lock(&l) = Some(r);
                    std::thread::sleep(every.saturating_sub(t0.elapsed()));
                }
            })
            .map_err(|e| Error::Setup(format!("cannot start the libvirt reader thread: {e}")))?;
        Ok(LibvirtReader {
            latest,
            stop,
            max_age,
        })
    }

    /// The latest reading, or why there is none fresh enough.
    pub fn latest(&self) -> Result<Reading> {
        let r = lock(&self.latest).clone();
        let err = |reason: String| Error::Libvirt {
            op: "list running domains".into(),
            reason,
        };
        match r {
            Some(Ok(r)) if r.at.elapsed() <= self.max_age => Ok(r),
            Some(Ok(r)) => Err(err(format!(
                "no answer for {} ms",
                r.at.elapsed().as_millis()
            ))),
            Some(Err(e)) => Err(err(e)),
            None => Err(err("not read yet".into())),
        }
    }
}

impl Drop for LibvirtReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn read() -> std::result::Result<Reading, String> {
    let at = Instant::now();
    let running = virsh::running().map_err(|e| e.to_string())?;
    let node = virsh::node().map_err(|e| e.to_string())?;
    Ok(Reading { at, running, node })
}
