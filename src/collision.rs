//! Host id collisions: two machines configured with the same `host_id`
//! (a cloned or templated config) would both write one liveness slot. To
//! the other hosts that slot then shows a boot id that changes, which is
//! what takeover rule 2 ("the holder rebooted") frees leases on, while
//! both machines run their VMs.
//!
//! The defences, as sanlock's delta leases (docs/design.md, "Claim and
//! collisions"):
//!
//! - the writer: before every write of its slot it compares the slot as
//!   read with the record it wrote last (`check_own`); anything else is a
//!   collision: it fences and writes the slot no more;
//! - the claimer: after its claim write it waits `claim_wait_ms` and reads
//!   the slot again before it counts as joined (`daemon::claim`);
//! - the observers: a slot whose writer identity (name, boot id) comes back
//!   after another one wrote is flagged (`Identities`), and rule 2 never
//!   applies to a flagged slot, nor to a record that has not finished its
//!   claim (counter 0, `CLAIM_COUNTER`).
//!
//! Everything here works on "the own record as read" and "the records we
//! may have written last", whatever file the slot lives in.
#![forbid(unsafe_code)]

use std::fmt;
use std::path::{Path, PathBuf};

use crate::hosts::{self, HostState, Slot};

/// The counter of a claim record: written once, before the claim wait. A
/// record with this counter has not (yet) been confirmed by its writer's
/// re-read, so it is no evidence that the slot's earlier owner is gone.
/// Renewals count from 1.
pub const CLAIM_COUNTER: u64 = 0;

/// Another machine wrote our slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collision {
    pub host_id: u16,
    /// What the slot holds now, for people.
    pub found: String,
}

impl fmt::Display for Collision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "host id {} collision: its liveness slot now holds {}, not the record this host wrote last; \
             another machine is configured with host_id {}",
            self.host_id, self.found, self.host_id
        )
    }
}

/// A slot's content for messages: "host 'a' (boot 1234abcd, counter 7)".
pub fn describe(host_id: u16, raw: &[u8]) -> String {
    match hosts::decode_slot(host_id, raw) {
        Slot::Empty => "an empty slot".into(),
        Slot::Record(r) => format!(
            "host '{}' (boot {}, counter {}, state {})",
            r.host_name,
            short(&r.boot_id),
            r.counter,
            r.state
        ),
        Slot::Corrupt(why) => format!("a damaged record ({why})"),
    }
}

/// The first 8 characters of a boot id.
pub fn short(boot_id: &str) -> String {
    boot_id.chars().take(8).collect()
}

/// When the slot of this host's id holds another machine's record: what
/// it holds, for `vmlease status` and `vmlease hosts` (None: it is ours,
/// empty or damaged). A record of this host name from another boot is
/// what a reboot leaves until the daemon has claimed the slot again: it
/// counts only once the daemon has `joined`.
pub fn not_ours(slot: &Slot, my_name: &str, my_boot: &str, joined: bool) -> Option<String> {
    match slot {
        Slot::Record(r) if r.host_name != my_name || (joined && r.boot_id != my_boot) => {
            Some(format!(
                "this host id's slot holds host '{}' (boot {}), not this host '{}' (boot {})",
                r.host_name,
                short(&r.boot_id),
                my_name,
                short(my_boot)
            ))
        }
        _ => None,
    }
}

/// The file where a daemon that found its host id in use says so (the
/// daemon exits; `vmlease status` and `vmlease hosts` show it).
pub fn refusal_path(state_dir: &Path) -> PathBuf {
    state_dir.join("host-id-refused")
}

/// Records (`Some`) or removes (`None`) a claim refusal.
pub fn store_refusal(state_dir: &Path, why: Option<&str>) {
    let p = refusal_path(state_dir);
    match why {
        Some(w) => {
            let _ = std::fs::write(p, format!("{w}\n"));
        }
        None => {
            let _ = std::fs::remove_file(p);
        }
    }
}

pub fn load_refusal(state_dir: &Path) -> Option<String> {
    std::fs::read_to_string(refusal_path(state_dir))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Before writing our slot: `read` is the slot as just read, `expect` the
/// records it may hold - the one we wrote last, and, while the outcome of
/// a failed write is unknown, the one before it. Anything else was written
/// by another machine (or damaged): a collision.
///
/// One exception: a record of this host name and boot id written by an
/// earlier daemon (another incarnation). Only this machine has this boot
/// id, and only one daemon runs per machine (the instance lock), so it is
/// the previous daemon's last write landing late (a write in flight when
/// it was killed): not another machine. The next write covers it.
pub fn check_own(host_id: u16, read: &[u8], expect: &[Vec<u8>]) -> Result<(), Collision> {
    if expect.iter().any(|e| e.as_slice() == read) {
        return Ok(());
    }
    let me = expect
        .first()
        .and_then(|e| hosts::decode_slot(host_id, e).record().cloned());
    let predecessor = match (hosts::decode_slot(host_id, read), me) {
        (Slot::Record(r), Some(me)) => {
            r.host_name == me.host_name
                && r.boot_id == me.boot_id
                && r.incarnation != me.incarnation
        }
        _ => false,
    };
    if predecessor {
        Ok(())
    } else {
        Err(Collision {
            host_id,
            found: describe(host_id, read),
        })
    }
}

/// How long a claimer waits between its claim write and the re-read that
/// makes it a member. Two writers can race for a slot they both read as
/// claimable: each read it, each writes, the later write wins. The wait
/// must let the loser see the winner's record:
///
/// - a concurrent claimer read the slot before our write landed and writes
///   within its own I/O deadline of that read (read and write each at most
///   `io_timeout`, or it gives up): 2 x io_timeout after our write, its
///   write has landed or never will (sanlock's delay, `2 * io_timeout`);
/// - a live owner we did not see (its record was claimable in our eyes:
///   empty, `leaving`, or ours) renews at least every renew interval, plus
///   one loop tick, plus its own I/O time: its renewal reads our claim
///   first and stops (`check_own`), but it must have had the chance to, so
///   the wait also covers one renew interval (its, when the slot showed
///   one, and ours: clones share their timing) and a tick.
///
/// A writer whose storage stalls for longer (up to F, without fencing) is
/// not covered by any wait shorter than D: that is why a record that is
/// not ours of this boot is watched for its host_dead_timeout before we
/// write at all (`claim::watch_time`), and why the stalled writer's next
/// renewal checks its slot first (`check_own`).
pub fn claim_wait_ms(io_ms: u64, my_renew_ms: u64, seen_renew_ms: Option<u64>) -> u64 {
    let renew = my_renew_ms.max(seen_renew_ms.unwrap_or(0));
    2 * io_ms + renew + TICK_MS
}

/// The daemon loop's longest tick.
pub const TICK_MS: u64 = 100;

/// What an observer remembers of one slot's writers, to notice two
/// machines taking turns on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identities {
    /// The writer of the last record seen (name, boot id).
    last: Option<(String, String)>,
    /// When the last writer's first record was seen (observer's clock).
    since_ms: u64,
    /// Every earlier writer since the slot was last empty or left cleanly.
    earlier: Vec<(String, String)>,
    /// Set once a writer came back after another one wrote: who took turns.
    pub collision: Option<String>,
}

impl Identities {
    /// Feeds the slot as read now; true when this read revealed a
    /// collision. A slot that is empty or shows a clean leave starts a new
    /// history (a host may take an id another one left); a flagged slot
    /// stays flagged until then, or until `settled` says so.
    pub fn see(&mut self, now_ms: u64, slot: &Slot) -> bool {
        let r = match slot {
            Slot::Record(r) => r,
            Slot::Empty => {
                *self = Identities::default();
                return false;
            }
            Slot::Corrupt(_) => return false,
        };
        let me = (r.host_name.clone(), r.boot_id.clone());
        let mut newly = false;
        if self.last.as_ref() != Some(&me) {
            if let Some(prev) = self.last.take() {
                if self.earlier.contains(&me) && self.collision.is_none() {
                    self.collision = Some(format!(
                        "host '{}' (boot {}) and host '{}' (boot {}) take turns writing it",
                        me.0,
                        short(&me.1),
                        prev.0,
                        short(&prev.1)
                    ));
                    newly = true;
                }
                if !self.earlier.contains(&prev) {
                    self.earlier.push(prev);
                }
            }
            self.last = Some(me);
            self.since_ms = now_ms;
        }
        if r.state == HostState::Leaving && self.collision.is_none() {
            self.earlier.clear();
        }
        newly
    }

    /// Ends a collision once only the last writer has written the slot
    /// for `dead_ms` (the largest host_dead_timeout of its writers): every
    /// other writer has been silent that long, so by takeover rule 4 it
    /// has fenced or died, and its leases may go by rule 2 again. (A slot
    /// nobody writes any more settles the same way.)
    pub fn settle(&mut self, now_ms: u64, dead_ms: u64) {
        if self.collision.is_some() && now_ms.saturating_sub(self.since_ms) >= dead_ms {
            let (last, since_ms) = (self.last.take(), self.since_ms);
            *self = Identities::default();
            self.last = last;
            self.since_ms = since_ms;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Timing;
    use crate::hosts::HostRecord;

    fn rec(name: &str, boot: &str, counter: u64, state: HostState) -> HostRecord {
        HostRecord {
            host_id: 3,
            host_name: name.into(),
            boot_id: boot.into(),
            incarnation: 1,
            counter,
            state,
            timing: Timing::TEST,
            unsafe_no_watchdog: false,
            mono_ms: 5,
            wall: 6,
        }
    }

    #[test]
    fn own_slot_must_be_exactly_what_we_wrote() {
        let a1 = rec("a", "boot-a", 1, HostState::Live).encode();
        let a2 = rec("a", "boot-a", 2, HostState::Live).encode();
        let b = rec("b", "boot-b", 9, HostState::Live).encode();
        assert_eq!(check_own(3, &a2, std::slice::from_ref(&a2)), Ok(()));
        assert_eq!(check_own(3, &a1, &[a1.clone(), a2.clone()]), Ok(()));
        let e = check_own(3, &b, &[a1.clone(), a2.clone()]).unwrap_err();
        assert!(e.found.contains("host 'b' (boot boot-b"), "{e}");
        assert!(e.to_string().contains("host id 3 collision"), "{e}");
        // Our own older record (a write that landed late) is not ours now.
        assert!(check_own(3, &a1, std::slice::from_ref(&a2)).is_err());
        // A record of the daemon before us on this boot (its last write
        // landing late) is no other machine.
        let mut pred = rec("a", "boot-a", 40, HostState::Live);
        pred.incarnation = 2;
        assert_eq!(
            check_own(3, &pred.encode(), std::slice::from_ref(&a2)),
            Ok(())
        );
        // Same name, another boot: another machine.
        let clone = rec("a", "boot-z", 1, HostState::Live).encode();
        assert!(check_own(3, &clone, std::slice::from_ref(&a2)).is_err());
        // Nor is an empty or damaged slot.
        assert!(check_own(3, &[0u8; hosts::SLOT_SIZE], std::slice::from_ref(&a2)).is_err());
        let mut bad = a2.clone();
        bad[3] ^= 1;
        let e = check_own(3, &bad, &[a2]).unwrap_err();
        assert!(e.found.starts_with("a damaged record"), "{e}");
    }

    #[test]
    fn claim_wait_covers_two_io_timeouts_and_a_renewal() {
        assert_eq!(claim_wait_ms(500, 200, None), 1000 + 200 + TICK_MS);
        assert_eq!(claim_wait_ms(500, 200, Some(2000)), 1000 + 2000 + TICK_MS);
        assert_eq!(
            claim_wait_ms(5000, 2000, Some(1000)),
            10_000 + 2000 + TICK_MS
        );
    }

    #[test]
    fn identities_flag_a_writer_that_comes_back() {
        let mut ids = Identities::default();
        let a = Slot::Record(rec("a", "boot-a", 1, HostState::Live));
        let a2 = Slot::Record(rec("a", "boot-a", 2, HostState::Live));
        let b = Slot::Record(rec("b", "boot-b", 1, HostState::Live));
        assert!(!ids.see(0, &a));
        assert!(!ids.see(100, &a2));
        // One change of identity is a reboot or a new host: no flag.
        assert!(!ids.see(200, &b));
        assert_eq!(ids.collision, None);
        // The first writer is back: two machines take turns.
        assert!(ids.see(300, &a));
        let c = ids.collision.clone().unwrap();
        assert!(
            c.contains("host 'a' (boot boot-a)") && c.contains("host 'b'"),
            "{c}"
        );
        assert!(!ids.see(400, &b), "flagged once");
        assert!(ids.collision.is_some());
        // Only b for D: a has been silent that long; a later return of a
        // is a fresh history.
        ids.settle(4399, 4000);
        assert!(ids.collision.is_some());
        ids.settle(4400, 4000);
        assert_eq!(ids.collision, None);
        assert!(!ids.see(4500, &a));
    }

    #[test]
    fn identities_same_name_other_boot_alternating_is_a_collision() {
        let mut ids = Identities::default();
        let a = Slot::Record(rec("h", "boot-a", 1, HostState::Live));
        let b = Slot::Record(rec("h", "boot-b", 1, HostState::Live));
        ids.see(0, &a);
        ids.see(0, &b);
        assert!(ids.see(0, &a));
    }

    #[test]
    fn identities_forget_after_a_clean_leave_or_an_empty_slot() {
        let mut ids = Identities::default();
        ids.see(0, &Slot::Record(rec("a", "boot-a", 1, HostState::Live)));
        ids.see(0, &Slot::Record(rec("b", "boot-b", 1, HostState::Leaving)));
        assert!(!ids.see(0, &Slot::Record(rec("a", "boot-a", 7, HostState::Live))));
        ids.see(0, &Slot::Record(rec("b", "boot-b", 1, HostState::Live)));
        ids.see(0, &Slot::Empty);
        assert!(!ids.see(0, &Slot::Record(rec("a", "boot-a", 8, HostState::Live))));
        assert_eq!(ids.collision, None);
    }
}
