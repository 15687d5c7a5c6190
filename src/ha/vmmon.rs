//! The driver of VM-level failure handling (decisions in `vmwatch.rs`):
//!
//! - libvirt's domain events from a long-running `virsh event --loop
//!   --all` child (event-driven: a dead QEMU is seen at once; restarted
//!   when libvirtd drops the connection). A crashed HA VM is restarted
//!   here at once with `virsh start` (the lock plugin takes its leases as
//!   for any start); when that fails its record becomes `crashed` and the
//!   controller goes on elsewhere (decide.rs). After `crash_restarts`
//!   restarts within `crash_window`, a crash loop: recovery-failed.
//! - the guest heartbeat: `guest-ping` through `virsh qemu-agent-command`
//!   (spawned, never waited for in the loop), `virsh reset` after the
//!   VM's timeout of silence, armed at the agent's first answer after
//!   each start, reset, reboot or resume (vmwatch.rs).
//!
//! Every action is an event (`events.rs`), written to etcd by this host
//! itself (leader or not) and handed to its hooks. Nothing here runs while
//! the host is not protected: a fencing host's dead QEMUs are the host
//! recovery's.
//!
//! Here: the monitor, its loop (`wait`) and its events. The event stream
//! is in `stream.rs`, the crash handling in `crash.rs`, the heartbeats in
//! `heartbeat.rs`.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::controller::wall_ms;
use super::definitions::Definitions;
use super::etcd::Etcd;
use super::event_store::EventStore;
use super::events::Event;
use super::hooks::Hooks;
use super::libvirt_reader::LibvirtReader;
use super::policy::{self, DomainInfo, Restart};
use super::virsh;
use super::vmwatch::{self, CrashHistory, Heartbeats};
use crate::config::{Config, HaConfig};

mod crash;
mod heartbeat;
mod stream;

/// How often the heartbeat VMs are looked up again (besides start events).
const SCAN_MS: u128 = 5_000;
/// One ping per VM at most this often.
const PING_EVERY: Duration = Duration::from_millis(1_000);
/// Wait before reconnecting the event stream.
const RECONNECT: Duration = Duration::from_millis(1_000);

enum Msg {
    Line(String),
    /// The `virsh event` child of this generation ended.
    Eof(u32),
}

struct Ping {
    child: Child,
    sent: Instant,
    limit: Duration,
}

pub struct VmMonitor {
    cfg: Config,
    ha: HaConfig,
    host: String,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    stream: Option<(Child, u32)>,
    generation: u32,
    /// The last stream ended at once (libvirtd down): reconnect quietly.
    quiet: bool,
    connected_at: Instant,
    next_connect: Instant,
    crashes: CrashHistory,
    /// Crash loops given up on (cleared when started again).
    gave_up: BTreeSet<String>,
    hb: Heartbeats,
    pings: BTreeMap<String, Ping>,
    last_ping: BTreeMap<String, Instant>,
    /// Heartbeat VMs whose last ping failed, and those that answered since
    /// watched: only the changes are logged.
    silent: BTreeSet<String>,
    answering: BTreeSet<String>,
    /// The UUIDs of the heartbeat VMs (for their events).
    uuids: BTreeMap<String, String>,
    scanned: Option<Instant>,
    /// libvirt's running domains, read on a thread of its own.
    libvirt: Arc<LibvirtReader>,
    /// The scan's parsed definitions of running domains.
    defs: Definitions,
    events: EventStore,
    hooks: Hooks,
    /// Events of the actions taken, to write to etcd.
    pending: Vec<Event>,
}

impl VmMonitor {
    /// Events this monitor wrote, by kind (the metrics).
    pub fn events_written(&self) -> &std::collections::BTreeMap<String, u64> {
        &self.events.written
    }

    pub fn new(cfg: Config, ha: HaConfig, host: String, libvirt: Arc<LibvirtReader>) -> VmMonitor {
        let (tx, rx) = channel();
        let events = EventStore::new(&ha.prefix, ha.event_ttl, ha.max_events as usize);
        let hooks = match &ha.hooks_dir {
            Some(d) => Hooks::start(d.clone(), Duration::from_millis(ha.hook_timeout)),
            None => Hooks::none(),
        };
        VmMonitor {
            cfg,
            ha,
            host,
            tx,
            rx,
            stream: None,
            generation: 0,
            quiet: false,
            connected_at: Instant::now(),
            next_connect: Instant::now(),
            crashes: CrashHistory::default(),
            gave_up: BTreeSet::new(),
            hb: Heartbeats::default(),
            pings: BTreeMap::new(),
            last_ping: BTreeMap::new(),
            silent: BTreeSet::new(),
            answering: BTreeSet::new(),
            uuids: BTreeMap::new(),
            scanned: None,
            libvirt,
            defs: Definitions::default(),
            events,
            hooks,
            pending: Vec::new(),
        }
    }

    /// Every action is an event: logged now, written to etcd (and handed
    /// to the hooks) after the action, so that an etcd slow or down never
    /// delays a restart.
    fn event(&mut self, kind: &str, name: &str, uuid: &str, reason: String) {
        let e = Event::vm(kind, wall_ms(), &self.host, uuid, name, reason);
        log::warn!("vmlease-ha: event {}", e.line());
        self.pending.push(e);
    }

    /// Writes the events of the actions taken (this host's own, leader or
    /// not); one that cannot be written is logged (it was logged already).
    fn flush(&mut self, etcd: &Etcd) {
        for e in std::mem::take(&mut self.pending) {
            match self.events.write_own(etcd, &self.host, &e) {
                Ok(true) => self.hooks.notify(&e),
                Ok(false) => log::error!("vmlease-ha: no free key for the event {}", e.line()),
                Err(err) => log::error!("vmlease-ha: event not stored ({err}): {}", e.line()),
            }
        }
    }

    /// The UUID of domain `name` ("" when libvirt does not say).
    fn uuid_of(&self, name: &str) -> String {
        virsh::definition(name)
            .ok()
            .and_then(|x| policy::parse(&x).ok())
            .map(|i| i.uuid)
            .unwrap_or_default()
    }

    /// Waits until `deadline` or the first domain events, whichever is
    /// first; handles them (and the heartbeats) before returning.
    pub fn wait(&mut self, etcd: &Etcd, deadline: Instant) {
        self.connect();
        self.heartbeats();
        self.flush(etcd);
        let now = Instant::now();
        let first = match self
            .rx
            .recv_timeout(deadline.saturating_duration_since(now))
        {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => return,
            Err(RecvTimeoutError::Disconnected) => unreachable!("the monitor holds a sender"),
        };
        let mut msgs = vec![first];
        while let Ok(m) = self.rx.try_recv() {
            msgs.push(m);
        }
        for m in msgs {
            match m {
                Msg::Line(l) => {
                    if let Some(ev) = vmwatch::parse_event(&l) {
                        self.handle(etcd, ev);
                    }
                }
                Msg::Eof(gen) => {
                    if let Some((mut c, g)) = self.stream.take() {
                        if g == gen {
                            let _ = c.kill();
                            let _ = c.wait();
                            let was_quiet = self.quiet;
                            self.quiet = self.connected_at.elapsed() < Duration::from_secs(5);
                            if !was_quiet {
                                log::error!(
                                    "vmlease-ha: libvirt's event stream ended; reconnecting \
                                     every {} ms (crashes in between are not seen)",
                                    RECONNECT.as_millis()
                                );
                            }
                        } else {
                            self.stream = Some((c, g));
                        }
                    }
                }
            }
        }
        self.flush(etcd);
    }

    /// The domain's policy (HA-managed, restart="always"), or `None`.
    fn managed(&self, name: &str) -> Option<(DomainInfo, String)> {
        let xml = virsh::definition(name).ok()?;
        let info = policy::parse(&xml).ok()?;
        restarts_always(&info).then_some((info, xml))
    }

    fn protected(&self) -> std::result::Result<(), String> {
        crate::status::protected_status(&self.cfg)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// A domain the VM monitor looks after: HA-managed with restart="always".
fn restarts_always(info: &DomainInfo) -> bool {
    info.policy
        .as_ref()
        .is_some_and(|p| p.restart == Restart::Always)
}

impl Drop for VmMonitor {
    fn drop(&mut self) {
        if let Some((mut c, _)) = self.stream.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (_, mut p) in std::mem::take(&mut self.pings) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}
