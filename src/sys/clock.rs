//! The boot-time clock (`CLOCK_BOOTTIME`): monotonic, and it keeps counting
//! while the machine is suspended, as lease deadlines must.
#![forbid(unsafe_code)]

use nix::time::{clock_gettime, ClockId};

/// `CLOCK_BOOTTIME` in milliseconds (0 if the clock cannot be read, which
/// no Linux since 2.6.39 does).
pub fn boottime_ms() -> u64 {
    match clock_gettime(ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => (ts.tv_sec() as u64) * 1000 + (ts.tv_nsec() as u64) / 1_000_000,
        Err(_) => 0,
    }
}
