//! The controller's decisions, sans IO: from what etcd holds (and the
//! lockspace's verdict on suspect hosts) to the records to write. The
//! driver (`controller.rs`) reads, asks the lockspace about
//! [`suspects`], calls [`decide`], and writes each [`Action`] with a
//! transaction that holds only while it is still the leader.
//!
//! A recovery, per VM:
//!
//! ```text
//!   (host failed, leases free) -> Pending -> Assigned(target) -> Started -> done (record deleted)
//!                                  ^   |           |  timeout/error/target gone
//!                                  |   |           v
//!                                  +---+---- Failed(retry_at) --(attempts used up)--> RecoveryFailed
//! ```
//!
//! A start takes one of its target's `max_starts_per_host` slots while
//! `Assigned`; the target's report (`Started` or `StartFailed`) frees it.
//! The VM's memory and vCPUs stay reserved on the target until the VM is
//! published running (done), when the target's host record counts them.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};

use super::events::{self, kind, Event};
use super::maintenance::{self, Maintenance, Migration};
use super::model::{HostRecord, RecState, Recovery, VmRecord, VmState};
use super::policy::Restart;

/// The lockspace's answer about a host (from `vmlease can-evacuate`'s code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its leases may be taken over now.
    Safe,
    /// Not (yet), with the reason.
    NotYet(String),
}

/// Limits from `[ha]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_starts_per_host: u32,
    pub max_attempts: u32,
    pub retry_backoff_ms: u64,
    pub start_timeout_ms: u64,
}

/// Everything the controller knows at one moment.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// Present hosts (their etcd lease is alive), by name.
    pub hosts: BTreeMap<String, HostRecord>,
    pub vms: BTreeMap<String, VmRecord>,
    pub recoveries: BTreeMap<String, Recovery>,
    /// Verdicts on the hosts [`suspects`] named.
    pub verdicts: BTreeMap<String, Verdict>,
    /// The condition last reported per host (`P/seen/NAME`, events.rs).
    pub seen: BTreeMap<String, String>,
    /// Hosts in maintenance (`P/maintenance/NAME`).
    pub maintenance: BTreeMap<String, Maintenance>,
    /// Drain migrations (`P/migration/UUID`).
    pub migrations: BTreeMap<String, Migration>,
    /// How to reach each host's libvirt for a migration to it.
    pub reach: BTreeMap<String, maintenance::Reach>,
    /// Hosts whose record (`P/hosts/NAME`) holds a value that does not
    /// decode: neither present nor gone. Nothing is decided about them
    /// (no event, no recovery of their VMs, no placement) until their
    /// agent writes the record again.
    pub unreadable: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write this recovery record (a new decision or a new state).
    Put(Recovery),
    /// The VM runs on its new host: the recovery is over.
    Done {
        uuid: String,
        name: String,
        host: String,
    },
    /// Something an operator should see: logged, stored in etcd, handed
    /// to the notification hooks. The one way to emit an event.
    Event(Event),
    /// Record the condition reported for a host (with its event).
    Seen { host: String, condition: String },
    /// Write this drain migration record (maintenance.rs).
    Migrate(Migration),
    /// The drain migration is over (or moot): delete its record.
    MigrationDone { uuid: String },
}

/// Hosts whose HA VMs may need a new home: gone from etcd or not
/// protected, while a VM record that should run says it runs there.
pub fn suspects(v: &ClusterView) -> Vec<String> {
    let mut out: Vec<String> = v
        .vms
        .values()
        .filter(|vm| vm.restart == Restart::Always && vm.state != VmState::Stopped)
        .filter(|vm| !v.hosts.get(&vm.host).is_some_and(|h| h.protected))
        .filter(|vm| !v.unreadable.contains(&vm.host))
        .map(|vm| vm.host.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Must the leader step again after `interval` even if nothing in etcd
/// changes? Yes while something it waits for comes with time or from the
/// lockspace rather than from etcd: a suspect host (its verdict), a failed
/// host not yet reported evacuable, a recovery in flight (the retry and
/// start timers), a drain migration, a host in maintenance. Otherwise it
/// steps when etcd changes (a watch) and at the periodic full read.
pub fn needs_timer(v: &ClusterView) -> bool {
    !suspects(v).is_empty()
        || !events::to_judge(v).is_empty()
        || v.recoveries
            .values()
            .any(|r| r.state != RecState::RecoveryFailed)
        || v.migrations
            .values()
            .any(|m| m.state != maintenance::MigState::GaveUp)
        || !v.maintenance.is_empty()
}

/// One step of the controller.
pub fn decide(v: &ClusterView, now_ms: u64, lim: &Limits) -> Vec<Action> {
    // Host events first (events.rs): a host is reported failed or
    // evacuable before anything is done about its VMs.
    let mut out = events::host_events(v, now_ms);
    // Starts in flight per target, including the ones decided this step:
    // a start holds its target's slot (`max_starts_per_host`) from its
    // assignment until the target reports it done (`started` or
    // `start-failed`), and the VM's memory and vCPUs until the VM is
    // published running somewhere (the host record counts them then).
    let mut inflight: Inflight = BTreeMap::new();
    let mut reserved: Reserved = BTreeMap::new();
    maintenance::reserve(v, &mut inflight, &mut reserved);
    for r in v.recoveries.values() {
        if let (RecState::Assigned | RecState::Started | RecState::StartFailed, Some(t)) =
            (&r.state, &r.target)
        {
            if r.state == RecState::Assigned {
                *inflight.entry(t.clone()).or_default() += 1;
            }
            if let Some(vm) = v.vms.get(&r.uuid) {
                let e = reserved.entry(t.clone()).or_default();
                e.0 += vm.memory_kib;
                e.1 += vm.vcpus;
            }
        }
    }

    // 1. Progress of the recoveries under way.
    let mut to_place: Vec<(Recovery, &VmRecord)> = Vec::new();
    for r in v.recoveries.values() {
        let vm = v.vms.get(&r.uuid);
        // Published running on a host other than the failed one: on its
        // target, or on an earlier target whose start was carried out but
        // not reported (its vmlease-ha killed in between, as a leader
        // that was its own target): either way, it runs.
        let runs_on = vm
            .filter(|vm| vm.state == VmState::Running && vm.host != r.from)
            .map(|vm| vm.host.clone());
        match &r.state {
            RecState::Assigned
            | RecState::Started
            | RecState::StartFailed
            | RecState::Pending
            | RecState::Failed { .. }
                if runs_on.is_some() =>
            {
                // Its reservation on the target frees now (its memory is in
                // the record of the host it runs on from now on), and its
                // slot if no report of the start came first.
                if matches!(
                    r.state,
                    RecState::Assigned | RecState::Started | RecState::StartFailed
                ) {
                    let t = r.target.clone().unwrap_or_default();
                    if r.state == RecState::Assigned {
                        if let Some(n) = inflight.get_mut(&t) {
                            *n = n.saturating_sub(1);
                        }
                    }
                    if let (Some(e), Some(vm)) = (reserved.get_mut(&t), vm) {
                        e.0 = e.0.saturating_sub(vm.memory_kib);
                        e.1 = e.1.saturating_sub(vm.vcpus);
                    }
                }
                let host = runs_on.unwrap_or_default();
                out.push(Action::Event(Event::vm(
                    kind::VM_RECOVERED,
                    now_ms,
                    &r.from,
                    &r.uuid,
                    &r.name,
                    format!("runs on {host} (attempt {})", r.attempt),
                )));
                out.push(Action::Done {
                    uuid: r.uuid.clone(),
                    name: r.name.clone(),
                    host,
                });
            }
            RecState::Assigned | RecState::Started => {
                let target = r.target.clone().unwrap_or_default();
                let unknown = v.unreadable.contains(&target);
                let why = if !unknown && !v.hosts.get(&target).is_some_and(HostRecord::is_target) {
                    Some(format!("target {target} is gone or not protected"))
                } else if now_ms.saturating_sub(r.since_ms) >= lim.start_timeout_ms {
                    Some(format!(
                        "no start reported by {target} within {} ms",
                        lim.start_timeout_ms
                    ))
                } else {
                    None
                };
                if let Some(why) = why {
                    out.extend(failed(r, why, now_ms, lim));
                }
            }
            RecState::StartFailed => {
                let t = r.target.clone().unwrap_or_default();
                out.extend(failed(r, format!("{t}: {}", r.last_error), now_ms, lim));
            }
            // A crash recovery (its first attempt was on its own host)
            // whose VM runs there again, started by an operator: over.
            RecState::Failed { .. } | RecState::Pending | RecState::RecoveryFailed
                if r.tried.first() == Some(&r.from)
                    && vm.is_some_and(|vm| vm.host == r.from && vm.state == VmState::Running) =>
            {
                out.push(Action::Done {
                    uuid: r.uuid.clone(),
                    name: r.name.clone(),
                    host: r.from.clone(),
                });
            }
            RecState::Failed { retry_at_ms } if now_ms >= *retry_at_ms => {
                if let Some(vm) = vm {
                    to_place.push((r.clone(), vm));
                }
            }
            RecState::Pending => {
                if let Some(vm) = vm {
                    to_place.push((r.clone(), vm));
                }
            }
            RecState::RecoveryFailed if vm.is_some_and(|vm| vm.host != r.from) => {
                // The operator started it somewhere: the recovery is over.
                let vm = vm.expect("checked");
                out.push(Action::Done {
                    uuid: r.uuid.clone(),
                    name: r.name.clone(),
                    host: vm.host.clone(),
                });
            }
            RecState::Failed { .. } | RecState::RecoveryFailed => {}
        }
    }

    // 2. New recoveries: HA VMs of suspect hosts whose leases may be taken
    //    (a VM that crashed there before counts as running there).
    for vm in v.vms.values() {
        if vm.restart != Restart::Always
            || vm.state == VmState::Stopped
            || v.recoveries.contains_key(&vm.uuid)
            || v.verdicts.get(&vm.host) != Some(&Verdict::Safe)
            || v.hosts.get(&vm.host).is_some_and(|h| h.protected)
        {
            continue;
        }
        to_place.push((
            Recovery {
                uuid: vm.uuid.clone(),
                name: vm.name.clone(),
                from: vm.host.clone(),
                state: RecState::Pending,
                attempt: 0,
                target: None,
                tried: Vec::new(),
                since_ms: now_ms,
                last_error: String::new(),
            },
            vm,
        ));
    }

    // 2b. HA VMs whose QEMU died on a protected host, which failed to
    //     restart them there (it always tries first): that try was the
    //     first attempt; the next is elsewhere, after the backoff.
    for vm in v.vms.values() {
        if vm.restart != Restart::Always
            || vm.state != VmState::Crashed
            || v.recoveries.contains_key(&vm.uuid)
            || !v.hosts.get(&vm.host).is_some_and(|h| h.protected)
        {
            continue;
        }
        let first = Recovery {
            uuid: vm.uuid.clone(),
            name: vm.name.clone(),
            from: vm.host.clone(),
            state: RecState::StartFailed,
            attempt: 1,
            target: Some(vm.host.clone()),
            tried: vec![vm.host.clone()],
            since_ms: now_ms,
            last_error: String::new(),
        };
        let why = format!("its QEMU died on {} and the restart there failed", vm.host);
        out.extend(failed(&first, why, now_ms, lim));
    }

    // 3. Placement, highest priority first.
    to_place.sort_by(|a, b| {
        b.1.priority
            .cmp(&a.1.priority)
            .then_with(|| a.1.name.cmp(&b.1.name))
            .then_with(|| a.1.uuid.cmp(&b.1.uuid))
    });
    for (mut r, vm) in to_place {
        match place(v, vm, &r.from, &r.tried, &inflight, &reserved, lim) {
            Some(target) => {
                *inflight.entry(target.clone()).or_default() += 1;
                let e = reserved.entry(target.clone()).or_default();
                e.0 += vm.memory_kib;
                e.1 += vm.vcpus;
                r.attempt += 1;
                r.tried.push(target.clone());
                r.target = Some(target.clone());
                r.state = RecState::Assigned;
                r.since_ms = now_ms;
                out.push(Action::Event(Event::vm(
                    kind::RECOVERY_STARTED,
                    now_ms,
                    &r.from,
                    &vm.uuid,
                    &vm.name,
                    format!("on {target}, attempt {} of {}", r.attempt, lim.max_attempts),
                )));
                out.push(Action::Put(r));
            }
            // Written once when it starts waiting; then left alone.
            None if r.state != RecState::Pending || !v.recoveries.contains_key(&r.uuid) => {
                r.target = None;
                r.state = RecState::Pending;
                r.since_ms = now_ms;
                r.last_error = "no protected host has room for it".into();
                out.push(Action::Put(r));
            }
            None => {}
        }
    }

    // 4. Maintenance: drain migrations (maintenance.rs).
    out.extend(maintenance::drain(
        v,
        now_ms,
        lim,
        &mut inflight,
        &mut reserved,
    ));
    out
}

/// The attempt failed: retry later, or give up.
fn failed(r: &Recovery, why: String, now_ms: u64, lim: &Limits) -> Vec<Action> {
    let mut n = r.clone();
    n.last_error = why.clone();
    n.since_ms = now_ms;
    if r.attempt >= lim.max_attempts {
        n.state = RecState::RecoveryFailed;
        n.target = None;
        return vec![
            Action::Event(Event::vm(
                kind::RECOVERY_FAILED,
                now_ms,
                &r.from,
                &r.uuid,
                &r.name,
                format!("after {} attempt(s): {why}", r.attempt),
            )),
            Action::Put(n),
        ];
    }
    let backoff = lim
        .retry_backoff_ms
        .saturating_mul(1u64 << (r.attempt.saturating_sub(1)).min(16));
    n.state = RecState::Failed {
        retry_at_ms: now_ms.saturating_add(backoff),
    };
    vec![
        Action::Event(Event::vm(
            kind::ATTEMPT_FAILED,
            now_ms,
            &r.from,
            &r.uuid,
            &r.name,
            format!("attempt {}: {why}; next in {backoff} ms", r.attempt),
        )),
        Action::Put(n),
    ]
}

/// Starts (and migrations) in flight per target host.
pub type Inflight = BTreeMap<String, u32>;
/// Memory and vCPUs promised per target host.
pub type Reserved = BTreeMap<String, (u64, u32)>;

/// The best target: protected, live, not in maintenance, room for the
/// VM's memory, under the start limit; hosts not tried yet first, then
/// the most free memory.
pub fn place(
    v: &ClusterView,
    vm: &VmRecord,
    from: &str,
    tried: &[String],
    inflight: &Inflight,
    reserved: &Reserved,
    lim: &Limits,
) -> Option<String> {
    v.hosts
        .values()
        .filter(|h| h.is_target() && h.name != from && !v.maintenance.contains_key(&h.name))
        .filter(|h| inflight.get(&h.name).copied().unwrap_or(0) < lim.max_starts_per_host)
        .filter_map(|h| {
            let (mem, cpu) = reserved.get(&h.name).copied().unwrap_or((0, 0));
            let free_mem = h
                .mem_total_kib
                .saturating_sub(h.mem_used_kib)
                .saturating_sub(mem);
            let free_cpu = i64::from(h.vcpus) - i64::from(h.vcpus_used) - i64::from(cpu);
            (free_mem >= vm.memory_kib).then_some((h, free_mem, free_cpu))
        })
        .min_by(|a, b| {
            let tried = |h: &HostRecord| tried.contains(&h.name);
            tried(a.0)
                .cmp(&tried(b.0))
                .then_with(|| b.1.cmp(&a.1))
                .then_with(|| b.2.cmp(&a.2))
                .then_with(|| a.0.name.cmp(&b.0.name))
        })
        .map(|(h, _, _)| h.name.clone())
}

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod tests;
