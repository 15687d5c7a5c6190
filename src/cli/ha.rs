//! `vmlease ha status|enable|disable`: what vmlease-ha keeps in etcd, and
//! a domain's HA policy in its libvirt metadata.
#![forbid(unsafe_code)]

use super::args::Args;
use super::{exit, fail, Opts};
#[cfg(feature = "ha")]
use super::{load, table};

#[cfg(not(feature = "ha"))]
pub fn run(_opts: &Opts, _args: &Args) -> i32 {
    without_ha()
}

/// The answer of every `ha`, `events` and `maintenance` command in a
/// build without the "ha" feature.
#[cfg(not(feature = "ha"))]
pub(super) fn without_ha() -> i32 {
    fail(
        exit::USAGE,
        "this vmlease was built without the \"ha\" feature",
    )
}

#[cfg(feature = "ha")]
pub fn run(opts: &Opts, args: &Args) -> i32 {
    use crate::ha::policy::Restart;
    let sub = args.positional[0].as_str();
    let priority = match args.flag("--priority").map(str::parse::<i32>) {
        None => 0,
        Some(Ok(p)) if (-1000..=1000).contains(&p) => p,
        Some(_) => {
            eprintln!("vmlease: --priority must be a number between -1000 and 1000");
            return exit::USAGE;
        }
    };
    match (sub, args.positional.get(1)) {
        ("status", None) if args.flag("--priority").is_none() => status(opts),
        ("enable", Some(d)) => set(d, Restart::Always, priority),
        ("disable", Some(d)) if args.flag("--priority").is_none() => set(d, Restart::Never, 0),
        _ => {
            eprintln!(
                "vmlease: usage: vmlease ha status | enable DOMAIN [--priority N] | disable DOMAIN"
            );
            exit::USAGE
        }
    }
}

#[cfg(feature = "ha")]
fn set(domain: &str, restart: crate::ha::policy::Restart, priority: i32) -> i32 {
    use crate::ha::policy::Policy;
    match crate::ha::virsh::set_policy(domain, Policy { restart, priority }) {
        Ok(()) => {
            println!(
                "domain '{domain}': restart=\"{}\" priority={priority}",
                restart.as_str()
            );
            exit::OK
        }
        Err(e) => fail(exit::NO, e),
    }
}

/// The `[ha]` section and an etcd client for it, or the exit code (the
/// reason is printed): what every command that reads etcd starts with.
#[cfg(feature = "ha")]
pub(super) fn etcd_of(
    opts: &Opts,
) -> Result<(crate::config::HaConfig, crate::ha::etcd::Etcd), i32> {
    let cfg = load(opts)?;
    let Some(ha) = cfg.ha else {
        return Err(fail(
            exit::USAGE,
            "no [ha] section in the configuration: recovery is not configured",
        ));
    };
    let etcd = crate::ha::etcd::Etcd::new(&ha).map_err(|e| fail(exit::USAGE, e))?;
    Ok((ha, etcd))
}

#[cfg(feature = "ha")]
fn status(opts: &Opts) -> i32 {
    use crate::ha::controller::{view_of, wall_ms};
    use crate::ha::model::RecState;
    use serde_json::{json, Value};

    let (ha, etcd) = match super::ha::etcd_of(opts) {
        Ok(he) => he,
        Err(code) => return code,
    };
    let kvs = match crate::ha::controller::list_state(&etcd, &ha.prefix) {
        Ok(k) => k,
        Err(e) => return fail(exit::UNKNOWN, format!("cannot reach etcd: {e}")),
    };
    let (v, leader, bad) = view_of(&ha.prefix, &kvs);
    if opts.json {
        let vms: Vec<Value> = v
            .vms
            .values()
            .map(|m| {
                let mut j = serde_json::to_value(m).unwrap_or(Value::Null);
                if let Some(o) = j.as_object_mut() {
                    o.remove("xml");
                }
                j
            })
            .collect();
        let out = json!({
            "leader": leader,
            "hosts": v.hosts.values().collect::<Vec<_>>(),
            "vms": vms,
            "recoveries": v.recoveries.values().collect::<Vec<_>>(),
            "maintenance": v.maintenance.values().collect::<Vec<_>>(),
            "migrations": v.migrations.values().collect::<Vec<_>>(),
            "corrupt": bad,
        });
        println!("{out}");
        return exit::OK;
    }
    println!("leader: {}", leader.as_deref().unwrap_or("none"));
    println!("\nhosts:");
    let rows: Vec<Vec<String>> = v
        .hosts
        .values()
        .map(|h| {
            vec![
                h.name.clone(),
                h.host_id.to_string(),
                h.state.clone(),
                if h.protected {
                    "yes".into()
                } else {
                    format!("no: {}", h.reason)
                },
                format!("{}", h.mem_total_kib.saturating_sub(h.mem_used_kib) / 1024),
                format!("{}/{}", h.vcpus_used, h.vcpus),
            ]
        })
        .collect();
    table(
        &["NAME", "ID", "STATE", "PROTECTED", "FREE_MIB", "VCPUS"],
        &rows,
    );
    for m in v.maintenance.values() {
        println!(
            "{} is in maintenance (network fences {})",
            m.host,
            if m.disarmed {
                "disarmed"
            } else {
                "being disarmed"
            }
        );
    }
    println!("\nHA VMs:");
    let rows: Vec<Vec<String>> = v
        .vms
        .values()
        .map(|m| {
            let present = if v.hosts.contains_key(&m.host) {
                ""
            } else {
                " (host gone)"
            };
            vec![
                m.name.clone(),
                format!("{}{present}", m.host),
                m.restart.as_str().into(),
                m.priority.to_string(),
                format!("{:?}", m.state).to_lowercase(),
                m.uuid.clone(),
            ]
        })
        .collect();
    table(
        &["NAME", "HOST", "RESTART", "PRIORITY", "STATE", "UUID"],
        &rows,
    );
    if !v.recoveries.is_empty() {
        println!("\nrecoveries:");
        let now = wall_ms();
        let rows: Vec<Vec<String>> = v
            .recoveries
            .values()
            .map(|r| {
                let state = match &r.state {
                    RecState::Pending => "pending".to_string(),
                    RecState::Assigned => "assigned".into(),
                    RecState::Started => "started".into(),
                    RecState::StartFailed => "start-failed".into(),
                    RecState::Failed { retry_at_ms } => {
                        format!("failed, retry in {} ms", retry_at_ms.saturating_sub(now))
                    }
                    RecState::RecoveryFailed => "recovery-failed".into(),
                };
                vec![
                    r.name.clone(),
                    r.from.clone(),
                    state,
                    r.target.clone().unwrap_or_else(|| "-".into()),
                    r.attempt.to_string(),
                    r.last_error.clone(),
                ]
            })
            .collect();
        table(
            &["NAME", "FROM", "STATE", "TARGET", "ATTEMPT", "LAST_ERROR"],
            &rows,
        );
    }
    if !v.migrations.is_empty() {
        use crate::ha::maintenance::MigState;
        println!("\ndrain migrations:");
        let rows: Vec<Vec<String>> = v
            .migrations
            .values()
            .map(|m| {
                let state = match &m.state {
                    MigState::Assigned => "assigned".to_string(),
                    MigState::Migrating => format!("migrating {}", m.progress),
                    MigState::Migrated => "migrated".into(),
                    MigState::MigrateFailed => "migrate-failed".into(),
                    MigState::Failed { .. } => "failed, will retry".into(),
                    MigState::GaveUp => "gave-up".into(),
                };
                vec![
                    m.name.clone(),
                    m.from.clone(),
                    m.target.clone(),
                    state.trim_end().to_string(),
                    m.attempt.to_string(),
                    m.last_error.clone(),
                ]
            })
            .collect();
        table(
            &["NAME", "FROM", "TARGET", "STATE", "ATTEMPT", "LAST_ERROR"],
            &rows,
        );
    }
    if let Ok((events, _, _)) = crate::ha::event_store::read(&etcd, &ha.prefix) {
        if !events.is_empty() {
            println!("\nlast events:");
            for e in events.iter().rev().take(5).rev() {
                println!("  {}", e.line());
            }
        }
    }
    for b in &bad {
        println!("corrupt: {b}");
    }
    exit::OK
}
