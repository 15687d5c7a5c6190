//! The plugin's metrics: acquire latency, refusals by reason and
//! takeovers, kept in a small counters file in the state directory
//! (`state_dir/plugin-metrics`) that the watchdog daemon's metrics thread
//! reads and adds to its node_exporter textfile.
//!
//! The plugin runs inside libvirtd: it has no metrics thread and opens no
//! listener. Each acquire (and each refusal, also in the pre-exec child)
//! updates the file under a local OFD lock: read, add, write a temporary
//! file beside it, rename. The lock is only ever held for that update, by
//! other plugin calls; it is tried a bounded number of times and never
//! waited for, so a metrics update can delay an acquire by at most
//! [`LOCK_TRIES`] ms, and a failure to update (a busy lock, a full or
//! missing state directory, a corrupt file) is logged and never refuses
//! or fails a lease. The file lives as long as the state directory
//! (`/run/vmlease`: across libvirtd and daemon restarts, until the host
//! reboots), so the counters only reset at a reboot.
#![forbid(unsafe_code)]

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::warn;

use crate::error::{Error, Result};
use crate::metrics::{Histogram, LATENCY_BOUNDS_MS};

/// The counters file in the state directory.
pub const FILE_NAME: &str = "plugin-metrics";
const LOCK_NAME: &str = ".plugin-metrics.lock";
/// How long (ms) an update tries the lock, 1 ms apart, before it gives up
/// on counting this call. The lock is held for one small read and write
/// on a local filesystem (tens of microseconds): a call waits at all only
/// when concurrent starts meet, and this long only when the holder is
/// not scheduled (an overloaded host) or stopped.
pub const LOCK_WAIT_MS: u64 = 1000;
const MAGIC: &str = "vmlease-plugin-metrics 1";

/// Why an acquire was refused (the `reason` label), in the order of
/// [`PluginCounters::refusals`]. Stable: alert rules name them.
pub const REASONS: [&str; 6] = [
    // The host may not take leases: watchdog daemon down or stale, host
    // fenced, lockspace not the daemon's.
    "unprotected",
    // Another holder has the lease (or had it in between: version).
    "leased",
    // The domain or the configuration does not allow the start.
    "config",
    // Storage did not answer in time, or an I/O error on the lockspace.
    "storage",
    // A lease record failed its checksum.
    "corrupt",
    "other",
];

/// The refusal reason of an error (an index into [`REASONS`]).
pub fn reason(e: &Error) -> usize {
    match e {
        Error::Unprotected(_) => 0,
        Error::Busy { .. } | Error::VersionMismatch { .. } => 1,
        Error::Config(_) => 2,
        Error::Io { .. }
        | Error::Timeout { .. }
        | Error::Stuck { .. }
        | Error::Abandoned { .. }
        | Error::Lockspace { .. } => 3,
        Error::Corrupt { .. } => 4,
        Error::Invalid(_) | Error::Internal(_) => 5,
    }
}

/// What the plugin counted on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginCounters {
    /// Duration of every successful acquire in libvirtd (its count is the
    /// number of acquires).
    pub latency: Histogram,
    /// Refused acquires (and refused registrations in the pre-exec
    /// child), by [`REASONS`].
    pub refusals: [u64; REASONS.len()],
    /// Leases taken over from another holder (a dead host, a fenced one).
    pub takeovers: u64,
}

impl PluginCounters {
    /// The file's text: one `name value` line each, after a magic line.
    pub fn encode(&self) -> String {
        let h = &self.latency;
        let mut s = format!(
            "{MAGIC}\nacquires {}\nlatency_sum_ms {}\n",
            h.count, h.sum_ms
        );
        for (i, c) in h.counts.iter().enumerate() {
            s.push_str(&format!("latency_bucket_{i} {c}\n"));
        }
        for (r, c) in REASONS.iter().zip(self.refusals) {
            s.push_str(&format!("refused_{r} {c}\n"));
        }
        s.push_str(&format!("takeovers {}\n", self.takeovers));
        s
    }

    /// Parses [`encode`](Self::encode)'s text; anything else is an error
    /// that says what is wrong.
    pub fn parse(text: &str) -> std::result::Result<PluginCounters, String> {
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(format!("the first line is not '{MAGIC}'"));
        }
        let mut c = PluginCounters::default();
        let mut seen = 0usize;
        for (n, l) in lines.enumerate() {
            let line = n + 2;
            let (k, v) = l
                .split_once(' ')
                .ok_or_else(|| format!("line {line}: not 'name value'"))?;
            let v: u64 = v
                .parse()
                .map_err(|_| format!("line {line}: '{v}' is not a count"))?;
            let slot = if k == "acquires" {
                &mut c.latency.count
            } else if k == "latency_sum_ms" {
                &mut c.latency.sum_ms
            } else if k == "takeovers" {
                &mut c.takeovers
            } else if let Some(i) = k
                .strip_prefix("latency_bucket_")
                .and_then(|i| i.parse::<usize>().ok())
                .filter(|&i| i <= LATENCY_BOUNDS_MS.len())
            {
                &mut c.latency.counts[i]
            } else if let Some(i) = k
                .strip_prefix("refused_")
                .and_then(|r| REASONS.iter().position(|x| *x == r))
            {
                &mut c.refusals[i]
            } else {
                return Err(format!("line {line}: unknown counter '{k}'"));
            };
            *slot = v;
            seen += 1;
        }
        let want = 3 + LATENCY_BOUNDS_MS.len() + 1 + REASONS.len();
        if seen != want {
            return Err(format!("{seen} counters, expected {want}"));
        }
        Ok(c)
    }
}

/// What one acquire call came to.
pub enum Outcome<'a> {
    /// Leases acquired in `ms`, `takeovers` of them taken over.
    Acquired { ms: u64, takeovers: usize },
    /// The call failed: a refusal.
    Refused(&'a Error),
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Reads the counters; a missing file is all zeros.
pub fn load(state_dir: &Path) -> Result<PluginCounters> {
    let p = path(state_dir);
    match fs::read_to_string(&p) {
        Ok(t) => PluginCounters::parse(&t).map_err(|reason| Error::Corrupt { path: p, reason }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(PluginCounters::default()),
        Err(e) => Err(Error::io("read plugin metrics", p, e)),
    }
}

/// Adds one outcome to the counters file. Never fails the caller: a
/// failure is logged (and this call is not counted).
pub fn record(state_dir: &Path, outcome: Outcome<'_>) {
    if let Err(e) = try_record(state_dir, outcome) {
        warn!("metrics: {e} (the acquire is not counted; leases are unaffected)");
    }
}

fn try_record(state_dir: &Path, outcome: Outcome<'_>) -> Result<()> {
    fs::create_dir_all(state_dir).map_err(|e| Error::io("create state directory", state_dir, e))?;
    let lock = state_dir.join(LOCK_NAME);
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .map_err(|e| Error::io("open plugin metrics lock", &lock, e))?;
    let start = crate::clock::boottime_ms();
    while !crate::lockspace::ofd_try_lock(&f)
        .map_err(|e| Error::io("lock plugin metrics", &lock, e))?
    {
        if crate::clock::boottime_ms().saturating_sub(start) >= LOCK_WAIT_MS {
            return Err(Error::io(
                "lock plugin metrics",
                &lock,
                io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("held by another call for {LOCK_WAIT_MS} ms"),
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut c = match load(state_dir) {
        Ok(c) => c,
        Err(e) => {
            // Counting again from zero is a counter reset, which
            // Prometheus handles; keeping the bad file would count nothing.
            warn!("metrics: {e}; counting again from zero");
            PluginCounters::default()
        }
    };
    match outcome {
        Outcome::Acquired { ms, takeovers } => {
            c.latency.observe(ms);
            c.takeovers += takeovers as u64;
        }
        Outcome::Refused(e) => c.refusals[reason(e)] += 1,
    }
    crate::lockspace::write_atomic_unsynced(&path(state_dir), c.encode().as_bytes())
    // The lock goes with `f`.
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "vmlease-plugin-metrics-{name}-{}",
            crate::process::random_u64()
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn counts_acquires_refusals_and_takeovers_across_calls() {
        let d = dir("count");
        assert_eq!(load(&d).unwrap(), PluginCounters::default());
        record(
            &d,
            Outcome::Acquired {
                ms: 3,
                takeovers: 0,
            },
        );
        record(
            &d,
            Outcome::Acquired {
                ms: 700,
                takeovers: 2,
            },
        );
        let busy = Error::Busy {
            resource: "r".into(),
            reason: "held".into(),
        };
        record(&d, Outcome::Refused(&busy));
        record(
            &d,
            Outcome::Refused(&Error::Unprotected("no daemon".into())),
        );
        record(
            &d,
            Outcome::Refused(&Error::Unprotected("no daemon".into())),
        );
        let c = load(&d).unwrap();
        assert_eq!(c.latency.count, 2);
        assert_eq!(c.latency.sum_ms, 703);
        assert_eq!(c.latency.counts[2], 1, "3 ms is in the 5 ms bucket");
        assert_eq!(c.takeovers, 2);
        assert_eq!(c.refusals, [2, 1, 0, 0, 0, 0]);
        let names: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn concurrent_updates_lose_nothing() {
        // Four libvirtd threads starting domains at once, each acquire a
        // few ms after the previous one (the lock is only tried, 1 ms
        // apart: a thread that re-takes it back to back in a tight loop
        // can starve the others past LOCK_WAIT_MS, and no acquire does).
        let d = dir("threads");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let d = d.clone();
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        try_record(
                            &d,
                            Outcome::Acquired {
                                ms: 1,
                                takeovers: 0,
                            },
                        )
                        .unwrap();
                        std::thread::sleep(Duration::from_millis(3));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(load(&d).unwrap().latency.count, 80);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_busy_lock_neither_blocks_nor_fails_the_caller() {
        let d = dir("busy");
        let lock = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(d.join(LOCK_NAME))
            .unwrap();
        assert!(crate::lockspace::ofd_try_lock(&lock).unwrap());
        let t0 = std::time::Instant::now();
        record(
            &d,
            Outcome::Acquired {
                ms: 1,
                takeovers: 0,
            },
        );
        let took = t0.elapsed();
        assert!(
            took < Duration::from_millis(LOCK_WAIT_MS + 2000),
            "took {took:?}"
        );
        // It did try for LOCK_WAIT_MS (counted in whole ms of boottime).
        assert!(
            took + Duration::from_millis(2) >= Duration::from_millis(LOCK_WAIT_MS),
            "took {took:?}"
        );
        assert!(!d.join(FILE_NAME).exists());
        drop(lock);
        record(
            &d,
            Outcome::Acquired {
                ms: 1,
                takeovers: 0,
            },
        );
        assert_eq!(load(&d).unwrap().latency.count, 1);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_an_error_to_readers_and_restarts_from_zero() {
        let d = dir("corrupt");
        fs::write(d.join(FILE_NAME), "garbage\n").unwrap();
        let e = load(&d).unwrap_err().to_string();
        assert!(e.contains(FILE_NAME) && e.contains("first line"), "{e}");
        record(&d, Outcome::Refused(&Error::Config("no".into())));
        assert_eq!(load(&d).unwrap().refusals[2], 1);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn parse_rejects_unknown_missing_and_bad_counters() {
        let good = PluginCounters::default().encode();
        assert_eq!(
            PluginCounters::parse(&good).unwrap(),
            PluginCounters::default()
        );
        let e = PluginCounters::parse(&good.replace("takeovers 0\n", "")).unwrap_err();
        assert!(e.contains("expected"), "{e}");
        let e = PluginCounters::parse(&format!("{good}bogus 1\n")).unwrap_err();
        assert!(e.contains("unknown counter 'bogus'"), "{e}");
        let e = PluginCounters::parse(&good.replace("takeovers 0", "takeovers x")).unwrap_err();
        assert!(e.contains("not a count"), "{e}");
    }

    #[test]
    fn an_unwritable_state_directory_is_logged_not_fatal() {
        let d = Path::new("/proc/vmlease-no-such-dir");
        let e = try_record(
            d,
            Outcome::Acquired {
                ms: 1,
                takeovers: 0,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("/proc/vmlease-no-such-dir"), "{e}");
        // The caller's side: logged, no panic, no error.
        record(
            d,
            Outcome::Acquired {
                ms: 1,
                takeovers: 0,
            },
        );
    }
}
