//! libvirt and the lock-driver plugin on one simulated host, and the QEMU
//! stand-ins.
//!
//! The plugin is the production code: `plugin::acquire::Acquire`,
//! `plugin::release::{Release, Inquire}` and `plugin::register_on` make
//! every decision (the protected check, the state string, the registry,
//! the same-lockspace check, the parallel acquire, the rollback on part
//! failure) on a [`SimHost`] (this host's status, processes and registry)
//! and the simulated store; this file only carries their calls out as
//! libvirtd's threads would: every lockspace operation is a storage call
//! with the plugin's deadline, the acquire's records all at once.
//! libvirt's side follows the call sequences in
//! reference/libvirt-lock-abi.md: a start is the prepare hook, the
//! pre-exec registration and the acquire when the CPUs start; a pause
//! releases with a state after the CPUs stop (a failed release leaves
//! libvirt with no state); a migration inquires on the source, releases at
//! switch-over and acquires on the destination with the source's state,
//! and resumes the source if that fails.
//!
//! A QEMU "writes" its disk while its CPUs run; each write lands after the
//! storage latency, or when a stalled data path comes back, or never if
//! the host resets first. A QEMU with writes in flight dies only once
//! they complete (SIGKILL waits for I/O in the kernel).

use std::sync::Arc;

use vmlease::plugin::acquire::{self, Acquire};
use vmlease::plugin::release::{Inquire, Release};
use vmlease::plugin::{self, Host as _, Manager};
use vmlease::process::{Liveness, ProcId, Stat};
use vmlease::registry::Entries as _;
use vmlease::state_string::LockState;

use crate::calls::{Job, Outcome, Owner};
use crate::mutation::Mutation;
use crate::params::{Us, MS};
use crate::schedule::Link;
use crate::world::{Ev, Lineage, World};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QState {
    /// Exec'ed, CPUs not started (incoming migration, before acquire).
    Spawned,
    Running,
    Paused,
    /// Killed (or exited): the main thread is gone at once and shows 'Z'
    /// in /proc, while a thread inside I/O (a write in flight, or stuck)
    /// stays until that I/O completes and may still land a write.
    Dying,
    /// Every thread is gone.
    Dead,
}

pub struct Qemu {
    pub id: usize,
    pub vm: usize,
    pub host: u16,
    pub boot: u32,
    pub proc_id: ProcId,
    pub state: QState,
    pub lineage: usize,
    /// Continues a VM's memory (migration destination); a fresh boot
    /// reads the disk as it finds it.
    pub continues: bool,
    pub ran: bool,
    pub pending: u32,
    pub write_seq: u64,
    pub io_stuck_until: Us,
    pub writing: bool,
    pub drain_waiter: Option<u64>,
    /// libvirt's `priv->lockState`.
    pub lock_state: Option<String>,
    pub resume_failed: bool,
    pub running_since: Us,
    /// When its host's liveness record had last landed as it died.
    pub host_landed_at_death: Us,
}

impl Qemu {
    /// Some thread of it still exists (the truth the checker uses).
    pub fn alive(&self) -> bool {
        self.state != QState::Dead
    }
    /// What `/proc/PID/stat` shows for it (None: gone and reaped). QEMU
    /// always runs several threads; once killed only the leader's zombie
    /// and the I/O thread that holds it up remain.
    pub fn proc_stat(&self) -> Option<Stat> {
        let (state, threads) = match self.state {
            QState::Dead => return None,
            QState::Dying => ('Z', 2),
            _ => ('S', 4),
        };
        Some(Stat {
            start: self.proc_id.start,
            state,
            threads,
        })
    }
    pub fn running(&self) -> bool {
        self.state == QState::Running
    }
}

/// A plugin call in progress.
pub enum Proc {
    Acquire(AcqProc),
    Release(RelProc),
    Inquire(InqProc),
    /// The hook's protected check opens the lockspace.
    HookOpen,
}

pub struct AcqProc {
    pub q: usize,
    pub op: Option<Acquire>,
    pub opened: bool,
    /// A failed acquire's rollback: what it took, releases still out,
    /// the error for libvirt.
    pub rollback: Option<(Vec<vmlease::resource::Resource>, usize, String)>,
}

pub struct RelProc {
    pub q: usize,
    pub op: Option<Release>,
    pub opened: bool,
}

pub struct InqProc {
    pub op: Inquire,
    pub opened: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Prepare,
    Register,
    Acquire,
    Stop,
    Release,
    Wait,
    Resume,
    Begin,
    DstPrepare,
    DstRegister,
    Copy,
    Switch,
    Finish,
    SrcResume,
}

pub enum Kind {
    Start,
    Pause {
        dur: Us,
    },
    Resume,
    Migrate {
        src: usize,
        src_host: u16,
        dst_host: u16,
        dst: Option<usize>,
        begin_state: String,
    },
}

pub struct Op {
    /// The host whose libvirtd runs the current step.
    pub host: u16,
    pub vm: usize,
    pub kind: Kind,
    pub phase: Phase,
    pub q: Option<usize>,
    pub proc_: Option<Proc>,
}

pub type ProcResult = std::result::Result<Option<String>, String>;

impl World {
    // ---------------------------------------------------------------
    // QEMU.

    fn spawn_qemu(&mut self, h: u16, vm: usize, lineage: Option<usize>) -> usize {
        let local = self.local(h);
        let hs = self.host_mut(h);
        hs.next_pid += 1;
        let pid = hs.next_pid;
        let boot = hs.boot_no;
        let id = self.qemus.len();
        let (lineage, continues) = match lineage {
            Some(l) => (l, true),
            None => {
                self.lineages.push(Lineage { expect_gen: 0 });
                (self.lineages.len() - 1, false)
            }
        };
        self.qemus.push(Qemu {
            id,
            vm,
            host: h,
            boot,
            proc_id: ProcId {
                pid,
                start: local / 10,
            },
            state: QState::Spawned,
            lineage,
            continues,
            ran: false,
            pending: 0,
            write_seq: 0,
            io_stuck_until: 0,
            writing: false,
            drain_waiter: None,
            lock_state: None,
            resume_failed: false,
            running_since: 0,
            host_landed_at_death: 0,
        });
        self.host_mut(h).domains.insert(vm, id);
        id
    }

    pub fn set_running(&mut self, q: usize) {
        self.qemus[q].state = QState::Running;
        self.check_running_start(q);
        let now = self.now;
        let qm = &mut self.qemus[q];
        qm.ran = true;
        qm.continues = true;
        qm.running_since = now;
        if !qm.writing {
            qm.writing = true;
            self.at(self.now, Ev::QemuWrite(q));
        }
    }

    pub fn qemu_write(&mut self, q: usize) {
        if !self.qemus[q].running() {
            self.qemus[q].writing = false;
            return;
        }
        self.check_write_issue(q);
        self.stats.qemu_writes += 1;
        let h = self.qemus[q].host;
        let lat = self.io_rng.range(self.p.io_us.0, self.p.io_us.1);
        let mut land = match self.sched.link(h, self.now) {
            Link::Cut {
                until, data: true, ..
            } => until + lat,
            Link::WritesHang { until } => until + lat,
            Link::Up { extra_us } => self.now + lat + extra_us,
            _ => self.now + lat,
        };
        let qm = &mut self.qemus[q];
        land = land.max(qm.io_stuck_until);
        qm.pending += 1;
        let seq = qm.write_seq;
        self.at(land, Ev::WriteLand { q, seq });
        let every = self.p.qemu_write_ms * MS;
        let d = self.io_rng.range(every / 2, every * 3 / 2);
        self.after(d, Ev::QemuWrite(q));
    }

    pub fn write_land(&mut self, q: usize, seq: u64) {
        if self.qemus[q].write_seq != seq {
            return; // lost with its host
        }
        self.qemus[q].pending -= 1;
        self.check_write_landed(q);
        let qm = &self.qemus[q];
        if qm.pending == 0 {
            if qm.state == QState::Dying {
                self.qemu_reap(q);
            }
            if let Some(op) = self.qemus[q].drain_waiter.take() {
                self.at(self.now, Ev::OpStep(op));
            }
        }
    }

    /// `ProcId::liveness` of `p` on host `h` (of its current boot): the
    /// production rule (`ProcId::judge`) applied to what /proc shows; the
    /// mutation `leader-exit-is-death` applies the rule as it was before.
    pub fn proc_alive(&self, h: u16, p: ProcId) -> bool {
        let boot = self.host(h).boot_no;
        let st = self
            .qemus
            .iter()
            .find(|q| q.host == h && q.boot == boot && q.proc_id.pid == p.pid)
            .and_then(|q| q.proc_stat());
        if self.mutation == Mutation::LeaderExitIsDeath {
            return crate::mutation::leader_only_liveness(p, st.as_ref()) == Liveness::Alive;
        }
        p.judge(st.as_ref()) == Liveness::Alive
    }

    /// SIGKILL (the fence, libvirt's destroy). False if already dead.
    pub fn kill_qemu(&mut self, q: usize) -> bool {
        let qm = &mut self.qemus[q];
        match qm.state {
            QState::Dead => false,
            QState::Dying => true,
            _ => {
                qm.state = QState::Dying;
                let stuck = qm.io_stuck_until;
                let (h, p) = (qm.host, qm.proc_id);
                if self.mutation == Mutation::DeadOnKill {
                    self.daemon_notice_exit(h, p);
                }
                let qm = &mut self.qemus[q];
                if qm.pending == 0 {
                    if stuck > self.now {
                        self.at(stuck, Ev::QemuReap(q));
                    } else {
                        self.qemu_dead(q, false);
                    }
                }
                true
            }
        }
    }

    pub fn qemu_exit(&mut self, q: usize, why: &str) {
        let h = self.qemus[q].host;
        let vm = self.qemus[q].vm;
        self.log(&format!("h{h}"), format!("QEMU of vm{vm}: {why}"));
        self.kill_qemu(q);
    }

    pub fn qemu_reap(&mut self, q: usize) {
        let qm = &self.qemus[q];
        if qm.state == QState::Dying && qm.pending == 0 {
            if qm.io_stuck_until > self.now {
                let t = qm.io_stuck_until;
                self.at(t, Ev::QemuReap(q));
            } else {
                self.qemu_dead(q, false);
            }
        }
    }

    /// The process is gone. With `reset`, its writes in flight are lost.
    pub fn qemu_dead(&mut self, q: usize, reset: bool) {
        let qm = &mut self.qemus[q];
        if qm.state == QState::Dead {
            return;
        }
        qm.state = QState::Dead;
        let landed = self.hosts[qm.host as usize - 1].last_landed;
        qm.host_landed_at_death = landed;
        if reset {
            qm.write_seq += 1;
            qm.pending = 0;
        }
        let (h, vm, p) = (qm.host, qm.vm, qm.proc_id);
        if self.host(h).domains.get(&vm) == Some(&q) {
            self.host_mut(h).domains.remove(&vm);
        }
        self.log(
            &format!("h{h}"),
            format!("QEMU pid {} of vm{vm} is dead", p.pid),
        );
        if !reset {
            self.daemon_notice_exit(h, p);
        }
    }

    /// The protected check (`status::protected_status`) on host `h`.
    fn protected(&mut self, h: u16) -> std::result::Result<(), String> {
        self.with_plugin(h, 0, |host, _, cfg| host.protected(cfg).map(|_| ()))
            .map_err(|e| e.to_string())
    }

    /// What libvirt tells the plugin about QEMU `q` (its domain's
    /// `<lease>`s and disks; the domain lease comes from the config).
    fn manager(&self, q: usize) -> Manager {
        let qm = &self.qemus[q];
        let vm = &self.vms[qm.vm];
        Manager {
            uuid: vm.uuid.clone(),
            name: vm.name.clone(),
            pid: qm.proc_id.pid,
            resources: vm
                .resources
                .iter()
                .filter(|r| r.kind != vmlease::resource::Kind::Domain)
                .cloned()
                .collect(),
            ..Manager::default()
        }
    }

    // ---------------------------------------------------------------
    // Operations.

    fn new_op(&mut self, h: u16, vm: usize, kind: Kind, phase: Phase, ctl: bool) -> u64 {
        let id = self.id();
        self.ops.insert(
            id,
            Op {
                host: h,
                vm,
                kind,
                phase,
                q: None,
                proc_: None,
            },
        );
        if ctl {
            self.vms[vm].busy = Some(id);
        }
        id
    }

    fn op_done(&mut self, id: u64, ok: bool, why: &str) {
        let Some(op) = self.ops.remove(&id) else {
            return;
        };
        if self.vms[op.vm].busy == Some(id) {
            self.vms[op.vm].busy = None;
        }
        let what = match op.kind {
            Kind::Start => "start",
            Kind::Pause { .. } => "pause/resume",
            Kind::Resume => "resume",
            Kind::Migrate { .. } => "migration",
        };
        let vm = op.vm;
        self.log(
            &format!("h{}", op.host),
            format!(
                "{what} of vm{vm} {}{}",
                if ok { "done" } else { "failed" },
                if why.is_empty() {
                    String::new()
                } else {
                    format!(": {why}")
                }
            ),
        );
    }

    /// The op's host went down.
    pub fn op_abort(&mut self, id: u64) {
        if let Some(op) = self.ops.get(&id) {
            if let Kind::Migrate { src, dst, .. } = op.kind {
                // The other side's libvirt notices and cleans up.
                if let Some(d) = dst {
                    if self.qemus[d].alive() && !self.qemus[d].running() {
                        self.kill_qemu(d);
                    }
                }
                if self.qemus[src].state == QState::Paused && !self.qemus[src].ran {
                    self.kill_qemu(src);
                }
            }
        }
        self.op_done(id, false, "host went down");
    }

    /// libvirt starts `vm` on `h` (`virsh start`).
    pub fn start_vm(&mut self, vm: usize, h: u16, ctl: bool) {
        self.log(&format!("h{h}"), format!("virsh start vm{vm}"));
        let id = self.new_op(h, vm, Kind::Start, Phase::Prepare, ctl);
        self.at(self.now, Ev::OpStep(id));
    }

    pub fn chaos_pause(&mut self, vm: usize, dur: Us) {
        let Some(q) = self.running_qemu_of(vm) else {
            return;
        };
        let h = self.qemus[q].host;
        if !self.reachable(h) || self.vms[vm].busy.is_some() {
            return;
        }
        self.log(&format!("h{h}"), format!("virsh suspend vm{vm}"));
        // Not marked busy: the controller sees a paused VM as not running
        // and may start it elsewhere meanwhile (the resume must then fail).
        let id = self.new_op(h, vm, Kind::Pause { dur }, Phase::Stop, false);
        self.ops.get_mut(&id).unwrap().q = Some(q);
        self.at(self.now, Ev::OpStep(id));
    }

    pub fn resume_vm(&mut self, q: usize) {
        let (h, vm) = (self.qemus[q].host, self.qemus[q].vm);
        self.log(&format!("h{h}"), format!("virsh resume vm{vm}"));
        let id = self.new_op(h, vm, Kind::Resume, Phase::Resume, true);
        self.ops.get_mut(&id).unwrap().q = Some(q);
        self.at(self.now, Ev::OpStep(id));
    }

    pub fn chaos_migrate(&mut self, vm: usize, to: u16) {
        let Some(src) = self.running_qemu_of(vm) else {
            return;
        };
        let src_host = self.qemus[src].host;
        let mut dst_host = to;
        if dst_host == src_host {
            dst_host = dst_host % self.p.hosts + 1;
        }
        if dst_host == src_host
            || !self.reachable(src_host)
            || !self.reachable(dst_host)
            || self.host(dst_host).domains.contains_key(&vm)
            || self.vms[vm].busy.is_some()
        {
            return;
        }
        self.log(
            &format!("h{src_host}"),
            format!("virsh migrate vm{vm} to h{dst_host}"),
        );
        let id = self.new_op(
            src_host,
            vm,
            Kind::Migrate {
                src,
                src_host,
                dst_host,
                dst: None,
                begin_state: String::new(),
            },
            Phase::Begin,
            true,
        );
        self.ops.get_mut(&id).unwrap().q = Some(src);
        self.at(self.now, Ev::OpStep(id));
    }

    fn libvirt_delay(&mut self) -> Us {
        self.rng.range(5, 60) * MS
    }

    /// Runs the next step of an operation.
    pub fn op_step(&mut self, id: u64) {
        let Some(op) = self.ops.get(&id) else {
            return;
        };
        let (h, vm, phase, q) = (op.host, op.vm, op.phase, op.q);
        if !self.host(h).up {
            self.op_abort(id);
            return;
        }
        match phase {
            Phase::Prepare => {
                // The prepare hook: refuse on an unprotected host.
                if let Err(e) = self.protected(h) {
                    self.op_done(id, false, &format!("prepare hook: {e}"));
                    return;
                }
                self.op_proc(id, Proc::HookOpen);
            }
            Phase::Register | Phase::DstRegister => {
                // The pre-exec child: `plugin::register` (protected check,
                // registry entry), then exec. A failed child exits.
                let lineage = match self.ops.get(&id).map(|o| &o.kind) {
                    Some(Kind::Migrate { src, .. }) => Some(self.qemus[*src].lineage),
                    _ => None,
                };
                if let Err(e) = self.protected(h) {
                    self.op_done(id, false, &format!("register: {e}"));
                    self.migrate_cleanup_on_fail(id);
                    return;
                }
                let nq = self.spawn_qemu(h, vm, lineage);
                let m = self.manager(nq);
                let reg =
                    self.with_plugin(h, id, |host, _, cfg| plugin::register_on(host, cfg, &m));
                if let Err(e) = reg {
                    self.kill_qemu(nq);
                    self.op_done(id, false, &format!("register: {e}"));
                    self.migrate_cleanup_on_fail(id);
                    return;
                }
                let d = self.libvirt_delay();
                let op = self.ops.get_mut(&id).unwrap();
                if phase == Phase::Register {
                    op.q = Some(nq);
                    op.phase = Phase::Acquire;
                } else {
                    if let Kind::Migrate { dst, .. } = &mut op.kind {
                        *dst = Some(nq);
                    }
                    op.phase = Phase::Copy;
                    let copy = self.rng.range(100, 1000) * MS;
                    self.after(copy, Ev::OpStep(id));
                    return;
                }
                self.after(d, Ev::OpStep(id));
            }
            Phase::Acquire => {
                let q = q.unwrap();
                self.begin_acquire(id, q, None);
            }
            Phase::Stop | Phase::Switch => {
                let q = q.unwrap();
                if !self.qemus[q].alive() || self.qemus[q].state != QState::Running {
                    self.op_done(id, false, "the domain is not running");
                    self.migrate_cleanup_on_fail(id);
                    return;
                }
                self.qemus[q].state = QState::Paused;
                self.qemus[q].lock_state = None;
                self.ops.get_mut(&id).unwrap().phase = Phase::Release;
                if self.qemus[q].pending > 0 {
                    self.qemus[q].drain_waiter = Some(id);
                } else {
                    self.at(self.now, Ev::OpStep(id));
                }
            }
            Phase::Release => {
                let q = q.unwrap();
                self.begin_release(id, q, true);
            }
            Phase::Wait => {
                let dur = match self.ops[&id].kind {
                    Kind::Pause { dur } => dur,
                    _ => 0,
                };
                self.ops.get_mut(&id).unwrap().phase = Phase::Resume;
                self.after(dur, Ev::OpStep(id));
            }
            Phase::Resume | Phase::SrcResume => {
                let q = q.unwrap();
                if self.qemus[q].state != QState::Paused {
                    self.op_done(id, false, "the domain is not paused");
                    return;
                }
                let st = self.qemus[q].lock_state.clone();
                self.begin_acquire(id, q, st);
            }
            Phase::Begin => {
                let q = q.unwrap();
                if !self.qemus[q].running() {
                    self.op_done(id, false, "the domain is not running");
                    return;
                }
                let m = self.manager(q);
                match self.with_plugin(h, id, |host, _, cfg| Inquire::begin(host, cfg, &m)) {
                    Ok(op) => self.op_proc(id, Proc::Inquire(InqProc { op, opened: false })),
                    Err(e) => self.op_done(id, false, &format!("inquire: {e}")),
                }
            }
            Phase::DstPrepare => {
                if let Err(e) = self.protected(h) {
                    self.op_done(id, false, &format!("migrate hook on the destination: {e}"));
                    return;
                }
                self.op_proc(id, Proc::HookOpen);
            }
            Phase::Copy => {
                let Kind::Migrate {
                    src, dst, src_host, ..
                } = self.ops[&id].kind
                else {
                    unreachable!()
                };
                let dst = dst.unwrap();
                if !self.qemus[src].running() || !self.qemus[dst].alive() {
                    self.op_done(id, false, "a side died during the copy");
                    self.migrate_cleanup_on_fail(id);
                    return;
                }
                let op = self.ops.get_mut(&id).unwrap();
                op.host = src_host;
                op.phase = Phase::Switch;
                self.at(self.now, Ev::OpStep(id));
            }
            Phase::Finish => {
                let Kind::Migrate {
                    dst,
                    dst_host,
                    ref begin_state,
                    ..
                } = self.ops[&id].kind
                else {
                    unreachable!()
                };
                let st = begin_state.clone();
                let dst = dst.unwrap();
                self.ops.get_mut(&id).unwrap().host = dst_host;
                if !self.qemus[dst].alive() {
                    self.migrate_src_resume(id);
                    return;
                }
                self.begin_acquire(id, dst, Some(st));
            }
        }
    }

    fn migrate_cleanup_on_fail(&mut self, id: u64) {
        // Called after op_done: the op is gone; nothing else to undo for
        // a start. For a migration the destination QEMU is killed.
        let _ = id;
        let dsts: Vec<usize> = self
            .qemus
            .iter()
            .filter(|q| q.state == QState::Spawned && q.continues && !q.ran)
            .filter(|q| {
                !self
                    .ops
                    .values()
                    .any(|o| matches!(o.kind, Kind::Migrate { dst: Some(d), .. } if d == q.id))
            })
            .map(|q| q.id)
            .collect();
        for d in dsts {
            self.kill_qemu(d);
        }
    }

    fn migrate_src_resume(&mut self, id: u64) {
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        let Kind::Migrate { src, src_host, .. } = op.kind else {
            return;
        };
        op.host = src_host;
        op.q = Some(src);
        op.phase = Phase::SrcResume;
        self.at(self.now, Ev::OpStep(id));
    }

    fn op_proc(&mut self, id: u64, p: Proc) {
        let h = self.ops[&id].host;
        let io = self.p.cfg.io_timeout;
        match &p {
            Proc::HookOpen => {
                self.issue(h, Job::Open, Owner::Op(id), Some(io));
            }
            Proc::Inquire(_) => {
                self.issue(h, Job::Open, Owner::Op(id), Some(io));
            }
            _ => unreachable!(),
        }
        self.ops.get_mut(&id).unwrap().proc_ = Some(p);
    }

    /// `plugin::acquire` with `state`, for the QEMU `q`.
    fn begin_acquire(&mut self, id: u64, q: usize, state: Option<String>) {
        let h = self.qemus[q].host;
        let m = self.manager(q);
        let begun = self.with_plugin(h, id, |host, _, cfg| {
            Acquire::begin(host, cfg, &m, state.as_deref())
        });
        let mut op = match begun {
            Ok(op) => op,
            Err(e) => {
                let ap = AcqProc {
                    q,
                    op: None,
                    opened: false,
                    rollback: None,
                };
                return self.acquire_done(id, ap, Err(e.to_string()));
            }
        };
        if self.mutation == Mutation::TakeoverAtHalfD {
            op.view.written_ms += self.p.cfg.timing.host_dead_timeout / 2;
        }
        if self.mutation == Mutation::NoVersionCheckOnHandover {
            for c in &mut op.calls {
                c.want = None;
            }
        }
        self.ops.get_mut(&id).unwrap().proc_ = Some(Proc::Acquire(AcqProc {
            q,
            op: Some(op),
            opened: false,
            rollback: None,
        }));
        let io = self.p.cfg.io_timeout;
        self.issue(h, Job::Open, Owner::Op(id), Some(io));
    }

    /// `plugin::release` with or without a state, for `q`.
    fn begin_release(&mut self, id: u64, q: usize, want_state: bool) {
        let h = self.qemus[q].host;
        let m = self.manager(q);
        let begun = self.with_plugin(h, id, |host, _, cfg| {
            Release::begin(host, cfg, &m, want_state)
        });
        let op = match begun {
            Ok(op) => op,
            Err(e) => return self.release_finished(id, Err(e.to_string())),
        };
        self.ops.get_mut(&id).unwrap().proc_ = Some(Proc::Release(RelProc {
            q,
            op: Some(op),
            opened: false,
        }));
        let io = self.p.cfg.io_timeout;
        self.issue(h, Job::Open, Owner::Op(id), Some(io));
    }

    pub fn op_result(&mut self, id: u64, out: Outcome) {
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        let h = op.host;
        let Some(proc_) = op.proc_.take() else {
            return;
        };
        match proc_ {
            Proc::HookOpen => match out {
                Outcome::Unit(Ok(())) => {
                    let phase = op.phase;
                    op.phase = if phase == Phase::Prepare {
                        Phase::Register
                    } else {
                        Phase::DstRegister
                    };
                    let d = self.libvirt_delay();
                    self.after(d, Ev::OpStep(id));
                }
                Outcome::Unit(Err(e)) => {
                    self.op_done(id, false, &format!("hook: {e}"));
                }
                _ => unreachable!(),
            },
            Proc::Inquire(mut ip) => match out {
                Outcome::Unit(Ok(())) if !ip.opened => {
                    ip.opened = true;
                    let job = Job::Inquire {
                        keys: ip.op.keys.clone(),
                        me: ip.op.me.clone(),
                    };
                    op.proc_ = Some(Proc::Inquire(ip));
                    let io = self.p.cfg.io_timeout;
                    self.issue(h, job, Owner::Op(id), Some(io));
                }
                Outcome::Versions(Ok(v)) => {
                    let st = LockState { versions: v };
                    if let Kind::Migrate {
                        begin_state,
                        dst_host,
                        ..
                    } = &mut op.kind
                    {
                        *begin_state = st.encode();
                        op.host = *dst_host;
                    }
                    op.phase = Phase::DstPrepare;
                    let d = self.libvirt_delay();
                    self.after(d, Ev::OpStep(id));
                }
                Outcome::Unit(Err(e)) | Outcome::Versions(Err(e)) => {
                    self.op_done(id, false, &format!("inquire: {e}"));
                }
                _ => unreachable!(),
            },
            Proc::Acquire(ap) => self.acquire_step(id, h, ap, out),
            Proc::Release(rp) => self.release_step(id, h, rp, out),
        }
    }

    /// `plugin::acquire`'s driver: open, every record at once, then the
    /// verdict and, on a part failure, the rollback (all at once).
    fn acquire_step(&mut self, id: u64, h: u16, mut ap: AcqProc, out: Outcome) {
        let budget = self.p.cfg.io_timeout + self.p.cfg.lock_timeout;
        match out {
            Outcome::Unit(Ok(())) if !ap.opened => {
                ap.opened = true;
                let mut op = ap.op.take().unwrap();
                if let Err(e) = self.with_plugin(h, id, |host, io, _| op.opened(host, io)) {
                    return self.acquire_done(id, ap, Err(e.to_string()));
                }
                let view = Arc::new(op.view.clone());
                let jobs: Vec<Job> = op
                    .calls
                    .iter()
                    .enumerate()
                    .map(|(idx, c)| Job::Acquire {
                        idx,
                        call: c.clone(),
                        me: op.me.clone(),
                        view: Some(view.clone()),
                        ends: op.ends.clone(),
                    })
                    .collect();
                ap.op = Some(op);
                self.put_proc(id, Proc::Acquire(ap));
                for job in jobs {
                    self.issue(h, job, Owner::Op(id), Some(budget));
                }
            }
            Outcome::Unit(Err(e)) => self.acquire_done(id, ap, Err(e.to_string())),
            Outcome::Acquired(idx, r) => {
                if let Ok(a) = &r {
                    self.stats.takeovers += a.took_over.len() as u64;
                }
                let mut op = ap.op.take().unwrap();
                op.record_done(idx, r);
                if op.waiting() > 0 {
                    ap.op = Some(op);
                    return self.put_proc(id, Proc::Acquire(ap));
                }
                let me = op.me.clone();
                if self.mutation == Mutation::CallerEndsEveryIntent {
                    // The caller ends the intents of the calls it stopped
                    // waiting for too, as if they were over.
                    let (p, ids) = (op.p, op.calls.iter().map(|c| c.intent).collect::<Vec<_>>());
                    self.with_plugin(h, id, |host, _, _| {
                        let ends: Vec<_> = ids.iter().map(|&i| (i, None)).collect();
                        let _ = host.registry().end_acquires(p, &ends, false);
                    });
                }
                let done = self.with_plugin(h, id, |host, _, _| op.finish(host));
                self.check_intents(h);
                match done {
                    Ok(_) => self.acquire_done(id, ap, Ok(None)),
                    Err(rb) if rb.newly.is_empty() => {
                        self.acquire_done(id, ap, Err(rb.error.to_string()))
                    }
                    Err(rb) => {
                        let jobs: Vec<Job> = rb
                            .newly
                            .iter()
                            .map(|r| Job::Release {
                                key: r.key(),
                                name: r.name.clone(),
                                me: me.clone(),
                            })
                            .collect();
                        ap.rollback = Some((rb.newly, 0, rb.error.to_string()));
                        self.put_proc(id, Proc::Acquire(ap));
                        for job in jobs {
                            self.issue(h, job, Owner::Op(id), Some(budget));
                        }
                    }
                }
            }
            Outcome::Released(r) => {
                let (newly, done, _) = ap.rollback.as_mut().unwrap();
                acquire::rolled_back(&newly[*done], &r);
                *done += 1;
                if *done < newly.len() {
                    return self.put_proc(id, Proc::Acquire(ap));
                }
                let e = ap.rollback.as_ref().unwrap().2.clone();
                self.acquire_done(id, ap, Err(e));
            }
            _ => unreachable!(),
        }
    }

    /// `plugin::release`'s driver: open, then one record after the other.
    fn release_step(&mut self, id: u64, h: u16, mut rp: RelProc, out: Outcome) {
        let mut op = rp.op.take().unwrap();
        match out {
            Outcome::Unit(Ok(())) if !rp.opened => {
                rp.opened = true;
                self.with_plugin(h, id, |host, _, _| op.opened(host));
            }
            Outcome::Unit(Err(e)) => {
                self.put_proc(id, Proc::Release(rp));
                return self.release_finished(id, Err(e.to_string()));
            }
            Outcome::Released(r) => op.record_done(r),
            _ => unreachable!(),
        }
        if let Some(r) = op.next() {
            let job = Job::Release {
                key: r.key(),
                name: r.name.clone(),
                me: op.me.clone(),
            };
            rp.op = Some(op);
            self.put_proc(id, Proc::Release(rp));
            let budget = self.p.cfg.io_timeout + self.p.cfg.lock_timeout;
            self.issue(h, job, Owner::Op(id), Some(budget));
            return;
        }
        let res = self.with_plugin(h, id, |host, _, _| op.finish(host));
        self.put_proc(id, Proc::Release(rp));
        self.release_finished(id, res.map_err(|e| e.to_string()));
    }

    fn put_proc(&mut self, id: u64, p: Proc) {
        if let Some(op) = self.ops.get_mut(&id) {
            op.proc_ = Some(p);
        }
    }

    /// The acquire of `ap.q` is over.
    fn acquire_done(&mut self, id: u64, ap: AcqProc, r: ProcResult) {
        self.put_proc(id, Proc::Acquire(ap));
        self.acquire_finished(id, r);
    }

    fn acquire_finished(&mut self, id: u64, r: ProcResult) {
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        let q = match op.proc_.take() {
            Some(Proc::Acquire(ap)) => Some(ap.q),
            _ => op.q,
        };
        let phase = op.phase;
        let h = op.host;
        let vm = op.vm;
        match r {
            Ok(_) => {
                self.stats.acquires_ok += 1;
                let q = q.unwrap();
                if !self.qemus[q].alive() {
                    self.op_done(id, false, "QEMU died during the acquire");
                    return;
                }
                self.log(
                    &format!("h{h}"),
                    format!("vm{vm} acquired its leases; CPUs start"),
                );
                self.set_running(q);
                if phase == Phase::Finish {
                    if let Kind::Migrate { src, .. } = self.ops[&id].kind {
                        // Confirm: the source QEMU is destroyed.
                        self.kill_qemu(src);
                    }
                }
                self.op_done(id, true, "");
            }
            Err(e) => {
                self.stats.acquires_refused += 1;
                match phase {
                    Phase::Acquire => {
                        if let Some(q) = q {
                            self.kill_qemu(q);
                        }
                        self.op_done(id, false, &e);
                    }
                    Phase::Finish => {
                        self.log(&format!("h{h}"), format!("migration finish failed: {e}"));
                        if let Some(q) = q {
                            self.kill_qemu(q);
                        }
                        self.migrate_src_resume(id);
                    }
                    _ => {
                        if let Some(q) = q {
                            self.qemus[q].resume_failed = true;
                        }
                        self.op_done(id, false, &e);
                    }
                }
            }
        }
    }

    fn release_finished(&mut self, id: u64, r: ProcResult) {
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        let q = match op.proc_.take() {
            Some(Proc::Release(rp)) => rp.q,
            _ => op.q.unwrap(),
        };
        let h = op.host;
        // libvirt keeps the state only on success ("Unable to release
        // lease" is just a warning).
        self.qemus[q].lock_state = r.clone().ok().flatten();
        if let Err(e) = &r {
            self.log(&format!("h{h}"), format!("Unable to release lease: {e}"));
        }
        let op = self.ops.get_mut(&id).unwrap();
        match op.kind {
            Kind::Pause { .. } => {
                op.phase = Phase::Wait;
                self.at(self.now, Ev::OpStep(id));
            }
            Kind::Migrate { dst_host, .. } => {
                op.host = dst_host;
                op.phase = Phase::Finish;
                let d = self.libvirt_delay();
                self.after(d, Ev::OpStep(id));
            }
            _ => self.op_done(id, r.is_ok(), ""),
        }
    }
}
