//! The daemon's loop as a pure state machine: what happened goes in
//! (renewal results, probe rounds, the tick's observations, a stop), what
//! to do comes out (kill, reset, pet, renew, write the status, publish
//! 'leaving'). No threads, files, clocks or syscalls: time comes in as
//! `now`, and the driver (`super::Daemon`) does the I/O. The simulator
//! (tests/sim) drives this same core.
//!
//! The orderings that safety rests on live here: within one tick the fence
//! kills before it resets, pets only when the fence allows, and renews
//! after both; the fence clock of a restarted daemon continues from its
//! own record (`fence::clock_start`, KB1); the stop path withdraws the
//! status before it counts, and publishes 'leaving' only when nothing
//! leased runs and the slot is still ours.
#![forbid(unsafe_code)]

mod renewal;
mod setup;
pub mod status;
mod stop;
#[cfg(test)]
mod tests;

use log::{info, warn};

use crate::collision::CLAIM_COUNTER;
use crate::config::Policy;
use crate::daemon::claim::Claim;
use crate::daemon::fence::{self, Cause, Fence, Inputs, Phase};
use crate::daemon::probes::{NetState, Nets, Round};
use crate::hosts::{HostRecord, HostState, Slot};
use crate::status::Observer;

pub use renewal::{RenewReq, Renewed};
pub use setup::{Setup, Tamper};
pub use stop::StopNext;

/// At most this many records the slot may hold while writes fail (each
/// may or may not have landed); more means renewals failed for far longer
/// than F and the host has fenced anyway.
pub const MAX_EXPECT: usize = 32;

/// What one tick observed outside the core.
#[derive(Debug, Clone, Copy, Default)]
pub struct TickIn {
    pub now: u64,
    /// Wall-clock seconds, for the records written.
    pub wall_secs: u64,
    /// Leased QEMU processes alive (the registry as last scanned).
    pub alive_leased: usize,
    /// The operator asked to clear the fence (`vmlease clear-fence`).
    pub clear_asked: bool,
    /// `STATE_DIR/maintenance` exists.
    pub maintenance: bool,
}

/// What the driver does, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The fence's log line; `fence` when this step kills or resets.
    FenceLog { line: String, fence: bool },
    /// SIGKILL every leased QEMU that is alive, each after a note of its
    /// TCP sockets (`daemon::tcp_abort`).
    KillAll,
    /// Every leased QEMU is dead: destroy the TCP sockets noted before
    /// the kills and the orphans to their remote endpoints, so that no
    /// write a killed QEMU left in a send queue reaches the storage later.
    /// Comes before the step's `State` and `Renew`: `fenced-clean` is
    /// published only after it ran.
    AbortSockets,
    /// Reset the host (the loop then only waits).
    Reset { why: &'static str },
    /// Pet the hardware watchdog.
    Pet,
    /// The host state changed: store the fence marker for the phase.
    State { from: HostState, to: HostState },
    /// Hand this renewal to the storage thread.
    Renew(RenewReq),
    /// Write the status (`Core::status`).
    WriteStatus,
}

pub struct Core {
    pub setup: Setup,
    counter: u64,
    /// When the fence clock started: our own start, or the last renewal
    /// of the daemon before us on this boot.
    started_ms: u64,
    last_renewal_ms: u64,
    /// The renewal in flight: when it was issued, and the record it writes.
    inflight: Option<(u64, Option<Vec<u8>>)>,
    next_renew_ms: u64,
    /// The records our slot may hold: the one we wrote last, and those
    /// whose write failed after it (they may have landed).
    expect: Vec<Vec<u8>>,
    /// The records whose write failed since the last claim (oldest
    /// first, at most MAX_EXPECT): they may land late, after a later
    /// write ([`crate::daemon::renew::after_write`]).
    unconfirmed: Vec<Vec<u8>>,
    pub observer: Observer,
    pub fence: Fence,
    pub nets: Nets,
    /// Another machine wrote our slot: we write it no more until a
    /// re-claim (`vmlease clear-fence`) succeeds.
    collision: bool,
    /// A renewal failed with EBLOCKLISTED since the last one that wrote
    /// (`renew::blocklisted`): Ceph refuses this host; it fences at once.
    blocklisted: bool,
    collision_msg: String,
    /// A re-claim of the slot after a collision, driven by table reads.
    reclaim: Option<Claim>,
    /// What the last re-claim said (for the status).
    reclaim_note: String,
    /// A re-claim succeeded: clear the fence once a renewal confirms it.
    clear_after_renewal: bool,
    clear_ready: bool,
    reset_done: bool,
    last_state: HostState,
    last_renew_error: String,
    /// When the status was last written, and what it said.
    status_written_ms: u64,
    status_key: (HostState, u64, String),
    /// Network-policy fences disarmed.
    maintenance: bool,
    pub counters: crate::metrics::Counters,
    stopping: Option<stop::Stage>,
    tamper: Option<Box<dyn Tamper>>,
}

impl Core {
    /// The core once the claim has joined at `now`: `own` is our slot as
    /// the claim read it (a restart on the same boot continues the fence
    /// clock from it, KB1), `written` the record it holds now.
    pub fn new(
        setup: Setup,
        own: Option<&Slot>,
        written: Vec<u8>,
        now: u64,
        tamper: Option<Box<dyn Tamper>>,
    ) -> Core {
        let mut clock = fence::clock_start(own, &setup.host_name, &setup.boot_id, now);
        if let Some(t) = &tamper {
            clock = t.fence_clock(clock, now);
        }
        let t = setup.timing;
        let nets = Nets {
            storage: NetState::new("storage", setup.storage.clone()),
            management: NetState::new("management", setup.management.clone()),
            service: NetState::new("service", setup.service.clone()),
        };
        Core {
            fence: Fence::new(t, setup.management.policy, setup.service.policy),
            setup,
            counter: CLAIM_COUNTER,
            started_ms: clock,
            last_renewal_ms: 0,
            inflight: None,
            next_renew_ms: now,
            expect: vec![written],
            unconfirmed: Vec::new(),
            observer: Observer::new(now),
            nets,
            collision: false,
            blocklisted: false,
            collision_msg: String::new(),
            reclaim: None,
            reclaim_note: String::new(),
            clear_after_renewal: false,
            clear_ready: false,
            reset_done: false,
            last_state: HostState::Live,
            last_renew_error: String::new(),
            status_written_ms: 0,
            status_key: (HostState::Live, 0, String::new()),
            maintenance: false,
            counters: crate::metrics::Counters::default(),
            stopping: None,
            tamper,
        }
    }

    /// The loop begins at `now`; `marker` is the fence this host was in
    /// before the restart (it survives a daemon restart, not a reboot;
    /// only the operator clears it).
    pub fn begin(&mut self, now: u64, marker: Option<Cause>) {
        if let Some(cause) = marker {
            self.fence.phase = Phase::Fenced { cause, since: now };
        }
        self.observer = Observer::new(now);
        self.next_renew_ms = now;
    }

    /// When the fence clock started (`fence::clock_start`).
    pub fn fence_clock(&self) -> u64 {
        self.started_ms
    }

    pub fn last_renewal_ms(&self) -> u64 {
        self.last_renewal_ms
    }

    pub fn last_state(&self) -> HostState {
        self.last_state
    }

    pub fn collision(&self) -> bool {
        self.collision
    }

    pub fn maintenance(&self) -> bool {
        self.maintenance
    }

    /// A reset was done: the loop only waits (a recorded reset in tests).
    pub fn reset_done(&self) -> bool {
        self.reset_done
    }

    /// The cause of a fence begun or done; `None` while healthy.
    pub fn fence_cause(&self) -> Option<Cause> {
        fence_cause(&self.fence.phase)
    }

    /// One probe round of network `name` came in at `now`; returns the
    /// network when it went up or down.
    pub fn probe_round(&mut self, name: &str, r: Round) -> Option<&NetState> {
        let n = self.nets.iter_mut().find(|n| n.name == name)?;
        let was_up = n.down_since.is_none();
        n.feed(r);
        (was_up != n.down_since.is_none()).then_some(&*n)
    }

    /// Maintenance (vmlease-ha's agent writes `STATE_DIR/maintenance` while
    /// its host is in maintenance): a lost management or service network
    /// is reported, not fenced. Only liveness depends on those fences (they
    /// let other hosts restart the VMs sooner); the storage fence, which
    /// safety depends on, stays armed. A fence already under way goes on.
    fn set_maintenance(&mut self, on: bool) {
        if on == self.maintenance {
            return;
        }
        self.maintenance = on;
        let (m, s) = if on {
            (Policy::Report, Policy::Report)
        } else {
            (self.setup.management.policy, self.setup.service.policy)
        };
        self.fence.mgmt_policy = m;
        self.fence.service_policy = s;
        warn!(
            "maintenance {}: network-policy fences {} (management: {:?}, service: {:?})",
            if on { "entered" } else { "over" },
            if on { "disarmed" } else { "armed again" },
            m,
            s
        );
    }

    /// One turn of the loop: the fence decides from what the tick saw;
    /// `fresh_count` counts the leased QEMUs from a full registry scan
    /// (asked for only before publishing fenced-clean).
    pub fn tick(&mut self, i: TickIn, fresh_count: impl FnOnce() -> usize) -> Vec<Command> {
        let mut out = Vec::new();
        if self.reset_done {
            return out;
        }
        let now = i.now;
        self.set_maintenance(i.maintenance);
        let clear = self.clear_input(i.clear_asked);
        let mut inputs = Inputs {
            now,
            last_renewal: self.last_renewal_ms,
            started: self.started_ms,
            mgmt_lost: self.nets.management.lost(now),
            service_lost: self.nets.service.lost(now),
            mgmt_down: self.nets.management.down(),
            service_down: self.nets.service.down(),
            collision: self.collision,
            blocklisted: self.blocklisted,
            alive_leased: i.alive_leased,
            clear_requested: clear,
        };
        let cause_before = self.fence_cause();
        let was_fencing = matches!(self.fence.phase, Phase::Fencing { .. });
        let was_fenced = matches!(self.fence.phase, Phase::Fenced { .. });
        let mut act = self.fence.step_counted(&mut inputs, fresh_count);
        if let Some(t) = &self.tamper {
            t.actions(&mut self.fence, &inputs, was_fencing, &mut act);
        }
        if let (None, Some(c)) = (cause_before, self.fence_cause()) {
            if let Some(k) = crate::metrics::FENCE_REASONS
                .iter()
                .position(|r| *r == c.as_str())
            {
                self.counters.fences[k] += 1;
            }
        }
        if let Some(l) = act.log.take() {
            out.push(Command::FenceLog {
                line: l,
                fence: act.kill_all || act.reset,
            });
        }
        if act.kill_all {
            out.push(Command::KillAll);
        }
        if !was_fenced && matches!(self.fence.phase, Phase::Fenced { .. }) {
            out.push(Command::AbortSockets);
        }
        if act.reset {
            let why = match &self.fence.phase {
                Phase::Reset { cause } => cause.describe(),
                _ => "fence",
            };
            self.reset_done = true;
            out.push(Command::Reset { why });
            return out;
        }
        if act.pet {
            out.push(Command::Pet);
        }
        if act.state != self.last_state {
            out.push(Command::State {
                from: self.last_state,
                to: act.state,
            });
            self.last_state = act.state;
        }
        if let Some(req) = self.maybe_renew(now, i.wall_secs, act.state) {
            out.push(Command::Renew(req));
        }
        // The status is rewritten when it changes and at least every R/2
        // (the plugin wants it younger than R + 0.5 s).
        let key = (
            self.last_state,
            self.last_renewal_ms,
            self.last_renew_error.clone(),
        );
        let every = (self.setup.timing.renew_interval / 2).clamp(50, 1000);
        if key != self.status_key || now.saturating_sub(self.status_written_ms) >= every {
            self.status_written_ms = now;
            self.status_key = key;
            out.push(Command::WriteStatus);
        }
        out
    }

    /// One liveness record of this host.
    pub fn record(&self, state: HostState, now: u64, wall_secs: u64) -> HostRecord {
        HostRecord {
            host_id: self.setup.host_id,
            host_name: self.setup.host_name.clone(),
            boot_id: self.setup.boot_id.clone(),
            incarnation: self.setup.incarnation,
            counter: self.counter,
            state,
            timing: self.setup.timing,
            unsafe_no_watchdog: self.setup.unsafe_no_watchdog,
            mono_ms: now,
            wall: wall_secs,
        }
    }

    fn old_rules(&self) -> bool {
        self.tamper
            .as_ref()
            .is_some_and(|t| t.old_collision_rules())
    }

    /// The clear request as the fence sees it. A collision fence is cleared
    /// only through a new claim of the slot (`claim::Claim`, the same rules
    /// as at start): the request starts one, and the fence hears "clear"
    /// once the claim has succeeded and a renewal confirmed it.
    fn clear_input(&mut self, asked: bool) -> bool {
        if self.old_rules() {
            return asked;
        }
        if std::mem::take(&mut self.clear_ready) {
            self.reclaim_note.clear();
            return true;
        }
        if asked && self.collision {
            if self.reclaim.is_none() {
                info!(
                    "host id {}: re-claiming the slot before clearing the collision fence",
                    self.setup.host_id
                );
                self.reclaim_note = "re-claiming the host id".into();
                let s = &self.setup;
                self.reclaim = Some(Claim::new(
                    s.host_id,
                    &s.host_name,
                    &s.boot_id,
                    s.timing.host_dead_timeout,
                    s.io_timeout,
                    s.timing.renew_interval,
                    true,
                ));
                // Read the slot at once.
                self.next_renew_ms = 0;
            }
            return false;
        }
        asked
    }
}

/// The cause of a fence begun or done; `None` while healthy.
pub fn fence_cause(p: &Phase) -> Option<Cause> {
    match p {
        Phase::Healthy => None,
        Phase::Fencing { cause, .. } | Phase::Fenced { cause, .. } | Phase::Reset { cause } => {
            Some(cause.clone())
        }
    }
}
