//! `vmlease-ha`'s main loop: the agent and the controller candidate, one
//! step every `[ha] interval`. Each step reads the local state (the
//! watchdog's status, libvirt) and publishes what changed; it reads etcd
//! and decides only when etcd changed (a watch of the prefix, watch.rs),
//! something local changed, a part waits for time, or at the periodic
//! resync (schedule.rs). A change reported by the watch ends the wait for
//! the next step at once. etcd unreachable: log once, retry with backoff
//! (up to the lease TTL), never exit; running VMs are untouched.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::agent::Agent;
use super::controller::Controller;
use super::error::Error;
use super::etcd::Etcd;
use super::libvirt_reader::LibvirtReader;
use super::maintenance_agent::MaintenanceAgent;
use super::metrics::{render, Sample};
use super::metrics_http::{self, Text};
use super::schedule::{Schedule, Wake};
use super::vmmon::VmMonitor;
use super::watch::Watcher;
use crate::config;
use crate::daemon::signals;

/// The shortest time between two steps when etcd changes.
const MIN_GAP: Duration = Duration::from_millis(100);

const USAGE: &str = "usage: vmlease-ha [--config FILE] [--log-boottime]";

pub fn main(argv: Vec<String>) -> i32 {
    if let Some(code) = crate::rados::worker::run_if_asked(&argv) {
        return code;
    }
    let mut path = PathBuf::from(config::DEFAULT_PATH);
    let mut boottime = false;
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
            "--log-boottime" => boottime = true,
            "--help" | "-h" => {
                println!(
                    "{USAGE}\nThe recovery agent and controller (see docs/ha.md).\n  \
                     --log-boottime  start each line on stderr with CLOCK_BOOTTIME in ms"
                );
                return 0;
            }
            other => {
                eprintln!("vmlease-ha: unknown argument '{other}'\n{USAGE}");
                return 2;
            }
        }
    }
    crate::logging::init(true, log::LevelFilter::Info);
    if boottime {
        crate::logging::set_boottime_prefix();
    }
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
    let libvirt = Arc::new(LibvirtReader::start(
        Duration::from_millis(ha.interval),
        Duration::from_millis(ha.host_ttl),
    )?);
    let mut agent = Agent::new(cfg.clone(), ha.clone(), Arc::clone(&libvirt))?;
    let mut maint = MaintenanceAgent::new(cfg.clone(), ha.clone(), agent.name.clone());
    let mut ctl = Controller::new(cfg.clone(), ha.clone(), agent.name.clone());
    let mut vms = VmMonitor::new(cfg, ha.clone(), agent.name.clone(), libvirt);
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
    let watcher = Watcher::start(&ha);
    let mut sched = Schedule::new(ha.interval, ha.host_ttl);
    let origin = Instant::now();
    let ms = |t: Instant| t.duration_since(origin).as_millis() as u64;
    // What the last read of etcd was made with.
    let mut read_with = (false, 0i64);
    let mut next_local = Instant::now();
    while !signals::stop_requested() {
        let t0 = Instant::now();
        // The local state (libvirt, the status file) every `interval`; a
        // step woken early by a change in etcd only reads etcd.
        let local = t0 >= next_local;
        if local {
            next_local = t0 + interval;
        }
        let step = if sched.keepalive_due(ms(t0)) {
            agent.presence(&etcd).map(|()| sched.kept_alive(ms(t0)))
        } else {
            Ok(())
        };
        let mut read_rev = None;
        let step = step.and_then(|()| {
            let mut etcd_changed = watcher.take_changed();
            if !etcd_changed && sched.resync_due(ms(t0)) {
                etcd_changed = sched.moved(ms(t0), etcd.revision(&ha.prefix)?);
            }
            // The local state first: whether this host is protected.
            if local {
                agent.publish(&etcd, etcd_changed)?;
            } else if etcd_changed {
                agent.saw_change();
            }
            let wake = Wake {
                etcd_changed,
                local_changed: read_with != (agent.protected, agent.lease),
                busy: ctl.busy || maint.busy() || agent.starting(),
                failing: failing.is_some(),
            };
            if !sched.read_due(wake) {
                return Ok(());
            }
            let rev = etcd.revision(&ha.prefix)?;
            ctl.tick(&etcd, agent.lease, agent.protected)?;
            agent.execute(&etcd)?;
            maint.step(&etcd, agent.lease, agent.protected, local)?;
            read_rev = Some(rev);
            Ok(())
        });
        if let Some(rev) = read_rev {
            sched.read_done(ms(t0), rev);
            read_with = (agent.protected, agent.lease);
        }
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
                    // A stream through a member that was cut off may hang
                    // without breaking: a new one, on a member that answers.
                    watcher.restart();
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
        if failing.is_some() {
            next_local = t0 + backoff;
        }
        let deadline = next_local;
        // A change in etcd or a finished start ends the wait (not before
        // MIN_GAP: a burst of changes is read once).
        let early = t0 + MIN_GAP;
        // Domain events (a crashed QEMU) are handled as they come.
        while !signals::stop_requested() && Instant::now() < deadline {
            if failing.is_none()
                && Instant::now() >= early
                && (watcher.changed() || agent.start_finished())
            {
                break;
            }
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
