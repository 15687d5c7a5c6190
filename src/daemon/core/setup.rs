//! What the core is given: this host and its config ([`Setup`]), and the
//! test-only seam through which the simulator breaks one rule at a time
//! ([`Tamper`]).

use crate::config::{Config, Network, Timing};
use crate::daemon::fence::{Actions, Fence, Inputs};
use crate::hosts::Slot;

/// What the core needs to know of this host and its config.
#[derive(Debug, Clone)]
pub struct Setup {
    pub host_id: u16,
    pub host_name: String,
    pub boot_id: String,
    pub incarnation: u64,
    pub timing: Timing,
    pub io_timeout: u64,
    pub unsafe_no_watchdog: bool,
    pub storage: Network,
    pub management: Network,
    pub service: Network,
    /// For the status only.
    pub lockspace_dir: String,
    pub lockspace_uuid: String,
    pub allow_local_lockspace: bool,
    /// Why the lockspace is not really shared (allow_local_lockspace).
    pub local_lockspace: String,
}

impl Setup {
    pub fn new(
        cfg: &Config,
        host_id: u16,
        host_name: &str,
        boot_id: &str,
        incarnation: u64,
    ) -> Setup {
        Setup {
            host_id,
            host_name: host_name.to_string(),
            boot_id: boot_id.to_string(),
            incarnation,
            timing: cfg.timing,
            io_timeout: cfg.io_timeout,
            unsafe_no_watchdog: cfg.unsafe_no_watchdog,
            storage: cfg.storage.clone(),
            management: cfg.management.clone(),
            service: cfg.service.clone(),
            lockspace_dir: cfg.lockspace_dir.display().to_string(),
            lockspace_uuid: String::new(),
            allow_local_lockspace: cfg.allow_local_lockspace,
            local_lockspace: String::new(),
        }
    }
}

/// A test-only seam: the simulator's mutation check breaks one rule at a
/// time through it, to show that it notices. Production installs none.
pub trait Tamper: Send + Sync {
    /// The fence clock a restarted daemon starts with.
    fn fence_clock(&self, clock: u64, _now: u64) -> u64 {
        clock
    }
    /// The fence's actions of one tick, before the core does them.
    fn actions(&self, _fence: &mut Fence, _i: &Inputs, _was_fencing: bool, _act: &mut Actions) {}
    /// The collision rules before issue 14 item 2: the slot is written
    /// on (and 'leaving' published) after a collision, and a clear request
    /// clears it without a re-claim.
    fn old_collision_rules(&self) -> bool {
        false
    }
    /// How long the claim watches a slot before writing
    /// (`claim::watch_time`); the claim also joins without its write and
    /// read-back under [`Tamper::old_collision_rules`].
    fn watch_time(
        &self,
        slot: &Slot,
        my_name: &str,
        my_boot: &str,
        my_dead_ms: u64,
        io_ms: u64,
    ) -> Option<(u64, String)> {
        crate::daemon::claim::watch_time(slot, my_name, my_boot, my_dead_ms, io_ms)
    }
}
