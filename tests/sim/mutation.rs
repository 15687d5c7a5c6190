//! Safety rules the simulator can switch off, one at a time, to show that
//! it notices. Every mutation lives in the simulator (a view, a store or a
//! check that lies); production code has no knob for any of them. The
//! plugin's are seams into its production code: the simulated host
//! (`plugin_host::SimHost`) answers the protected check or its clock as
//! the mutation says, or the acquire's own data (its view, the versions
//! its records require) is changed between its steps. Those of the
//! daemon's own rules reach the production core through its test-only
//! seam (`daemon::core::Tamper`, tests/sim/daemon.rs `SimTamper`), which
//! production never installs.

use std::fmt;

use vmlease::hosts::{HostState, Slot};
use vmlease::process::{Liveness, ProcId, Stat};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    None,
    /// "No watchdog, no leases" off: the plugin's protected check
    /// (`Host::protected`, i.e. `protected_status`) always passes.
    NoProtectedCheck,
    /// The protected check judges the daemon's status as of the moment it
    /// was written, so a stale status from a hung daemon looks fresh.
    StaleStatusAccepted,
    /// Rule 4 at D/2: the engine's view claims twice the observed time.
    TakeoverAtHalfD,
    /// Resume and migration finish acquire without the handed-over lease
    /// versions (nor those the registry remembers from an earlier acquire
    /// of the same QEMU): `RecordCall::want` cleared.
    NoVersionCheckOnHandover,
    /// The record lock does not exclude anyone.
    NoRecordLock,
    /// The judge's slot read under the lock is answered from the daemon's
    /// last observation instead of the store.
    NoFreshSlotRead,
    /// The daemon publishes fenced-clean as soon as it starts fencing,
    /// before its leased QEMUs are dead.
    FencedCleanBeforeKill,
    /// The fence never kills (only the watchdog and the reset remain).
    NoKillOnFence,
    /// The daemon pets the hardware watchdog on every tick.
    AlwaysPetWatchdog,
    /// The daemon counts a QEMU as dead once SIGKILL is sent, not once it
    /// has exited (a QEMU in uninterruptible I/O may still write).
    DeadOnKill,
    /// KB1's old behaviour: a restarted daemon counts F from its own start
    /// instead of its own record's last renewal (`fence::clock_start`).
    RestartResetsFenceClock,
    /// KB2's old behaviour: a slot seen for the first time (and unchanged
    /// since) is dated to the observer's creation, not to the read that
    /// saw it; "empty since" likewise.
    FirstSightDatedToStart,
    /// KB4's old behaviour: a fence that starts (or a restarted daemon that
    /// finds its fence again) counts K from now, not from when F ran out.
    KillTimeoutFromNow,
    /// KB5's old behaviour: a fenced-clean (or leaving) record frees every
    /// holder on its host, even a QEMU started after it was written (the
    /// judge's slot read shows the record as newer than any QEMU).
    FencedCleanVouchesForAll,
    /// Issue 14 item 4's old behaviour: an acquire abandoned at its
    /// deadline still writes when it finally runs, even for a QEMU that
    /// exited meanwhile (`Engine::acquire` instead of `acquire_for`). Only
    /// the hand-written scenario produces its fault (`AcquireStall`), so it
    /// is not in `ALL`.
    AbandonedAcquireWrites,
    /// The intents' ends written too early: the caller of an acquire ends
    /// the intents of every call in its one write, also those of calls it
    /// stopped waiting for at their deadline, whose writes may still land.
    /// Only the hand-written scenario (`a_late_acquire_ends_its_own_intent`)
    /// makes a write land that late on purpose, so it is not in `ALL`.
    CallerEndsEveryIntent,
    /// The old `ProcId::liveness` (issue 14, item 1): a process counts as
    /// dead once its main thread is a zombie, though another thread (a
    /// killed QEMU's I/O thread in uninterruptible sleep) still exists
    /// and may land a write. Used by the daemon's reaper and fence and by
    /// the engine's rule 3, as in production.
    LeaderExitIsDeath,
    /// The claim and the renewal before issue 14 item 2 (host id
    /// collisions): the claim only watches the slot (this host's name from
    /// another boot for 2 R + io_timeout, any other record for D) and
    /// joins without a claim write or a delayed read-back; each renewal
    /// writes, then reads, so a collision is seen only when the other
    /// machine's write lands in between, and it goes on writing after one.
    /// The observers' hold of rule 2 (`collision::Identities`, the claim
    /// record's counter) is production code and stays.
    ClaimWithoutReadBack,
}

/// `claim::watch_time` before issue 14: a record of this host name from
/// another boot was watched for two of its renew intervals plus the I/O
/// timeout only (a machine with this name and id that is alive would
/// renew in that time - unless its renewals stall).
pub fn old_watch_time(
    slot: &Slot,
    my_name: &str,
    my_boot: &str,
    my_dead_ms: u64,
    io_ms: u64,
) -> Option<(u64, String)> {
    match slot {
        Slot::Record(r)
            if r.host_name == my_name && r.boot_id != my_boot && r.state != HostState::Leaving =>
        {
            Some((
                2 * r.timing.renew_interval + io_ms,
                format!(
                    "it holds this host's record from an earlier boot ({})",
                    r.boot_id
                ),
            ))
        }
        _ => vmlease::daemon::claim::watch_time(slot, my_name, my_boot, my_dead_ms, io_ms),
    }
}

/// `ProcId::liveness` before issue 14's fix: it looked at the leader
/// only ("Z" = dead), whatever the other threads do.
pub fn leader_only_liveness(p: ProcId, st: Option<&Stat>) -> Liveness {
    match st {
        Some(st) if st.start == p.start && st.state != 'Z' && st.state != 'X' => Liveness::Alive,
        _ => Liveness::Dead,
    }
}

impl Mutation {
    pub const ALL: [Mutation; 16] = [
        Mutation::NoProtectedCheck,
        Mutation::StaleStatusAccepted,
        Mutation::TakeoverAtHalfD,
        Mutation::NoVersionCheckOnHandover,
        Mutation::NoRecordLock,
        Mutation::NoFreshSlotRead,
        Mutation::FencedCleanBeforeKill,
        Mutation::NoKillOnFence,
        Mutation::AlwaysPetWatchdog,
        Mutation::DeadOnKill,
        Mutation::RestartResetsFenceClock,
        Mutation::FirstSightDatedToStart,
        Mutation::KillTimeoutFromNow,
        Mutation::FencedCleanVouchesForAll,
        Mutation::LeaderExitIsDeath,
        Mutation::ClaimWithoutReadBack,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mutation::None => "none",
            Mutation::NoProtectedCheck => "no-protected-check",
            Mutation::StaleStatusAccepted => "stale-status-accepted",
            Mutation::TakeoverAtHalfD => "takeover-at-half-d",
            Mutation::NoVersionCheckOnHandover => "no-version-check-on-handover",
            Mutation::NoRecordLock => "no-record-lock",
            Mutation::NoFreshSlotRead => "no-fresh-slot-read",
            Mutation::FencedCleanBeforeKill => "fenced-clean-before-kill",
            Mutation::NoKillOnFence => "no-kill-on-fence",
            Mutation::AlwaysPetWatchdog => "always-pet-watchdog",
            Mutation::DeadOnKill => "dead-on-kill",
            Mutation::RestartResetsFenceClock => "restart-resets-fence-clock",
            Mutation::FirstSightDatedToStart => "first-sight-dated-to-start",
            Mutation::KillTimeoutFromNow => "kill-timeout-from-now",
            Mutation::FencedCleanVouchesForAll => "fenced-clean-vouches-for-all",
            Mutation::AbandonedAcquireWrites => "abandoned-acquire-writes",
            Mutation::CallerEndsEveryIntent => "caller-ends-every-intent",
            Mutation::LeaderExitIsDeath => "leader-exit-is-death",
            Mutation::ClaimWithoutReadBack => "claim-without-read-back",
        }
    }

    pub fn parse(s: &str) -> Option<Mutation> {
        if s == "none" {
            return Some(Mutation::None);
        }
        Mutation::ALL.iter().copied().find(|m| m.name() == s)
    }
}

impl fmt::Display for Mutation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
