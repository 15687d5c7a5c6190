//! Maintenance, sans IO: a host in maintenance (`P/maintenance/NAME`,
//! written by `vmlease maintenance enter`) takes no placements, its
//! network-policy fences are disarmed (its agent tells the watchdog
//! daemon through `STATE_DIR/maintenance`), and the controller drains its
//! HA VMs by live migration, one at a time per host:
//!
//! ```text
//!   assigned(target) -> migrating (the source's agent runs virsh migrate) -> migrated
//!        |                  |                                                 |
//!        +------------------+--> migrate-failed -> failed(retry_at) ---------+--> done when the
//!                                   (max_attempts used) -> gave-up            target publishes it
//! ```
//!
//! Safety stays with the leases: a live migration hands the domain's
//! leases over inside libvirt (Release at the source's switch-over,
//! Acquire with the source's state at the destination's finish), and the
//! plugin refuses a destination that is not protected.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

use super::decide::{place, Action, ClusterView, Inflight, Limits, Reserved};
use super::events::{kind, Event};
use super::model::VmState;
use super::policy::Restart;

pub fn maintenance_key(prefix: &str, host: &str) -> String {
    format!("{prefix}maintenance/{host}")
}
pub fn migration_key(prefix: &str, uuid: &str) -> String {
    format!("{prefix}migration/{uuid}")
}
pub fn reach_key(prefix: &str, host: &str) -> String {
    format!("{prefix}reach/{host}")
}

/// `P/maintenance/NAME`: the host is in maintenance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    pub host: String,
    /// Wall-clock ms of `vmlease maintenance enter`.
    pub since_ms: u64,
    /// The host's agent saw its watchdog daemon disarm the network-policy
    /// fences (or none is configured).
    #[serde(default)]
    pub disarmed: bool,
}

/// `P/reach/NAME` (bound to the host's etcd lease): how a source host's
/// libvirt reaches this host's for a live migration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reach {
    pub host: String,
    /// The destination's libvirt URI (`virsh migrate ... URI`).
    pub uri: String,
    /// The address QEMU's migration stream goes to (`--migrateuri
    /// tcp://ADDRESS`); "" lets libvirt choose.
    pub address: String,
}

/// Where a drain migration stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum MigState {
    /// The source's agent is to migrate it to `target`.
    Assigned,
    /// `virsh migrate` runs on the source.
    Migrating,
    /// `virsh migrate` succeeded; waiting for the target to publish it.
    Migrated,
    /// The source reports the migration failed (`last_error`).
    MigrateFailed,
    /// The next attempt not before `retry_at_ms`.
    Failed { retry_at_ms: u64 },
    /// Out of attempts: the VM stays on its host, left to the operator.
    GaveUp,
}

/// `P/migration/UUID`: a drain migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    pub uuid: String,
    pub name: String,
    /// The host in maintenance.
    pub from: String,
    pub target: String,
    #[serde(flatten)]
    pub state: MigState,
    pub attempt: u32,
    pub tried: Vec<String>,
    /// Wall-clock ms of the last change, and of the first assignment.
    pub since_ms: u64,
    pub first_ms: u64,
    pub last_error: String,
    /// The source's view of the job (`virsh domjobinfo`), e.g. "42%".
    #[serde(default)]
    pub progress: String,
}

impl Migration {
    fn in_flight(&self) -> bool {
        matches!(
            self.state,
            MigState::Assigned | MigState::Migrating | MigState::Migrated
        )
    }
}

/// Counts the migrations in flight against their targets (before any
/// placement of this step).
pub fn reserve(v: &ClusterView, inflight: &mut Inflight, reserved: &mut Reserved) {
    for m in v.migrations.values().filter(|m| m.in_flight()) {
        *inflight.entry(m.target.clone()).or_default() += 1;
        if let Some(vm) = v.vms.get(&m.uuid) {
            let e = reserved.entry(m.target.clone()).or_default();
            e.0 += vm.memory_kib;
            e.1 += vm.vcpus;
        }
    }
}

/// The HA VMs that must leave `host` (restart="always", running there).
fn to_drain<'a>(
    v: &'a ClusterView,
    host: &'a str,
) -> impl Iterator<Item = &'a super::model::VmRecord> {
    v.vms.values().filter(move |vm| {
        vm.host == host && vm.restart == Restart::Always && vm.state == VmState::Running
    })
}

/// Is `host` (in maintenance) empty of HA VMs, with nothing in flight?
pub fn drained(v: &ClusterView, host: &str) -> bool {
    to_drain(v, host).next().is_none()
        && !v
            .migrations
            .values()
            .any(|m| m.from == host && m.in_flight())
}

/// The drain decisions of this step.
pub fn drain(
    v: &ClusterView,
    now_ms: u64,
    lim: &Limits,
    inflight: &mut Inflight,
    reserved: &mut Reserved,
) -> Vec<Action> {
    let mut out = Vec::new();
    let mut busy: Vec<String> = Vec::new();
    let mut retry: Vec<Migration> = Vec::new();
    for m in v.migrations.values() {
        let vm = v.vms.get(&m.uuid);
        let arrived = vm.is_some_and(|vm| vm.host == m.target && vm.state == VmState::Running);
        let source_ok = v.hosts.get(&m.from).is_some_and(|h| h.protected);
        let in_maint = v.maintenance.contains_key(&m.from);
        let release = |inflight: &mut Inflight, reserved: &mut Reserved| {
            if let Some(n) = inflight.get_mut(&m.target) {
                *n = n.saturating_sub(1);
            }
            if let (Some(e), Some(vm)) = (reserved.get_mut(&m.target), vm) {
                e.0 = e.0.saturating_sub(vm.memory_kib);
                e.1 = e.1.saturating_sub(vm.vcpus);
            }
        };
        let ev = |k: &str, why: String| {
            Action::Event(Event::vm(k, now_ms, &m.from, &m.uuid, &m.name, why))
        };
        match &m.state {
            _ if m.in_flight() && arrived => {
                release(inflight, reserved);
                out.push(ev(
                    kind::VM_MIGRATED,
                    format!(
                        "live-migrated to {} in {} ms (attempt {})",
                        m.target,
                        now_ms.saturating_sub(m.since_ms),
                        m.attempt
                    ),
                ));
                out.push(Action::MigrationDone {
                    uuid: m.uuid.clone(),
                });
            }
            MigState::Assigned if !in_maint => {
                release(inflight, reserved);
                out.push(Action::MigrationDone {
                    uuid: m.uuid.clone(),
                });
            }
            MigState::Migrating | MigState::Migrated if !source_ok => {
                // Its host failed mid-drain: recovery takes over from the
                // VM record (or the target already publishes it).
                release(inflight, reserved);
                out.push(ev(
                    kind::MIGRATION_FAILED,
                    format!("{} failed during the migration", m.from),
                ));
                out.push(Action::MigrationDone {
                    uuid: m.uuid.clone(),
                });
            }
            MigState::Assigned | MigState::Migrated
                if !source_ok || now_ms.saturating_sub(m.since_ms) >= lim.start_timeout_ms =>
            {
                release(inflight, reserved);
                let why = if source_ok {
                    format!("nothing reported within {} ms", lim.start_timeout_ms)
                } else {
                    format!("{} is gone or not protected", m.from)
                };
                out.extend(failed(m, why, now_ms, lim));
            }
            MigState::MigrateFailed => {
                release(inflight, reserved);
                out.extend(failed(m, m.last_error.clone(), now_ms, lim));
            }
            MigState::Failed { .. } | MigState::GaveUp if !in_maint => {
                out.push(Action::MigrationDone {
                    uuid: m.uuid.clone(),
                });
            }
            MigState::Failed { retry_at_ms } if now_ms >= *retry_at_ms && source_ok => {
                retry.push(m.clone());
            }
            _ => {}
        }
        // Still this host's one migration (in flight, or to be retried)?
        let ended = out.iter().any(|a| {
            matches!(a, Action::MigrationDone { uuid } if *uuid == m.uuid)
                || matches!(a, Action::Migrate(n) if n.uuid == m.uuid && n.state == MigState::GaveUp)
        });
        let pending =
            m.in_flight() || matches!(m.state, MigState::MigrateFailed | MigState::Failed { .. });
        if pending && !ended {
            busy.push(m.from.clone());
        }
    }

    // One migration at a time per host in maintenance: a retry first,
    // then the highest-priority VM without a record.
    for (host, _) in v.maintenance.iter() {
        if !v.hosts.get(host).is_some_and(|h| h.protected) {
            continue; // failed: recovery's business
        }
        let mut next: Option<Migration> = retry.iter().find(|m| &m.from == host).cloned();
        if next.is_none() && !busy.contains(host) {
            let mut vms: Vec<_> = to_drain(v, host)
                .filter(|vm| {
                    !v.migrations.contains_key(&vm.uuid) && !v.recoveries.contains_key(&vm.uuid)
                })
                .collect();
            vms.sort_by(|a, b| {
                b.priority
                    .cmp(&a.priority)
                    .then_with(|| a.name.cmp(&b.name))
            });
            next = vms.first().map(|vm| Migration {
                uuid: vm.uuid.clone(),
                name: vm.name.clone(),
                from: host.clone(),
                target: String::new(),
                state: MigState::Assigned,
                attempt: 0,
                tried: Vec::new(),
                since_ms: now_ms,
                first_ms: now_ms,
                last_error: String::new(),
                progress: String::new(),
            });
        }
        let Some(mut m) = next else { continue };
        let Some(vm) = v.vms.get(&m.uuid) else {
            continue;
        };
        let target = place(v, vm, host, &m.tried, inflight, reserved, lim)
            .filter(|t| v.reach.contains_key(t));
        let Some(target) = target else {
            continue; // no room now: asked again next step
        };
        *inflight.entry(target.clone()).or_default() += 1;
        let e = reserved.entry(target.clone()).or_default();
        e.0 += vm.memory_kib;
        e.1 += vm.vcpus;
        m.attempt += 1;
        m.tried.push(target.clone());
        m.target = target;
        m.state = MigState::Assigned;
        m.since_ms = now_ms;
        m.progress.clear();
        out.push(Action::Migrate(m));
    }
    out
}

fn failed(m: &Migration, why: String, now_ms: u64, lim: &Limits) -> Vec<Action> {
    let mut n = m.clone();
    n.last_error = why.clone();
    n.since_ms = now_ms;
    let (state, what) = if m.attempt >= lim.max_attempts {
        (
            MigState::GaveUp,
            format!(
                "to {}: {why}; gave up after {} attempt(s): it stays on {}",
                m.target, m.attempt, m.from
            ),
        )
    } else {
        let backoff = lim
            .retry_backoff_ms
            .saturating_mul(1u64 << m.attempt.saturating_sub(1).min(16));
        (
            MigState::Failed {
                retry_at_ms: now_ms.saturating_add(backoff),
            },
            format!("to {}: {why}; next attempt in {backoff} ms", m.target),
        )
    };
    n.state = state;
    vec![
        Action::Event(Event::vm(
            kind::MIGRATION_FAILED,
            now_ms,
            &m.from,
            &m.uuid,
            &m.name,
            what,
        )),
        Action::Migrate(n),
    ]
}

#[cfg(test)]
mod tests;
