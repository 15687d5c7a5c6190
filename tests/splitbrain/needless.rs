//! Needless fences: a host that fenced itself (or was reset by its
//! watchdog) while its own storage, networks and daemon were healthy. Its
//! VMs were killed for nothing: the harm a hung peer does when it can
//! stall the healthy hosts' renewals (issue: one hung host must never make
//! a healthy host fence itself). Each one is blamed on the faults other
//! hosts had at the time.

use crate::schedule::Kind;
use crate::world::{F, R, W};

/// Slack for detection delays (the schedule polls every 50 ms, a renewal
/// that was stalled takes a moment to fail or come back).
const SLACK: u64 = 3000;

/// One injected fault; `healed` is None while it lasts.
#[derive(Clone, Debug)]
pub struct FaultRec {
    pub kind: Kind,
    pub host: usize,
    pub start: u64,
    pub healed: Option<u64>,
}

impl FaultRec {
    /// A fault of the host itself that may make it fence: its storage,
    /// its management network (policy `fence`), its daemon.
    fn own_cause(&self) -> bool {
        !matches!(self.kind, Kind::QemuKill | Kind::DupStart)
    }

    /// Was it in effect at `t`, or ended less than `after` before?
    fn near(&self, t: u64, after: u64) -> bool {
        self.start <= t && self.healed.is_none_or(|h| t <= h + after)
    }

    pub fn name(&self) -> String {
        format!("{} on host {}", self.kind.name(), self.host + 1)
    }
}

/// A host seen fencing: when, and what its daemon (or reset) said.
#[derive(Clone, Debug)]
pub struct FenceEvent {
    pub host: usize,
    pub at: u64,
    pub reason: String,
}

/// None when a fault of the fencing host itself explains the fence;
/// otherwise the faults on other hosts that were in effect (storage
/// faults first, the latest first), possibly none.
pub fn classify<'a>(ev: &FenceEvent, log: &'a [FaultRec]) -> Option<Vec<&'a FaultRec>> {
    let own = log.iter().any(|f| {
        f.host == ev.host
            && f.own_cause()
            // A storage fault may leave the client evicted (blocklisted)
            // until the host gets a new one: it explains any later fence.
            && (f.kind.storage() || f.near(ev.at, F + W + SLACK))
            && f.start <= ev.at
    });
    if own {
        return None;
    }
    let mut causes: Vec<&FaultRec> = log
        .iter()
        .filter(|f| f.host != ev.host && f.own_cause() && f.near(ev.at, F + 2 * R + SLACK))
        .collect();
    causes.sort_by_key(|f| (!f.kind.storage(), std::cmp::Reverse(f.start)));
    Some(causes)
}

/// The kind blamed for a needless fence: the first cause, or "unknown".
pub fn blame(causes: &[&FaultRec]) -> &'static str {
    causes.first().map_or("unknown", |f| f.kind.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(kind: Kind, host: usize, start: u64, healed: Option<u64>) -> FaultRec {
        FaultRec {
            kind,
            host,
            start,
            healed,
        }
    }

    fn ev(host: usize, at: u64) -> FenceEvent {
        FenceEvent {
            host,
            at,
            reason: "lease renewals failed".into(),
        }
    }

    #[test]
    fn own_faults_explain_a_fence() {
        let log = [f(Kind::CephHang, 0, 1000, Some(5000))];
        // Long after the heal: the client may have been evicted.
        assert!(classify(&ev(0, 60_000), &log).is_none());
        let log = [f(Kind::DaemonStop, 1, 1000, Some(2000))];
        assert!(classify(&ev(1, 4000), &log).is_none());
        // Not long after the daemon came back.
        let c = classify(&ev(1, 2000 + F + W + SLACK + 1), &log).unwrap();
        assert!(c.is_empty());
    }

    #[test]
    fn a_peer_fault_is_blamed() {
        let log = [
            f(Kind::QemuKill, 1, 500, Some(500)),
            f(Kind::MgmtDown, 2, 900, None),
            f(Kind::CephHang, 2, 1000, Some(12_000)),
            f(Kind::LinkDown, 0, 100, Some(200)),
        ];
        // Host 2's fence at 12 s: host 3's faults, storage first. Host 1's
        // link cut ended long before.
        let c = classify(&ev(1, 12_000), &log).unwrap();
        let names: Vec<String> = c.iter().map(|f| f.name()).collect();
        assert_eq!(
            names,
            ["ceph-fuse-hang on host 3", "mgmt-link-down on host 3"]
        );
        assert_eq!(blame(&c), "ceph-fuse-hang");
        // A QEMU kill is not a host fault: nothing to blame.
        let c = classify(&ev(0, 400_000), &log[..1]).unwrap();
        assert_eq!(blame(&c), "unknown");
    }
}
