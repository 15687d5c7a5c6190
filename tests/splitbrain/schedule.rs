//! One schedule: start the three daemons on a fresh lockspace, run the HA
//! controller, inject random faults from a seeded RNG, heal them, then
//! stop everything and check every disk for two live writers.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::checker;
use crate::needless::{self, FaultRec, FenceEvent};
use crate::peer_fence;
use crate::support::daemons;
use crate::support::rng::Rng;
use crate::world::{Instance, Shared, World, HOSTS, MGMT_TIMEOUT_S, R, VMS, WRITE_INTERVAL_MS};
use vmlease::clock::boottime_ms;
use vmlease::hosts::HostState;
use vmlease::lockspace::Lockspace;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    CephHang,
    LinkDown,
    MgmtDown,
    DaemonKill,
    DaemonStop,
    QemuKill,
    DupStart,
    /// Cut off (both links), then storage-fenced by a peer (peer_fence.rs).
    PeerFence,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::CephHang => "ceph-fuse-hang",
            Kind::LinkDown => "storage-link-down",
            Kind::MgmtDown => "mgmt-link-down",
            Kind::DaemonKill => "daemon-sigkill",
            Kind::DaemonStop => "daemon-sigstop",
            Kind::QemuKill => "qemu-kill",
            Kind::DupStart => "concurrent-start",
            Kind::PeerFence => "blocklisted-by-peer",
        }
    }
    pub fn storage(self) -> bool {
        matches!(self, Kind::CephHang | Kind::LinkDown | Kind::PeerFence)
    }
    /// Faults of one class do not overlap on a host; of different
    /// classes they may (storage + management lost together).
    fn class(self) -> u8 {
        match self {
            Kind::CephHang | Kind::LinkDown => 0,
            // Both links.
            Kind::PeerFence => 0,
            Kind::MgmtDown => 1,
            _ => 2,
        }
    }
}

#[derive(Default)]
pub struct Stats {
    pub faults: BTreeMap<&'static str, u32>,
    pub started: u32,
    pub refused: u32,
    pub moved: u32,
    pub evacuate_yes: u32,
    /// Management cuts the host's daemon reported (its status said
    /// `mgmt-isolated`, or host 1 fenced for "management network lost").
    pub mgmt_noticed: u32,
    pub dup_both: u32,
    /// Peer storage fences that wrote their verdict, and of those, the
    /// ones whose host's CephFS client the MDS had blocklisted already
    /// (its own eviction of a client that holds capabilities others need).
    pub peer_fences: u32,
    pub mds_blocklisted: u32,
    /// RADOS disks (schedules with `rados_disks`): records checked, the
    /// violations found on them (also in `violations`), and the records
    /// a storage-fenced host's instances issued after the verdict (each
    /// a write the blocklist should have refused).
    pub rados_records: usize,
    pub rados_violations: usize,
    pub rados_after_verdict: usize,
    pub resets: u32,
    pub reboots: u32,
    pub killed: BTreeMap<&'static str, u32>,
    pub records: usize,
    /// All-zero records: appends that lost their data (see checker.rs).
    pub holes: usize,
    pub violations: Vec<String>,
    /// (storage fault -> VM killed, -> VM running elsewhere) in ms.
    pub failovers: Vec<(u64, Option<u64>)>,
    /// The same for a management link cut on the host whose management
    /// policy is `fence` (host 1).
    pub mgmt_failovers: Vec<(u64, Option<u64>)>,
    /// Hosts that fenced (or were reset by their watchdog), once per
    /// host and daemon start.
    pub fences: u32,
    /// Needless fences (see [`needless`]) by the kind of fault on another
    /// host that caused them ("unknown" when none was active).
    pub needless: BTreeMap<&'static str, u32>,
    /// One line per needless fence: host, when, its reason, the causes.
    pub needless_list: Vec<String>,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        for (k, v) in &o.faults {
            *self.faults.entry(k).or_default() += v;
        }
        for (k, v) in &o.killed {
            *self.killed.entry(k).or_default() += v;
        }
        self.started += o.started;
        self.refused += o.refused;
        self.moved += o.moved;
        self.evacuate_yes += o.evacuate_yes;
        self.mgmt_noticed += o.mgmt_noticed;
        self.dup_both += o.dup_both;
        self.peer_fences += o.peer_fences;
        self.mds_blocklisted += o.mds_blocklisted;
        self.rados_records += o.rados_records;
        self.rados_violations += o.rados_violations;
        self.rados_after_verdict += o.rados_after_verdict;
        self.resets += o.resets;
        self.reboots += o.reboots;
        self.records += o.records;
        self.holes += o.holes;
        self.violations.extend(o.violations.iter().cloned());
        self.failovers.extend(o.failovers.iter().cloned());
        self.mgmt_failovers.extend(o.mgmt_failovers.iter().cloned());
        self.fences += o.fences;
        for (k, v) in &o.needless {
            *self.needless.entry(k).or_default() += v;
        }
        self.needless_list.extend(o.needless_list.iter().cloned());
    }

    pub fn needless_total(&self) -> u32 {
        self.needless.values().sum()
    }

    pub fn line(&self) -> String {
        format!(
            "faults {:?}; VMs started {} (refused {}, moved to another host {}), killed {:?}, \
             can-evacuate yes {}, management cuts noticed {}, concurrent starts both ok {}, host resets {}, reboots {}, \
             peer storage fences {} (client already blocklisted by the MDS {}), \
             fences {}, needless fences {} {:?}, records {} (all-zero {}), RADOS disk records {} \
             (violations {}, from a storage-fenced host after its verdict {}), violations {}",
            self.faults,
            self.started,
            self.refused,
            self.moved,
            self.killed,
            self.evacuate_yes,
            self.mgmt_noticed,
            self.dup_both,
            self.resets,
            self.reboots,
            self.peer_fences,
            self.mds_blocklisted,
            self.fences,
            self.needless_total(),
            self.needless,
            self.records,
            self.holes,
            self.rados_records,
            self.rados_violations,
            self.rados_after_verdict,
            self.violations.len()
        )
    }
}

/// The stand-in's option for VM `v`'s RADOS disk, written from host
/// `h`'s network namespace as its own Ceph client.
fn rados_arg(sh: &Shared, h: usize, v: usize) -> String {
    format!(
        "rados={}:{}:sbh{}:{}:{}",
        sh.netns[h],
        sh.ceph_conf.display(),
        h + 1,
        crate::world::RADOS_POOL,
        sh.rados_object(v)
    )
}

/// With RADOS disks, when host `h` is cut off for a peer's storage fence:
/// for each of its VMs running, a writer of that instance's RADOS disk
/// that neither its daemon nor its reset stops, from `h`'s namespace:
/// the host going on writing whatever it does, which rule 5 says the
/// blocklist makes harmless (every write after the verdict refused). It
/// is stopped before the links come back when no verdict was written (then
/// only rule 4 frees the VM, which needs the host to stop its writers), and
/// before the operator removes the blocklist entry. With the no-op
/// blocklist its writes land after the VM was started elsewhere.
fn writers_beyond_fence(sh: &Shared, h: usize) -> Vec<(usize, i32)> {
    if !sh.rados.load(Ordering::SeqCst) {
        return Vec::new();
    }
    let insts = sh.instances.lock().unwrap();
    let mut out = Vec::new();
    for i in insts
        .iter()
        .filter(|i| i.host == h && i.exited_ms.is_none())
    {
        let pid = Command::new(&sh.writer)
            .args([
                "/nonexistent".to_string(),
                (h + 1).to_string(),
                i.vm.to_string(),
                i.inc.to_string(),
                WRITE_INTERVAL_MS.to_string(),
                "now".into(),
                rados_arg(sh, h, i.vm),
                "rados-only".into(),
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn a RADOS writer beyond the fence")
            .id() as i32;
        eprintln!(
            "  [{}] vm{} (incarnation {}) on host {}: a RADOS writer that only the blocklist stops (pid {pid})",
            boottime_ms(),
            i.vm,
            i.inc,
            h + 1
        );
        out.push((h, pid));
    }
    out
}

/// Stops (SIGKILL, reaped) the writers beyond the fence of host `h`.
fn stop_writers(w: &mut Vec<(usize, i32)>, h: usize) {
    w.retain(|&(host, pid)| {
        if host != h {
            return true;
        }
        // SAFETY: our own child, not reaped yet; reaped right after.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        false
    });
}

/// libvirt's start of VM `v` on host `h` through the plugin ABI; Ok when
/// the lease was acquired and the stand-in runs.
fn start(sh: &Shared, v: usize, h: usize, stats: &Mutex<Stats>) -> bool {
    if sh.hosts[h].lock().unwrap().down_since.is_some() {
        return false;
    }
    let inc = sh.next_inc.fetch_add(1, Ordering::SeqCst);
    let disk = sh.disk_path(h, v);
    let disabled = sh.fencing_disabled.load(Ordering::SeqCst);
    let mut args: Vec<String> = vec![
        disk.display().to_string(),
        (h + 1).to_string(),
        v.to_string(),
        inc.to_string(),
        WRITE_INTERVAL_MS.to_string(),
    ];
    if sh.rados.load(Ordering::SeqCst) && !disabled {
        args.push(rados_arg(sh, h, v));
    }
    if inc % 2 == 1 {
        // Every other instance writes on after its main thread (the
        // registered pid) has exited: a zombie leader is not a dead QEMU.
        args.push("leader-exits".into());
    }
    let argv: Vec<CString> = if disabled {
        // The registered "QEMU" is not the writer: the writer escapes the
        // daemon's kill (fencing disabled).
        vec![c"/bin/sleep".into(), c"100000".into()]
    } else {
        std::iter::once(sh.writer.display().to_string())
            .chain(args.iter().cloned())
            .map(|s| CString::new(s).unwrap())
            .collect()
    };
    match sh.plugins[h].start(&sh.doms[v], &argv) {
        Ok(st) => {
            let escaped = disabled.then(|| {
                Command::new(&sh.writer)
                    .args(&args)
                    .arg("now")
                    .stdin(Stdio::null())
                    .spawn()
                    .expect("spawn the escaped writer")
                    .id() as i32
            });
            let now = boottime_ms();
            let mut insts = sh.instances.lock().unwrap();
            let prev = insts
                .iter()
                .filter(|i| i.vm == v)
                .map(|i| i.host)
                .next_back();
            insts.push(Instance {
                vm: v,
                inc,
                host: h,
                pid: st.pid,
                escaped,
                started_ms: now,
                exited_ms: None,
                escaped_exited: false,
                killed_by: None,
            });
            drop(insts);
            // A reset that came during the start missed this one: play it.
            if sh.hosts[h].lock().unwrap().down_since.is_some() {
                for p in [Some(st.pid), escaped].into_iter().flatten() {
                    // SAFETY: our own unreaped children.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
            st.go();
            let mut s = stats.lock().unwrap();
            s.started += 1;
            if prev.is_some_and(|p| p != h) {
                s.moved += 1;
            }
            eprintln!(
                "  [{now}] vm{v} started on host {} (incarnation {inc})",
                h + 1
            );
            true
        }
        Err((pid, _)) => {
            if let Some(p) = pid {
                // SAFETY: waitpid on our own SIGKILLed child.
                unsafe { libc::waitpid(p, std::ptr::null_mut(), 0) };
            }
            stats.lock().unwrap().refused += 1;
            false
        }
    }
}

/// `vmlease --config CONF(from) can-evacuate HOST`: exit 0 = yes. The
/// CLI answers within its deadline even on a hung mount, but its I/O
/// thread may stay in uninterruptible sleep there, so that the process
/// cannot be reaped until the mount answers: such a straggler counts as
/// "no" and is reaped after the faults are healed.
fn can_evacuate(sh: &Shared, from: usize, h: usize, stragglers: &mut Vec<Child>) -> bool {
    let mut c = Command::new(daemons::bin("vmlease"))
        .arg("--config")
        .arg(&sh.confs[from])
        .args(["can-evacuate", &(h + 1).to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vmlease can-evacuate");
    let t = boottime_ms();
    while boottime_ms() - t < 8000 {
        if let Ok(Some(st)) = c.try_wait() {
            return st.success();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stragglers.push(c);
    false
}

/// Where the controller believes VM `v` runs: its newest instance's host
/// while that instance is alive, or while its host is unreachable (a
/// controller cannot see a VM die on a host it cannot reach; it must ask
/// `vmlease can-evacuate`).
fn alive_host(sh: &Shared, v: usize) -> Option<usize> {
    let insts = sh.instances.lock().unwrap();
    let i = insts.iter().filter(|i| i.vm == v).max_by_key(|i| i.inc)?;
    let alive = insts.iter().any(|j| j.vm == v && j.exited_ms.is_none());
    if alive {
        return insts
            .iter()
            .filter(|j| j.vm == v && j.exited_ms.is_none())
            .map(|j| j.host)
            .next_back();
    }
    sh.unreachable.lock().unwrap()[i.host].then_some(i.host)
}

/// A host the controller may start VMs on.
fn reachable(sh: &Shared, h: usize) -> bool {
    up(sh, h) && !sh.unreachable.lock().unwrap()[h]
}

fn up(sh: &Shared, h: usize) -> bool {
    sh.hosts[h].lock().unwrap().down_since.is_none()
}

/// The HA controller: restarts VMs that are not running (on a random
/// host), and evacuates the VMs of a host `vmlease can-evacuate` calls
/// safe. The plugin is the final guard: it must refuse every start while
/// the lease is held. Every start and every can-evacuate runs in a thread
/// of its own, so that a host whose storage hangs does not hold up the
/// others (each call is bounded by the plugin's and the CLI's deadlines).
// Hosts and VMs index several arrays at once.
#[allow(clippy::needless_range_loop)]
fn controller(
    sh: Arc<Shared>,
    seed: u64,
    stats: Arc<Mutex<Stats>>,
    dup: Arc<Mutex<Vec<usize>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<Child> {
    let stragglers = Arc::new(Mutex::new(Vec::new()));
    let busy_vm = Arc::new(Mutex::new([false; VMS]));
    let busy_host = Arc::new(Mutex::new([false; HOSTS]));
    let mut rng = Rng::new(seed ^ 0xC0_47_20_11);
    let mut last_try = [0u64; VMS];
    let mut last_evac = [0u64; HOSTS];
    let mut threads = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let now = boottime_ms();
        let requests: Vec<usize> = dup.lock().unwrap().drain(..).collect();
        for v in requests {
            let a = rng.below(HOSTS as u64) as usize;
            let b = (a + 1 + rng.below(HOSTS as u64 - 1) as usize) % HOSTS;
            let (sh, stats) = (sh.clone(), stats.clone());
            threads.push(std::thread::spawn(move || {
                let (ra, rb) = std::thread::scope(|s| {
                    let ta = s.spawn(|| start(&sh, v, a, &stats));
                    let tb = s.spawn(|| start(&sh, v, b, &stats));
                    (ta.join().unwrap(), tb.join().unwrap())
                });
                eprintln!(
                    "  [{now}] concurrent start of vm{v} on hosts {} and {}: {ra} / {rb}",
                    a + 1,
                    b + 1
                );
                if ra && rb {
                    stats.lock().unwrap().dup_both += 1;
                }
            }));
        }
        for v in 0..VMS {
            if alive_host(&sh, v).is_none() && now - last_try[v] > 300 {
                if std::mem::replace(&mut busy_vm.lock().unwrap()[v], true) {
                    continue;
                }
                last_try[v] = now;
                let ok: Vec<usize> = (0..HOSTS).filter(|&h| reachable(&sh, h)).collect();
                let h = if ok.is_empty() {
                    rng.below(HOSTS as u64) as usize
                } else {
                    ok[rng.below(ok.len() as u64) as usize]
                };
                let (sh, stats, busy_vm) = (sh.clone(), stats.clone(), busy_vm.clone());
                threads.push(std::thread::spawn(move || {
                    start(&sh, v, h, &stats);
                    busy_vm.lock().unwrap()[v] = false;
                }));
            }
        }
        for h in 0..HOSTS {
            if now - last_evac[h] < 1000 {
                continue;
            }
            let vms: Vec<usize> = (0..VMS)
                .filter(|&v| alive_host(&sh, v) == Some(h))
                .collect();
            let others: Vec<usize> = (0..HOSTS)
                .filter(|&o| o != h && reachable(&sh, o))
                .collect();
            if vms.is_empty()
                || others.is_empty()
                || std::mem::replace(&mut busy_host.lock().unwrap()[h], true)
            {
                continue;
            }
            last_evac[h] = now;
            let o = others[rng.below(others.len() as u64) as usize];
            let (sh, stats, busy_host, busy_vm, stragglers) = (
                sh.clone(),
                stats.clone(),
                busy_host.clone(),
                busy_vm.clone(),
                stragglers.clone(),
            );
            threads.push(std::thread::spawn(move || {
                let mut st = Vec::new();
                if can_evacuate(&sh, o, h, &mut st) {
                    stats.lock().unwrap().evacuate_yes += 1;
                    eprintln!(
                        "  [{}] host {} says host {} may be evacuated: {vms:?}",
                        boottime_ms(),
                        o + 1,
                        h + 1
                    );
                    for v in vms {
                        if !std::mem::replace(&mut busy_vm.lock().unwrap()[v], true) {
                            start(&sh, v, o, &stats);
                            busy_vm.lock().unwrap()[v] = false;
                        }
                    }
                }
                stragglers.lock().unwrap().extend(st);
                busy_host.lock().unwrap()[h] = false;
            }));
        }
        threads.retain(|t| !t.is_finished());
        std::thread::sleep(Duration::from_millis(100));
    }
    for t in threads {
        t.join().expect("a controller thread");
    }
    let v = std::mem::take(&mut *stragglers.lock().unwrap());
    v
}

/// The controller thread, stopped and joined also when the schedule
/// panics (before the world's drop kills the stand-ins, so that none is
/// started after that).
struct Controller {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Child>>>,
}

impl Controller {
    fn stop(&mut self) -> Vec<Child> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(v)) => v,
            Some(Err(_)) => panic!("the controller thread panicked"),
            None => Vec::new(),
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Active {
    kind: Kind,
    host: usize,
    /// Its entry in the schedule's fault log.
    log: usize,
    heal_at: u64,
    pid: i32,
    /// A management cut the host's daemon has reported.
    noticed: bool,
    /// PeerFence: the fencing host, and when its verdict was written.
    peer: usize,
    fenced_at: Option<u64>,
}

/// Runs one schedule of `secs` seconds; returns its stats.
#[allow(clippy::needless_range_loop)]
pub fn run(w: &mut World, n: usize, seed: u64, secs: u64, disabled: bool) -> Stats {
    let sh = w.sh.clone();
    eprintln!(
        "=== schedule {n} seed={seed} fencing={} (replay: VMLEASE_SPLITBRAIN_SEED={seed}{})",
        if disabled { "DISABLED" } else { "on" },
        if disabled {
            " VMLEASE_SPLITBRAIN_FENCING=off"
        } else {
            ""
        }
    );
    let mut rng = Rng::new(seed);
    sh.fencing_disabled.store(disabled, Ordering::SeqCst);
    // A fresh lockspace and disk directory, through the checker's client.
    let ls = w.check_mount.path.join("ls");
    let _ = fs::remove_dir_all(&ls);
    Lockspace::init(&ls, 16).unwrap();
    let disks = format!("disks-{n}-{seed}");
    fs::create_dir_all(w.check_mount.path.join(&disks)).unwrap();
    *sh.disks.lock().unwrap() = disks.clone();
    sh.instances.lock().unwrap().clear();
    for h in 0..HOSTS {
        // A client that lived through a storage fault may have been
        // evicted (blocklisted), and a host reset at the end of the last
        // schedule (before the operator brought it back) lost its client
        // with the reset: give the host a fresh one.
        let down = sh.hosts[h].lock().unwrap().down_since.is_some();
        if std::mem::take(&mut w.suspect[h]) || down {
            w.remount(h);
        }
        w.start_daemon(h);
    }
    // With Ceph's default MDS settings a capability hand-over between
    // healthy clients can take an MDS tick (5 s), longer than the daemon's
    // io_timeout: its first access to the new lockspace may time out and
    // it exits, to be started again as systemd's Restart= would.
    let protect_ms = if w.ceph_defaults { 120_000 } else { 30_000 };
    for h in 0..HOSTS {
        let cfg = w.hosts[h].cfg.clone();
        let log = w.hosts[h].log.clone();
        let t = boottime_ms();
        loop {
            let why = match vmlease::status::protected_status(&cfg) {
                Ok(_) => break,
                Err(e) => e.to_string(),
            };
            assert!(
                boottime_ms() - t < protect_ms,
                "timed out after {protect_ms} ms waiting for host {} to be protected; last \
                 seen: {why}; daemon log:\n{}",
                h + 1,
                support_tail(&log)
            );
            let gone = w.hosts[h].daemon.as_mut().is_some_and(|d| d.exited());
            if gone && w.ceph_defaults {
                eprintln!(
                    "  [{}] host {}'s daemon exited at its start ({why}); starting it again",
                    boottime_ms(),
                    h + 1
                );
                w.restart_daemon(h);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let stats = Arc::new(Mutex::new(Stats::default()));
    let dup = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut ctl = Controller {
        stop: stop.clone(),
        thread: Some({
            let (sh, stats, dup, stop) = (sh.clone(), stats.clone(), dup.clone(), stop.clone());
            std::thread::spawn(move || controller(sh, seed, stats, dup, stop))
        }),
    };
    let t0 = boottime_ms();
    let end = t0 + secs * 1000;
    // Give the controller a moment to start every VM before the first fault.
    let mut next_fault = t0 + 3000;
    let mut active: Vec<Active> = Vec::new();
    // Faults after which the host must kill its VMs: (host, when, storage?).
    let mut fence_events: Vec<(usize, u64, bool)> = Vec::new();
    let mut fenced_since = [None::<u64>; HOSTS];
    let mut first_kill = disabled;
    let mut fault_log: Vec<FaultRec> = Vec::new();
    // Fences seen, once per host and daemon start; resets seen.
    let mut fence_seen = [false; HOSTS];
    let mut resets_seen = [0usize; HOSTS];
    let mut fence_log: Vec<FenceEvent> = Vec::new();
    // With RADOS disks, no storage-link cut without a blocklist: a writer
    // killed while its link is down leaves its last append in the kernel's
    // socket buffer, and TCP delivers it when the link comes back, after a
    // takeover by rule 4 (D) if the cut lasted that long; nothing in RADOS
    // refuses it (on CephFS the MDS's eviction does). The schedules without
    // RADOS disks keep the fault.
    let kinds = [
        (Kind::CephHang, 3),
        (Kind::LinkDown, if w.rados_disks { 0 } else { 3 }),
        (Kind::MgmtDown, 3),
        (Kind::DaemonKill, 2),
        (Kind::DaemonStop, 2),
        (Kind::QemuKill, 3),
        (Kind::DupStart, 2),
        (Kind::PeerFence, 2),
    ];
    // Hosts storage-fenced by a peer: the blocklist and the verdict go
    // once the host is down (reset) or the schedule is over.
    let mut to_clear = [false; HOSTS];
    let mut first_fence = w.blocklist_noop || w.rados_disks;
    sh.rados.store(w.rados_disks && !disabled, Ordering::SeqCst);
    // Verdicts written: (host, when).
    let mut verdicts: Vec<(usize, u64)> = Vec::new();
    // RADOS writers that only a blocklist stops: (host, pid).
    let mut beyond: Vec<(usize, i32)> = Vec::new();
    let total: u64 = kinds.iter().map(|k| k.1).sum();
    loop {
        let now = boottime_ms();
        if now >= end {
            break;
        }
        // A peer storage-fences a cut-off host once it has been silent for
        // 3R + 1 s (the CLI refuses before); its links come back soon after.
        for i in 0..active.len() {
            let a = &active[i];
            let cut = fault_log[a.log].start;
            if a.kind != Kind::PeerFence || a.fenced_at.is_some() || now - cut < 3 * R + 1000 {
                continue;
            }
            let (h, p) = (a.host, a.peer);
            match peer_fence::fence(w, p, h, now - cut, w.blocklist_noop) {
                Ok(()) => {
                    let t = boottime_ms();
                    let mds = peer_fence::client_blocklisted(w, h);
                    {
                        let mut st = stats.lock().unwrap();
                        st.peer_fences += 1;
                        st.mds_blocklisted += u32::from(mds);
                    }
                    eprintln!(
                        "  [{t}] host {} storage-fenced host {} ({} ms after the cut{}; its CephFS \
                         client blocklisted by the MDS already: {mds})",
                        p + 1,
                        h + 1,
                        t - cut,
                        if w.blocklist_noop {
                            "; NO-OP blocklist"
                        } else {
                            ""
                        }
                    );
                    to_clear[h] = true;
                    verdicts.push((h, t));
                    active[i].fenced_at = Some(t);
                    active[i].heal_at = t + rng.range(300, 2000);
                }
                Err(why) => {
                    let why = why.lines().next().unwrap_or("").to_string();
                    eprintln!("  [{now}] storage fence of host {} refused: {why}", h + 1);
                    // A fence that failed after its blocklist step (e.g. no
                    // answer in time) may have left the entry: the operator
                    // removes it with the host's reboot, as after a verdict
                    // (removing an absent entry is harmless).
                    to_clear[h] = true;
                }
            }
        }
        // Heal what is due.
        let mut i = 0;
        while i < active.len() {
            if active[i].heal_at <= now {
                let a = active.remove(i);
                if a.kind == Kind::PeerFence && a.fenced_at.is_none() {
                    stop_writers(&mut beyond, a.host);
                }
                heal(w, &a);
                fault_log[a.log].healed = Some(boottime_ms());
            } else {
                i += 1;
            }
        }
        if now >= next_fault {
            next_fault = now + rng.range(1000, 6000);
            let mut r = rng.below(total);
            let mut kind = kinds[0].0;
            for (k, wgt) in kinds {
                if r < wgt {
                    kind = k;
                    break;
                }
                r -= wgt;
            }
            let mut h = rng.below(HOSTS as u64) as usize;
            if first_fence {
                // The no-op blocklist self-test: a fenced host with a VM.
                kind = Kind::PeerFence;
                // Preferably a host whose management policy is `report`
                // (host 1 fences at the management timeout, before any
                // verdict, so its VMs are dead by then).
                let insts = sh.instances.lock().unwrap();
                let live: Vec<usize> = insts
                    .iter()
                    .filter(|i| i.exited_ms.is_none())
                    .map(|i| i.host)
                    .collect();
                drop(insts);
                if let Some(&x) = live.iter().find(|&&x| x != 0).or(live.first()) {
                    h = x;
                    first_fence = false;
                }
            }
            if first_kill {
                // Fencing disabled: make sure a QEMU is killed and restarted.
                kind = Kind::QemuKill;
                if let Some(i) = sh
                    .instances
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|i| i.exited_ms.is_none())
                {
                    h = i.host;
                    first_kill = false;
                }
            }
            let busy = active
                .iter()
                .any(|a| a.host == h && a.kind.class() == kind.class())
                || !up(&sh, h);
            if !busy {
                if let Some(mut a) = inject(w, &mut rng, kind, h, &dup) {
                    *stats.lock().unwrap().faults.entry(kind.name()).or_default() += 1;
                    a.log = fault_log.len();
                    fault_log.push(FaultRec {
                        kind,
                        host: h,
                        start: now,
                        healed: (a.heal_at == 0).then_some(now),
                    });
                    if kind.storage() {
                        w.suspect[h] = true;
                        fence_events.push((h, now, true));
                    } else if kind == Kind::MgmtDown && h == 0 {
                        fence_events.push((h, now, false));
                    }
                    if kind == Kind::PeerFence {
                        beyond.extend(writers_beyond_fence(&sh, h));
                    }
                    if a.heal_at > 0 {
                        active.push(a);
                    }
                }
            }
        }
        // Has the daemon noticed its management cut?
        for a in active.iter_mut() {
            if a.kind == Kind::MgmtDown && !a.noticed {
                a.noticed = w.status(a.host).is_some_and(|s| {
                    s.state == HostState::MgmtIsolated
                        || (matches!(s.state, HostState::Fencing | HostState::FencedClean)
                            && s.reason.contains("management"))
                });
                if a.noticed {
                    stats.lock().unwrap().mgmt_noticed += 1;
                    eprintln!(
                        "  [{now}] host {} reports its management network lost",
                        a.host + 1
                    );
                }
            }
        }
        // Fences: the daemon's status says so, or a reset it did not
        // announce (its watchdog fired).
        for h in 0..HOSTS {
            let resets: Vec<String> = {
                let hs = sh.hosts[h].lock().unwrap();
                hs.resets[resets_seen[h].min(hs.resets.len())..].to_vec()
            };
            resets_seen[h] += resets.len();
            if fence_seen[h] {
                continue;
            }
            let reason = match w.status(h) {
                Some(s) if matches!(s.state, HostState::Fencing | HostState::FencedClean) => {
                    Some(format!("{}: {}", s.state, s.reason))
                }
                _ => resets
                    .iter()
                    .find(|r| !r.starts_with("operator"))
                    .map(|r| format!("reset: {r}")),
            };
            if let Some(reason) = reason {
                fence_seen[h] = true;
                fence_log.push(FenceEvent {
                    host: h,
                    at: boottime_ms(),
                    reason,
                });
            }
        }
        // What the controller can reach: no fault on the host's storage,
        // management link or daemon, not down.
        for h in 0..HOSTS {
            let cut = active.iter().any(|a| a.host == h) || !up(&sh, h);
            sh.unreachable.lock().unwrap()[h] = cut;
        }
        // The operator: power-cycle a fenced host once its faults are
        // healed; bring a reset host back.
        for h in 0..HOSTS {
            let faulty = active.iter().any(|a| a.host == h);
            let down = sh.hosts[h].lock().unwrap().down_since;
            if let Some(t) = down {
                // The monitor may have set it after `now` was read.
                if !faulty && now.saturating_sub(t) > 1000 {
                    if std::mem::take(&mut to_clear[h]) {
                        stop_writers(&mut beyond, h);
                        peer_fence::clear(w, h);
                    }
                    w.reboot(h);
                    fence_seen[h] = false;
                    stats.lock().unwrap().reboots += 1;
                    fenced_since[h] = None;
                    eprintln!("  [{}] host {} rebooted", boottime_ms(), h + 1);
                }
                continue;
            }
            if !faulty && w.fenced(h) {
                let t = *fenced_since[h].get_or_insert(now);
                if now - t > 2000 {
                    sh.reset(h, "operator: power-cycling the fenced host");
                }
            } else {
                fenced_since[h] = None;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let stragglers = ctl.stop();
    *sh.unreachable.lock().unwrap() = [false; HOSTS];
    for a in active.drain(..) {
        if a.kind == Kind::PeerFence && a.fenced_at.is_none() {
            stop_writers(&mut beyond, a.host);
        }
        heal(w, &a);
        fault_log[a.log].healed = Some(boottime_ms());
    }
    for mut c in stragglers {
        let pid = c.id();
        let t = boottime_ms();
        while !matches!(c.try_wait(), Ok(Some(_))) {
            assert!(
                boottime_ms() - t < 60_000,
                "vmlease can-evacuate (pid {pid}) still not reapable 60 s after the faults were healed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    sh.kill_all("end");
    // The blocklist entries go once nothing of the fenced hosts writes any
    // more (a RADOS writer beyond the fence would write again).
    for h in 0..HOSTS {
        stop_writers(&mut beyond, h);
        if to_clear[h] {
            peer_fence::clear(w, h);
        }
    }
    w.stop_daemons();
    let mut st = std::mem::take(&mut *stats.lock().unwrap());
    st.resets = sh
        .hosts
        .iter()
        .map(|h| h.lock().unwrap().resets.drain(..).count() as u32)
        .sum();
    let insts = sh.instances.lock().unwrap().clone();
    for i in &insts {
        let why = i.killed_by.unwrap_or("fence/exit");
        if why != "end" {
            *st.killed.entry(why).or_default() += 1;
        }
    }
    // Failover: storage fault (or management cut on host 1, policy
    // `fence`) on h at t -> h's VMs killed -> running elsewhere.
    for (h, t, storage) in fence_events {
        for i in insts
            .iter()
            .filter(|i| i.host == h && i.started_ms < t && i.exited_ms.is_some_and(|e| e > t))
        {
            let killed = i.exited_ms.unwrap();
            // Killed by the host's own fence: its daemon's SIGKILL, or the
            // reset it (or the watchdog) played when that was not enough.
            let how = match i.killed_by {
                None => "killed by the daemon",
                Some("reset") => "killed by the host reset",
                Some(_) => continue,
            };
            let again = insts
                .iter()
                .filter(|j| j.vm == i.vm && j.host != h && j.started_ms > t)
                .map(|j| j.started_ms - t)
                .min();
            eprintln!(
                "  failover: host {} {} fault -> vm{} (incarnation {}) {how} after {} ms -> running on another host after {}",
                h + 1,
                if storage { "storage" } else { "management" },
                i.vm,
                i.inc,
                killed - t,
                again.map(|a| format!("{a} ms")).unwrap_or("(not within the schedule)".into())
            );
            if storage {
                st.failovers.push((killed - t, again));
            } else {
                st.mgmt_failovers.push((killed - t, again));
            }
        }
    }
    // Needless fences: hosts that fenced with healthy storage, networks
    // and daemon, blamed on the other hosts' faults.
    st.fences = fence_log.len() as u32;
    for ev in &fence_log {
        if let Some(causes) = needless::classify(ev, &fault_log) {
            let blame = needless::blame(&causes);
            *st.needless.entry(blame).or_default() += 1;
            let msg = format!(
                "seed {seed}: host {} fenced at +{} ms ({}) with its own storage, networks and \
                 daemon healthy; faults elsewhere: {}",
                ev.host + 1,
                ev.at - t0,
                ev.reason,
                if causes.is_empty() {
                    "none".to_string()
                } else {
                    causes
                        .iter()
                        .map(|f| format!("{} (+{} ms)", f.name(), f.start - t0))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
            eprintln!("  NEEDLESS FENCE {msg}");
            st.needless_list.push(msg);
        }
    }
    // The checker.
    for v in 0..VMS {
        let p = w.check_mount.path.join(&disks).join(format!("vm{v}"));
        let data = fs::read(&p).unwrap_or_default();
        let (n, viol) = checker::check(&data);
        st.records += n;
        st.holes += checker::records(&data).2;
        eprintln!("  vm{v}: {}", checker::summary(&data));
        for (k, x) in viol.iter().enumerate() {
            let msg = format!("seed {seed} disk {}: {x}", p.display());
            if k < 5 {
                eprintln!("  VIOLATION {msg}");
            } else if k == 5 {
                eprintln!("  ... {} more violations on this disk", viol.len() - 5);
            }
            st.violations.push(msg);
        }
    }
    if w.rados_disks && !disabled {
        check_rados(w, seed, &insts, &verdicts, &mut st);
    }
    sh.rados.store(false, Ordering::SeqCst);
    if st.violations.is_empty() && !disabled {
        let _ = fs::remove_dir_all(w.check_mount.path.join(&disks));
    } else {
        eprintln!(
            "  disks kept in {}",
            w.check_mount.path.join(&disks).display()
        );
    }
    eprintln!("--- schedule {n} seed={seed}: {}", st.line());
    st
}

/// The RADOS disks: two live writers (the checker's rules, on the
/// object's append order), and the records that an instance running on a
/// storage-fenced host issued after the verdict (a write the blocklist
/// did not refuse: with the real one there is none).
fn check_rados(
    w: &World,
    seed: u64,
    insts: &[Instance],
    verdicts: &[(usize, u64)],
    st: &mut Stats,
) {
    for v in 0..VMS {
        let obj = w.sh.rados_object(v);
        let data = w.rados_get(&obj);
        let (n, viol) = checker::check(&data);
        st.rados_records += n;
        st.rados_violations += viol.len();
        let (recs, _, _) = checker::records(&data);
        for &(h, t) in verdicts {
            // The instances started on h before its verdict (their
            // writers beyond the fence too).
            let fenced = |r: &checker::Record| {
                r.host as usize == h + 1
                    && insts
                        .iter()
                        .any(|i| i.inc == r.inc && i.host == h && i.started_ms < t)
            };
            let late: Vec<&checker::Record> =
                recs.iter().filter(|r| fenced(r) && r.t_ms > t).collect();
            if let Some(r) = late.first() {
                eprintln!(
                    "  RADOS vm{v}: {} record(s) from host {} issued after its verdict at {t}, \
                     the first: [{r}]",
                    late.len(),
                    h + 1
                );
            }
            st.rados_after_verdict += late.len();
        }
        eprintln!("  vm{v} RADOS disk {obj}: {}", checker::summary(&data));
        for (k, x) in viol.iter().enumerate() {
            let msg = format!("seed {seed} RADOS disk {obj}: {x}");
            if k < 5 {
                eprintln!("  VIOLATION {msg}");
            } else if k == 5 {
                eprintln!("  ... {} more violations on this disk", viol.len() - 5);
            }
            st.violations.push(msg);
        }
    }
}

fn inject(
    w: &mut World,
    rng: &mut Rng,
    kind: Kind,
    h: usize,
    dup: &Mutex<Vec<usize>>,
) -> Option<Active> {
    let sh = w.sh.clone();
    let now = boottime_ms();
    let mut a = Active {
        kind,
        host: h,
        heal_at: 0,
        pid: 0,
        noticed: false,
        log: 0,
        peer: 0,
        fenced_at: None,
    };
    match kind {
        Kind::CephHang => {
            w.mounts[h].as_ref()?.hang();
            a.heal_at = now + rng.range(1000, 14000);
        }
        Kind::LinkDown => {
            set_link(w, h, "storage", "down");
            a.heal_at = now + rng.range(1000, 14000);
        }
        Kind::MgmtDown => {
            set_link(w, h, "mgmt", "down");
            // Longer than the management timeout, so that the daemon
            // must notice it.
            a.heal_at = now + rng.range(MGMT_TIMEOUT_S * 1000 + 1500, 14000);
        }
        Kind::DaemonKill | Kind::DaemonStop => {
            let pid = sh.hosts[h].lock().unwrap().daemon_pid?;
            let sig = if kind == Kind::DaemonKill {
                libc::SIGKILL
            } else {
                libc::SIGSTOP
            };
            // SAFETY: our own child (the daemon), not reaped yet.
            unsafe { libc::kill(pid, sig) };
            a.pid = pid;
            a.heal_at = now
                + if kind == Kind::DaemonKill {
                    rng.range(200, 3000)
                } else {
                    rng.range(300, 4000)
                };
        }
        Kind::QemuKill => {
            let mut insts = sh.instances.lock().unwrap();
            let live: Vec<usize> = (0..insts.len())
                .filter(|&i| insts[i].host == h && insts[i].exited_ms.is_none())
                .collect();
            let i = *live.get(rng.below(live.len().max(1) as u64) as usize)?;
            insts[i].killed_by = Some("fault");
            // SAFETY: our own unreaped child.
            unsafe { libc::kill(insts[i].pid, libc::SIGKILL) };
        }
        Kind::DupStart => {
            dup.lock().unwrap().push(rng.below(VMS as u64) as usize);
        }
        Kind::PeerFence => {
            // A peer that is up; the fence comes from the schedule's loop.
            let p = (h + 1 + rng.below(HOSTS as u64 - 1) as usize) % HOSTS;
            if !up(&sh, p) {
                return None;
            }
            a.peer = p;
            set_link(w, h, "storage", "down");
            set_link(w, h, "mgmt", "down");
            // Healed soon after the verdict; at the latest after this.
            a.heal_at = now + 20_000;
        }
    }
    eprintln!("  [{now}] FAULT {} on host {}", kind.name(), h + 1);
    Some(a)
}

fn support_tail(p: &std::path::Path) -> String {
    crate::support::util::tail(p, 15)
}

fn set_link(w: &World, h: usize, link: &str, state: &str) {
    crate::support::netns::set_link(&w.netns[h], link, state);
}

fn heal(w: &mut World, a: &Active) {
    let h = a.host;
    let down = !up(&w.sh, h);
    match a.kind {
        Kind::CephHang => {
            if let Some(m) = &w.mounts[h] {
                m.signal(libc::SIGCONT);
            }
        }
        Kind::LinkDown => set_link(w, h, "storage", "up"),
        Kind::MgmtDown => set_link(w, h, "mgmt", "up"),
        Kind::PeerFence => {
            set_link(w, h, "storage", "up");
            set_link(w, h, "mgmt", "up");
        }
        Kind::DaemonKill => {
            if !down && w.sh.hosts[h].lock().unwrap().daemon_pid == Some(a.pid) {
                w.restart_daemon(h);
            }
        }
        Kind::DaemonStop => {
            if w.sh.hosts[h].lock().unwrap().daemon_pid == Some(a.pid) {
                // SAFETY: our own child, not reaped yet.
                unsafe { libc::kill(a.pid, libc::SIGCONT) };
            }
        }
        Kind::QemuKill | Kind::DupStart => {}
    }
    eprintln!(
        "  [{}] healed {} on host {}",
        boottime_ms(),
        a.kind.name(),
        h + 1
    );
}
