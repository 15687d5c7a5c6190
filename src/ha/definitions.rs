//! Parsed definitions of the running domains, read again a few at a time:
//! the agent (what it publishes) and the VM monitor (its heartbeat scan)
//! each keep one. With many domains, reading every definition at every
//! pass held the loop for seconds.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::policy::{self, DomainInfo};
use super::virsh::{self, Running};

/// A domain's policy and size with its XML, or why it cannot be managed.
pub type Definition = Result<(DomainInfo, String), String>;

/// How long a definition is reused before it is read again (a `vmlease ha
/// enable` shows up within this, or a few passes later on a host with
/// more than PER_PASS domains per 10 s of passes).
const REFRESH_MS: u128 = 10_000;

/// At most this many definitions already read are read again per pass
/// (the stalest first); new domains are always read.
const PER_PASS: usize = 4;

/// The definitions, by domain name, with when each was read.
#[derive(Default)]
pub struct Definitions(BTreeMap<String, (Instant, Definition)>);

impl Definitions {
    /// Forgets the domains not in `running` and names the ones to read
    /// now: those not read yet, and the stalest read REFRESH_MS ago or
    /// more, PER_PASS of them at most.
    pub fn due(&mut self, running: &[Running]) -> BTreeSet<String> {
        let names: BTreeSet<&str> = running.iter().map(|d| d.name.as_str()).collect();
        self.0.retain(|n, _| names.contains(n.as_str()));
        let mut stale: Vec<(Instant, &str)> = self
            .0
            .iter()
            .filter(|(_, (at, _))| at.elapsed().as_millis() >= REFRESH_MS)
            .map(|(n, (at, _))| (*at, n.as_str()))
            .collect();
        stale.sort();
        let mut due: BTreeSet<String> = stale
            .into_iter()
            .take(PER_PASS)
            .map(|(_, n)| n.to_string())
            .collect();
        due.extend(
            names
                .into_iter()
                .filter(|n| !self.0.contains_key(*n))
                .map(str::to_string),
        );
        due
    }

    pub fn insert(&mut self, name: &str, def: Definition) {
        self.0.insert(name.to_string(), (Instant::now(), def));
    }

    pub fn get(&self, name: &str) -> Option<&Definition> {
        self.0.get(name).map(|(_, d)| d)
    }

    /// Read again at the next pass (a domain that started anew).
    pub fn forget(&mut self, name: &str) {
        self.0.remove(name);
    }
}

/// Reads and parses a domain's definition.
pub fn read(name: &str) -> Definition {
    virsh::definition(name)
        .map_err(|e| e.to_string())
        .and_then(|xml| policy::parse(&xml).map(|i| (i, xml)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(names: &[&str]) -> Vec<Running> {
        names
            .iter()
            .map(|n| Running {
                name: n.to_string(),
                memory_kib: 65536,
                vcpus: 1,
            })
            .collect()
    }

    #[test]
    fn new_domains_are_due_read_ones_are_not_and_stopped_ones_are_forgotten() {
        let mut d = Definitions::default();
        let due = d.due(&running(&["a", "b"]));
        assert_eq!(due, BTreeSet::from(["a".to_string(), "b".to_string()]));
        d.insert("a", Err("no policy".into()));
        d.insert("b", Err("no policy".into()));
        assert!(d.due(&running(&["a", "b"])).is_empty());
        // b stopped: forgotten; c new: due.
        let due = d.due(&running(&["a", "c"]));
        assert_eq!(due, BTreeSet::from(["c".to_string()]));
        assert!(d.get("b").is_none());
        // A domain that started anew is read again.
        d.forget("a");
        assert_eq!(d.due(&running(&["a"])), BTreeSet::from(["a".to_string()]));
    }
}
