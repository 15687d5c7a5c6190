//! The controller's storage-fence step (Ceph blocklist, takeover rule 5),
//! sans IO: whether to fence a suspect host now. A host is fenced only
//! when this host's daemon has seen it silent for `storage_fence_after`
//! AND its management side is failing too (its agent's etcd lease is
//! gone: etcd is reached over the management network), so a merely slow
//! host - renewing late, or still present in etcd - is never blocklisted.
//! A failed fence is not retried for a while; recovery then waits for
//! host_dead_timeout as without storage fencing.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use crate::config::secs;

/// What the controller knows about one suspect host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspect {
    /// Its agent still holds its etcd lease (management reachable).
    pub in_etcd: bool,
    /// Observed silence of its liveness record (None: not observed).
    pub silent_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Fence it now.
    Fence,
    /// Not now, with why (for a debug log; no event).
    Wait(String),
}

/// When each host's last fence failed (wall ms): not retried before
/// `retry_ms` has passed.
#[derive(Debug, Default, Clone)]
pub struct Attempts {
    pub failed_at: BTreeMap<String, u64>,
}

pub fn step(
    host: &str,
    s: &Suspect,
    after_ms: u64,
    attempts: &Attempts,
    now_ms: u64,
    retry_ms: u64,
) -> Step {
    if s.in_etcd {
        return Step::Wait(format!(
            "{host} still reaches etcd (management network up): not blocklisted"
        ));
    }
    match s.silent_ms {
        None => Step::Wait(format!("{host}'s liveness record is not observed here")),
        Some(ms) if ms < after_ms => Step::Wait(format!(
            "{host} silent for {} of storage_fence_after {}",
            secs(ms),
            secs(after_ms)
        )),
        Some(_) => match attempts.failed_at.get(host) {
            Some(&t) if now_ms.saturating_sub(t) < retry_ms => Step::Wait(format!(
                "the last storage fence of {host} failed {} ago; waiting for host_dead_timeout",
                secs(now_ms.saturating_sub(t))
            )),
            _ => Step::Fence,
        },
    }
}

/// The event for a fence's outcome.
pub fn event(host: &str, outcome: &Result<String, String>) -> String {
    match outcome {
        Ok(what) => format!("storage-fenced {host}: {what}"),
        Err(why) => {
            format!("storage fence of {host} failed: {why}; its VMs wait for host_dead_timeout")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(in_etcd: bool, silent: Option<u64>) -> Suspect {
        Suspect {
            in_etcd,
            silent_ms: silent,
        }
    }

    #[test]
    fn only_a_host_silent_long_enough_and_gone_from_etcd_is_fenced() {
        let a = Attempts::default();
        assert_eq!(
            step("h", &s(false, Some(5000)), 4000, &a, 0, 1),
            Step::Fence
        );
        // Slow: renewing late, or still in etcd.
        assert!(matches!(
            step("h", &s(false, Some(3999)), 4000, &a, 0, 1),
            Step::Wait(_)
        ));
        assert!(matches!(
            step("h", &s(true, Some(60_000)), 4000, &a, 0, 1),
            Step::Wait(_)
        ));
        assert!(matches!(
            step("h", &s(false, None), 4000, &a, 0, 1),
            Step::Wait(_)
        ));
    }

    #[test]
    fn a_failed_fence_is_retried_only_after_the_pause() {
        let mut a = Attempts::default();
        a.failed_at.insert("h".into(), 1000);
        let w = step("h", &s(false, Some(9000)), 4000, &a, 5000, 10_000);
        assert!(
            matches!(w, Step::Wait(ref m) if m.contains("host_dead_timeout")),
            "{w:?}"
        );
        assert_eq!(
            step("h", &s(false, Some(9000)), 4000, &a, 11_000, 10_000),
            Step::Fence
        );
        assert!(event("h", &Err("x".into())).contains("wait for host_dead_timeout"));
    }
}
