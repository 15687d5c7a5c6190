//! The fence decision, as a pure state machine: given the time, the age of
//! the last successful renewal, the network states and which leased QEMU
//! processes are still alive, it says what the host's state is, whom to
//! kill, whether to reset, and whether the hardware watchdog may be petted.
//! No I/O here: the daemon loop feeds it and carries out its actions, and
//! tests drive it with made-up times.
#![forbid(unsafe_code)]

use crate::config::{secs, Policy, Timing};
use crate::hosts::{HostState, Slot};

/// Why the host fenced itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// Lease renewals failed for renew_fail_timeout.
    Storage,
    /// Management network lost with policy "fence".
    Management,
    /// Service network lost with policy "fence".
    Service,
    /// Another machine writes this host id's slot.
    HostIdCollision,
    /// A Ceph request of this host failed with EBLOCKLISTED: its client
    /// address is blocklisted (another host's `vmlease storage-fence`, or
    /// the MDS's eviction of its CephFS client), so it cannot renew until
    /// an operator removes the entry and remounts. Fences at once rather
    /// than at renew_fail_timeout.
    StorageFenced,
}

impl Cause {
    pub fn as_str(&self) -> &'static str {
        match self {
            Cause::Storage => "storage",
            Cause::Management => "management",
            Cause::Service => "service",
            Cause::HostIdCollision => "host-id-collision",
            Cause::StorageFenced => "storage-fenced",
        }
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Cause::Storage => "lease renewals failed (storage lost)",
            Cause::Management => "management network lost",
            Cause::Service => "service network lost",
            Cause::HostIdCollision => "another machine writes this host id's liveness record",
            Cause::StorageFenced => {
                "storage-fenced: Ceph refuses this host's requests (its client is blocklisted)"
            }
        }
    }
}

/// The marker file that keeps a fence across daemon restarts.
pub fn marker_path(state_dir: &std::path::Path) -> std::path::PathBuf {
    state_dir.join("fenced")
}

/// Writes (fenced) or removes (healthy) the marker.
pub fn store_marker(state_dir: &std::path::Path, phase: &Phase) {
    let p = marker_path(state_dir);
    match phase {
        Phase::Healthy => {
            let _ = std::fs::remove_file(p);
        }
        Phase::Fencing { cause, .. } | Phase::Fenced { cause, .. } | Phase::Reset { cause } => {
            let _ = std::fs::write(p, format!("{}\n", cause.as_str()));
        }
    }
}

pub fn load_marker(state_dir: &std::path::Path) -> Option<Cause> {
    let text = std::fs::read_to_string(marker_path(state_dir)).ok()?;
    Some(match text.trim() {
        "management" => Cause::Management,
        "service" => Cause::Service,
        "host-id-collision" => Cause::HostIdCollision,
        "storage-fenced" => Cause::StorageFenced,
        // "storage" and anything unreadable: the strictest cause.
        _ => Cause::Storage,
    })
}

/// Where a starting daemon's fence clock begins (`Inputs::started`): the
/// last renewal of the daemon before it on this boot, if there was one.
///
/// `own` is this host's slot, read after the claim (`None`: the read
/// failed). A record of this boot and this host that is not `leaving` was
/// written by an earlier daemon that may have left leased QEMU processes
/// running; its `mono_ms` is on this boot's clock, so F counts on from it.
/// Counting from our own start instead would let a daemon restarted while
/// renewals fail (a read-only or full lockspace) pet the watchdog for up to
/// another F, and each restart push the fence further (KB1,
/// docs/simulation.md). Anything else (another boot, another host, a clean
/// leave, an empty or unreadable slot) starts the clock now.
pub fn clock_start(own: Option<&Slot>, host_name: &str, boot_id: &str, now: u64) -> u64 {
    match own {
        Some(Slot::Record(r))
            if r.boot_id == boot_id
                && r.host_name == host_name
                && r.state != HostState::Leaving =>
        {
            r.mono_ms.min(now)
        }
        _ => now,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Healthy,
    /// Killing since `since`.
    Fencing {
        cause: Cause,
        since: u64,
    },
    /// Every leased QEMU is dead; starts none until cleared.
    Fenced {
        cause: Cause,
        since: u64,
    },
    /// The reset was triggered (a real one never returns).
    Reset {
        cause: Cause,
    },
}

/// What the loop observed this tick.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub now: u64,
    /// Last successful renewal (0: none since start).
    pub last_renewal: u64,
    /// When the daemon started (renewal age counts from here before the
    /// first success).
    pub started: u64,
    /// Management / service network down for longer than its timeout.
    pub mgmt_lost: bool,
    pub service_lost: bool,
    /// Management / service network not (yet) seen up: a fence they caused
    /// is not cleared then.
    pub mgmt_down: bool,
    pub service_down: bool,
    pub collision: bool,
    /// A renewal failed with EBLOCKLISTED since the last successful one
    /// (this host's Ceph client is blocklisted).
    pub blocklisted: bool,
    /// Leased (registered) QEMU processes still alive.
    pub alive_leased: usize,
    /// An operator asked to clear a fence.
    pub clear_requested: bool,
}

/// What the loop must do this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actions {
    pub state: HostState,
    pub kill_all: bool,
    pub reset: bool,
    pub pet: bool,
    /// A line to log when something changed.
    pub log: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Fence {
    pub timing: Timing,
    pub mgmt_policy: Policy,
    pub service_policy: Policy,
    pub phase: Phase,
}

impl Fence {
    pub fn new(timing: Timing, mgmt_policy: Policy, service_policy: Policy) -> Fence {
        Fence {
            timing,
            mgmt_policy,
            service_policy,
            phase: Phase::Healthy,
        }
    }

    pub fn renewal_age(&self, i: &Inputs) -> u64 {
        i.now.saturating_sub(i.last_renewal.max(i.started))
    }

    /// When a fence that kills starts counting K. While renewals are
    /// healthy, now. Once they are not, the moment F ran out (the last
    /// renewal + F), if that was earlier: the safety inequality promises
    /// that a host writes no later than its last renewal + F + K, however
    /// late this daemon noticed - a daemon restarted in the middle of a
    /// fence (crash, `systemctl restart`; the marker brings it back as
    /// fenced) must not grant the survivors another K (KB4,
    /// docs/simulation.md).
    pub fn kill_clock(&self, i: &Inputs) -> u64 {
        let base = i.last_renewal.max(i.started);
        if self.renewal_age(i) <= self.timing.renew_fail_timeout {
            i.now
        } else {
            i.now.min(base + self.timing.renew_fail_timeout)
        }
    }

    /// Fencing, and K has passed since the kill clock started: reset.
    fn reset_if_overdue(&mut self, i: &Inputs, log: &mut Option<String>) {
        if let Phase::Fencing { cause, since } = &self.phase {
            if i.now.saturating_sub(*since) >= self.timing.kill_timeout {
                *log = Some(format!(
                    "RESET: {} leased QEMU process(es) survived kill_timeout ({}); resetting the host",
                    i.alive_leased,
                    secs(self.timing.kill_timeout)
                ));
                self.phase = Phase::Reset {
                    cause: cause.clone(),
                };
            }
        }
    }

    /// [`Fence::step`], with the leased QEMUs counted afresh
    /// (`fresh_count`: a full registry scan) whenever this step would
    /// publish `fenced-clean`. The count the loop feeds every tick comes
    /// from a scan gated on the registry directory's coarse mtime and may
    /// miss a QEMU registered a moment ago; `fenced-clean` lets other hosts
    /// take its leases at once.
    pub fn step_counted(&mut self, i: &mut Inputs, fresh_count: impl FnOnce() -> usize) -> Actions {
        if self.clone().step(i).state == HostState::FencedClean {
            i.alive_leased = fresh_count();
        }
        self.step(i)
    }

    pub fn step(&mut self, i: &Inputs) -> Actions {
        let age = self.renewal_age(i);
        let storage_ok = age <= self.timing.renew_fail_timeout;
        let kill_since = self.kill_clock(i);
        let mut log = None;
        let mut just_killing = false;

        // Start a fence?
        if self.phase == Phase::Healthy {
            let cause = if i.collision {
                Some(Cause::HostIdCollision)
            } else if i.blocklisted {
                Some(Cause::StorageFenced)
            } else if !storage_ok {
                Some(Cause::Storage)
            } else if i.mgmt_lost && self.mgmt_policy == Policy::Fence {
                Some(Cause::Management)
            } else if i.service_lost && self.service_policy == Policy::Fence {
                Some(Cause::Service)
            } else {
                None
            };
            if let Some(cause) = cause {
                log = Some(format!(
                    "FENCING: {} (last successful renewal {} ago); killing {} leased QEMU process(es)",
                    cause.describe(),
                    secs(age),
                    i.alive_leased
                ));
                self.phase = Phase::Fencing {
                    cause,
                    since: kill_since,
                };
                just_killing = true;
            }
        }

        // Progress a fence. The kill goes out in the step that starts it:
        // a fence noticed late (a daemon that slept or restarted past
        // F + K) resets only if the kill did not work by the next step.
        if let Phase::Fencing { cause, .. } = self.phase.clone() {
            if i.alive_leased == 0 {
                log = Some(format!(
                    "fence complete: every leased QEMU is dead ({}); no protected VM starts until the fence is cleared",
                    cause.describe()
                ));
                self.phase = Phase::Fenced {
                    cause,
                    since: i.now,
                };
            } else if !just_killing {
                self.reset_if_overdue(i, &mut log);
            }
        }

        // A fenced host keeps killing anything leased that appears, and
        // may be cleared once the cause is gone.
        if let Phase::Fenced { cause, .. } = self.phase.clone() {
            if i.alive_leased > 0 {
                // A restarted daemon continuing a storage fence may be
                // past K already: it kills now and resets at its next
                // step if that did not work.
                self.phase = Phase::Fencing {
                    cause,
                    since: kill_since,
                };
            } else if i.clear_requested {
                let still_lost = match cause {
                    Cause::Management => i.mgmt_lost || i.mgmt_down,
                    Cause::Service => i.service_lost || i.service_down,
                    Cause::Storage | Cause::HostIdCollision | Cause::StorageFenced => false,
                };
                let healed = storage_ok && !i.collision && !i.blocklisted && !still_lost;
                if healed {
                    log = Some(format!(
                        "fence cleared by the operator ({} is over)",
                        cause.describe()
                    ));
                    self.phase = Phase::Healthy;
                } else {
                    log = Some(format!(
                        "fence not cleared: {} still holds",
                        cause.describe()
                    ));
                }
            }
        }

        let (state, kill_all, reset, pet) = match &self.phase {
            Phase::Healthy => {
                let state = if i.mgmt_lost {
                    HostState::MgmtIsolated
                } else if i.service_lost {
                    HostState::ServiceIsolated
                } else {
                    HostState::Live
                };
                (state, false, false, storage_ok)
            }
            // Petting stops while leased processes may still write and
            // renewals are not healthy: a hung daemon then resets the host.
            Phase::Fencing { .. } => (
                HostState::Fencing,
                true,
                false,
                storage_ok && !i.collision && !i.blocklisted,
            ),
            Phase::Fenced { .. } => (HostState::FencedClean, false, false, true),
            Phase::Reset { .. } => (HostState::Fencing, true, true, false),
        };
        Actions {
            state,
            kill_all,
            reset,
            pet,
            log,
        }
    }
}

#[cfg(test)]
mod tests;
