//! systemd's service watchdog (`WatchdogSec=` in vmlease-watchdog.service):
//! `WATCHDOG=1` keep-alives, sent only by the loops themselves (the main
//! loop, and before it the lockspace wait and the host-id claim), never by
//! a helper thread, so that a hung loop stops them. systemd then kills the
//! daemon (SIGABRT) and `Restart=on-failure` starts a new one, which
//! continues the fence clock and re-opens the hardware watchdog only when
//! that is safe. `WatchdogSec=` must stay well below `watchdog_timeout`:
//! the restart has to come before the hardware watchdog resets the host.
//!
//! The environment (`WATCHDOG_USEC`, `WATCHDOG_PID`) is read once; the
//! state is two atomics, so any loop may call [`keepalive`].

use std::sync::atomic::{AtomicU64, Ordering};

use super::notify_systemd;

/// systemd's timeout in ms; 0 = no service watchdog.
static TIMEOUT_MS: AtomicU64 = AtomicU64::new(0);
/// When the last keep-alive went out (boottime ms).
static LAST_MS: AtomicU64 = AtomicU64::new(0);

/// The timeout systemd expects keep-alives within, from `WATCHDOG_USEC`
/// and `WATCHDOG_PID` (as `sd_watchdog_enabled`): None when unset, not a
/// positive number, or meant for another process.
pub fn parse(usec: Option<&str>, pid: Option<&str>, my_pid: u32) -> Option<u64> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if let Some(p) = pid {
        if p.trim().parse::<u32>().ok()? != my_pid {
            return None;
        }
    }
    (usec > 0).then(|| usec.div_ceil(1000))
}

/// A keep-alive is due `timeout / 4` after the last one: a loop that
/// ticks at least every R / 2 then has three chances before systemd acts.
pub fn due(timeout_ms: u64, last_ms: u64, now_ms: u64) -> bool {
    timeout_ms > 0 && now_ms.saturating_sub(last_ms) >= timeout_ms / 4
}

/// The warning when systemd's watchdog is not well below the hardware
/// watchdog's: a hung daemon would reset the host before systemd restarts
/// it (safe, but the service watchdog then serves no purpose).
pub fn check(timeout_ms: u64, watchdog_timeout_ms: u64) -> Option<String> {
    (timeout_ms > 0 && timeout_ms * 2 > watchdog_timeout_ms).then(|| {
        format!(
            "systemd's WatchdogSec ({}) is not well below watchdog_timeout ({}): a hung daemon \
             resets the host before systemd can restart it; set WatchdogSec to at most a \
             third of watchdog_timeout (systemctl edit vmlease-watchdog)",
            crate::config::secs(timeout_ms),
            crate::config::secs(watchdog_timeout_ms)
        )
    })
}

/// Reads the environment once (at start); returns systemd's timeout.
pub fn init() -> Option<u64> {
    let t = parse(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )?;
    TIMEOUT_MS.store(t, Ordering::Relaxed);
    Some(t)
}

/// Sends `WATCHDOG=1` when one is due. Call it from a loop, once per
/// iteration that made progress.
pub fn keepalive(now_ms: u64) {
    let t = TIMEOUT_MS.load(Ordering::Relaxed);
    if due(t, LAST_MS.load(Ordering::Relaxed), now_ms) {
        LAST_MS.store(now_ms, Ordering::Relaxed);
        notify_systemd("WATCHDOG=1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_as_sd_watchdog_enabled() {
        assert_eq!(parse(Some("5000000"), None, 7), Some(5000));
        assert_eq!(parse(Some("5000000"), Some("7"), 7), Some(5000));
        assert_eq!(parse(Some("5000000"), Some("8"), 7), None);
        assert_eq!(parse(Some("1500"), None, 7), Some(2));
        for bad in ["0", "", "-1", "5s"] {
            assert_eq!(parse(Some(bad), None, 7), None, "{bad}");
        }
        assert_eq!(parse(None, Some("7"), 7), None);
        assert_eq!(parse(Some("5000000"), Some("x"), 7), None);
    }

    #[test]
    fn a_keepalive_every_quarter_timeout() {
        assert!(due(4000, 0, 1000));
        assert!(!due(4000, 1000, 1999));
        assert!(due(4000, 1000, 2000));
        assert!(!due(0, 0, 1_000_000), "no service watchdog");
    }

    #[test]
    fn watchdog_sec_must_be_well_below_the_hardware_timeout() {
        assert!(check(5000, 15000).is_none());
        assert!(check(7500, 15000).is_none());
        let w = check(10000, 15000).unwrap();
        assert!(w.contains("WatchdogSec (10s)"), "{w}");
        assert!(check(0, 15000).is_none());
    }
}
