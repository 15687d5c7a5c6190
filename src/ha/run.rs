//! `vmlease-ha`'s main loop: the agent and the controller candidate, one
//! step every `[ha] interval`. etcd unreachable: log once, retry with
//! backoff (up to the lease TTL), never exit; running VMs are untouched.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::agent::Agent;
use super::controller::Controller;
use super::error::Error;
use super::etcd::Etcd;
use super::maintenance_agent::MaintenanceAgent;
use super::metrics::{render, Sample};
use super::metrics_http::{self, Text};
use super::vmmon::VmMonitor;
use crate::config;
use crate::daemon::signals;

const USAGE: &str = "usage: vmlease-ha [--config FILE]";

pub fn main(argv: Vec<String>) -> i32 {
    // The storage fence's RADOS reads run in a child (src/rados/worker.rs).
    if argv.get(1).map(String::as_str) == Some(crate::rados::worker::ARG) && argv.len() == 2 {
        return crate::rados::worker::main();
    }
    let mut path = PathBuf::from(config::DEFAULT_PATH);
    let mut it = argv.into_iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" => match it.next() {
                Some(p) => path = PathBuf::from(p),
                None => {
                    eprintln!("vmlease-ha: --config needs a file\n{USAGE}");
                    return 2;
                }
            },
            "--help" | "-h" => {
                println!("{USAGE}\nThe recovery agent and controller (see docs/ha.md).");
                return 0;
            }
            other => {
                eprintln!("vmlease-ha: unknown argument '{other}'\n{USAGE}");
                return 2;
            }
        }
    }
    crate::logging::init(true, log::LevelFilter::Info);
    let cfg = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vmlease-ha: {e}");
            return 2;
        }
    };
    let Some(ha) = cfg.ha.clone() else {
        eprintln!(
            "vmlease-ha: {}: no [ha] section: recovery is not configured",
            path.display()
        );
        return 2;
    };
    match run(cfg, ha) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("vmlease-ha: {e}");
            1
        }
    }
}

fn run(cfg: config::Config, ha: config::HaConfig) -> Result<(), Error> {
    signals::install();
    let etcd = Etcd::new(&ha)?;
    let mut agent = Agent::new(cfg.clone(), ha.clone())?;
    let mut maint = MaintenanceAgent::new(cfg.clone(), ha.clone(), agent.name.clone());
    let mut ctl = Controller::new(cfg.clone(), ha.clone(), agent.name.clone());
    let mut vms = VmMonitor::new(cfg, ha.clone(), agent.name.clone());
    let interval = Duration::from_millis(ha.interval);
    let mut failing: Option<String> = None;
    let mut backoff = interval;
    let metrics = match ha.metrics_listen {
        None => None,
        Some(addr) => {
            // Recovery matters more than its metrics: a listener that
            // cannot start is logged, not fatal.
            let text = Text::default();
            match metrics_http::serve(addr, text.clone()) {
                Ok(bound) => {
                    log::info!("vmlease-ha: serving /metrics on http://{bound}/metrics");
                    Some(text)
                }
                Err(e) => {
                    log::error!(
                        "vmlease-ha: [ha] metrics_listen {addr}: {e}; going on without /metrics"
                    );
                    None
                }
            }
        }
    };
    let mut sample = Sample {
        host_name: agent.name.clone(),
        ..Sample::default()
    };
    log::info!(
        "vmlease-ha: host {} starting; etcd {}",
        agent.name,
        ha.endpoints.join(",")
    );
    while !signals::stop_requested() {
        let t0 = Instant::now();
        let step = agent
            .presence(&etcd)
            .and_then(|()| agent.publish(&etcd))
            .and_then(|()| ctl.tick(&etcd, agent.lease, agent.protected))
            .and_then(|()| agent.execute(&etcd))
            .and_then(|()| maint.step(&etcd, agent.lease, agent.protected));
        if metrics.is_some() {
            sample.etcd_up = step.is_ok();
            match &step {
                Err(Error::Etcd { .. }) => sample.etcd_errors += 1,
                Err(_) => sample.other_errors += 1,
                Ok(()) => {}
            }
        }
        match step {
            Ok(()) => {
                if failing.take().is_some() {
                    log::warn!("vmlease-ha: etcd and libvirt answer again");
                }
                backoff = interval;
            }
            Err(e) => {
                let msg = e.to_string();
                if failing.as_deref() != Some(&msg) {
                    log::error!("vmlease-ha: {msg}; retrying");
                }
                failing = Some(msg);
                if matches!(e, Error::Etcd { .. }) {
                    // No quorum or no etcd: no decisions.
                    ctl.leader = false;
                    backoff = (backoff * 2).min(Duration::from_millis(ha.host_ttl / 2));
                }
            }
        }
        if let Some(text) = &metrics {
            sample.leader = ctl.leader;
            sample.protected = agent.protected;
            sample.hosts = ctl.seen.hosts.clone();
            sample.suspects = ctl.seen.suspects;
            sample.vms = ctl.seen.vms;
            sample.recoveries = ctl.seen.recoveries;
            sample.recovery_durations = ctl.durations.clone();
            sample.events = ctl.events_written().clone();
            for (k, n) in vms.events_written() {
                *sample.events.entry(k.clone()).or_default() += n;
            }
            text.set(render(&sample));
        }
        let wait = if failing.is_some() { backoff } else { interval };
        let deadline = t0 + wait;
        // Domain events (a crashed QEMU) are handled as they come.
        while !signals::stop_requested() && Instant::now() < deadline {
            vms.wait(
                &etcd,
                deadline.min(Instant::now() + Duration::from_millis(50)),
            );
        }
    }
    drop(vms);
    if agent.lease != 0 {
        // Presence and leadership go at once; the lockspace still decides
        // whether this host's VMs may run elsewhere.
        let _ = etcd.revoke(agent.lease);
    }
    log::info!("vmlease-ha: stopped");
    Ok(())
}
