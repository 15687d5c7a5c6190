//! The simulated world: an event queue on one real (simulated) time line,
//! hosts with their own drifting clocks, the shared store and the storage
//! operations in flight, and the dispatch of every event.
//!
//! A storage operation (a [`Call`]) is issued by a host, waits for its
//! record lock, runs the real engine on a [`SimIo`] at the instant it got
//! the lock, and lands (its writes are applied, its lock is released) when
//! its latency has passed - or later, if the host's storage link stalls
//! meanwhile, or never, if the client is evicted first. The caller sees
//! the result when it lands, or a timeout at its deadline.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use vmlease::config::Config;
use vmlease::daemon::fence::Cause;
use vmlease::hosts::{Slot, SLOT_SIZE};
use vmlease::process::ProcId;
use vmlease::registry::Entry as RegEntry;
use vmlease::resource::Resource;
use vmlease::status::Status;

use crate::calls::{Call, Job, LockCell, Outcome, Owner};
use crate::check::Violation;
use crate::daemon::Daemon;
use crate::libvirt::{Op, Qemu};
use crate::mutation::Mutation;
use crate::params::{Params, Profile, Us, MS};
use crate::rng::Rng;
use crate::schedule::{Fault, Schedule};
use crate::store::StoreState;

#[derive(Debug)]
pub enum Ev {
    Fault(usize),
    FaultEnd(usize),
    Boot(u16),
    DaemonSpawn {
        h: u16,
        boot: u32,
    },
    Tick {
        h: u16,
        gen: u64,
        seq: u64,
    },
    Probe {
        h: u16,
        gen: u64,
    },
    ProbeDone {
        h: u16,
        gen: u64,
        at_ms: u64,
        up: bool,
    },
    ClaimPoll {
        h: u16,
        gen: u64,
    },
    /// A clone's libvirtd starts and autostarts its domains.
    Autostart {
        h: u16,
        boot: u32,
    },
    WdCheck(u16),
    CallRun(u64),
    CallLand(u64),
    CallTimeout(u64),
    CallEvict(u64),
    CallFail(u64),
    LockWaitTimeout(u64),
    LockFree {
        key: String,
        call: u64,
    },
    Deliver {
        owner: Owner,
        out: Outcome,
    },
    QemuWrite(usize),
    WriteLand {
        q: usize,
        seq: u64,
    },
    QemuReap(usize),
    OpStep(u64),
    Controller,
    Operator,
}

struct Queued {
    t: Us,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        self.t == o.t && self.seq == o.seq
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> Ordering {
        // BinaryHeap is a max-heap: the earliest event is the greatest.
        (o.t, o.seq).cmp(&(self.t, self.seq))
    }
}

/// One hypervisor host (a machine).
pub struct Host {
    /// Its index in the world (h1, h2, ...): machines are told apart by it.
    pub id: u16,
    /// The host id its config gives it: its index, except for a clone
    /// (`Fault::Clone`), which has the id of the host it was cloned from.
    pub host_id: u16,
    /// A clone of that host (not managed by the controller or the
    /// operator: nobody knows it is there).
    pub clone_of: Option<u16>,
    /// Powered off for good (a clone that was found).
    pub retired: bool,
    /// The boot whose libvirtd has started (it autostarts a clone's
    /// domains once).
    pub libvirtd_boot: u32,
    pub name: String,
    pub cfg: Config,
    pub boot_no: u32,
    pub boot_id: String,
    pub up: bool,
    /// Real time of this boot; the host's CLOCK_BOOTTIME counts from it.
    pub boot_real: Us,
    pub clock_base_ms: u64,
    pub drift_ppm: i64,
    pub wd_drift_ppm: i64,
    pub frozen_until: Us,
    /// The hardware watchdog: armed since a daemon opened it, fires at
    /// `wd_expires` unless petted.
    pub wd_armed: bool,
    pub wd_expires: Us,
    pub wd_check_at: Us,
    pub daemon: Option<Daemon>,
    /// Its daemon was SIGKILLed and not restarted while no watchdog was
    /// armed (before the daemon joined, e.g. in its claim wait): nothing
    /// starts a daemon here again until an operator does, so no VM can
    /// run here. Cleared when a daemon starts.
    pub abandoned: bool,
    pub daemon_gen: u64,
    pub daemon_hung_until: Us,
    /// libvirtd's lease acquires issued before this hang until then
    /// (`Fault::AcquireStall`).
    pub acquire_stall_until: Us,
    /// `<state_dir>` (tmpfs: gone at reboot).
    pub status: Option<Status>,
    pub registry: BTreeMap<Pk, RegEntry>,
    /// Bumped at every change of the registry (its directory's mtime).
    pub registry_version: u64,
    pub marker: Option<Cause>,
    pub clear_request: bool,
    pub next_pid: u32,
    /// libvirt's active domains: vm -> QEMU.
    pub domains: BTreeMap<usize, usize>,
    /// When this boot's liveness record last landed in the store.
    pub last_landed: Us,
    pub wall_skew_s: i64,
}

impl Host {
    /// CLOCK_BOOTTIME of this host at real time `t`, in ms.
    pub fn local_ms(&self, t: Us) -> u64 {
        let el = t.saturating_sub(self.boot_real) as u128;
        self.clock_base_ms + (el * (1_000_000i64 + self.drift_ppm) as u128 / 1_000_000_000) as u64
    }

    /// The real duration of `ms` on this host's clock.
    pub fn real(&self, ms: u64) -> Us {
        let r = ms as u128 * 1_000_000_000 / (1_000_000i64 + self.drift_ppm) as u128;
        r as Us + 1
    }

    pub fn wd_real(&self, ms: u64) -> Us {
        let r = ms as u128 * 1_000_000_000 / (1_000_000i64 + self.wd_drift_ppm) as u128;
        r as Us
    }

    pub fn frozen(&self, now: Us) -> bool {
        self.frozen_until > now
    }
}

/// One VM the HA controller wants running.
pub struct Vm {
    pub name: String,
    pub uuid: String,
    pub resources: Vec<Resource>,
    /// `resources[i].key()`, computed once.
    pub keys: Vec<String>,
    /// The disk as the checker sees it.
    pub disk_gen: u64,
    /// The QEMU that last began writing the disk, and when.
    pub epoch_owner: Option<usize>,
    pub epoch_start: Us,
    /// A controller or chaos operation is in progress on this VM.
    pub busy: Option<u64>,
}

/// A VM's memory and the disk state it expects (a migrated or resumed
/// QEMU continues its lineage).
pub struct Lineage {
    pub expect_gen: u64,
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub events: u64,
    pub acquires_ok: u64,
    pub acquires_refused: u64,
    pub takeovers: u64,
    pub fences: u64,
    pub resets: u64,
    pub qemu_writes: u64,
    pub recovery_ms: u64,
    /// 1 when liveness was not promised: no host was left that could
    /// start a daemon (`Host::abandoned`).
    pub unpromised: u64,
}

pub struct World {
    pub p: Params,
    pub sched: Schedule,
    pub mutation: Mutation,
    pub now: Us,
    seq: u64,
    queue: BinaryHeap<Queued>,
    pub rng: Rng,
    pub io_rng: Rng,
    pub hosts: Vec<Host>,
    pub vms: Vec<Vm>,
    pub qemus: Vec<Qemu>,
    pub lineages: Vec<Lineage>,
    pub store: StoreState,
    pub calls: BTreeMap<u64, Call>,
    pub locks: BTreeMap<String, LockCell>,
    pub ops: BTreeMap<u64, Op>,
    next_id: u64,
    pub tracing: bool,
    pub trace: Vec<String>,
    pub violation: Option<Violation>,
    /// Scenario tests: record every violation and go on.
    pub keep_going: bool,
    pub violations: Vec<Violation>,
    pub heal: Us,
    pub end: Us,
    pub stats: Stats,
    decode_cache: HashMap<(usize, u64), Slot>,
    /// When a liveness record of each boot last landed.
    pub landed: HashMap<String, Us>,
}

pub const STEP_CAP: u64 = 3_000_000;

/// A process as a map key of the simulated registry.
pub type Pk = (u32, u64);

pub fn pk(p: ProcId) -> Pk {
    (p.pid, p.start)
}

impl World {
    pub fn new(
        seed: u64,
        profile: Profile,
        mutation: Mutation,
        keep: Option<&[usize]>,
        tracing: bool,
    ) -> World {
        let mut root = Rng::new(seed);
        let mut prng = root.fork(1);
        let p = Params::generate(&mut prng, profile);
        let mut srng = root.fork(2);
        let full = Schedule::generate(&mut srng, &p);
        let sched = match keep {
            Some(k) => full.subset(k, &p),
            None => full,
        };
        World::build(seed, p, sched, mutation, tracing, None, true)
    }

    /// A hand-written world (scenario tests): fixed parameters, faults and
    /// boot times; the controller and the operator only if asked.
    pub fn custom(
        seed: u64,
        p: Params,
        faults: Vec<Fault>,
        boot_at: &[Us],
        controller: bool,
        tracing: bool,
    ) -> World {
        World::custom_mutated(
            seed,
            p,
            faults,
            boot_at,
            controller,
            tracing,
            Mutation::None,
        )
    }

    pub fn custom_mutated(
        seed: u64,
        p: Params,
        faults: Vec<Fault>,
        boot_at: &[Us],
        controller: bool,
        tracing: bool,
        mutation: Mutation,
    ) -> World {
        let sched = Schedule::from_faults(faults, &p);
        World::build(seed, p, sched, mutation, tracing, Some(boot_at), controller)
    }

    fn build(
        seed: u64,
        p: Params,
        sched: Schedule,
        mutation: Mutation,
        tracing: bool,
        boot_at: Option<&[Us]>,
        controller: bool,
    ) -> World {
        let mut root = Rng::new(seed);
        let _ = (root.fork(1), root.fork(2));
        let mut rng = root.fork(3);
        let io_rng = root.fork(4);
        let max_hosts = p.hosts + 2;
        let mut hosts = Vec::new();
        // The cluster's hosts, then one machine per clone fault: a copy of
        // the host it was cloned from, with its host id.
        let clones: Vec<(u16, bool)> = sched
            .faults
            .iter()
            .filter_map(|f| match f {
                Fault::Clone { of, same_name, .. } => Some((*of, *same_name)),
                _ => None,
            })
            .collect();
        let machines = (1..=p.hosts)
            .map(|id| (id, None, true))
            .chain(clones.iter().map(|&(of, same)| (of, Some(of), same)));
        for (id, (host_id, clone_of, same_name)) in (1u16..).zip(machines) {
            let mut cfg = p.cfg.clone();
            cfg.host_id = Some(host_id);
            let name = if same_name {
                format!("host-{host_id}.sim")
            } else {
                format!("host-{id}-clone-of-{host_id}.sim")
            };
            let drift = |rng: &mut Rng| {
                if p.drift_ppm == 0 {
                    0
                } else {
                    rng.range(0, 2 * p.drift_ppm as u64) as i64 - p.drift_ppm
                }
            };
            hosts.push(Host {
                id,
                host_id,
                clone_of,
                retired: false,
                libvirtd_boot: 0,
                name,
                cfg,
                boot_no: 0,
                boot_id: String::new(),
                up: false,
                boot_real: 0,
                clock_base_ms: 0,
                drift_ppm: drift(&mut rng),
                wd_drift_ppm: drift(&mut rng),
                frozen_until: 0,
                wd_armed: false,
                wd_expires: 0,
                wd_check_at: 0,
                daemon: None,
                abandoned: false,
                daemon_gen: 0,
                daemon_hung_until: 0,
                acquire_stall_until: 0,
                status: None,
                registry: BTreeMap::new(),
                registry_version: 0,
                marker: None,
                clear_request: false,
                next_pid: 1000,
                domains: BTreeMap::new(),
                last_landed: 0,
                wall_skew_s: rng.range(0, 7200) as i64 - 3600,
            });
        }
        let vms = (0..p.vms)
            .map(|i| {
                let uuid = format!("5a5a5a5a-0000-4000-8000-{:012x}", i + 1);
                let resources = vec![
                    Resource::domain(&uuid),
                    Resource::disk(&format!("/images/vm{i}.qcow2"), false),
                ];
                Vm {
                    name: format!("vm{i}"),
                    uuid: uuid.clone(),
                    keys: resources.iter().map(|r| r.key()).collect(),
                    resources,
                    disk_gen: 0,
                    epoch_owner: None,
                    epoch_start: 0,
                    busy: None,
                }
            })
            .collect();
        let heal = sched.heal_time(&p);
        let end = heal + p.settle_ms * MS;
        let mut w = World {
            store: StoreState::new(max_hosts),
            p,
            sched,
            mutation,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            rng,
            io_rng,
            hosts,
            vms,
            qemus: Vec::new(),
            lineages: Vec::new(),
            calls: BTreeMap::new(),
            locks: BTreeMap::new(),
            ops: BTreeMap::new(),
            next_id: 1,
            tracing,
            trace: Vec::new(),
            violation: None,
            keep_going: false,
            violations: Vec::new(),
            heal,
            end,
            stats: Stats::default(),
            decode_cache: HashMap::new(),
            landed: HashMap::new(),
        };
        // Clones boot when their fault says.
        for h in 1..=w.p.hosts {
            let t = match boot_at {
                Some(b) => b[h as usize - 1],
                None => w.rng.range(0, 200) * MS,
            };
            w.at(t, Ev::Boot(h));
        }
        for i in 0..w.sched.faults.len() {
            let f = &w.sched.faults[i];
            let (at, dur) = (f.at(), f.dur());
            w.at(at, Ev::Fault(i));
            if dur > 0 {
                w.at(at + dur, Ev::FaultEnd(i));
            }
        }
        if controller {
            w.at(500 * MS, Ev::Controller);
            w.at(700 * MS, Ev::Operator);
        }
        w
    }

    /// Processes every event up to `t` (scenario tests).
    pub fn run_until(&mut self, t: Us) -> Option<Violation> {
        while let Some(q) = self.queue.peek() {
            if q.t > t || self.violation.is_some() {
                break;
            }
            let q = self.queue.pop().unwrap();
            self.now = q.t;
            self.stats.events += 1;
            self.dispatch(q.ev);
        }
        self.now = self.now.max(t);
        self.violation.clone()
    }

    pub fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn at(&mut self, t: Us, ev: Ev) {
        self.seq += 1;
        self.queue.push(Queued {
            t: t.max(self.now),
            seq: self.seq,
            ev,
        });
    }

    pub fn after(&mut self, d: Us, ev: Ev) {
        self.at(self.now + d, ev);
    }

    pub fn host(&self, h: u16) -> &Host {
        &self.hosts[h as usize - 1]
    }

    pub fn host_mut(&mut self, h: u16) -> &mut Host {
        &mut self.hosts[h as usize - 1]
    }

    pub fn local(&self, h: u16) -> u64 {
        self.host(h).local_ms(self.now)
    }

    pub fn log(&mut self, who: &str, text: String) {
        if self.tracing {
            self.trace
                .push(format!("{:>9.3}s {who:<5} {text}", self.now as f64 / 1e6));
        }
    }

    pub fn violate(&mut self, invariant: &'static str, text: String) {
        self.violate_known(invariant, text, None, &[]);
    }

    /// A violation about these hosts (for the known-bug signatures).
    pub fn violate_on(&mut self, invariant: &'static str, text: String, hosts: &[u16]) {
        self.violate_known(invariant, text, None, hosts);
    }

    pub fn violate_known(
        &mut self,
        invariant: &'static str,
        text: String,
        known: Option<&'static str>,
        hosts: &[u16],
    ) {
        if self.keep_going {
            let known = known.or_else(|| self.known_bug(invariant, hosts));
            self.log("CHECK", format!("VIOLATION of {invariant}: {text}"));
            self.violations.push(Violation {
                invariant,
                at: self.now,
                text,
                known,
            });
            return;
        }
        if self.violation.is_none() {
            let known = known.or_else(|| self.known_bug(invariant, hosts));
            self.log(
                "CHECK",
                format!(
                    "VIOLATION of {invariant}{}: {text}",
                    known
                        .map(|k| format!(" (known bug {k})"))
                        .unwrap_or_default()
                ),
            );
            self.violation = Some(Violation {
                invariant,
                at: self.now,
                text,
                known,
            });
        }
    }

    /// Runs the schedule to its end; returns the first violation.
    pub fn run(&mut self) -> Option<Violation> {
        while let Some(q) = self.queue.pop() {
            if q.t > self.end {
                break;
            }
            self.now = q.t;
            self.stats.events += 1;
            if self.stats.events > STEP_CAP {
                self.violate("simulator", "step cap reached (an event loop?)".into());
                break;
            }
            let controller = matches!(q.ev, Ev::Controller);
            self.dispatch(q.ev);
            if self.violation.is_some() {
                return self.violation.clone();
            }
            if controller && self.quiescent() {
                // Recovered and steady: nothing can change any more.
                break;
            }
        }
        self.now = self.now.max(self.heal);
        for h in 1..=self.hosts.len() as u16 {
            self.check_intents(h);
        }
        self.check_liveness();
        self.violation.clone()
    }

    /// After the faults healed (and D + F more, for late effects): every VM
    /// runs, every host is up and renewing, nothing is in progress.
    fn quiescent(&self) -> bool {
        let t = self.p.cfg.timing;
        if self.now < self.heal + (t.host_dead_timeout + t.renew_fail_timeout) * MS {
            return false;
        }
        if !self.ops.is_empty()
            || self
                .qemus
                .iter()
                .any(|q| q.state == crate::libvirt::QState::Dying)
            || (0..self.vms.len()).any(|vm| self.running_qemu_of(vm).is_none())
        {
            return false;
        }
        let fresh = 2 * t.renew_interval * MS;
        let hosts_ok = self.hosts.iter().all(|h| {
            let renewing = h.up
                && !h.frozen(self.now)
                && h.daemon.as_ref().is_some_and(|d| {
                    d.phase == crate::daemon::DPhase::Running
                        && d.jobs.is_empty()
                        && d.job.is_none()
                })
                && h.last_landed + fresh >= self.now;
            renewing || h.retired
        });
        hosts_ok
            && self.calls.values().all(|c| {
                matches!(
                    c.job,
                    Job::Renew { .. }
                        | Job::RenewWrite { .. }
                        | Job::OldRenew(_)
                        | Job::OldRenewRead
                ) && !c.has_lock
            })
    }

    /// Host-side events wait while their host is frozen, daemon events
    /// while the daemon is stopped.
    fn deferred(&self, ev: &Ev) -> Option<Us> {
        let (h, daemon) = match ev {
            Ev::Tick { h, .. }
            | Ev::Probe { h, .. }
            | Ev::ProbeDone { h, .. }
            | Ev::ClaimPoll { h, .. } => (*h, true),
            Ev::DaemonSpawn { h, .. } | Ev::Autostart { h, .. } => (*h, false),
            Ev::QemuWrite(q) => (self.qemus[*q].host, false),
            Ev::OpStep(id) => (self.ops.get(id)?.host, false),
            Ev::Deliver { owner, .. } => match owner {
                Owner::Daemon { h, .. } => (*h, true),
                Owner::Op(op) => (self.ops.get(op)?.host, false),
            },
            _ => return None,
        };
        let host = self.host(h);
        if host.frozen(self.now) {
            return Some(host.frozen_until);
        }
        if daemon && host.daemon_hung_until > self.now {
            return Some(host.daemon_hung_until);
        }
        None
    }

    fn dispatch(&mut self, ev: Ev) {
        if let Some(t) = self.deferred(&ev) {
            self.at(t, ev);
            return;
        }
        match ev {
            Ev::Fault(i) => self.fault(i),
            Ev::FaultEnd(i) => self.fault_end(i),
            Ev::Boot(h) => self.boot(h),
            Ev::DaemonSpawn { h, boot } => {
                let hs = self.host(h);
                if hs.up && hs.boot_no == boot {
                    match hs.daemon.as_ref().map(|d| d.phase.clone()) {
                        None => self.daemon_spawn(h),
                        // systemd waits for the old one to exit.
                        Some(crate::daemon::DPhase::Stopping) => {
                            self.after(50 * MS, Ev::DaemonSpawn { h, boot })
                        }
                        Some(_) => {}
                    }
                }
            }
            Ev::Tick { h, gen, seq } => self.daemon_tick(h, gen, seq),
            Ev::Probe { h, gen } => self.probe_start(h, gen),
            Ev::ProbeDone { h, gen, at_ms, up } => self.probe_done(h, gen, at_ms, up),
            Ev::ClaimPoll { h, gen } => self.claim_poll(h, gen),
            Ev::Autostart { h, boot } => self.autostart(h, boot),
            Ev::WdCheck(h) => self.wd_check(h),
            Ev::CallRun(id) => self.call_run(id),
            Ev::CallLand(id) => self.call_land(id),
            Ev::CallTimeout(id) => self.call_timeout(id),
            Ev::CallEvict(id) => self.call_evict(id),
            Ev::CallFail(id) => self.call_fail(id),
            Ev::LockWaitTimeout(id) => self.lock_wait_timeout(id),
            Ev::LockFree { key, call } => self.lock_release(&key, call),
            Ev::Deliver { owner, out } => self.deliver(owner, out),
            Ev::QemuWrite(q) => self.qemu_write(q),
            Ev::WriteLand { q, seq } => self.write_land(q, seq),
            Ev::QemuReap(q) => self.qemu_reap(q),
            Ev::OpStep(id) => self.op_step(id),
            Ev::Controller => self.controller(),
            Ev::Operator => self.operator(),
        }
    }

    // ---------------------------------------------------------------
    // Faults.

    fn fault(&mut self, i: usize) {
        let f = self.sched.faults[i].clone();
        self.log("FAULT", format!("{f}"));
        match f {
            Fault::HostCrash { host, .. } => {
                if self.host(host).up {
                    self.reset(host, "power loss");
                }
            }
            Fault::HostFreeze { host, dur, .. } => {
                if self.host(host).up {
                    let until = self.now + dur;
                    let hs = self.host_mut(host);
                    hs.frozen_until = hs.frozen_until.max(until);
                }
            }
            Fault::DaemonKill { host, restart, .. } => self.daemon_kill(host, restart),
            Fault::DaemonHang { host, dur, .. } => {
                if self.host(host).daemon.is_some() && !self.host(host).frozen(self.now) {
                    let until = self.now + dur;
                    self.host_mut(host).daemon_hung_until = until;
                }
            }
            Fault::DaemonRestart { host, .. } => self.daemon_sigterm(host, true),
            Fault::AcquireStall { host, dur, .. } => {
                let until = self.now + dur;
                let hs = self.host_mut(host);
                hs.acquire_stall_until = hs.acquire_stall_until.max(until);
            }
            Fault::QemuExit { vm, .. } => {
                if let Some(q) = self.running_qemu_of(vm) {
                    self.qemu_exit(q, "QEMU exited");
                }
            }
            Fault::QemuStuck { vm, dur, .. } => {
                if let Some(q) = self.any_qemu_of(vm) {
                    let until = self.now + dur;
                    let qm = &mut self.qemus[q];
                    qm.io_stuck_until = qm.io_stuck_until.max(until);
                }
            }
            Fault::Migrate { vm, to, .. } => self.chaos_migrate(vm, to),
            Fault::Pause { vm, dur, .. } => self.chaos_pause(vm, dur),
            Fault::RogueStart { vm, host, .. } => {
                if self.reachable(host) && !self.host(host).domains.contains_key(&vm) {
                    self.start_vm(vm, host, false);
                }
            }
            Fault::Destroy { vm, .. } => {
                if let Some(q) = self.any_qemu_of(vm) {
                    let h = self.qemus[q].host;
                    if self.reachable(h) {
                        self.log(&format!("h{h}"), format!("virsh destroy vm{vm}"));
                        self.kill_qemu(q);
                    }
                }
            }
            Fault::Clone { .. } => {
                let h = self.sched.clone_host(&self.p, i);
                self.boot(h);
            }
            Fault::Blocklist { host, .. } => {
                // The blocklist is committed now (the schedule cuts the
                // host's storage for good); the fencing host reads the
                // fenced host's slot and writes the verdict.
                let i = host as usize - 1;
                let slot = self.store.slots[i].cur.clone();
                if let Some(r) = vmlease::hosts::HostRecord::decode(&slot).ok().flatten() {
                    let v = vmlease::storage_fence::Verdict {
                        host_id: host,
                        host_name: r.host_name.clone(),
                        boot_id: r.boot_id.clone(),
                        incarnation: r.incarnation,
                        counter: r.counter,
                        slot_mono_ms: r.mono_ms,
                        addrs: vec![format!("192.0.2.{host}:0/0")],
                        osdmap_epoch: 1,
                        expire_s: 86_400,
                        wall: 0,
                        writer_host: 0,
                        writer_name: "controller".into(),
                    };
                    self.store.fences.insert(host, v.encode());
                }
            }
            Fault::StorageCut { .. }
            | Fault::SlowIo { .. }
            | Fault::SlowHostTable { .. }
            | Fault::IoErrors { .. }
            | Fault::ClusterFull { .. }
            | Fault::LockspaceReadOnly { .. }
            | Fault::MgmtCut { .. } => {
                // Intervals the storage and probe models consult.
            }
        }
    }

    fn fault_end(&mut self, i: usize) {
        let f = &self.sched.faults[i];
        if self.tracing {
            let s = format!("healed: {f}");
            self.log("FAULT", s);
        }
        if let Fault::Clone { .. } = self.sched.faults[i] {
            let h = self.sched.clone_host(&self.p, i);
            self.power_off(h);
        }
    }

    // ---------------------------------------------------------------
    // Hosts: boot, reset, watchdog.

    fn boot(&mut self, h: u16) {
        if self.host(h).retired {
            return;
        }
        let now = self.now;
        let base = self.rng.range(2_000, 8_000);
        let hs = self.host_mut(h);
        hs.boot_no += 1;
        // Unique in its first 8 characters (messages shorten boot ids).
        hs.boot_id = format!("b{}-h{h}", hs.boot_no);
        hs.up = true;
        hs.boot_real = now;
        hs.clock_base_ms = base;
        hs.frozen_until = 0;
        hs.daemon_hung_until = 0;
        hs.last_landed = 0;
        hs.next_pid = 1000;
        let boot = hs.boot_no;
        self.log(&format!("h{h}"), format!("boots (boot id b{boot}-h{h})"));
        let d = self.rng.range(self.p.restart_ms.0, self.p.restart_ms.1) * MS;
        self.after(d, Ev::DaemonSpawn { h, boot });
    }

    /// The host goes down at once: every process dies, tmpfs is gone, the
    /// storage sessions die with whatever was in flight.
    pub fn reset(&mut self, h: u16, why: &str) {
        self.log(&format!("h{h}"), format!("RESET ({why})"));
        self.stats.resets += 1;
        self.go_down(h);
        let d = self.rng.range(self.p.reboot_ms.0, self.p.reboot_ms.1) * MS;
        self.after(d, Ev::Boot(h));
    }

    /// A clone is found and powered off for good.
    fn power_off(&mut self, h: u16) {
        if self.host(h).up {
            self.log(&format!("h{h}"), "powered off for good".into());
            self.go_down(h);
        }
        self.host_mut(h).retired = true;
    }

    /// Everything on the host stops at once (see `reset`).
    fn go_down(&mut self, h: u16) {
        let qs: Vec<usize> = self
            .qemus
            .iter()
            .filter(|q| q.host == h && q.alive())
            .map(|q| q.id)
            .collect();
        for q in qs {
            self.qemu_dead(q, true);
        }
        let calls: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| c.host == h)
            .map(|(id, _)| *id)
            .collect();
        for id in calls {
            self.abandon_call(id, true);
        }
        let ops: Vec<u64> = self
            .ops
            .iter()
            .filter(|(_, o)| o.host == h)
            .map(|(id, _)| *id)
            .collect();
        for id in ops {
            self.op_abort(id);
        }
        let now = self.now;
        let hs = self.host_mut(h);
        hs.up = false;
        hs.daemon = None;
        hs.status = None;
        hs.registry.clear();
        hs.registry_version += 1;
        hs.marker = None;
        hs.clear_request = false;
        hs.domains.clear();
        hs.wd_armed = false;
        hs.frozen_until = 0;
        hs.daemon_hung_until = 0;
        let _ = now;
    }

    pub fn wd_arm(&mut self, h: u16) {
        let now = self.now;
        let w = self.p.cfg.timing.watchdog_timeout;
        let hs = self.host_mut(h);
        hs.wd_armed = true;
        hs.wd_expires = now + hs.wd_real(w);
        let at = hs.wd_expires;
        if hs.wd_check_at <= now || hs.wd_check_at > at {
            hs.wd_check_at = at;
            self.at(at, Ev::WdCheck(h));
        }
    }

    pub fn wd_pet(&mut self, h: u16) {
        if self.host(h).wd_armed {
            let now = self.now;
            let w = self.p.cfg.timing.watchdog_timeout;
            let hs = self.host_mut(h);
            hs.wd_expires = now + hs.wd_real(w);
        }
    }

    fn wd_check(&mut self, h: u16) {
        let now = self.now;
        let hs = self.host(h);
        if !hs.up || !hs.wd_armed {
            self.host_mut(h).wd_check_at = 0;
            return;
        }
        if hs.wd_expires > now {
            let at = hs.wd_expires;
            self.host_mut(h).wd_check_at = at;
            self.at(at, Ev::WdCheck(h));
            return;
        }
        self.host_mut(h).wd_check_at = 0;
        self.reset(h, "hardware watchdog fired");
    }

    /// The controller (and the operator) reach a host's libvirtd.
    pub fn reachable(&self, h: u16) -> bool {
        let hs = self.host(h);
        hs.up && !hs.frozen(self.now) && self.sched.mgmt_up(h, self.now)
    }

    /// Decodes a table read, caching each slot's decoding by its version
    /// (`hosts::decode_table` is a pure function of the bytes).
    pub fn decode_table(&mut self, raw: &[u8], versions: &[u64]) -> Vec<Slot> {
        let mut out = Vec::with_capacity(versions.len());
        for (i, &v) in versions.iter().enumerate() {
            let bytes = &raw[i * SLOT_SIZE..(i + 1) * SLOT_SIZE];
            let slot = self
                .decode_cache
                .entry((i, v))
                .or_insert_with(|| vmlease::hosts::decode_slot(i as u16 + 1, bytes))
                .clone();
            out.push(slot);
        }
        out
    }

    pub fn running_qemu_of(&self, vm: usize) -> Option<usize> {
        self.qemus
            .iter()
            .find(|q| q.vm == vm && q.running())
            .map(|q| q.id)
    }

    pub fn any_qemu_of(&self, vm: usize) -> Option<usize> {
        self.running_qemu_of(vm).or_else(|| {
            self.qemus
                .iter()
                .find(|q| q.vm == vm && q.alive())
                .map(|q| q.id)
        })
    }
}
