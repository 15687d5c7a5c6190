//! Warnings about network policies that hinge on a single probe target.
//!
//! With `policy = "fence"`, losing a network kills every leased VM on the
//! host. Every host usually probes the same targets: when the network is
//! lost as soon as one target fails, that one target going down (a router
//! rebooting) fences the whole cluster at once.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;

use super::{Config, Network, Policy, ProbeKind};

/// What a probe depends on: the remote address, or the local interface.
fn target(p: &ProbeKind) -> String {
    match p {
        ProbeKind::Tcp(t) => t
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or(t)
            .to_string(),
        ProbeKind::Icmp(a) => a.clone(),
        ProbeKind::Carrier(i) => format!("interface {i}"),
    }
}

fn check(name: &str, n: &Network) -> Option<String> {
    if n.policy != Policy::Fence {
        return None;
    }
    if n.probes.is_empty() {
        return Some(format!(
            "{name}.policy = \"fence\" but {name} has no probes: the policy never applies"
        ));
    }
    let targets: BTreeSet<String> = n.probes.iter().map(target).collect();
    // A target whose failure alone leaves fewer than min_up probes up.
    let single = targets
        .iter()
        .find(|t| n.probes.iter().filter(|p| target(p) != **t).count() < n.min_up)?;
    Some(if targets.len() < 2 {
        format!(
            "{name}.policy = \"fence\" depends on one probe target ({single}): when it goes \
             down, every host that probes it fences its VMs at once; probe at least two \
             independent targets with min_up below their number"
        )
    } else {
        format!(
            "{name}.policy = \"fence\" with min_up = {} of {} probes: {single} going down \
             alone loses the network and fences every host that probes it; set min_up so \
             that any one target may fail",
            n.min_up,
            n.probes.len()
        )
    })
}

/// The warnings for `management` and `service` (storage probes are only
/// reported: lease renewals decide a storage fence).
pub fn warnings(c: &Config) -> Vec<String> {
    [("management", &c.management), ("service", &c.service)]
        .into_iter()
        .filter_map(|(name, n)| check(name, n))
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    fn warnings(text: &str) -> Vec<String> {
        parse(text, "test.conf").unwrap().warnings()
    }

    fn quorum(text: &str) -> Vec<String> {
        warnings(text)
            .into_iter()
            .filter(|w| w.contains("policy = \"fence\""))
            .collect()
    }

    #[test]
    fn a_fence_policy_on_one_target_is_flagged() {
        let w = quorum(
            "[management]\nprobes = [ { type = \"icmp\", target = \"192.0.2.1\" } ]\npolicy = \"fence\"\n",
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("management"), "{w:?}");
        assert!(w[0].contains("192.0.2.1"), "{w:?}");
        assert!(w[0].contains("every host"), "{w:?}");
        // Two probes of the same address are still one target.
        let w = quorum(
            "[service]\nprobes = [ { type = \"icmp\", target = \"192.0.2.1\" }, \
             { type = \"tcp\", target = \"192.0.2.1:22\" } ]\npolicy = \"fence\"\n",
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("service"), "{w:?}");
    }

    #[test]
    fn a_fence_policy_that_needs_every_target_is_flagged() {
        let w = quorum(
            "[management]\nprobes = [ { type = \"icmp\", target = \"192.0.2.1\" }, \
             { type = \"icmp\", target = \"192.0.2.2\" } ]\nmin_up = 2\npolicy = \"fence\"\n",
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("min_up = 2"), "{w:?}");
    }

    #[test]
    fn a_fence_policy_without_probes_is_flagged() {
        let w = quorum("[management]\npolicy = \"fence\"\n");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("no probes"), "{w:?}");
    }

    #[test]
    fn two_independent_targets_or_report_are_fine() {
        assert!(quorum(
            "[management]\nprobes = [ { type = \"icmp\", target = \"192.0.2.1\" }, \
             { type = \"tcp\", target = \"192.0.2.2:22\" } ]\npolicy = \"fence\"\n",
        )
        .is_empty());
        assert!(quorum(
            "[management]\nprobes = [ { type = \"icmp\", target = \"192.0.2.1\" } ]\npolicy = \"report\"\n",
        )
        .is_empty());
        // Storage probes are reported only (renewals decide a storage fence).
        assert!(quorum(
            "[storage]\nprobes = [ { type = \"tcp\", target = \"192.0.2.10:6789\" } ]\n",
        )
        .is_empty());
    }
}
