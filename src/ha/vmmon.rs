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
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use super::agent::to_json;
use super::controller::wall_ms;
use super::error::Result;
use super::etcd::{Cmp, Etcd, Op};
use super::event_store::EventStore;
use super::events::{kind, Event};
use super::hooks::Hooks;
use super::model::{self, RecState, Recovery, VmRecord, VmState};
use super::policy::{self, DomainInfo, Restart};
use super::virsh;
use super::vmwatch::{
    self, CrashHistory, CrashLimits, CrashStep, DomainEvent, EventKind, Heartbeat, Heartbeats,
    Meaning,
};
use crate::clock::boottime_ms;
use crate::config::{Config, HaConfig};

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

    pub fn new(cfg: Config, ha: HaConfig, host: String) -> VmMonitor {
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

    /// Starts the `virsh event` child when there is none.
    fn connect(&mut self) {
        if self.stream.is_some() || Instant::now() < self.next_connect {
            return;
        }
        self.next_connect = Instant::now() + RECONNECT;
        let child = Command::new("virsh")
            .args(["-q", "event", "--loop", "--all"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                log::error!("vmlease-ha: cannot run virsh event: {e}");
                return;
            }
        };
        self.generation += 1;
        let gen = self.generation;
        let out = child.stdout.take().expect("piped");
        let tx = self.tx.clone();
        let spawned = std::thread::Builder::new()
            .name("virsh-event".into())
            .spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(Msg::Line(line)).is_err() {
                        return;
                    }
                }
                let _ = tx.send(Msg::Eof(gen));
            });
        if let Err(e) = spawned {
            log::error!("vmlease-ha: cannot start the event reader: {e}");
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        if !self.quiet {
            log::info!("vmlease-ha: watching libvirt's domain events");
        }
        self.connected_at = Instant::now();
        self.stream = Some((child, gen));
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
        (info.policy?.restart == Restart::Always).then_some((info, xml))
    }

    fn protected(&self) -> std::result::Result<(), String> {
        crate::status::protected_status(&self.cfg)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn handle(&mut self, etcd: &Etcd, ev: DomainEvent) {
        let d = ev.domain.as_str();
        let (event, detail) = match &ev.kind {
            EventKind::Watchdog { action } => {
                let u = self.uuid_of(d);
                self.event(
                    kind::GUEST_FAILED,
                    d,
                    &u,
                    format!("its <watchdog> device fired; QEMU's action: {action}"),
                );
                return;
            }
            EventKind::Other { name, .. } => {
                if name == "reboot" {
                    // The guest reboots (by itself, or our reset): its
                    // agent is silent until it is up again.
                    self.disarm(d);
                }
                return;
            }
            EventKind::Lifecycle { event, detail } => (event.as_str(), detail.as_str()),
        };
        if event == "Suspended" || event == "Resumed" {
            // A paused guest cannot answer; after a resume it is armed
            // again at its first answer.
            self.disarm(d);
        }
        match vmwatch::meaning(event, detail) {
            Meaning::Nothing => {}
            Meaning::Started => {
                self.scanned = None;
                self.disarm(d);
                if let Some((info, _)) = self.managed(d) {
                    if self.gave_up.remove(&info.uuid) {
                        self.crashes.forget(&info.uuid);
                    }
                }
            }
            Meaning::GuestCrashed(why) => {
                if let Some((info, _)) = self.managed(d) {
                    self.event(
                        kind::GUEST_FAILED,
                        d,
                        &info.uuid,
                        format!("the guest crashed ({why}); its <on_crash> action follows"),
                    );
                }
            }
            Meaning::StoppedOnPurpose(why) => {
                self.scanned = None;
                if self.managed(d).is_some() {
                    log::warn!(
                        "vmlease-ha: '{d}' stopped on {} on purpose (libvirt: Stopped {why}): \
                         not restarted",
                        self.host
                    );
                }
            }
            Meaning::Crash | Meaning::CrashIfReasonSaysSo => {
                self.scanned = None;
                let reason = virsh::domstate_reason(d).unwrap_or_default();
                if matches!(
                    vmwatch::meaning(event, detail),
                    Meaning::CrashIfReasonSaysSo
                ) && !vmwatch::reason_is_crash(&reason)
                {
                    log::info!("vmlease-ha: '{d}' stopped ({reason}): not a crash");
                    return;
                }
                if let Some((info, xml)) = self.managed(d) {
                    self.crashed(etcd, &info, &xml, &format!("{event} {detail}, {reason}"));
                }
            }
        }
    }

    /// `d` (re)boots or pauses: its heartbeat waits for the agent's next
    /// answer to a ping sent from now on.
    fn disarm(&mut self, d: &str) {
        self.hb.restart(d, boottime_ms());
        if let Some(mut p) = self.pings.remove(d) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        self.answering.remove(d);
    }

    /// An HA VM's QEMU died on this host.
    fn crashed(&mut self, etcd: &Etcd, info: &DomainInfo, xml: &str, how: &str) {
        let (name, host) = (info.name.as_str(), self.host.clone());
        if let Err(why) = self.protected() {
            log::warn!(
                "vmlease-ha: '{name}' died on {host} ({how}) while the host is not \
                 protected ({why}): left to the host recovery"
            );
            return;
        }
        let lim = CrashLimits {
            max_restarts: self.ha.crash_restarts,
            window_ms: self.ha.crash_window,
        };
        let window = crate::config::secs(lim.window_ms);
        match self.crashes.on_crash(&info.uuid, boottime_ms(), lim) {
            CrashStep::Restart { n } => {
                self.event(
                    kind::VM_CRASHED,
                    name,
                    &info.uuid,
                    format!(
                        "its QEMU died (libvirt: {how}): restarting it here, restart {n} of at \
                         most {} in {window}",
                        lim.max_restarts
                    ),
                );
                let t0 = Instant::now();
                match virsh::start(name) {
                    Ok(()) => self.event(
                        kind::VM_RESTARTED,
                        name,
                        &info.uuid,
                        format!(
                            "running again here {} ms after its QEMU died",
                            t0.elapsed().as_millis()
                        ),
                    ),
                    Err(e) => {
                        // The controller's attempt-failed event follows.
                        log::error!(
                            "vmlease-ha: the restart of '{name}' on {host} failed: {e}; \
                             recovering it elsewhere"
                        );
                        if let Err(e) = self.mark_crashed(etcd, info, xml) {
                            log::error!("vmlease-ha: {e}");
                        }
                    }
                }
            }
            CrashStep::GiveUp { n } => {
                self.gave_up.insert(info.uuid.clone());
                let why = format!(
                    "crash loop: its QEMU died again on {host} after {n} restart(s) within {window}"
                );
                self.event(
                    kind::RECOVERY_FAILED,
                    name,
                    &info.uuid,
                    format!("{why}; left to the operator"),
                );
                let r = Recovery {
                    uuid: info.uuid.clone(),
                    name: name.to_string(),
                    from: host.clone(),
                    state: RecState::RecoveryFailed,
                    attempt: n,
                    target: None,
                    tried: vec![host],
                    since_ms: wall_ms(),
                    last_error: why,
                };
                let key = model::recovery_key(&self.ha.prefix, &info.uuid);
                let written = etcd
                    .txn(
                        &format!("write {key}"),
                        &[Cmp::Absent(&key)],
                        &[Op::Put {
                            key: &key,
                            value: &to_json(&r),
                            lease: 0,
                        }],
                    )
                    .and_then(|_| self.mark_crashed(etcd, info, xml));
                if let Err(e) = written {
                    log::error!("vmlease-ha: {e}");
                }
            }
        }
    }

    /// Its record says `crashed` on this host: the controller takes over.
    fn mark_crashed(&self, etcd: &Etcd, info: &DomainInfo, xml: &str) -> Result<()> {
        let key = model::vm_key(&self.ha.prefix, &info.uuid);
        let cur = etcd.get(&key)?;
        let rev = cur.as_ref().map(|kv| kv.mod_revision);
        let mut rec = cur
            .and_then(|kv| serde_json::from_slice::<VmRecord>(&kv.value).ok())
            .unwrap_or_else(|| VmRecord {
                uuid: info.uuid.clone(),
                name: info.name.clone(),
                host: self.host.clone(),
                restart: Restart::Always,
                priority: info.policy.map(|p| p.priority).unwrap_or(0),
                memory_kib: info.memory_kib,
                vcpus: info.vcpus,
                state: VmState::Running,
                xml: xml.to_string(),
            });
        if rec.host != self.host {
            return Ok(()); // it runs elsewhere by now
        }
        rec.state = VmState::Crashed;
        let cmp = match rev {
            Some(r) => Cmp::ModRevision(&key, r),
            None => Cmp::Absent(&key),
        };
        etcd.txn(
            &format!("mark {key} crashed"),
            &[cmp],
            &[Op::Put {
                key: &key,
                value: &to_json(&rec),
                lease: 0,
            }],
        )?;
        Ok(())
    }

    /// The guest heartbeats: which VMs, their pings, and the resets due.
    fn heartbeats(&mut self) {
        let now = Instant::now();
        if self
            .scanned
            .is_none_or(|t| now.duration_since(t).as_millis() >= SCAN_MS)
        {
            self.scanned = Some(now);
            let mut watch = BTreeMap::new();
            if let Ok(running) = virsh::running() {
                for d in running {
                    let Some((info, xml)) = self.managed(&d.name) else {
                        continue;
                    };
                    match vmwatch::heartbeat(&xml) {
                        Ok(Some(hb)) => {
                            self.uuids.insert(d.name.clone(), info.uuid);
                            watch.insert(d.name, hb);
                        }
                        Ok(None) => {}
                        Err(e) => log::error!("vmlease-ha: '{}': {e}; no heartbeat", d.name),
                    }
                }
            }
            self.hb.watch(&watch, boottime_ms());
            self.pings.retain(|n, _| watch.contains_key(n));
            self.silent.retain(|n| watch.contains_key(n));
            self.uuids.retain(|n, _| watch.contains_key(n));
            self.answering.retain(|n| watch.contains_key(n));
        }
        // Answers (or not) of the pings under way.
        let mut done = Vec::new();
        for (name, p) in &mut self.pings {
            let took = p.sent.elapsed().as_millis();
            match p.child.try_wait() {
                Ok(Some(st)) if st.success() => done.push((name.clone(), Ok(took))),
                Ok(Some(st)) => {
                    let mut why = String::new();
                    if let Some(mut e) = p.child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut why);
                    }
                    let why = why.trim().trim_start_matches("error: ").replace('\n', "; ");
                    done.push((name.clone(), Err(format!("{st}, after {took} ms: {why}"))));
                }
                Ok(None) if p.sent.elapsed() > p.limit => {
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                    done.push((name.clone(), Err(format!("no answer in {took} ms"))));
                }
                Ok(None) => {}
                Err(e) => done.push((name.clone(), Err(e.to_string()))),
            }
        }
        for (name, r) in done {
            self.pings.remove(&name);
            let was_silent = self.silent.contains(&name);
            match r {
                Ok(took) => {
                    self.hb.answered(&name, boottime_ms());
                    if self.silent.remove(&name) || !self.answering.contains(&name) {
                        log::info!(
                            "vmlease-ha: the guest agent of '{name}' answers (in {took} ms)"
                        );
                    }
                    self.answering.insert(name);
                }
                Err(why) if !was_silent => {
                    log::info!(
                        "vmlease-ha: the guest agent of '{name}' does not answer guest-ping: {why}"
                    );
                    self.silent.insert(name);
                }
                Err(_) => {}
            }
        }
        if self.hb.watched().next().is_none() || self.protected().is_err() {
            return;
        }
        let watched: Vec<(String, Heartbeat)> =
            self.hb.watched().map(|(n, h)| (n.clone(), h)).collect();
        for (name, hb) in watched {
            let recent = self
                .last_ping
                .get(&name)
                .is_some_and(|t| t.elapsed() < PING_EVERY);
            if self.pings.contains_key(&name) || recent {
                continue;
            }
            let secs = vmwatch::ping_timeout_s(hb);
            match virsh::spawn_guest_ping(&name, secs) {
                Ok(child) => {
                    self.last_ping.insert(name.clone(), Instant::now());
                    self.pings.insert(
                        name,
                        Ping {
                            child,
                            sent: Instant::now(),
                            limit: Duration::from_secs(secs + 2),
                        },
                    );
                }
                Err(e) => log::error!("vmlease-ha: {e}"),
            }
        }
        for (name, up) in self.hb.slow_boots(boottime_ms()) {
            log::info!(
                "vmlease-ha: the guest agent of '{name}' has not answered since its (re)start \
                 {up} ms ago; its heartbeat is armed at its first answer"
            );
        }
        for (name, silent) in self.hb.due(boottime_ms()) {
            let timeout = self
                .hb
                .watched()
                .find(|(n, _)| **n == name)
                .map(|(_, h)| h.timeout_ms)
                .unwrap_or(0);
            if let Some(mut p) = self.pings.remove(&name) {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
            self.answering.remove(&name);
            match virsh::reset(&name) {
                Ok(()) => {
                    let u = self.uuids.get(&name).cloned().unwrap_or_default();
                    self.event(
                        kind::VM_RESET,
                        &name,
                        &u,
                        format!(
                            "its guest agent has not answered guest-ping for {silent} ms \
                             (heartbeat timeout {timeout} ms): reset (same QEMU)"
                        ),
                    )
                }
                Err(e) => log::error!(
                    "vmlease-ha: the reset of '{name}' on {} after {silent} ms without \
                     heartbeat failed: {e}",
                    self.host
                ),
            }
        }
    }
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
