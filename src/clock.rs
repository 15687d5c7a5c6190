//! Time, injected. Protocol code asks a [`Clock`] for the local monotonic
//! time and never compares timestamps written by another host with it.
//!
//! The real clock is `CLOCK_BOOTTIME`: monotonic, shared by every process of
//! this host (so the plugin can age the daemon's published status), and it
//! keeps counting while the machine is suspended, so a host that wakes up
//! from a suspend sees at once that its renewals are stale.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Milliseconds on the local monotonic clock.
pub type MonoMs = u64;

pub trait Clock: Send + Sync {
    fn now_ms(&self) -> MonoMs;
    /// Wall-clock seconds since the epoch: informational only, never used
    /// in a decision.
    fn wall_secs(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
    fn sleep(&self, d: Duration);
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

/// Read `CLOCK_BOOTTIME` in milliseconds.
pub fn boottime_ms() -> MonoMs {
    crate::sys::clock::boottime_ms()
}

impl Clock for SystemClock {
    fn now_ms(&self) -> MonoMs {
        boottime_ms()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
}

/// A clock for tests: time moves only when told to (or when code sleeps).
#[derive(Debug, Clone, Default)]
pub struct FakeClock {
    now: Arc<AtomicU64>,
    wall: Arc<AtomicU64>,
}

impl FakeClock {
    pub fn new(start_ms: MonoMs) -> Self {
        FakeClock {
            now: Arc::new(AtomicU64::new(start_ms)),
            wall: Arc::new(AtomicU64::new(1_700_000_000)),
        }
    }
    pub fn advance(&self, ms: u64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
    }
    pub fn set_wall(&self, secs: u64) {
        self.wall.store(secs, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now_ms(&self) -> MonoMs {
        self.now.load(Ordering::SeqCst)
    }
    fn wall_secs(&self) -> u64 {
        self.wall.load(Ordering::SeqCst)
    }
    fn sleep(&self, d: Duration) {
        self.advance(d.as_millis() as u64);
    }
}

/// Wall-clock seconds since the epoch as a UTC civil date and time of day:
/// (year, month, day, hour, minute, second). Display only.
pub fn utc_parts(secs: u64) -> (i64, i64, i64, u64, u64, u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}
