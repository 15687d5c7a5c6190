//! `vmlease maintenance enter|exit HOST [--wait]`: writes or deletes
//! `P/maintenance/HOST` in etcd; vmlease-ha does the rest (no placements,
//! the host's agent disarms its network-policy fences, the controller
//! drains its HA VMs by live migration). --wait follows it in etcd.
#![forbid(unsafe_code)]

use super::args::Args;
use super::Opts;
#[cfg(feature = "ha")]
use super::{exit, fail};

#[cfg(not(feature = "ha"))]
pub fn run(_opts: &Opts, _args: &Args) -> i32 {
    super::ha::without_ha()
}

/// --wait gives up when nothing has changed for this long.
#[cfg(feature = "ha")]
const STALL_MS: u64 = 300_000;

#[cfg(feature = "ha")]
pub fn run(opts: &Opts, args: &Args) -> i32 {
    use crate::ha::controller::{list_state, view_of, wall_ms};
    use crate::ha::etcd::{Cmp, Op};
    use crate::ha::maintenance::{maintenance_key, Maintenance};

    let (sub, host) = (args.positional[0].as_str(), args.positional[1].as_str());
    if sub != "enter" && sub != "exit" {
        eprintln!("vmlease: usage: vmlease maintenance enter|exit HOST [--wait]");
        return exit::USAGE;
    }
    let (ha, etcd) = match super::ha::etcd_of(opts) {
        Ok(he) => he,
        Err(code) => return code,
    };
    let unreachable =
        |e: crate::ha::error::Error| fail(exit::UNKNOWN, format!("cannot reach etcd: {e}"));
    let kvs = match list_state(&etcd, &ha.prefix) {
        Ok(k) => k,
        Err(e) => return unreachable(e),
    };
    let (v, _, _) = view_of(&ha.prefix, &kvs);
    let key = maintenance_key(&ha.prefix, host);
    if sub == "enter" {
        if !v.hosts.contains_key(host) {
            let known: Vec<&String> = v.hosts.keys().collect();
            return fail(
                exit::NO,
                format!(
                    "no host '{host}' in etcd (present: {known:?}): is its vmlease-ha running?"
                ),
            );
        }
        let m = Maintenance {
            host: host.to_string(),
            since_ms: wall_ms(),
            disarmed: false,
        };
        let value = serde_json::to_vec(&m).expect("records serialise");
        match etcd.txn(
            &format!("create {key}"),
            &[Cmp::Absent(&key)],
            &[Op::Put {
                key: &key,
                value: &value,
                lease: 0,
            }],
        ) {
            Ok(true) => {
                println!("{host}: maintenance entered; its HA VMs will be live-migrated away")
            }
            Ok(false) => println!("{host}: already in maintenance"),
            Err(e) => return unreachable(e),
        }
    } else {
        match etcd.txn(&format!("delete {key}"), &[], &[Op::Delete(&key)]) {
            Ok(_) => println!("{host}: maintenance over; a placement target again"),
            Err(e) => return unreachable(e),
        }
    }
    if args.flag("--wait").is_none() {
        return exit::OK;
    }
    wait(&etcd, &ha.prefix, host, sub == "enter")
}

/// Follows the drain (or the exit) in etcd, printing each change.
#[cfg(feature = "ha")]
fn wait(etcd: &crate::ha::etcd::Etcd, prefix: &str, host: &str, enter: bool) -> i32 {
    use crate::ha::controller::{list_state, view_of};
    use crate::ha::maintenance::{drained, MigState};
    use crate::ha::model::VmState;
    use crate::ha::policy::Restart;
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    let t0 = Instant::now();
    let mut last_change = Instant::now();
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    let mut moving = std::collections::BTreeSet::new();
    let mut show = |what: String, line: String| {
        if shown.get(&what) != Some(&line) {
            println!("  {:>6.1} s  {line}", t0.elapsed().as_secs_f64());
            shown.insert(what, line);
            true
        } else {
            false
        }
    };
    loop {
        let kvs = match list_state(etcd, prefix) {
            Ok(k) => k,
            Err(e) => {
                show("etcd".into(), format!("etcd: {e}"));
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        let (v, leader, _) = view_of(prefix, &kvs);
        let mut changed = false;
        if leader.is_none() {
            changed |= show("leader".into(), "no vmlease-ha leader yet".into());
        }
        let seen = v.seen.get(host).cloned().unwrap_or_default();
        if !enter {
            if !v.maintenance.contains_key(host) && seen != "maintenance" && seen != "drained" {
                show("done".into(), format!("{host} is a placement target again"));
                return exit::OK;
            }
        } else {
            let Some(m) = v.maintenance.get(host) else {
                eprintln!("vmlease: {host} left maintenance while waiting");
                return exit::NO;
            };
            if m.disarmed {
                changed |= show(
                    "disarmed".into(),
                    format!("{host}: network-policy fences disarmed"),
                );
            }
            let mut gave_up = Vec::new();
            for mg in v.migrations.values().filter(|mg| mg.from == host) {
                moving.insert(mg.uuid.clone());
                let state = match &mg.state {
                    MigState::Assigned => "assigned".to_string(),
                    MigState::Migrating => format!("migrating {}", mg.progress),
                    MigState::Migrated => "migrated, waiting for the target".into(),
                    MigState::MigrateFailed => format!("failed: {}", mg.last_error),
                    MigState::Failed { .. } => format!("failed, retrying: {}", mg.last_error),
                    MigState::GaveUp => {
                        gave_up.push(format!("{}: {}", mg.name, mg.last_error));
                        format!("gave up: {}", mg.last_error)
                    }
                };
                changed |= show(
                    mg.uuid.clone(),
                    format!(
                        "{} -> {} (attempt {}): {}",
                        mg.name,
                        mg.target,
                        mg.attempt,
                        state.trim_end()
                    ),
                );
            }
            for vm in v.vms.values() {
                if vm.restart == Restart::Always
                    && vm.state == VmState::Running
                    && vm.host != host
                    && moving.contains(&vm.uuid)
                    && !v.migrations.contains_key(&vm.uuid)
                {
                    changed |= show(vm.uuid.clone(), format!("{}: runs on {}", vm.name, vm.host));
                }
            }
            let left = v
                .vms
                .values()
                .filter(|vm| {
                    vm.host == host && vm.restart == Restart::Always && vm.state == VmState::Running
                })
                .count();
            changed |= show("left".into(), format!("{host}: {left} HA VM(s) left"));
            if !gave_up.is_empty() {
                eprintln!("vmlease: {host} is not drained: {}", gave_up.join("; "));
                return exit::NO;
            }
            if m.disarmed && drained(&v, host) {
                show("done".into(), format!("{host} is drained"));
                return exit::OK;
            }
        }
        if changed {
            last_change = Instant::now();
        } else if last_change.elapsed().as_millis() as u64 > STALL_MS {
            eprintln!(
                "vmlease: nothing changed for {} s; giving up the wait",
                STALL_MS / 1000
            );
            return exit::NO;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
