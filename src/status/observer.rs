//! [`Observer`]: when each slot of the host table last changed, on the
//! local clock; it makes the peers of the status.

use std::collections::BTreeMap;

use super::{PeerKind, PeerView};
use crate::checksum::crc32c;
use crate::collision::Identities;
use crate::hosts::Slot;

/// Tracks, on the local clock, when each slot of the host table last
/// changed. The daemon feeds it every table read; it produces the peers of
/// the status.
#[derive(Debug, Clone)]
pub struct Observer {
    /// The first successful read of the table: empty slots are known to
    /// have been empty since then, not since the observer was made.
    pub since_ms: u64,
    read_once: bool,
    seen: BTreeMap<u16, PeerView>,
    /// Who wrote each slot, to notice two machines taking turns.
    writers: BTreeMap<u16, Identities>,
}

impl Observer {
    pub fn new(now_ms: u64) -> Observer {
        Observer {
            since_ms: now_ms,
            seen: BTreeMap::new(),
            read_once: false,
            writers: BTreeMap::new(),
        }
    }

    /// Feeds one read of the table: `raw` is the table bytes, `slots` its
    /// decoding. A slot whose bytes differ from the last read has changed.
    pub fn update(&mut self, now_ms: u64, raw: &[u8], slots: &[Slot]) {
        if !self.read_once {
            self.read_once = true;
            self.since_ms = now_ms;
        }
        for (i, slot) in slots.iter().enumerate() {
            let host_id = i as u16 + 1;
            let bytes = &raw[i * crate::hosts::SLOT_SIZE..(i + 1) * crate::hosts::SLOT_SIZE];
            let empty = bytes.iter().all(|&b| b == 0);
            let fp = crc32c(bytes);
            let prev = self.seen.get(&host_id);
            if empty && prev.is_none() {
                continue;
            }
            let changed = prev.map(|p| p.fingerprint != fp).unwrap_or(true);
            let last_change_ms = match prev {
                // First sight: date it to the read that saw it. Anything
                // older (the observer's start, an earlier read that saw an
                // empty slot) would make a host that just joined look
                // silent for longer than it has been.
                None => now_ms,
                Some(p) if !changed => p.last_change_ms,
                Some(_) => now_ms,
            };
            let prev_dead = prev.map(|p| p.dead_timeout_ms).unwrap_or(0);
            let ids = self.writers.entry(host_id).or_default();
            ids.settle(now_ms, prev_dead);
            if changed && ids.see(now_ms, slot) {
                log::error!(
                    "host id {host_id} collision: {}; two machines use this host id. \
                     Takeover rule 2 (rebooted) no longer applies to its leases",
                    ids.collision.as_deref().unwrap_or("")
                );
            }
            let collision = ids.collision.clone().unwrap_or_default();
            // While flagged, the largest D of its writers applies.
            let flagged_dead = if collision.is_empty() { 0 } else { prev_dead };
            let view = match slot {
                Slot::Record(r) => PeerView {
                    host_id,
                    fingerprint: fp,
                    last_change_ms,
                    kind: PeerKind::Record,
                    host_name: r.host_name.clone(),
                    boot_id: r.boot_id.clone(),
                    counter: r.counter,
                    state: Some(r.state),
                    dead_timeout_ms: r.timing.host_dead_timeout.max(flagged_dead),
                    collision,
                },
                Slot::Empty | Slot::Corrupt(_) => {
                    let (kind, keep) = if matches!(slot, Slot::Empty) {
                        (PeerKind::Empty, None)
                    } else {
                        (PeerKind::Corrupt, prev)
                    };
                    PeerView {
                        host_id,
                        fingerprint: fp,
                        last_change_ms,
                        kind,
                        host_name: keep.map(|p| p.host_name.clone()).unwrap_or_default(),
                        boot_id: keep.map(|p| p.boot_id.clone()).unwrap_or_default(),
                        counter: keep.map(|p| p.counter).unwrap_or(0),
                        state: None,
                        dead_timeout_ms: prev_dead,
                        collision,
                    }
                }
            };
            self.seen.insert(host_id, view);
        }
    }

    pub fn peers(&self) -> Vec<PeerView> {
        self.seen.values().cloned().collect()
    }

    pub fn get(&self, host_id: u16) -> Option<&PeerView> {
        self.seen.get(&host_id)
    }
}
