//! When `vmlease-ha` talks to etcd (sans IO; times are ms on the loop's
//! monotonic clock). The loop runs every `[ha] interval`, but reads etcd
//! only when something can have changed what it would decide:
//!
//! - etcd changed (the watch of the prefix reported a change, or broke or
//!   reconnected: then nobody knows what changed);
//! - something local changed (protected or not, a new etcd lease);
//! - a part of it waits for time rather than for etcd ([`Wake::busy`]: the
//!   leader with a suspect host or a recovery in flight, a migration
//!   running here);
//! - the last step failed (etcd unreachable, no quorum: retried);
//! - [`RESYNC_MS`] passed since the last full read and etcd's revision
//!   is not the one that read saw (one count-only request of a few bytes
//!   tells): the safety net for a watch that missed a change without
//!   breaking. A quiet cluster costs the same whatever it holds.
//!
//! The presence lease is kept alive every [`keepalive_every_ms`], not every
//! step.
#![forbid(unsafe_code)]

/// The periodic full read, whatever the watch says.
pub const RESYNC_MS: u64 = 10_000;

/// Why the loop may have to read etcd now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wake {
    pub etcd_changed: bool,
    pub local_changed: bool,
    pub busy: bool,
    pub failing: bool,
}

/// How often the presence lease of `ttl_ms` is renewed: a quarter of its
/// TTL (three renewals can be missed before it expires), and not more
/// often than every step.
pub fn keepalive_every_ms(interval_ms: u64, ttl_ms: u64) -> u64 {
    (ttl_ms / 4).max(interval_ms)
}

#[derive(Debug, Clone, Default)]
pub struct Schedule {
    keepalive_ms: u64,
    /// When etcd was last read, or found unchanged at a resync.
    last_read: Option<u64>,
    /// etcd's revision before the last read.
    read_rev: Option<i64>,
    last_keepalive: Option<u64>,
}

impl Schedule {
    pub fn new(interval_ms: u64, ttl_ms: u64) -> Schedule {
        Schedule {
            keepalive_ms: keepalive_every_ms(interval_ms, ttl_ms),
            ..Schedule::default()
        }
    }

    /// Must this step read etcd (and decide)?
    pub fn read_due(&self, w: Wake) -> bool {
        w.etcd_changed || w.local_changed || w.busy || w.failing
    }

    /// Is the safety net due (then ask etcd's revision, [`Self::moved`])?
    pub fn resync_due(&self, now: u64) -> bool {
        self.last_read
            .is_none_or(|t| now.saturating_sub(t) >= RESYNC_MS)
    }

    /// Did etcd change since the last read (its revision then: `rev`)?
    /// If not, the resync is done.
    pub fn moved(&mut self, now: u64, rev: i64) -> bool {
        if self.read_rev == Some(rev) {
            self.last_read = Some(now);
            return false;
        }
        true
    }

    /// A step read etcd, whose revision was `rev` before it, at `now`.
    pub fn read_done(&mut self, now: u64, rev: i64) {
        self.last_read = Some(now);
        self.read_rev = Some(rev);
    }

    pub fn keepalive_due(&self, now: u64) -> bool {
        self.last_keepalive
            .is_none_or(|t| now.saturating_sub(t) >= self.keepalive_ms)
    }

    pub fn kept_alive(&mut self, now: u64) {
        self.last_keepalive = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_cluster_is_read_only_when_the_resync_finds_a_new_revision() {
        let mut s = Schedule::new(500, 5_000);
        assert!(s.resync_due(0));
        assert!(s.moved(0, 7), "the first step reads");
        s.read_done(0, 7);
        for now in (500..RESYNC_MS).step_by(500) {
            assert!(!s.resync_due(now), "asked at {now} ms");
        }
        assert!(s.resync_due(RESYNC_MS), "the safety net");
        assert!(!s.moved(RESYNC_MS, 7), "nothing written since: no read");
        assert!(!s.resync_due(RESYNC_MS + 500), "asked again at once");
        assert!(s.resync_due(2 * RESYNC_MS));
        assert!(s.moved(2 * RESYNC_MS, 9), "a change the watch missed");
    }

    #[test]
    fn any_change_or_wait_or_failure_reads_at_once() {
        let s = Schedule::new(500, 5_000);
        assert!(!s.read_due(Wake::default()));
        for w in [
            Wake {
                etcd_changed: true,
                ..Wake::default()
            },
            Wake {
                local_changed: true,
                ..Wake::default()
            },
            Wake {
                busy: true,
                ..Wake::default()
            },
            Wake {
                failing: true,
                ..Wake::default()
            },
        ] {
            assert!(s.read_due(w), "{w:?}");
        }
    }

    #[test]
    fn the_presence_lease_is_renewed_four_times_per_ttl() {
        assert_eq!(keepalive_every_ms(500, 5_000), 1_250);
        assert_eq!(keepalive_every_ms(2_000, 5_000), 2_000);
        let mut s = Schedule::new(500, 5_000);
        assert!(s.keepalive_due(0));
        s.kept_alive(0);
        assert!(!s.keepalive_due(1_249));
        assert!(s.keepalive_due(1_250));
    }
}
