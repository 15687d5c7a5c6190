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
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing::TEST
    }

    fn inputs(now: u64, last: u64, alive: usize) -> Inputs {
        Inputs {
            now,
            last_renewal: last,
            started: 0,
            alive_leased: alive,
            ..Inputs::default()
        }
    }

    #[test]
    fn storage_loss_fences_after_f_not_before() {
        let mut f = Fence::new(timing(), Policy::Report, Policy::Report);
        let a = f.step(&inputs(1500, 0, 2));
        assert_eq!(a.state, HostState::Live);
        assert!(a.pet && !a.kill_all);
        let a = f.step(&inputs(1501, 0, 2));
        assert_eq!(a.state, HostState::Fencing);
        assert!(a.kill_all && !a.pet && !a.reset);
        assert!(a.log.unwrap().contains("storage lost"));
        // Kill succeeds: fenced-clean, petting again (no writer left).
        let a = f.step(&inputs(1700, 0, 0));
        assert_eq!(a.state, HostState::FencedClean);
        assert!(a.pet && !a.kill_all);
    }

    /// A renewal refused with EBLOCKLISTED fences at once, long before F
    /// (the renewal 0.2 s old), kills, stops petting while a QEMU lives,
    /// and is cleared only by a renewal that succeeds again.
    #[test]
    fn blocklisted_fences_at_once_and_stays() {
        let mut f = Fence::new(timing(), Policy::Report, Policy::Report);
        let mut i = inputs(200, 0, 1);
        i.blocklisted = true;
        let a = f.step(&i);
        assert_eq!(a.state, HostState::Fencing);
        assert!(a.kill_all && !a.pet && !a.reset);
        assert!(a.log.unwrap().contains("blocklisted"));
        assert_eq!(
            f.phase,
            Phase::Fencing {
                cause: Cause::StorageFenced,
                since: 200
            }
        );
        i.now = 300;
        i.alive_leased = 0;
        let a = f.step(&i);
        assert_eq!(a.state, HostState::FencedClean);
        // Cleared only once the host can renew again.
        i.now = 400;
        i.clear_requested = true;
        assert_eq!(f.step(&i).state, HostState::FencedClean);
        let mut ok = inputs(500, 450, 0);
        ok.clear_requested = true;
        assert_eq!(f.step(&ok).state, HostState::Live);
        // The marker keeps the cause across a daemon restart.
        let d = std::env::temp_dir().join(format!(
            "vmlease-test-fence-marker-{}-{}",
            std::process::id(),
            crate::process::random_u64()
        ));
        std::fs::create_dir_all(&d).unwrap();
        store_marker(
            &d,
            &Phase::Fenced {
                cause: Cause::StorageFenced,
                since: 1,
            },
        );
        assert_eq!(load_marker(&d), Some(Cause::StorageFenced));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn survivor_after_k_resets() {
        let mut f = Fence::new(timing(), Policy::Report, Policy::Report);
        // F ran out at 1500: K counts from there, however late the fence
        // was noticed (a tick, a stalled loop).
        f.step(&inputs(1600, 0, 1));
        let a = f.step(&inputs(1999, 0, 1));
        assert!(!a.reset);
        let a = f.step(&inputs(2000, 0, 1));
        assert!(a.reset && !a.pet);
        // Stays reset.
        assert!(f.step(&inputs(9000, 8000, 0)).reset);
    }

    #[test]
    fn mgmt_loss_reports_or_fences_by_policy() {
        let mut i = inputs(100, 100, 1);
        i.mgmt_lost = true;
        let mut report = Fence::new(timing(), Policy::Report, Policy::Report);
        let a = report.step(&i);
        assert_eq!(a.state, HostState::MgmtIsolated);
        assert!(!a.kill_all && a.pet);
        let mut fence = Fence::new(timing(), Policy::Fence, Policy::Report);
        let a = fence.step(&i);
        assert!(a.kill_all);
        i.alive_leased = 0;
        let a = fence.step(&i);
        assert_eq!(a.state, HostState::FencedClean);
        // Clearing is refused while the network is still lost...
        i.clear_requested = true;
        assert_eq!(fence.step(&i).state, HostState::FencedClean);
        // ...and accepted once it is back.
        i.mgmt_lost = false;
        assert_eq!(fence.step(&i).state, HostState::Live);
    }

    #[test]
    fn fenced_host_kills_new_leased_processes() {
        let mut f = Fence::new(timing(), Policy::Report, Policy::Report);
        f.step(&inputs(2000, 0, 0));
        assert_eq!(f.step(&inputs(2100, 0, 0)).state, HostState::FencedClean);
        let a = f.step(&inputs(2200, 0, 1));
        assert!(a.kill_all);
        assert_eq!(a.state, HostState::Fencing);
    }

    #[test]
    fn collision_fences_at_once() {
        let mut f = Fence::new(timing(), Policy::Report, Policy::Report);
        let mut i = inputs(100, 100, 1);
        i.collision = true;
        let a = f.step(&i);
        assert!(a.kill_all && !a.pet);
    }

    fn own(boot: &str, name: &str, state: HostState, mono_ms: u64) -> Slot {
        Slot::Record(crate::hosts::HostRecord {
            host_id: 1,
            host_name: name.into(),
            boot_id: boot.into(),
            incarnation: 7,
            counter: 3,
            state,
            timing: timing(),
            unsafe_no_watchdog: false,
            mono_ms,
            wall: 1_700_000_000,
        })
    }

    #[test]
    fn restart_continues_the_fence_clock_of_this_boot() {
        let rec = own("b1", "h1", HostState::Live, 4_000);
        assert_eq!(clock_start(Some(&rec), "h1", "b1", 5_000), 4_000);
        let fencing = own("b1", "h1", HostState::Fencing, 4_000);
        assert_eq!(clock_start(Some(&fencing), "h1", "b1", 5_000), 4_000);
        // A record from the future of this clock cannot be ours: now.
        assert_eq!(clock_start(Some(&rec), "h1", "b1", 3_000), 3_000);
    }

    #[test]
    fn fence_clock_starts_now_without_a_record_of_this_boot() {
        let now = 5_000;
        let other_boot = own("b0", "h1", HostState::Live, 4_000);
        let other_host = own("b1", "h9", HostState::Live, 4_000);
        let left = own("b1", "h1", HostState::Leaving, 4_000);
        for s in [&other_boot, &other_host, &left, &Slot::Empty] {
            assert_eq!(clock_start(Some(s), "h1", "b1", now), now, "{s:?}");
        }
        assert_eq!(clock_start(None, "h1", "b1", now), now);
    }

    /// KB1: the previous daemon last renewed at 4.0 s, renewals fail since,
    /// and the daemon is restarted at 4.9 s: it fences at 4.0 s + F, not at
    /// 4.9 s + F, and does not pet the watchdog past 4.0 s + F.
    #[test]
    fn kb1_a_restarted_daemon_fences_f_after_the_last_renewal() {
        let rec = own("b1", "h1", HostState::Live, 4_000);
        let started = clock_start(Some(&rec), "h1", "b1", 4_900);
        let mut f = Fence::new(timing(), Policy::Report, Policy::Report);
        let mut i = inputs(5_500, 0, 1);
        i.started = started;
        let a = f.step(&i);
        assert!(a.pet && !a.kill_all);
        i.now = 5_501;
        let a = f.step(&i);
        assert_eq!(a.state, HostState::Fencing);
        assert!(a.kill_all && !a.pet);
    }

    /// KB4: a daemon restarted during a fence (the marker brings the fence
    /// back) resets at the last renewal + F + K, not K after its start.
    #[test]
    fn kb4_a_restart_during_a_fence_does_not_restart_k() {
        // The last renewal at 1.0 s: F ran out at 2.5 s, K at 3.0 s. The
        // first daemon fenced at 2.55 s (a tick late) and died at 2.9 s
        // with a QEMU stuck in the kernel; the new one starts at 3.2 s.
        let mut first = Fence::new(timing(), Policy::Report, Policy::Report);
        let a = first.step(&inputs(2_550, 1_000, 1));
        assert!(a.kill_all);
        assert_eq!(
            first.phase,
            Phase::Fencing {
                cause: Cause::Storage,
                since: 2_500
            }
        );
        assert!(first.step(&inputs(3_000, 1_000, 1)).reset);
        let mut f = Fence::new(timing(), Policy::Report, Policy::Report);
        f.phase = Phase::Fenced {
            cause: Cause::Storage,
            since: 3_200,
        };
        let mut i = inputs(3_200, 0, 1);
        i.started = 1_000;
        // It kills at once, and resets at its next step (one tick) if the
        // kill did not work: K ran out long ago.
        let a = f.step(&i);
        assert!(a.kill_all && !a.reset && !a.pet, "{a:?}");
        i.now = 3_300;
        let a = f.step(&i);
        assert!(a.reset && !a.pet, "{a:?}");
    }

    /// A fence by policy (renewals healthy) gives the processes K from now.
    #[test]
    fn mgmt_fence_counts_k_from_its_start() {
        let mut f = Fence::new(timing(), Policy::Fence, Policy::Report);
        let mut i = inputs(5_000, 4_900, 1);
        i.mgmt_lost = true;
        f.step(&i);
        i.now = 5_499;
        assert!(!f.step(&i).reset);
        i.now = 5_500;
        assert!(f.step(&i).reset);
    }

    #[test]
    fn no_renewal_since_start_counts_from_start() {
        let mut f = Fence::new(timing(), Policy::Report, Policy::Report);
        let mut i = inputs(10_000, 0, 0);
        i.started = 9_000;
        assert_eq!(f.step(&i).state, HostState::Live);
        i.now = 10_501;
        assert_eq!(f.step(&i).state, HostState::FencedClean);
    }
}
