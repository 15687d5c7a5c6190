//! The fence timing and its safety inequality (SPEC section 2).
//!
//! With R = renew interval, F = renewal-failure timeout, K = kill timeout,
//! W = hardware watchdog timeout, the latest moment a fenced host can still
//! write is its last successful renewal plus max(F + K, F + W): fencing
//! starts at F, the reset is forced at F + K, and the watchdog (petted only
//! while renewals are healthy, so never after F) fires by F + W at the
//! latest. Another host may take over only after observing the holder's
//! record unchanged for D, and D must exceed that bound plus 2R.
#![forbid(unsafe_code)]

use std::fmt::Write as _;

/// All durations in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub renew_interval: u64,
    pub renew_fail_timeout: u64,
    pub kill_timeout: u64,
    pub watchdog_timeout: u64,
    pub host_dead_timeout: u64,
    /// True when `host_dead_timeout` was not configured but derived.
    pub host_dead_derived: bool,
}

impl Timing {
    /// Small timing for unit tests: R 0.2 s, F 1.5 s, K 0.5 s, W 1 s,
    /// D 4 s (the safety inequality holds).
    #[cfg(test)]
    pub(crate) const TEST: Timing = Timing {
        renew_interval: 200,
        renew_fail_timeout: 1500,
        kill_timeout: 500,
        watchdog_timeout: 1000,
        host_dead_timeout: 4000,
        host_dead_derived: false,
    };

    /// The latest a fenced host can write, counted from its last renewal.
    pub fn last_write_bound(&self) -> u64 {
        (self.renew_fail_timeout + self.kill_timeout)
            .max(self.renew_fail_timeout + self.watchdog_timeout)
    }

    /// The smallest D the inequality allows is this plus one millisecond.
    pub fn dead_floor(&self) -> u64 {
        self.last_write_bound() + 2 * self.renew_interval
    }

    /// The default D: the floor plus one more renew interval of margin,
    /// rounded up to a whole second.
    pub fn derive_dead(r: u64, f: u64, k: u64, w: u64) -> u64 {
        let floor = (f + k).max(f + w) + 2 * r;
        (floor + r).div_ceil(1000) * 1000
    }

    /// Checks the inequality and the basic sanity rules; the error text
    /// names the violated rule and the numbers.
    pub fn check(&self) -> Result<(), String> {
        let t = self;
        if t.renew_interval == 0 {
            return Err("renew_interval must be greater than 0".into());
        }
        if t.renew_fail_timeout < 4 * t.renew_interval {
            return Err(format!(
                "renew_fail_timeout ({}) must be at least 4 * renew_interval ({}): the plugin \
                 takes leases only while the last renewal is younger than renew_fail_timeout / 2, \
                 and a healthy host's last renewal is up to one renew_interval (plus a tick and \
                 the write) old, so healthy hosts would refuse VM starts",
                secs(t.renew_fail_timeout),
                secs(t.renew_interval)
            ));
        }
        if t.kill_timeout == 0 {
            return Err("kill_timeout must be greater than 0".into());
        }
        if t.watchdog_timeout == 0 {
            return Err("watchdog_timeout must be greater than 0".into());
        }
        if t.host_dead_timeout <= t.dead_floor() {
            return Err(format!(
                "unsafe timing: host_dead_timeout ({}) must exceed max(renew_fail_timeout + kill_timeout, \
                 renew_fail_timeout + watchdog_timeout) + 2 * renew_interval = max({} + {}, {} + {}) + 2 * {} = {}",
                secs(t.host_dead_timeout),
                secs(t.renew_fail_timeout),
                secs(t.kill_timeout),
                secs(t.renew_fail_timeout),
                secs(t.watchdog_timeout),
                secs(t.renew_interval),
                secs(t.dead_floor())
            ));
        }
        Ok(())
    }

    /// The derived fence timeline, as `vmlease check-config` prints it.
    pub fn timeline(&self) -> String {
        let t = self;
        let mut s = String::new();
        let f = t.renew_fail_timeout;
        let _ = writeln!(
            s,
            "renewal every {} (R); T = this host's last successful renewal",
            secs(t.renew_interval)
        );
        let _ = writeln!(
            s,
            "  T + {:>8}  renewals failed for F: fence starts, leased QEMUs get SIGKILL, watchdog no longer petted",
            secs(f)
        );
        let _ = writeln!(
            s,
            "  T + {:>8}  F + K: any leased QEMU still alive -> host reset",
            secs(f + t.kill_timeout)
        );
        let _ = writeln!(
            s,
            "  T + {:>8}  F + W: hardware watchdog has fired at the latest",
            secs(f + t.watchdog_timeout)
        );
        let _ = writeln!(
            s,
            "  T + {:>8}  latest possible write by this host: max(F + K, F + W)",
            secs(t.last_write_bound())
        );
        let _ = writeln!(
            s,
            "  T + {:>8}  D{}: other hosts may take over this host's leases (requires D > {} = max(F+K, F+W) + 2R; margin {})",
            secs(t.host_dead_timeout),
            if t.host_dead_derived { " (derived)" } else { "" },
            secs(t.dead_floor()),
            secs(t.host_dead_timeout.saturating_sub(t.dead_floor()))
        );
        s
    }
}

/// Formats milliseconds as seconds for people: "2s", "0.25s".
pub fn secs(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        let s = format!("{:.3}", ms as f64 / 1000.0);
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(r: u64, f: u64, k: u64, w: u64, d: u64) -> Timing {
        Timing {
            renew_interval: r,
            renew_fail_timeout: f,
            kill_timeout: k,
            watchdog_timeout: w,
            host_dead_timeout: d,
            host_dead_derived: false,
        }
    }

    #[test]
    fn inequality_boundary() {
        // max(20+10, 20+15) + 2*2 = 39 s.
        assert!(t(2000, 20000, 10000, 15000, 39000).check().is_err());
        assert!(t(2000, 20000, 10000, 15000, 39001).check().is_ok());
        // K dominates when larger than W.
        assert!(t(2000, 20000, 30000, 15000, 54000).check().is_err());
        assert!(t(2000, 20000, 30000, 15000, 54001).check().is_ok());
    }

    #[test]
    fn derived_dead_always_satisfies_the_inequality() {
        for r in [50, 200, 1000, 2000, 5000] {
            for f in [4 * r, 5 * r, 10 * r] {
                for k in [100, 1000, 10000] {
                    for w in [100, 1000, 60000] {
                        let d = Timing::derive_dead(r, f, k, w);
                        assert!(t(r, f, k, w, d).check().is_ok(), "{r} {f} {k} {w} -> {d}");
                    }
                }
            }
        }
    }

    #[test]
    fn rejects_fail_timeout_below_four_renewals() {
        let e = t(2000, 7999, 1000, 1000, 100000).check().unwrap_err();
        assert!(e.contains("at least 4 * renew_interval"), "{e}");
        t(2000, 8000, 1000, 1000, 100000).check().unwrap();
    }

    #[test]
    fn secs_format() {
        assert_eq!(secs(2000), "2s");
        assert_eq!(secs(250), "0.25s");
        assert_eq!(secs(1500), "1.5s");
    }
}
