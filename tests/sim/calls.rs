//! Storage operations (a [`Call`]): issued by a host's daemon or plugin,
//! they wait for their record lock, run the real engine on a [`SimIo`] at
//! the instant they got it, and land (writes applied, lock released) when
//! their latency has passed - or later, if the host's storage link stalls
//! meanwhile, or never, if the client is evicted first. The caller sees the
//! result when the operation lands, or a timeout at its deadline.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use vmlease::collision::Collision;
use vmlease::daemon::reaper::tracker::ReleasePass;
use vmlease::engine::{Acquired, Engine};
use vmlease::error::{Error, Result};
use vmlease::hosts::HostRecord;
use vmlease::lease::Holder;
use vmlease::plugin::acquire::{self, RecordCall};
use vmlease::plugin::release;
use vmlease::process::ProcId;
use vmlease::registry::IntentEnds;
use vmlease::status::Status;

use crate::mutation::Mutation;
use crate::params::{Us, MS};
use crate::plugin_host::SimRegistry;
use crate::schedule::Link;
use crate::store::{SimIo, Write};
use crate::world::{Ev, World};

#[derive(Debug)]
pub enum Job {
    Open,
    ReadSlot(u16),
    /// `daemon::renew::renew_io`: read the host table, then write `rec`
    /// only if slot `host_id` holds one of `expect`
    /// (`collision::check_own`). A renewal (`rec` None: a read only), the
    /// claim write and the leaving record.
    Renew {
        host_id: u16,
        expect: Vec<Vec<u8>>,
        rec: Option<HostRecord>,
    },
    /// Its write, once the check passed; `table` is what its read saw.
    RenewWrite {
        rec: HostRecord,
        table: (Vec<u8>, Vec<u64>),
    },
    /// The renewal before issue 14 (mutation `claim-without-read-back`):
    /// write the record, then read the table.
    OldRenew(HostRecord),
    OldRenewRead,
    /// The leaving record before issue 14 (same mutation): written blind.
    WriteHost(HostRecord),
    /// One record of `plugin::acquire::Acquire` (`acquire_record`): call
    /// `idx` of the op's calls. `ends`: the op's hand-over of intent
    /// ends (`end_record` when the call is over: landed or failed).
    Acquire {
        idx: usize,
        call: RecordCall,
        me: Holder,
        view: Option<Arc<Status>>,
        ends: IntentEnds,
    },
    Release {
        key: String,
        name: String,
        me: Holder,
    },
    /// The reaper's release of one key of an exited QEMU `p` of this
    /// host and boot (`ReleasePass::owns` picks its holders).
    ReleaseMatching {
        key: String,
        p: ProcId,
        host_id: u16,
        boot_id: String,
    },
    Inquire {
        keys: Vec<(String, String)>,
        me: Holder,
    },
}

impl Job {
    fn lock(&self) -> Option<String> {
        match self {
            Job::Acquire { call, .. } => Some(call.resource.key()),
            Job::Release { key, .. } | Job::ReleaseMatching { key, .. } => Some(key.clone()),
            _ => None,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Job::Open => "open lockspace",
            Job::ReadSlot(_) => "read host record",
            Job::Renew { .. } | Job::OldRenewRead => "read host table",
            Job::RenewWrite { .. } | Job::OldRenew(_) => "write host record",
            Job::WriteHost(_) => "write leaving record",
            Job::Acquire { .. } => "acquire lease",
            Job::Release { .. } => "release lease",
            Job::ReleaseMatching { .. } => "release lease",
            Job::Inquire { .. } => "inquire leases",
        }
    }
}

#[derive(Debug)]
pub enum Outcome {
    Unit(Result<()>),
    Bytes(Result<Vec<u8>>),
    /// A table read and the slot versions it returned.
    Table(Result<(Vec<u8>, Vec<u64>)>),
    /// What `renew_io` did (`Job::Renew`).
    Renewed(Result<RenewDone>),
    /// Call `idx` of an acquire.
    Acquired(usize, Result<Acquired>),
    Released(Result<Option<u64>>),
    Matched(Result<Vec<Holder>>),
    Versions(Result<BTreeMap<String, u64>>),
}

impl Outcome {
    fn err(job: &Job, e: Error) -> Outcome {
        match job {
            Job::Open | Job::WriteHost(_) => Outcome::Unit(Err(e)),
            Job::ReadSlot(_) => Outcome::Bytes(Err(e)),
            Job::Renew { .. } | Job::RenewWrite { .. } => Outcome::Renewed(Err(e)),
            Job::OldRenew(_) | Job::OldRenewRead => Outcome::Table(Err(e)),
            Job::Acquire { idx, .. } => Outcome::Acquired(*idx, Err(e)),
            Job::Release { .. } => Outcome::Released(Err(e)),
            Job::ReleaseMatching { .. } => Outcome::Matched(Err(e)),
            Job::Inquire { .. } => Outcome::Versions(Err(e)),
        }
    }
}

/// What one `renew_io` did (`daemon::renew::RenewIo`).
#[derive(Debug)]
pub struct RenewDone {
    /// The host table as read before the write, and its slot versions.
    pub raw: Vec<u8>,
    pub versions: Vec<u64>,
    pub wrote: bool,
    /// The slot did not hold what was expected: nothing was written.
    pub collision: Option<Collision>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonCall {
    Open,
    Claim,
    /// The claim write (`ClaimStep::Write`).
    ClaimWrite,
    Renew {
        issued_ms: u64,
    },
    Release,
    Leave,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Daemon { h: u16, gen: u64, what: DaemonCall },
    Op(u64),
}

pub struct Call {
    pub host: u16,
    pub boot: u32,
    pub job: Job,
    pub owner: Owner,
    pub deadline_ms: u64,
    pub lock: Option<String>,
    pub has_lock: bool,
    pub waiting: bool,
    pub writes: Vec<Write>,
    pub pending: Option<Outcome>,
    pub timed_out: bool,
}

#[derive(Default)]
pub struct LockCell {
    pub holder: Option<u64>,
    pub waiters: VecDeque<u64>,
}

impl World {
    // ---------------------------------------------------------------
    // Storage operations.

    pub fn issue(&mut self, h: u16, job: Job, owner: Owner, deadline_ms: Option<u64>) -> u64 {
        let id = self.id();
        let boot = self.host(h).boot_no;
        let deadline = deadline_ms.map(|ms| self.now + self.host(h).real(ms));
        let lock = job.lock();
        self.calls.insert(
            id,
            Call {
                host: h,
                boot,
                job,
                owner,
                deadline_ms: deadline_ms.unwrap_or(0),
                lock,
                has_lock: false,
                waiting: false,
                writes: Vec::new(),
                pending: None,
                timed_out: false,
            },
        );
        if let Some(d) = deadline {
            self.at(d, Ev::CallTimeout(id));
        }
        let stall = self.host(h).acquire_stall_until;
        let c = &self.calls[&id];
        if matches!((&c.job, c.owner), (Job::Acquire { .. }, Owner::Op(_))) && stall > self.now {
            // Stuck in the kernel before the record lock.
            self.at(stall, Ev::CallRun(id));
            return id;
        }
        self.call_run(id);
        id
    }

    fn lat(&mut self, extra: u64) -> Us {
        let (lo, hi) = self.p.io_us;
        self.io_rng.range(lo, hi) + extra
    }

    pub fn call_run(&mut self, id: u64) {
        let Some(c) = self.calls.get(&id) else { return };
        let h = c.host;
        if !self.host(h).up || self.host(h).boot_no != c.boot {
            self.calls.remove(&id);
            return;
        }
        let link = self.sched.link(h, self.now);
        let extra = match link {
            Link::Cut {
                until, evict_at, ..
            } => {
                // The request hangs in the client until the link returns;
                // an evicted client's requests then fail.
                if evict_at.is_some() {
                    self.at(until, Ev::CallFail(id));
                } else {
                    self.at(until, Ev::CallRun(id));
                }
                return;
            }
            Link::Errors => {
                let lat = self.lat(0);
                let c = self.calls.get_mut(&id).unwrap();
                let e = Error::io(
                    c.job.name(),
                    "/sim/lockspace",
                    std::io::Error::from_raw_os_error(5),
                );
                c.pending = Some(Outcome::err(&c.job, e));
                self.after(lat, Ev::CallLand(id));
                return;
            }
            Link::WritesHang { .. } | Link::ReadOnly => 0,
            Link::Up { extra_us } => extra_us,
        };
        // The record lock.
        let c = self.calls.get(&id).unwrap();
        if let (Some(key), false) = (c.lock.clone(), c.has_lock) {
            let cell = self.locks.entry(key.clone()).or_default();
            let busy = cell.holder.is_some() && self.mutation != Mutation::NoRecordLock;
            if busy {
                cell.waiters.push_back(id);
                let lt = self.p.cfg.lock_timeout;
                let d = self.host(h).real(lt);
                let c = self.calls.get_mut(&id).unwrap();
                c.waiting = true;
                self.after(d, Ev::LockWaitTimeout(id));
                return;
            }
            cell.holder = Some(id);
            self.calls.get_mut(&id).unwrap().has_lock = true;
        }
        self.execute(id, extra, link);
    }

    /// Runs the operation at this instant (its reads see the store now),
    /// and schedules its landing.
    fn execute(&mut self, id: u64, extra: u64, link: Link) {
        let c = self.calls.remove(&id).unwrap();
        let h = c.host;
        let seed = self.io_rng.next_u64();
        let mutation = self.mutation;
        let host = &self.hosts[h as usize - 1];
        let stale = self.p.stale_ms;
        let mut io = SimIo::new(&self.store, h, self.now, stale, seed);
        io.locked = c.lock.is_some();
        io.read_only = link == Link::ReadOnly;
        let daemon_table = host.daemon.as_ref().map(|d| d.last_table.clone());
        if mutation == Mutation::NoFreshSlotRead {
            if let Some(Some(t)) = daemon_table.as_ref() {
                io.answer_slots_from = Some(t.as_slice());
            }
        }
        io.timeless_clean = mutation == Mutation::FencedCleanVouchesForAll;
        let outcome = match &c.job {
            Job::Open => Outcome::Unit(Ok(())),
            Job::ReadSlot(id) => Outcome::Bytes(io.read_slot(*id)),
            Job::Renew { .. } | Job::OldRenewRead => {
                Outcome::Bytes(vmlease::store::Store::read_hosts_raw(&io))
            }
            Job::RenewWrite { rec, .. } | Job::OldRenew(rec) | Job::WriteHost(rec) => {
                Outcome::Unit(vmlease::store::Store::write_host(&io, rec))
            }
            Job::Acquire {
                idx,
                call,
                me,
                view,
                ..
            } => {
                // The plugin's I/O thread: under the record lock it writes
                // nothing for a caller that gave up at its deadline or for
                // a QEMU that exited meanwhile. Its intent ends when the
                // call is over (`acquire_over`).
                let eng = self.engine(h, io, view.clone());
                let cancel = vmlease::deadline::Cancel::new();
                if c.timed_out {
                    cancel.abandon();
                }
                let r = if mutation == Mutation::AbandonedAcquireWrites {
                    eng.acquire(&call.resource, me, call.want)
                } else {
                    acquire::acquire_record(&eng, call, me, &cancel)
                };
                io = eng.ls;
                Outcome::Acquired(*idx, r)
            }
            Job::Release { key, name, me } => {
                let eng = self.engine(h, io, None);
                let r = eng.release(key, name, me);
                io = eng.ls;
                Outcome::Released(r)
            }
            Job::ReleaseMatching {
                key,
                p,
                host_id,
                boot_id,
            } => {
                let eng = self.engine(h, io, None);
                let r = eng.release_matching(key, &|x: &Holder| {
                    ReleasePass::owns(*p, *host_id, boot_id, x)
                });
                io = eng.ls;
                Outcome::Matched(r)
            }
            Job::Inquire { keys, me } => {
                let eng = self.engine(h, io, None);
                let r = release::held_versions(&eng, keys, me).map(|s| s.versions);
                io = eng.ls;
                Outcome::Versions(r)
            }
        };
        let nops = io.ops.get().max(1);
        let table_ops = io.table_ops.get() as u64;
        let writes = io.writes.into_inner();
        let versions = io.table_versions.into_inner();
        let mut c = c;
        if let Outcome::Acquired(_, Ok(a)) = &outcome {
            if let Job::Acquire { call, me, .. } = &c.job {
                let took = a.took_over.clone();
                let (res, me) = (call.resource.clone(), me.clone());
                for (holder, why) in took {
                    self.check_takeover(h, &res, &me, &holder, &why);
                }
            }
        }
        let mut dur = table_ops * self.sched.table_extra(h, self.now);
        for _ in 0..nops {
            dur += self.lat(extra);
        }
        let mut land = self.now + dur;
        let has_writes = !writes.is_empty();
        // A stall before the operation completes delays it (or, if the
        // client gets evicted, its writes never land).
        let mut evict = None;
        if let Link::WritesHang { until } = link {
            if has_writes {
                land = until + self.lat(extra);
            }
        } else if let Some(s) = self.sched.next_stall(h, self.now, land, has_writes) {
            match self.sched.link(h, s) {
                Link::Cut {
                    until, evict_at, ..
                } => {
                    if let Some(e) = evict_at {
                        evict = Some((e, until));
                    } else {
                        land = until + self.lat(extra);
                    }
                }
                Link::WritesHang { until } => land = until + self.lat(extra),
                _ => {}
            }
        }
        c.writes = writes;
        let table_read = matches!(c.job, Job::Renew { .. } | Job::OldRenewRead);
        c.pending = Some(match outcome {
            Outcome::Bytes(Ok(raw)) if table_read => Outcome::Table(Ok((raw, versions))),
            Outcome::Bytes(Err(e)) if table_read => Outcome::err(&c.job, e),
            o => o,
        });
        self.calls.insert(id, c);
        match evict {
            Some((e, until)) => {
                self.at(e, Ev::CallEvict(id));
                self.at(until, Ev::CallFail(id));
            }
            None => self.at(land, Ev::CallLand(id)),
        }
    }

    fn engine<'a>(&self, h: u16, io: SimIo<'a>, view: Option<Arc<Status>>) -> Engine<SimIo<'a>> {
        let hs = self.host(h);
        // Rule 3 asks `ProcId::is_alive`: the production rule on the
        // simulated /proc.
        let alive: Vec<ProcId> = self
            .qemus
            .iter()
            .filter(|q| q.host == h && q.boot == hs.boot_no && self.proc_alive(h, q.proc_id))
            .map(|q| q.proc_id)
            .collect();
        let alive = Arc::new(alive);
        Engine {
            ls: io,
            host_id: hs.host_id,
            boot_id: hs.boot_id.clone(),
            dead_ms: hs.cfg.timing.host_dead_timeout,
            trust_unsafe_peers: hs.cfg.trust_unsafe_peers,
            lock_timeout_ms: hs.cfg.lock_timeout,
            view,
            process_alive: Arc::new(move |p: ProcId| alive.contains(&p)),
        }
    }

    pub fn call_land(&mut self, id: u64) {
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        let writes = std::mem::take(&mut c.writes);
        let h = c.host;
        if !writes.is_empty() {
            self.check_intent_kept(id);
        }
        for w in &writes {
            self.land_write(h, w);
        }
        self.free_lock_of(id);
        self.acquire_over(id, true);
        if self.renew_next_step(id) {
            return;
        }
        let c = self.calls.remove(&id).unwrap();
        if c.timed_out {
            return;
        }
        let out = match (c.pending, c.job) {
            (Some(Outcome::Unit(r)), Job::RenewWrite { table, .. }) => {
                Outcome::Renewed(r.map(|()| RenewDone {
                    raw: table.0,
                    versions: table.1,
                    wrote: true,
                    collision: None,
                }))
            }
            (Some(Outcome::Unit(Err(e))), Job::OldRenew(_)) => Outcome::Table(Err(e)),
            (Some(o), _) => o,
            (None, _) => return,
        };
        self.at(
            self.now,
            Ev::Deliver {
                owner: c.owner,
                out,
            },
        );
    }

    /// A write of machine `h` lands.
    pub fn land_write(&mut self, h: u16, w: &Write) {
        self.store.apply(w, self.now, h);
        match w {
            Write::Host { boot_id, .. } => {
                let hs = self.host(h);
                if *boot_id == hs.boot_id && hs.up {
                    let now = self.now;
                    let hs = self.host_mut(h);
                    hs.last_landed = now;
                }
                self.landed.insert(boot_id.clone(), self.now);
            }
            Write::Lease { key, .. } => {
                let key = key.clone();
                self.check_lease_landed(h, &key);
            }
        }
    }

    /// The renewal thread's next step once a step landed
    /// (`daemon::renew::renew_io`): after the table read, the check of
    /// the own slot and, if it passes, the write; before issue 14 (the
    /// mutation), the table read after the write. True when the call goes
    /// on. An abandoned call (its caller gave up at its deadline) goes on
    /// too, as the thread does.
    fn renew_next_step(&mut self, id: u64) -> bool {
        let c = self.calls.get_mut(&id).unwrap();
        match (&c.job, &c.pending) {
            (Job::OldRenew(_), Some(Outcome::Unit(Ok(())))) => {
                c.job = Job::OldRenewRead;
            }
            (
                Job::Renew {
                    host_id,
                    expect,
                    rec,
                },
                Some(Outcome::Table(Ok((raw, versions)))),
            ) => {
                let done = |collision| {
                    Outcome::Renewed(Ok(RenewDone {
                        raw: raw.clone(),
                        versions: versions.clone(),
                        wrote: false,
                        collision,
                    }))
                };
                let Some(rec) = rec else {
                    c.pending = Some(done(None));
                    return false;
                };
                let own = vmlease::daemon::renew::own_slot(raw, *host_id);
                if let Err(col) = vmlease::collision::check_own(*host_id, &own, expect) {
                    c.pending = Some(done(Some(col)));
                    return false;
                }
                c.job = Job::RenewWrite {
                    rec: rec.clone(),
                    table: (raw.clone(), versions.clone()),
                };
            }
            _ => return false,
        }
        c.pending = None;
        self.call_run(id);
        true
    }

    fn free_lock_of(&mut self, id: u64) {
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        if !c.has_lock {
            return;
        }
        c.has_lock = false;
        let key = c.lock.clone().unwrap();
        self.lock_release(&key, id);
    }

    pub fn lock_release(&mut self, key: &str, id: u64) {
        let Some(cell) = self.locks.get_mut(key) else {
            return;
        };
        if cell.holder != Some(id) {
            return;
        }
        cell.holder = None;
        while let Some(next) = cell.waiters.pop_front() {
            if let Some(n) = self.calls.get_mut(&next) {
                if n.waiting {
                    n.waiting = false;
                    n.has_lock = true;
                    cell.holder = Some(next);
                    self.at(self.now, Ev::CallRun(next));
                    break;
                }
            }
        }
    }

    fn fail(&mut self, id: u64, e: Error) {
        // The I/O thread's call failed (its write, if any, never lands).
        self.acquire_over(id, false);
        let Some(c) = self.calls.remove(&id) else {
            return;
        };
        if let (true, Some(key)) = (c.waiting, c.lock.as_ref()) {
            if let Some(cell) = self.locks.get_mut(key) {
                cell.waiters.retain(|&w| w != id);
            }
        }
        if c.has_lock {
            let key = c.lock.clone().unwrap();
            self.calls.insert(id, c);
            self.lock_release(&key, id);
            let c = self.calls.remove(&id).unwrap();
            if !c.timed_out {
                let out = Outcome::err(&c.job, e);
                self.at(
                    self.now,
                    Ev::Deliver {
                        owner: c.owner,
                        out,
                    },
                );
            }
            return;
        }
        if !c.timed_out {
            let out = Outcome::err(&c.job, e);
            self.at(
                self.now,
                Ev::Deliver {
                    owner: c.owner,
                    out,
                },
            );
        }
    }

    pub fn lock_wait_timeout(&mut self, id: u64) {
        let Some(c) = self.calls.get(&id) else {
            return;
        };
        if !c.waiting {
            return;
        }
        let e = Error::Busy {
            resource: c.lock.clone().unwrap_or_default(),
            reason: format!(
                "its record lock is held by another host or thread for more than {} ms",
                self.p.cfg.lock_timeout
            ),
        };
        self.fail(id, e);
    }

    pub fn call_timeout(&mut self, id: u64) {
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        if c.timed_out {
            return;
        }
        // The caller gives up; the operation goes on in its thread.
        let e = Error::Timeout {
            op: c.job.name(),
            path: "/sim/lockspace".into(),
            after_ms: c.deadline_ms,
        };
        if c.waiting {
            self.fail(id, e);
            return;
        }
        c.timed_out = true;
        let out = Outcome::err(&c.job, e);
        let owner = c.owner;
        self.at(self.now, Ev::Deliver { owner, out });
    }

    /// Eviction: the client's locks are dropped and its pending writes
    /// will never land.
    pub fn call_evict(&mut self, id: u64) {
        if let Some(c) = self.calls.get_mut(&id) {
            c.writes.clear();
        }
        self.free_lock_of(id);
    }

    pub fn call_fail(&mut self, id: u64) {
        let e = Error::io(
            "storage operation",
            "/sim/lockspace",
            std::io::Error::other("client evicted (blocklisted)"),
        );
        self.fail(id, e);
    }

    /// The process that issued `id` died (or its host was reset): what it
    /// had in flight reached the server or not; its lock goes with its
    /// session (at once for a process, after the eviction delay for a
    /// host).
    pub fn abandon_call(&mut self, id: u64, host_reset: bool) {
        let Some(mut c) = self.calls.remove(&id) else {
            return;
        };
        if c.waiting {
            if let Some(cell) = self.locks.get_mut(c.lock.as_ref().unwrap()) {
                cell.waiters.retain(|&w| w != id);
            }
            return;
        }
        let up = matches!(self.sched.link(c.host, self.now), Link::Up { .. });
        if up && self.rng.chance(0.5) {
            for w in std::mem::take(&mut c.writes) {
                self.land_write(c.host, &w);
            }
        }
        if c.has_lock {
            let key = c.lock.clone().unwrap();
            if host_reset {
                let d = self.p.evict_ms * MS;
                self.after(d, Ev::LockFree { key, call: id });
            } else {
                self.lock_release(&key, id);
            }
        }
    }

    /// An acquire call is over (landed, or failed without writing): the
    /// plugin's I/O thread ends its intent (`acquire::end_record`), handing
    /// it to its caller while the caller still waits, else writing it.
    fn acquire_over(&mut self, id: u64, landed: bool) {
        let Some(c) = self.calls.get(&id) else { return };
        let Job::Acquire { call, me, ends, .. } = &c.job else {
            return;
        };
        let h = c.host;
        if !self.host(h).up || self.host(h).boot_no != c.boot {
            return;
        }
        let res = match &c.pending {
            Some(Outcome::Acquired(_, Ok(a))) if landed => Ok(a.clone()),
            _ => Err(Error::Invalid("the call failed".into())),
        };
        let (call, me, ends) = (call.clone(), me.clone(), ends.clone());
        let late = ends.is_closed();
        let reg = SimRegistry::of(&mut self.hosts[h as usize - 1]);
        acquire::end_record(&ends, &reg, &call, &me, &res);
        if late {
            self.log(
                &format!("h{h}"),
                format!(
                    "acquire of {} for pid {} ends its own intent (its caller stopped waiting)",
                    call.resource, me.pid
                ),
            );
            self.check_intents(h);
        }
    }

    pub fn deliver(&mut self, owner: Owner, out: Outcome) {
        match owner {
            Owner::Daemon { h, gen, what } => self.daemon_result(h, gen, what, out),
            Owner::Op(op) => self.op_result(op, out),
        }
    }
}

impl SimIo<'_> {
    fn read_slot(&self, host_id: u16) -> Result<Vec<u8>> {
        vmlease::store::Store::read_slot_raw(self, host_id)
    }
}
