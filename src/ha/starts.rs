//! The recovery starts this host carries out, each on a thread of its own
//! (`virsh define` + `virsh start`), so that several run at once and the
//! loop goes on meanwhile: the presence keepalive, the controller's steps
//! (the leader is often a target too), the reports of the starts already
//! done. How many run at once is bounded by the controller's
//! `max_starts_per_host` (it assigns no more to a host) and again here.
//! The lock plugin takes each domain's leases at its start, as before.
//!
//! Each thread reports its start to etcd itself as soon as `virsh start`
//! returns (the `report` given to [`Starts::spawn`]): the controller frees
//! the target's start slot on that report, and the loop may be busy for a
//! while (its step, the lifecycle events of the starts). A report the
//! thread could not write is written by the loop.
#![forbid(unsafe_code)]

use std::sync::{Arc, Mutex};

use super::{lock, virsh};

/// A finished start: the domain's UUID, what happened, and whether its
/// report is written already.
pub type Finished = (String, Result<(), String>, bool);

/// Logs a finished start and writes its report; true when written.
pub type Report = Box<dyn FnOnce(&Result<(), String>) -> bool + Send>;

/// The caller keeps track of which starts are under way.
#[derive(Default)]
pub struct Starts {
    done: Arc<Mutex<Vec<Finished>>>,
}

impl Starts {
    /// Starts `name` (of `uuid`) from `xml` on a new thread, unless it
    /// already runs here (a start carried out before a crash is not
    /// repeated), then calls `report` on that thread; [`Starts::collect`]
    /// hands over the result.
    pub fn spawn(&self, uuid: &str, name: &str, xml: &str, report: Report) {
        let (id, owned, xml) = (uuid.to_string(), name.to_string(), xml.to_string());
        let done = Arc::clone(&self.done);
        let job = move || {
            let r = if virsh::domstate(&owned).as_deref() == Some("running") {
                Ok(())
            } else {
                virsh::define_and_start(&owned, &xml).map_err(|e| e.to_string())
            };
            let reported = report(&r);
            lock(&done).push((id, r, reported));
        };
        let spawned = std::thread::Builder::new()
            .name("vmlease-ha-start".into())
            .spawn(job);
        if let Err(e) = spawned {
            // No thread: reported as a failed start, retried elsewhere.
            let e = format!("cannot start a thread: {e}");
            log::error!("vmlease-ha: could not start '{name}': {e}");
            lock(&self.done).push((uuid.to_string(), Err(e), false));
        }
    }

    /// Has a start finished since the last [`Starts::collect`]?
    pub fn finished(&self) -> bool {
        !lock(&self.done).is_empty()
    }

    /// The starts that finished since the last call.
    pub fn collect(&self) -> Vec<Finished> {
        std::mem::take(&mut *lock(&self.done))
    }
}
