//! The cluster controller's driver: leader election (a key bound to this
//! host's etcd lease, created in a transaction only when absent), one read
//! of everything under the prefix, the lockspace's verdict on suspect
//! hosts (`vmlease can-evacuate`'s own code), `decide`, and the writes -
//! each a transaction that holds only while this host is still the leader.
//!
//! A host that is not protected itself (fencing, cut off from the
//! lockspace, no watchdog) neither campaigns nor stays leader: it could not
//! judge the lockspace anyway.
#![forbid(unsafe_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use super::agent::to_json;
use super::decide::{self, Action, ClusterView, Limits, Verdict};
use super::error::Result;
use super::etcd::{prefix_end, Cmp, Etcd, Kv, Op};
use super::event_store::{events_prefix, EventStore};
use super::hooks::Hooks;
use super::maintenance::{self as maint, Maintenance, Migration, Reach};
use super::model::{self, HostRecord, Recovery, VmRecord};
use crate::cli::evacuate;
use crate::cli::exit;
use crate::config::{Config, HaConfig};

pub struct Controller {
    cfg: Config,
    ha: HaConfig,
    name: String,
    pub leader: bool,
    /// Leading, and waiting for something that comes with time or from
    /// the lockspace (`decide::needs_timer`): step every `interval`.
    pub busy: bool,
    /// Storage fences that failed, by host (not retried for a while).
    fence_attempts: super::storage_fence::Attempts,
    events: EventStore,
    hooks: Hooks,
    /// The corrupt values reported (`KEY: error`), so that each is
    /// reported once while it stays.
    reported: std::collections::BTreeSet<String>,
    /// What the leader saw at its last step (the metrics; default when
    /// not leading).
    pub seen: Seen,
    /// When this leader decided each recovery in flight (wall ms), and
    /// how long the finished ones took.
    started: std::collections::HashMap<String, u64>,
    pub durations: super::metrics::RecoveryDurations,
}

/// The leader's view, counted for the metrics.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub hosts: std::collections::BTreeMap<String, usize>,
    pub suspects: usize,
    pub vms: usize,
    pub recoveries: usize,
}

impl Seen {
    fn of(view: &ClusterView) -> Seen {
        let mut hosts = std::collections::BTreeMap::new();
        for h in view.hosts.values() {
            *hosts.entry(h.state.clone()).or_default() += 1;
        }
        if !view.unreadable.is_empty() {
            hosts.insert("unreadable".to_string(), view.unreadable.len());
        }
        Seen {
            hosts,
            suspects: decide::suspects(view).len(),
            vms: view.vms.len(),
            recoveries: view.recoveries.len(),
        }
    }
}

pub fn seen_key(prefix: &str, host: &str) -> String {
    format!("{prefix}seen/{host}")
}

/// Everything under the prefix except the events (which can be many and
/// which no decision reads).
pub fn list_state(etcd: &Etcd, prefix: &str) -> Result<Vec<Kv>> {
    let ev = events_prefix(prefix);
    let mut kvs = etcd.range(prefix, ev.as_bytes())?;
    kvs.extend(etcd.range(
        std::str::from_utf8(&prefix_end(&ev)).unwrap_or(prefix),
        &prefix_end(prefix),
    )?);
    Ok(kvs)
}

/// Wall-clock ms (the retry and start timers only).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Splits everything under the prefix into a view; a value that does not
/// decode is reported by key and left out.
pub fn view_of(prefix: &str, kvs: &[Kv]) -> (ClusterView, Option<String>, Vec<String>) {
    let mut v = ClusterView::default();
    let mut leader = None;
    let mut bad = Vec::new();
    for kv in kvs {
        let Some(rest) = kv.key.strip_prefix(prefix) else {
            continue;
        };
        let err = |e: serde_json::Error| format!("{}: {e}", kv.key);
        if rest == "leader" {
            leader = Some(String::from_utf8_lossy(&kv.value).into_owned());
        } else if let Some(name) = rest.strip_prefix("hosts/") {
            match serde_json::from_slice::<HostRecord>(&kv.value) {
                Ok(h) if h.name == name => {
                    v.hosts.insert(h.name.clone(), h);
                }
                Ok(h) => {
                    v.unreadable.insert(name.to_string());
                    bad.push(format!("{}: the record names host '{}'", kv.key, h.name));
                }
                Err(e) => {
                    v.unreadable.insert(name.to_string());
                    bad.push(err(e));
                }
            }
        } else if rest.starts_with("vms/") {
            match serde_json::from_slice::<VmRecord>(&kv.value) {
                Ok(m) => {
                    v.vms.insert(m.uuid.clone(), m);
                }
                Err(e) => bad.push(err(e)),
            }
        } else if rest.starts_with("recovery/") {
            match serde_json::from_slice::<Recovery>(&kv.value) {
                Ok(r) => {
                    v.recoveries.insert(r.uuid.clone(), r);
                }
                Err(e) => bad.push(err(e)),
            }
        } else if let Some(host) = rest.strip_prefix("seen/") {
            let c = String::from_utf8_lossy(&kv.value).into_owned();
            v.seen.insert(host.to_string(), c);
        } else if rest.starts_with("maintenance/") {
            match serde_json::from_slice::<Maintenance>(&kv.value) {
                Ok(m) => {
                    v.maintenance.insert(m.host.clone(), m);
                }
                Err(e) => bad.push(err(e)),
            }
        } else if rest.starts_with("migration/") {
            match serde_json::from_slice::<Migration>(&kv.value) {
                Ok(m) => {
                    v.migrations.insert(m.uuid.clone(), m);
                }
                Err(e) => bad.push(err(e)),
            }
        } else if rest.starts_with("reach/") {
            match serde_json::from_slice::<Reach>(&kv.value) {
                Ok(r) => {
                    v.reach.insert(r.host.clone(), r);
                }
                Err(e) => bad.push(err(e)),
            }
        }
    }
    (v, leader, bad)
}

impl Controller {
    pub fn new(cfg: Config, ha: HaConfig, name: String) -> Controller {
        let hooks = match &ha.hooks_dir {
            Some(d) => Hooks::start(d.clone(), std::time::Duration::from_millis(ha.hook_timeout)),
            None => Hooks::none(),
        };
        Controller {
            events: EventStore::new(&ha.prefix, ha.event_ttl, ha.max_events as usize),
            hooks,
            cfg,
            ha,
            name,
            leader: false,
            busy: false,
            fence_attempts: Default::default(),
            reported: Default::default(),
            seen: Seen::default(),
            started: Default::default(),
            durations: Default::default(),
        }
    }

    /// Events this controller wrote, by kind.
    pub fn events_written(&self) -> &std::collections::BTreeMap<String, u64> {
        &self.events.written
    }

    fn limits(&self) -> Limits {
        Limits {
            max_starts_per_host: self.ha.max_starts_per_host,
            max_attempts: self.ha.max_attempts,
            retry_backoff_ms: self.ha.retry_backoff,
            start_timeout_ms: self.ha.start_timeout,
        }
    }

    /// One step: campaign or resign, and decide when leading.
    pub fn tick(&mut self, etcd: &Etcd, lease: i64, protected: bool) -> Result<()> {
        let lk = model::leader_key(&self.ha.prefix);
        let me = self.name.as_bytes();
        self.busy = false;
        if !protected {
            self.seen = Seen::default();
            if self.leader {
                etcd.txn("resign", &[Cmp::Value(&lk, me)], &[Op::Delete(&lk)])?;
                self.leader = false;
                log::warn!(
                    "vmlease-ha: {} is not protected: no longer the leader",
                    self.name
                );
            }
            return Ok(());
        }
        let won = etcd.txn(
            "campaign",
            &[Cmp::Absent(&lk)],
            &[Op::Put {
                key: &lk,
                value: me,
                lease,
            }],
        )?;
        // Another host leads: its key is all a follower's step needs (the
        // full read, every VM's definition with it, is the leader's; on a
        // target host it delayed the starts assigned to it).
        if !won && !self.leader && etcd.get(&lk)?.is_none_or(|kv| kv.value != me) {
            self.follow();
            return Ok(());
        }
        let kvs = list_state(etcd, &self.ha.prefix)?;
        let (mut view, leader, bad) = view_of(&self.ha.prefix, &kvs);
        let leading = won || leader.as_deref() == Some(&self.name);
        if leading != self.leader {
            log::warn!(
                "vmlease-ha: {} {} the leader",
                self.name,
                if leading { "is now" } else { "is no longer" }
            );
            self.leader = leading;
        }
        if !leading {
            self.follow();
            return Ok(());
        }
        self.seen = Seen::of(&view);
        self.busy = decide::needs_timer(&view);
        let now = wall_ms();
        let mut events = self.corrupt_values(&bad, now);
        // Suspects, and failed hosts not yet reported evacuable (for the
        // host-evacuable event).
        let mut judge = decide::suspects(&view);
        judge.extend(crate::ha::events::to_judge(&view));
        judge.sort();
        judge.dedup();
        for host in judge {
            let a = evacuate::answer(self.cfg.clone(), &host);
            let verdict = if a.code == exit::OK {
                Verdict::Safe
            } else {
                Verdict::NotYet(a.answer)
            };
            view.verdicts.insert(host, verdict);
        }
        events.extend(self.storage_fence(&mut view, now));
        events.extend(decide::decide(&view, now, &self.limits()));
        let (n, t0) = (events.len(), std::time::Instant::now());
        for action in events {
            self.apply(etcd, &lk, action)?;
        }
        if n > 0 {
            log::info!(
                "vmlease-ha: {n} decision(s) written in {} ms",
                t0.elapsed().as_millis()
            );
        }
        Ok(())
    }

    /// Not leading: nothing of a leader's is kept.
    fn follow(&mut self) {
        self.reported.clear();
        self.seen = Seen::default();
        self.started.clear();
    }

    /// An event for each corrupt value not reported yet (a value that
    /// changes, or comes back, is reported again).
    fn corrupt_values(&mut self, bad: &[String], now: u64) -> Vec<Action> {
        let out = bad
            .iter()
            .filter(|b| !self.reported.contains(*b))
            .map(|b| {
                let (key, error) = b.split_once(": ").unwrap_or((b, ""));
                Action::Event(crate::ha::events::corrupt(now, &self.ha.prefix, key, error))
            })
            .collect();
        self.reported = bad.iter().cloned().collect();
        out
    }

    /// Storage-level fencing (`[ha] storage_fence_after`): a suspect that
    /// is not safe yet, silent long enough and gone from etcd, is
    /// blocklisted; its verdict is then asked again (rule 5 frees its
    /// leases). Events for every attempt.
    fn storage_fence(&mut self, view: &mut ClusterView, now: u64) -> Vec<Action> {
        use super::storage_fence::{event, step, Step, Suspect};
        let Some(after) = self.ha.storage_fence_after else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let hosts: Vec<String> = view
            .verdicts
            .iter()
            .filter(|(_, v)| **v != Verdict::Safe)
            .map(|(h, _)| h.clone())
            .collect();
        for host in hosts {
            let s = Suspect {
                in_etcd: view.hosts.contains_key(&host),
                silent_ms: crate::cli::storage_fence::observed_silence(&self.cfg, &host),
            };
            let retry = self.cfg.timing.host_dead_timeout;
            match step(&host, &s, after, &self.fence_attempts, now, retry) {
                Step::Wait(why) => log::debug!("vmlease-ha: {why}"),
                Step::Fence => {
                    let r = crate::cli::storage_fence::fence_named(&self.cfg, &host, after);
                    let k = if r.is_ok() {
                        crate::ha::events::kind::STORAGE_FENCED
                    } else {
                        crate::ha::events::kind::STORAGE_FENCE_FAILED
                    };
                    out.push(Action::Event(crate::ha::events::Event::host(
                        k,
                        wall_ms(),
                        &host,
                        event(&host, &r),
                    )));
                    if r.is_err() {
                        self.fence_attempts.failed_at.insert(host.clone(), now);
                        continue;
                    }
                    let a = evacuate::answer(self.cfg.clone(), &host);
                    if a.code == exit::OK {
                        view.verdicts.insert(host, Verdict::Safe);
                    }
                }
            }
        }
        out
    }

    /// Writes one decision, only while still the leader.
    fn apply(&mut self, etcd: &Etcd, lk: &str, a: Action) -> Result<()> {
        let me = self.name.as_bytes();
        let ok = match &a {
            Action::Event(e) => {
                log::warn!("vmlease-ha: event {}", e.line());
                let ok = self.events.write(etcd, lk, &self.name, e)?;
                if ok {
                    self.hooks.notify(e);
                    if e.kind == crate::ha::events::kind::RECOVERY_STARTED {
                        self.started.entry(e.uuid.clone()).or_insert(e.time_ms);
                    } else if e.kind == crate::ha::events::kind::RECOVERY_FAILED {
                        self.started.remove(&e.uuid);
                    }
                }
                ok
            }
            Action::Seen { host, condition } => etcd.txn(
                &format!("mark {host} {condition}"),
                &[Cmp::Value(lk, me)],
                &[Op::Put {
                    key: &seen_key(&self.ha.prefix, host),
                    value: condition.as_bytes(),
                    lease: 0,
                }],
            )?,
            Action::Migrate(m) => {
                let key = maint::migration_key(&self.ha.prefix, &m.uuid);
                etcd.txn(
                    &format!("write {key}"),
                    &[Cmp::Value(lk, me)],
                    &[Op::Put {
                        key: &key,
                        value: &to_json(m),
                        lease: 0,
                    }],
                )?
            }
            Action::MigrationDone { uuid } => {
                let key = maint::migration_key(&self.ha.prefix, uuid);
                etcd.txn(
                    &format!("delete {key}"),
                    &[Cmp::Value(lk, me)],
                    &[Op::Delete(&key)],
                )?
            }
            Action::Put(r) => {
                let key = model::recovery_key(&self.ha.prefix, &r.uuid);
                etcd.txn(
                    &format!("write {key}"),
                    &[Cmp::Value(lk, me)],
                    &[Op::Put {
                        key: &key,
                        value: &to_json(r),
                        lease: 0,
                    }],
                )?
            }
            Action::Done { uuid, name, host } => {
                let key = model::recovery_key(&self.ha.prefix, uuid);
                let ok = etcd.txn(
                    &format!("delete {key}"),
                    &[Cmp::Value(lk, me)],
                    &[Op::Delete(&key)],
                )?;
                if ok {
                    log::warn!("vmlease-ha: recovered '{name}' ({uuid}): it runs on {host}");
                    if let Some(t) = self.started.remove(uuid) {
                        self.durations.observe(wall_ms().saturating_sub(t));
                    }
                }
                ok
            }
        };
        if !ok {
            self.leader = false;
            log::warn!(
                "vmlease-ha: {} lost the leadership while writing",
                self.name
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
