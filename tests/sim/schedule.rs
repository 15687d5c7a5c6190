//! The fault schedule of one run: drawn from the seed, timed, printable,
//! and shrinkable (a run can keep any subset of it). Storage and network
//! faults are intervals known in advance, so a storage operation can be
//! told at once whether it will hang, fail or land late.

use std::fmt;

use crate::params::{Params, Us, MS};
use crate::rng::Rng;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The hosts lose the shared storage: lockspace operations hang (and
    /// fail once the client is evicted); with `data`, the VMs' disk I/O
    /// hangs too (QEMU then sits in uninterruptible I/O).
    StorageCut {
        hosts: Vec<u16>,
        at: Us,
        dur: Us,
        data: bool,
    },
    /// Every storage operation of the hosts takes `extra_ms` longer.
    SlowIo {
        hosts: Vec<u16>,
        at: Us,
        dur: Us,
        extra_ms: u64,
    },
    /// Every operation on the host table (the `hosts` file: renewals,
    /// slot reads) of the hosts takes `extra_ms` longer: one slow OSD
    /// holds that file's object; lease records and VM disks live on others.
    SlowHostTable {
        hosts: Vec<u16>,
        at: Us,
        dur: Us,
        extra_ms: u64,
    },
    /// Lockspace operations of the host fail (EIO).
    IoErrors { host: u16, at: Us, dur: Us },
    /// The cluster is full: writes hang everywhere, reads work.
    ClusterFull { at: Us, dur: Us },
    /// The lockspace filesystem turns read-only on the host (CephFS's MDS
    /// goes read-only when it cannot write its metadata pool): lockspace
    /// writes fail, reads and the VMs' disks (RBD) work.
    LockspaceReadOnly { host: u16, at: Us, dur: Us },
    /// The management network of the hosts is cut.
    MgmtCut { hosts: Vec<u16>, at: Us, dur: Us },
    /// Power loss: the host reboots (new boot id).
    HostCrash { host: u16, at: Us },
    /// The whole host stops (kernel stall); its clock and its hardware
    /// watchdog keep counting, so the processes see a clock jump.
    HostFreeze { host: u16, at: Us, dur: Us },
    /// SIGKILL of the watchdog daemon; systemd restarts it or not.
    DaemonKill { host: u16, at: Us, restart: bool },
    /// SIGSTOP ... SIGCONT of the watchdog daemon.
    DaemonHang { host: u16, at: Us, dur: Us },
    /// `systemctl restart vmlease-watchdog` (SIGTERM, then a new start).
    DaemonRestart { host: u16, at: Us },
    /// The VM's QEMU exits (crash, guest poweroff).
    QemuExit { vm: usize, at: Us },
    /// The VM's disk I/O is stuck in the kernel for a while: SIGKILL does
    /// not take effect until it completes.
    QemuStuck { vm: usize, at: Us, dur: Us },
    /// Live migration of the VM to `to` (or the next host).
    Migrate { vm: usize, at: Us, to: u16 },
    /// `virsh suspend`, then `virsh resume` after `dur`.
    Pause { vm: usize, at: Us, dur: Us },
    /// Someone starts the VM on `host` although it may run elsewhere.
    RogueStart { vm: usize, host: u16, at: Us },
    /// `virsh destroy` of the VM.
    Destroy { vm: usize, at: Us },
    /// The next lockspace acquires of libvirtd on the host hang in the
    /// kernel before they reach their record lock (one stuck path, the
    /// daemon's I/O unaffected), until `at + dur`: they outlive their
    /// deadline and go on afterwards, abandoned.
    AcquireStall { host: u16, at: Us, dur: Us },
    /// A machine cloned from `of` boots at `at` (issue 14 item 2): its
    /// disk image carries `of`'s vmlease config, hence its host id, and
    /// its libvirt domains marked autostart. Named like `of` or not. It is
    /// powered off for good at `at + dur` (someone found it). With a
    /// `stall`, `of`'s renewals stall from `at` for that long (its
    /// lockspace link hangs; its VMs' disks work).
    Clone {
        of: u16,
        at: Us,
        dur: Us,
        same_name: bool,
        stall: Us,
    },
    /// `vmlease storage-fence`: another host blocklists `host` (from now
    /// on none of its storage operations or VM disk writes lands: a cut
    /// that never heals) and writes the storage-fenced verdict (takeover
    /// rule 5). With `noop` the blocklist step does nothing while the
    /// verdict is still written (the checker's self-test).
    Blocklist { host: u16, at: Us, noop: bool },
}

/// The share of schedules with a cloned host.
pub const CLONE_CHANCE: f64 = 0.15;

impl Fault {
    /// The kind's name, as `VMLEASE_SIM_FAULTS` takes it.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::StorageCut { .. } => "storage-cut",
            Fault::SlowIo { .. } => "slow-io",
            Fault::SlowHostTable { .. } => "slow-host-table",
            Fault::IoErrors { .. } => "io-errors",
            Fault::ClusterFull { .. } => "cluster-full",
            Fault::LockspaceReadOnly { .. } => "lockspace-read-only",
            Fault::MgmtCut { .. } => "mgmt-cut",
            Fault::HostCrash { .. } => "host-crash",
            Fault::HostFreeze { .. } => "host-freeze",
            Fault::DaemonKill { .. } => "daemon-kill",
            Fault::DaemonHang { .. } => "daemon-hang",
            Fault::DaemonRestart { .. } => "daemon-restart",
            Fault::QemuExit { .. } => "qemu-exit",
            Fault::QemuStuck { .. } => "qemu-stuck",
            Fault::Migrate { .. } => "migrate",
            Fault::Pause { .. } => "pause",
            Fault::RogueStart { .. } => "rogue-start",
            Fault::Destroy { .. } => "destroy",
            Fault::AcquireStall { .. } => "acquire-stall",
            Fault::Clone { .. } => "clone",
            Fault::Blocklist { .. } => "blocklist",
        }
    }

    pub fn at(&self) -> Us {
        match self {
            Fault::StorageCut { at, .. }
            | Fault::SlowIo { at, .. }
            | Fault::SlowHostTable { at, .. }
            | Fault::IoErrors { at, .. }
            | Fault::ClusterFull { at, .. }
            | Fault::LockspaceReadOnly { at, .. }
            | Fault::MgmtCut { at, .. }
            | Fault::HostCrash { at, .. }
            | Fault::HostFreeze { at, .. }
            | Fault::DaemonKill { at, .. }
            | Fault::DaemonHang { at, .. }
            | Fault::DaemonRestart { at, .. }
            | Fault::QemuExit { at, .. }
            | Fault::QemuStuck { at, .. }
            | Fault::Migrate { at, .. }
            | Fault::Pause { at, .. }
            | Fault::RogueStart { at, .. }
            | Fault::Destroy { at, .. }
            | Fault::AcquireStall { at, .. }
            | Fault::Clone { at, .. }
            | Fault::Blocklist { at, .. } => *at,
        }
    }

    pub fn dur(&self) -> Us {
        match self {
            Fault::StorageCut { dur, .. }
            | Fault::SlowIo { dur, .. }
            | Fault::SlowHostTable { dur, .. }
            | Fault::IoErrors { dur, .. }
            | Fault::ClusterFull { dur, .. }
            | Fault::LockspaceReadOnly { dur, .. }
            | Fault::MgmtCut { dur, .. }
            | Fault::HostFreeze { dur, .. }
            | Fault::DaemonHang { dur, .. }
            | Fault::QemuStuck { dur, .. }
            | Fault::AcquireStall { dur, .. }
            | Fault::Clone { dur, .. }
            | Fault::Pause { dur, .. } => *dur,
            _ => 0,
        }
    }
}

fn hl(hosts: &[u16]) -> String {
    hosts
        .iter()
        .map(|h| format!("h{h}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn t(us: Us) -> String {
    format!("{:.3}s", us as f64 / 1e6)
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |us: &Us| format!("{} ms", us / MS);
        match self {
            Fault::StorageCut {
                hosts,
                at,
                dur,
                data,
            } => write!(
                f,
                "{} storage cut {} for {}{}",
                t(*at),
                hl(hosts),
                d(dur),
                if *data {
                    " (lockspace and VM disks)"
                } else {
                    " (lockspace only)"
                }
            ),
            Fault::SlowIo {
                hosts,
                at,
                dur,
                extra_ms,
            } => write!(
                f,
                "{} slow storage {} for {}: +{extra_ms} ms per operation",
                t(*at),
                hl(hosts),
                d(dur)
            ),
            Fault::SlowHostTable {
                hosts,
                at,
                dur,
                extra_ms,
            } => write!(
                f,
                "{} slow host table {} for {}: +{extra_ms} ms per operation on it",
                t(*at),
                hl(hosts),
                d(dur)
            ),
            Fault::IoErrors { host, at, dur } => {
                write!(
                    f,
                    "{} lockspace I/O errors on h{host} for {}",
                    t(*at),
                    d(dur)
                )
            }
            Fault::ClusterFull { at, dur } => {
                write!(f, "{} cluster full (writes hang) for {}", t(*at), d(dur))
            }
            Fault::LockspaceReadOnly { host, at, dur } => write!(
                f,
                "{} lockspace read-only on h{host} for {} (reads and VM disks work)",
                t(*at),
                d(dur)
            ),
            Fault::MgmtCut { hosts, at, dur } => write!(
                f,
                "{} management network cut {} for {}",
                t(*at),
                hl(hosts),
                d(dur)
            ),
            Fault::HostCrash { host, at } => write!(f, "{} h{host} crashes (power loss)", t(*at)),
            Fault::HostFreeze { host, at, dur } => {
                write!(f, "{} h{host} freezes for {}", t(*at), d(dur))
            }
            Fault::DaemonKill { host, at, restart } => write!(
                f,
                "{} SIGKILL of h{host}'s watchdog daemon{}",
                t(*at),
                if *restart {
                    ", systemd restarts it"
                } else {
                    ", not restarted"
                }
            ),
            Fault::DaemonHang { host, at, dur } => {
                write!(
                    f,
                    "{} h{host}'s watchdog daemon hangs for {}",
                    t(*at),
                    d(dur)
                )
            }
            Fault::DaemonRestart { host, at } => {
                write!(
                    f,
                    "{} systemctl restart vmlease-watchdog on h{host}",
                    t(*at)
                )
            }
            Fault::QemuExit { vm, at } => write!(f, "{} QEMU of vm{vm} exits", t(*at)),
            Fault::AcquireStall { host, at, dur } => write!(
                f,
                "{} libvirtd's lease acquires on h{host} hang for {}",
                t(*at),
                d(dur)
            ),
            Fault::QemuStuck { vm, at, dur } => {
                write!(
                    f,
                    "{} QEMU of vm{vm} stuck in disk I/O for {}",
                    t(*at),
                    d(dur)
                )
            }
            Fault::Migrate { vm, at, to } => write!(f, "{} migrate vm{vm} to h{to}", t(*at)),
            Fault::Pause { vm, at, dur } => {
                write!(f, "{} pause vm{vm}, resume after {}", t(*at), d(dur))
            }
            Fault::RogueStart { vm, host, at } => {
                write!(f, "{} someone starts vm{vm} on h{host}", t(*at))
            }
            Fault::Destroy { vm, at } => write!(f, "{} virsh destroy vm{vm}", t(*at)),
            Fault::Clone {
                of,
                at,
                dur,
                same_name,
                stall,
            } => {
                write!(
                    f,
                    "{} a clone of h{of} ({}, host id {of}) boots, powered off after {}",
                    t(*at),
                    if *same_name {
                        "the same name"
                    } else {
                        "another name"
                    },
                    d(dur)
                )?;
                if *stall > 0 {
                    write!(f, "; h{of}'s renewals stall for {}", d(stall))?;
                }
                Ok(())
            }
            Fault::Blocklist { host, at, noop } => write!(
                f,
                "{} storage-fence h{host} (Ceph blocklist{})",
                t(*at),
                if *noop { " as a NO-OP" } else { "" }
            ),
        }
    }
}

/// The storage link of one host at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Up {
        extra_us: u64,
    },
    /// Partitioned until `until`; evicted (locks dropped, pending writes
    /// lost) at `evict_at` if the partition lasts that long.
    Cut {
        until: Us,
        evict_at: Option<Us>,
        data: bool,
    },
    /// Writes hang until `until`; reads work.
    WritesHang {
        until: Us,
    },
    /// Writes fail at once; reads work.
    ReadOnly,
    Errors,
}

#[derive(Debug, Clone)]
struct Span {
    start: Us,
    end: Us,
    kind: SpanKind,
}

#[derive(Debug, Clone, Copy)]
enum SpanKind {
    Cut { data: bool },
    Slow { extra_us: u64 },
    Errors,
    WritesHang,
    ReadOnly,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    pub faults: Vec<Fault>,
    storage: Vec<Vec<Span>>,
    /// Extra latency of host table operations: (start, end, extra µs).
    table: Vec<Vec<(Us, Us, Us)>>,
    mgmt: Vec<Vec<(Us, Us)>>,
    evict_us: Us,
}

impl Schedule {
    pub fn generate(rng: &mut Rng, p: &Params) -> Schedule {
        let mut faults = Vec::new();
        let start = p.fault_start_ms * MS;
        let end = p.fault_ms * MS;
        let t = &p.cfg.timing;
        let hosts: Vec<u16> = (1..=p.hosts).collect();
        for _ in 0..p.faults {
            let at = rng.range(start, end.saturating_sub(MS).max(start));
            // Durations around the protocol's own: shorter than F (no
            // fence), between F and D, and longer than D.
            let dur_ms = match rng.below(3) {
                0 => rng.range(t.renew_interval, t.renew_fail_timeout),
                1 => rng.range(t.renew_fail_timeout, t.host_dead_timeout),
                _ => rng.range(t.host_dead_timeout, 2 * t.host_dead_timeout),
            };
            let dur = (dur_ms * MS).min(end - at).max(MS);
            let host = *rng.pick(&hosts);
            let some_hosts = |rng: &mut Rng| -> Vec<u16> {
                let mut v: Vec<u16> = hosts.iter().copied().filter(|_| rng.chance(0.4)).collect();
                if v.is_empty() {
                    v.push(*rng.pick(&hosts));
                }
                v
            };
            let vm = rng.below(p.vms as u64) as usize;
            let fault = match rng.below(100) {
                0..=13 => Fault::StorageCut {
                    hosts: if rng.chance(0.7) {
                        vec![host]
                    } else {
                        some_hosts(rng)
                    },
                    at,
                    dur,
                    data: rng.chance(0.6),
                },
                14..=19 => Fault::SlowIo {
                    hosts: some_hosts(rng),
                    at,
                    dur,
                    extra_ms: rng.range(1, 2 * (p.cfg.io_timeout + p.cfg.lock_timeout)),
                },
                20..=21 => Fault::SlowHostTable {
                    hosts: some_hosts(rng),
                    at,
                    dur,
                    extra_ms: rng.range(1, 2 * (p.cfg.io_timeout + p.cfg.lock_timeout)),
                },
                22..=23 => Fault::IoErrors { host, at, dur },
                24..=25 => Fault::LockspaceReadOnly { host, at, dur },
                26..=28 => Fault::ClusterFull { at, dur },
                29..=36 => Fault::MgmtCut {
                    hosts: if rng.chance(0.7) {
                        vec![host]
                    } else {
                        some_hosts(rng)
                    },
                    at,
                    dur,
                },
                37..=41 => Fault::HostCrash { host, at },
                42..=45 => Fault::HostFreeze { host, at, dur },
                46..=51 => Fault::DaemonKill {
                    host,
                    at,
                    restart: rng.chance(0.8),
                },
                52..=55 => Fault::DaemonHang { host, at, dur },
                56..=61 => Fault::DaemonRestart { host, at },
                62..=67 => Fault::QemuExit { vm, at },
                68..=71 => Fault::QemuStuck { vm, at, dur },
                72..=81 => Fault::Migrate { vm, at, to: host },
                82..=89 => Fault::Pause { vm, at, dur },
                90..=95 => Fault::RogueStart { vm, host, at },
                _ => Fault::Destroy { vm, at },
            };
            faults.push(fault);
        }
        // A cloned host, drawn after every other fault so that those stay
        // what they were: booted with the cluster (a race for an empty
        // slot), or later, while the original's renewals stall for a
        // while (from R to past D).
        if rng.chance(CLONE_CHANCE) {
            let of = *rng.pick(&hosts);
            let same_name = rng.chance(0.5);
            let (at, stall) = if rng.chance(0.3) {
                (rng.range(0, 200) * MS, 0)
            } else {
                let at = rng.range(start, end.saturating_sub(MS).max(start));
                let stall = rng.range(t.renew_interval, t.host_dead_timeout + t.renew_fail_timeout);
                (at, stall * MS)
            };
            let dur = rng.range(t.host_dead_timeout, 3 * t.host_dead_timeout) * MS;
            faults.push(Fault::Clone {
                of,
                at,
                dur,
                same_name,
                stall,
            });
        }
        faults.sort_by_key(|f| f.at());
        // VMLEASE_SIM_FAULTS=-a,-b leaves kinds out (for studying a bug;
        // every run checked by CI and bench/sim-long has them all).
        if let Ok(filter) = std::env::var("VMLEASE_SIM_FAULTS") {
            let out: Vec<&str> = filter
                .split(',')
                .filter_map(|k| k.trim().strip_prefix('-'))
                .collect();
            faults.retain(|f| !out.contains(&f.kind()));
        }
        Schedule::from_faults(faults, p)
    }

    pub fn from_faults(faults: Vec<Fault>, p: &Params) -> Schedule {
        let clones = faults
            .iter()
            .filter(|f| matches!(f, Fault::Clone { .. }))
            .count();
        let n = p.hosts as usize + clones + 1;
        let mut storage = vec![Vec::new(); n];
        let mut table = vec![Vec::new(); n];
        let mut mgmt = vec![Vec::new(); n];
        for f in &faults {
            let (start, end) = (f.at(), f.at() + f.dur());
            match f {
                Fault::StorageCut { hosts, data, .. } => {
                    for &h in hosts {
                        storage[h as usize].push(Span {
                            start,
                            end,
                            kind: SpanKind::Cut { data: *data },
                        });
                    }
                }
                Fault::SlowIo {
                    hosts, extra_ms, ..
                } => {
                    for &h in hosts {
                        storage[h as usize].push(Span {
                            start,
                            end,
                            kind: SpanKind::Slow {
                                extra_us: extra_ms * MS,
                            },
                        });
                    }
                }
                Fault::SlowHostTable {
                    hosts, extra_ms, ..
                } => {
                    for &h in hosts {
                        table[h as usize].push((start, end, extra_ms * MS));
                    }
                }
                Fault::IoErrors { host, .. } => storage[*host as usize].push(Span {
                    start,
                    end,
                    kind: SpanKind::Errors,
                }),
                Fault::LockspaceReadOnly { host, .. } => storage[*host as usize].push(Span {
                    start,
                    end,
                    kind: SpanKind::ReadOnly,
                }),
                Fault::ClusterFull { .. } => {
                    for s in storage.iter_mut().skip(1) {
                        s.push(Span {
                            start,
                            end,
                            kind: SpanKind::WritesHang,
                        });
                    }
                }
                Fault::MgmtCut { hosts, .. } => {
                    for &h in hosts {
                        mgmt[h as usize].push((start, end));
                    }
                }
                Fault::Clone { of, stall, .. } if *stall > 0 => {
                    storage[*of as usize].push(Span {
                        start,
                        end: start + stall,
                        kind: SpanKind::Cut { data: false },
                    });
                }
                Fault::Blocklist {
                    host, noop: false, ..
                } => {
                    storage[*host as usize].push(Span {
                        start,
                        end: Us::MAX / 4,
                        kind: SpanKind::Cut { data: true },
                    });
                }
                _ => {}
            }
        }
        Schedule {
            faults,
            storage,
            table,
            mgmt,
            evict_us: p.evict_ms * MS,
        }
    }

    /// The schedule with only the faults whose index is in `keep`.
    pub fn subset(&self, keep: &[usize], p: &Params) -> Schedule {
        let faults = keep.iter().map(|&i| self.faults[i].clone()).collect();
        Schedule::from_faults(faults, p)
    }

    /// The storage link of host `h` at `t`.
    pub fn link(&self, h: u16, t: Us) -> Link {
        let mut extra = 0;
        let mut hang: Option<Us> = None;
        let mut errors = false;
        let mut read_only = false;
        let mut cut: Option<(Us, Us, bool)> = None;
        for s in &self.storage[h as usize] {
            if s.start <= t && t < s.end {
                match s.kind {
                    SpanKind::Cut { data } => {
                        // Overlapping cuts: the link is back when the last
                        // one ends; eviction counts from the first.
                        let (st, en, d) = cut.unwrap_or((s.start, s.end, data));
                        cut = Some((st.min(s.start), en.max(s.end), d || data));
                    }
                    SpanKind::Slow { extra_us } => extra += extra_us,
                    SpanKind::Errors => errors = true,
                    SpanKind::ReadOnly => read_only = true,
                    SpanKind::WritesHang => hang = Some(hang.unwrap_or(0).max(s.end)),
                }
            }
        }
        if let Some((start, until, data)) = cut {
            let until = self.cut_end(h, until);
            let evict = start + self.evict_us;
            return Link::Cut {
                until,
                evict_at: (evict < until).then_some(evict),
                data,
            };
        }
        if let Some(until) = hang {
            return Link::WritesHang { until };
        }
        if errors {
            return Link::Errors;
        }
        if read_only {
            return Link::ReadOnly;
        }
        Link::Up { extra_us: extra }
    }

    /// Cuts chained back to back end when the last one ends.
    fn cut_end(&self, h: u16, mut until: Us) -> Us {
        loop {
            let mut next = until;
            for s in &self.storage[h as usize] {
                if let SpanKind::Cut { .. } = s.kind {
                    if s.start <= until && s.end > next {
                        next = s.end;
                    }
                }
            }
            if next == until {
                return until;
            }
            until = next;
        }
    }

    /// The first instant in `(from, to)` at which host `h`'s link stops
    /// carrying operations of this kind (a cut, or for writes a hang).
    pub fn next_stall(&self, h: u16, from: Us, to: Us, write: bool) -> Option<Us> {
        self.storage[h as usize]
            .iter()
            .filter(|s| match s.kind {
                SpanKind::Cut { .. } => true,
                SpanKind::WritesHang => write,
                _ => false,
            })
            .map(|s| s.start)
            .filter(|&s| s > from && s < to)
            .min()
    }

    /// Extra latency of one host table operation of host `h` at `t`.
    pub fn table_extra(&self, h: u16, t: Us) -> Us {
        self.table[h as usize]
            .iter()
            .filter(|&&(s, e, _)| s <= t && t < e)
            .map(|&(_, _, x)| x)
            .sum()
    }

    pub fn mgmt_up(&self, h: u16, t: Us) -> bool {
        !self.mgmt[h as usize].iter().any(|&(s, e)| s <= t && t < e)
    }

    /// The host index of the clone that fault `i` boots: clones follow the
    /// cluster's hosts, in the order of their faults.
    pub fn clone_host(&self, p: &Params, i: usize) -> u16 {
        let before = self.faults[..i]
            .iter()
            .filter(|f| matches!(f, Fault::Clone { .. }))
            .count();
        p.hosts + 1 + before as u16
    }

    /// When the last fault ends.
    pub fn heal_time(&self, p: &Params) -> Us {
        self.faults
            .iter()
            .map(|f| match f {
                Fault::Clone { stall, .. } => f.at() + f.dur().max(*stall),
                _ => f.at() + f.dur(),
            })
            .max()
            .unwrap_or(0)
            .max(p.fault_ms * MS)
    }
}
