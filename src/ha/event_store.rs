//! Events in etcd: `P/events/TIME-HOST-SEQ` (TIME: 13-digit wall-clock ms,
//! so keys sort by time), one JSON [`Event`] each, written by the leader
//! in a transaction that holds only while it leads.
//!
//! The history is bounded twice: every event is bound to an etcd lease of
//! `[ha] event_ttl` (one lease is shared by the events of a tenth of that
//! time, so an event lives between 90 % and 100 % of `event_ttl`), and
//! after each write the oldest events beyond `[ha] max_events` are
//! deleted.
#![forbid(unsafe_code)]

use std::time::Instant;

use super::error::Result;
use super::etcd::{prefix_end, Cmp, Etcd, Kv, Op};
use super::events::Event;

pub fn events_prefix(prefix: &str) -> String {
    format!("{prefix}events/")
}

pub struct EventStore {
    prefix: String,
    ttl_s: u64,
    max: usize,
    lease: i64,
    granted: Option<Instant>,
    seq: u32,
    /// Events this store wrote, by kind (the metrics).
    pub written: std::collections::BTreeMap<String, u64>,
}

/// Decodes stored events; a value that does not decode is named by key.
pub fn decode(kvs: &[Kv]) -> (Vec<Event>, Vec<String>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for kv in kvs {
        match serde_json::from_slice::<Event>(&kv.value) {
            Ok(e) => out.push(e),
            Err(e) => bad.push(format!("{}: {e}", kv.key)),
        }
    }
    (out, bad)
}

impl EventStore {
    pub fn new(prefix: &str, ttl_ms: u64, max: usize) -> EventStore {
        EventStore {
            prefix: events_prefix(prefix),
            ttl_s: ttl_ms.div_ceil(1000).max(1),
            max,
            lease: 0,
            granted: None,
            seq: 0,
            written: Default::default(),
        }
    }

    /// Stores `e` while `leader_key` holds `me`; false when it does not.
    pub fn write(&mut self, etcd: &Etcd, leader_key: &str, me: &str, e: &Event) -> Result<bool> {
        let ok = self.put(etcd, Some(leader_key), me, e)?;
        self.count(ok, e);
        Ok(ok)
    }

    fn count(&mut self, ok: bool, e: &Event) {
        if ok {
            *self.written.entry(e.kind.clone()).or_default() += 1;
        }
    }

    /// Stores an event of host `me` about its own VMs (a dead QEMU, a
    /// reset), leader or not; its key is new (another store of the same
    /// host may count the same sequence numbers).
    pub fn write_own(&mut self, etcd: &Etcd, me: &str, e: &Event) -> Result<bool> {
        for _ in 0..3 {
            if self.put(etcd, None, me, e)? {
                self.count(true, e);
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn put(&mut self, etcd: &Etcd, leader_key: Option<&str>, me: &str, e: &Event) -> Result<bool> {
        let stale = self
            .granted
            .is_none_or(|t| t.elapsed().as_secs() * 10 >= self.ttl_s);
        if self.lease == 0 || stale {
            self.lease = etcd.grant(self.ttl_s)?;
            self.granted = Some(Instant::now());
        }
        self.seq = self.seq.wrapping_add(1) % 1_000_000;
        let key = format!("{}{:013}-{me}-{:06}", self.prefix, e.time_ms, self.seq);
        let value = serde_json::to_vec(e).expect("events serialise");
        let put = |lease: i64| {
            etcd.txn(
                &format!("write {key}"),
                &[match leader_key {
                    Some(lk) => Cmp::Value(lk, me.as_bytes()),
                    None => Cmp::Absent(&key),
                }],
                &[Op::Put {
                    key: &key,
                    value: &value,
                    lease,
                }],
            )
        };
        let ok = match put(self.lease) {
            Ok(ok) => ok,
            Err(_) => {
                // The lease may have gone (etcd restored, revoked): a new one.
                self.lease = etcd.grant(self.ttl_s)?;
                self.granted = Some(Instant::now());
                put(self.lease)?
            }
        };
        if ok {
            self.prune(etcd)?;
        }
        Ok(ok)
    }

    /// Deletes the oldest events beyond `max`.
    fn prune(&self, etcd: &Etcd) -> Result<()> {
        let (count, _) = etcd.first_keys(&self.prefix, 1)?;
        let extra = usize::try_from(count).unwrap_or(0).saturating_sub(self.max);
        if extra == 0 {
            return Ok(());
        }
        let (_, keys) = etcd.first_keys(&self.prefix, extra)?;
        if let (Some(first), Some(last)) = (keys.first(), keys.last()) {
            let mut end = last.as_bytes().to_vec();
            end.push(0);
            etcd.txn("prune events", &[], &[Op::DeleteRange(first, &end)])?;
        }
        Ok(())
    }
}

/// The events in etcd, oldest first, with the revision they are from.
pub fn read(etcd: &Etcd, prefix: &str) -> Result<(Vec<Event>, Vec<String>, i64)> {
    let p = events_prefix(prefix);
    let (kvs, rev) = etcd.list_at(&p)?;
    debug_assert!(kvs
        .iter()
        .all(|kv| kv.key.as_bytes() < prefix_end(&p).as_slice()));
    let (events, bad) = decode(&kvs);
    Ok((events, bad, rev))
}
