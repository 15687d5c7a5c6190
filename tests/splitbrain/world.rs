//! The split-brain rig: a Ceph cluster in its own network namespace
//! ("the switch"), three hosts each in a network namespace of its own
//! with two veths to the switch (`storage` and `mgmt`), each with its own
//! ceph-fuse client of the one CephFS, its own vmlease-watchdog (in the
//! host's namespace, probing the management network) with a FIFO
//! watchdog stand-in, and its own private copy of vmlease.so. Host 1's
//! management policy is `fence`, the others' `report`. A monitor thread per host
//! reads the watchdog stand-in, reaps the host's stand-in VMs, and plays
//! the host reset (watchdog fired, or the daemon recorded a reset): every
//! stand-in VM of the host is killed, the daemon too, and the host's FUSE
//! connection is aborted (a rebooted host's CephFS client is gone).
//! The scheduler then brings the host back like a rebooted one (remount,
//! empty state directory, daemon restart); the boot id stays the same,
//! since all hosts share this machine's kernel.

use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

#[path = "stall.rs"]
mod stall;

use crate::abi::{self, Dom};
use crate::support::ceph::{CephCluster, CephMount, CephOptions, MountOptions};
use crate::support::daemons::{self, Host};
use crate::support::netns::{self, Namespaces, Net};
use vmlease::clock::boottime_ms;
use vmlease::hosts::HostState;
use vmlease::status::Status;

// R, F, K, W, D in ms. D > max(F + K, F + W) + 2R = 9 s; F well above the
// MDS's cap-revoke eviction (1 s + a 1 s MDS tick), see docs/cephfs.md.
pub const R: u64 = 500;
pub const F: u64 = 6000;
pub const K: u64 = 1000;
pub const W: u64 = 2000;
pub const D: u64 = 10000;
/// `[management].timeout` (s): probes failing this long isolate a host.
pub const MGMT_TIMEOUT_S: u64 = 2;
pub const HOSTS: usize = 3;
pub const VMS: usize = 4;
/// A stand-in VM appends a record this often.
pub const WRITE_INTERVAL_MS: u64 = 50;

/// One VM instance: a stand-in started on a host by the controller.
#[derive(Clone, Debug)]
pub struct Instance {
    pub vm: usize,
    pub inc: u32,
    pub host: usize,
    pub pid: i32,
    /// Fencing disabled: the writer that escapes the kill.
    pub escaped: Option<i32>,
    pub started_ms: u64,
    pub exited_ms: Option<u64>,
    pub escaped_exited: bool,
    /// Who killed it, when the test did ("fault", "reset", "end").
    pub killed_by: Option<&'static str>,
}

/// What the monitor, the controller and the scheduler share about a host.
#[derive(Default)]
pub struct HostState2 {
    pub daemon_pid: Option<i32>,
    pub fuse_conn: Option<u32>,
    /// Set by a reset; cleared when the host is back.
    pub down_since: Option<u64>,
    pub resets: Vec<String>,
    /// The watchdog stand-in: last pet, magic close seen, armed.
    pub last_pet: u64,
    pub disarmed: bool,
    pub armed: bool,
    pub reset_seen: u64,
    /// The last pet whose gap has had its W/2 snapshot ([`stall`]).
    pub stall_seen: u64,
}

pub struct Shared {
    pub plugins: Vec<abi::Plugin>,
    pub confs: Vec<PathBuf>,
    pub state_dirs: Vec<PathBuf>,
    pub host_dirs: Vec<PathBuf>,
    pub mountpoints: Vec<PathBuf>,
    pub hosts: Vec<Mutex<HostState2>>,
    pub instances: Mutex<Vec<Instance>>,
    pub doms: Vec<Dom>,
    pub writer: PathBuf,
    pub stop: AtomicBool,
    pub next_inc: AtomicU32,
    /// The current schedule's disk directory name (under each mount).
    pub disks: Mutex<String>,
    /// Fencing disabled: writers escape every kill but a host reset.
    pub fencing_disabled: AtomicBool,
    /// Hosts the controller cannot reach (a fault on them, or down).
    pub unreachable: Mutex<[bool; HOSTS]>,
    /// The hosts' watchdog timeout W (ms): the stand-in fires after it.
    pub watchdog_ms: u64,
    /// Stand-ins also write a RADOS disk (see [`RADOS_POOL`]).
    pub rados: AtomicBool,
    /// The hosts' network namespaces and the cluster's ceph.conf: a
    /// stand-in's librados client runs in its host's namespace.
    pub netns: Vec<String>,
    pub ceph_conf: PathBuf,
    /// The hosts' daemon logs (printed with a stall snapshot).
    pub logs: Vec<PathBuf>,
}

/// The pool of the stand-ins' RADOS disks (objects named
/// [`Shared::rados_object`], beside CephFS's data objects, whose names
/// are inode numbers).
pub const RADOS_POOL: &str = "cephfs_data";

fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) of a process this test started and has not reaped
    // (our child), so the pid cannot have been reused.
    unsafe { libc::kill(pid, sig) };
}

/// Reaps our child `pid` if it has exited; true then.
pub fn reaped(pid: i32) -> bool {
    let mut st = 0;
    // SAFETY: waitpid on our own child, WNOHANG.
    let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
    r == pid || r < 0
}

impl Shared {
    /// VM `vm`'s RADOS disk in the current schedule: the object every
    /// instance of the VM appends its records to through librados, as
    /// QEMU writes an RBD image (no MDS session: a blocklist of the
    /// host's address is the only thing that stops a cut-off host's).
    pub fn rados_object(&self, vm: usize) -> String {
        format!("sbdisk.{}.vm{vm}", self.disks.lock().unwrap())
    }

    pub fn disk_path(&self, host: usize, vm: usize) -> PathBuf {
        self.mountpoints[host]
            .join(&*self.disks.lock().unwrap())
            .join(format!("vm{vm}"))
    }

    /// Plays a host reset: kills every stand-in VM of `h` and its daemon,
    /// aborts its FUSE connection. Idempotent while the host is down.
    pub fn reset(&self, h: usize, why: &str) {
        let mut hs = self.hosts[h].lock().unwrap();
        if hs.down_since.is_some() {
            return;
        }
        let now = boottime_ms();
        let mut insts = self.instances.lock().unwrap();
        for i in insts.iter_mut().filter(|i| i.host == h) {
            if i.exited_ms.is_none() {
                i.killed_by.get_or_insert("reset");
                kill(i.pid, libc::SIGCONT);
                kill(i.pid, libc::SIGKILL);
            }
            if let (Some(p), false) = (i.escaped, i.escaped_exited) {
                kill(p, libc::SIGKILL);
            }
        }
        drop(insts);
        if let Some(p) = hs.daemon_pid.take() {
            kill(p, libc::SIGCONT);
            kill(p, libc::SIGKILL);
        }
        if let Some(c) = hs.fuse_conn {
            let _ = fs::write(format!("/sys/fs/fuse/connections/{c}/abort"), "1");
        }
        hs.down_since = Some(now);
        hs.last_pet = 0;
        hs.resets.push(why.to_string());
        eprintln!("  [{now}] host {} RESET: {why}", h + 1);
    }

    /// Reaps the host's exited stand-ins.
    fn reap(&self, h: usize) {
        let now = boottime_ms();
        let mut insts = self.instances.lock().unwrap();
        for i in insts.iter_mut().filter(|i| i.host == h) {
            if i.exited_ms.is_none() && reaped(i.pid) {
                i.exited_ms = Some(now);
            }
            if let (Some(p), false) = (i.escaped, i.escaped_exited) {
                if reaped(p) {
                    i.escaped_exited = true;
                }
            }
        }
    }

    /// Kills every live stand-in (and escaped writer) and reaps them.
    pub fn kill_all(&self, why: &'static str) {
        let mut insts = self.instances.lock().unwrap();
        let mut live = Vec::new();
        for i in insts.iter_mut() {
            if i.exited_ms.is_none() {
                i.killed_by.get_or_insert(why);
                live.push(i.pid);
            }
            if let (Some(p), false) = (i.escaped, i.escaped_exited) {
                live.push(p);
            }
        }
        for &p in &live {
            kill(p, libc::SIGCONT);
            kill(p, libc::SIGKILL);
        }
        for &p in &live {
            // SAFETY: waitpid on our own SIGKILLed, unreaped child; blocks
            // until it is gone (a D-state one waits for its mount).
            unsafe { libc::waitpid(p, std::ptr::null_mut(), 0) };
        }
        let now = boottime_ms();
        for i in insts.iter_mut() {
            i.exited_ms.get_or_insert(now);
            i.escaped_exited = true;
        }
    }
}

/// The monitor of host `h`: watchdog stand-in, reset record, reaping.
fn monitor(sh: Arc<Shared>, h: usize) {
    let fifo = sh.host_dirs[h].join("watchdog");
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap_or_else(|e| panic!("open {}: {e}", fifo.display()));
    let reset_file = sh.host_dirs[h].join("reset");
    let mut buf = [0u8; 256];
    while !sh.stop.load(Ordering::SeqCst) {
        let now = boottime_ms();
        let mut fire = None;
        {
            let mut hs = sh.hosts[h].lock().unwrap();
            if let Ok(n @ 1..) = f.read(&mut buf) {
                hs.last_pet = now;
                hs.disarmed = buf[..n].ends_with(b"V");
            }
            let watched = hs.armed && hs.down_since.is_none() && hs.last_pet > 0 && !hs.disarmed;
            let gap = now.saturating_sub(hs.last_pet);
            if watched && gap > sh.watchdog_ms {
                fire = Some(format!("watchdog stand-in fired ({gap} ms without a pet)"));
            }
            // What the daemon does instead of petting: its threads at W/2
            // and again when the stand-in fires (before the reset's kill;
            // that one may race with it).
            if let (true, Some(pid)) = (watched, hs.daemon_pid) {
                if fire.is_some() || (gap > sh.watchdog_ms / 2 && hs.stall_seen != hs.last_pet) {
                    hs.stall_seen = hs.last_pet;
                    let why = match &fire {
                        Some(f) => f.clone(),
                        None => format!("{gap} ms without a pet (W/2 passed)"),
                    };
                    stall::snapshot(h, pid, why, sh.logs[h].clone());
                }
            }
            let len = fs::metadata(&reset_file).map(|m| m.len()).unwrap_or(0);
            if len > hs.reset_seen {
                hs.reset_seen = len;
                if hs.armed && fire.is_none() {
                    let text = fs::read_to_string(&reset_file).unwrap_or_default();
                    fire = Some(format!(
                        "daemon recorded a reset: {}",
                        text.lines().last().unwrap_or("")
                    ));
                }
            }
        }
        if let Some(why) = fire {
            sh.reset(h, &why);
        }
        sh.reap(h);
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub struct World {
    pub sh: Arc<Shared>,
    monitors: Vec<JoinHandle<()>>,
    pub hosts: Vec<Host>,
    pub mounts: Vec<Option<CephMount>>,
    pub check_mount: CephMount,
    /// Daemons killed while their I/O may still hang on a faulty client:
    /// waited for only after the mounts are gone (dropped after them), so
    /// that the scheduler never blocks on one.
    graveyard: Vec<daemons::Proc>,
    pub netns: Vec<String>,
    pub no_page_cache: bool,
    /// The MDS runs with Ceph's default settings (VMLEASE_SPLITBRAIN_CEPH_DEFAULTS=1).
    pub ceph_defaults: bool,
    /// The daemons renew through the shared `hosts` file, not RADOS
    /// (VMLEASE_SPLITBRAIN_LIVENESS=file).
    pub liveness_file: bool,
    /// Had a storage fault: remount before the next schedule.
    pub suspect: [bool; HOSTS],
    /// The peer-fence fault's blocklist is a no-op (the self-test).
    pub blocklist_noop: bool,
    /// The schedule's stand-ins also write RADOS disks, and its first
    /// fault is a peer storage fence (the blocklist's test).
    pub rados_disks: bool,
    /// The switch's network namespace (the cluster's, never faulted).
    pub switch: String,
    pub ceph: CephCluster,
    _scratch: daemons::Scratch,
    _ns: Namespaces,
}

/// The management network's address on the switch: what every daemon
/// probes (ICMP echo) through its host's `mgmt` link.
pub const MGMT_SWITCH: &str = "198.51.100.62";

/// The networks: in the switch namespace a storage bridge (the cluster's
/// address, 192.0.2.62) and a management bridge (198.51.100.62); per host
/// namespace one veth into each, called `storage` (192.0.2.1-3) and
/// `mgmt` (198.51.100.1-3) inside the host's namespace.
fn networks() -> (Namespaces, String, Vec<String>) {
    let hosts: Vec<String> = (1..=HOSTS).map(|i| i.to_string()).collect();
    let hosts: Vec<&str> = hosts.iter().map(|h| h.as_str()).collect();
    let n = netns::switched(
        "vlsb",
        &hosts,
        &[
            Net {
                link: "storage",
                net: "192.0.2",
                len: 26,
                switch: 62,
            },
            Net {
                link: "mgmt",
                net: "198.51.100",
                len: 24,
                switch: 62,
            },
        ],
    );
    (n.guard, n.switch, n.hosts)
}

impl World {
    pub fn up(writer: PathBuf) -> World {
        World::up_with_dead(writer, D)
    }

    /// As [`World::up`], with host_dead_timeout `d` (ms, at least D).
    pub fn up_with_dead(writer: PathBuf, d: u64) -> World {
        assert!(
            d >= D,
            "host_dead_timeout {d} ms is below the rig's floor {D} ms"
        );
        World::up_with_timing(writer, [R, F, K, W, d])
    }

    /// As [`World::up`], with the hosts' timing [R, F, K, W, D] (ms): F at
    /// least the rig's (above the MDS's cap-revoke eviction), the safety
    /// inequality checked by the config loader.
    pub fn up_with_timing(writer: PathBuf, timing: [u64; 5]) -> World {
        // VMLEASE_SPLITBRAIN_CEPH_DEFAULTS=1 the MDS keeps Ceph's defaults.
        let ceph_defaults = std::env::var("VMLEASE_SPLITBRAIN_CEPH_DEFAULTS").as_deref() == Ok("1");
        World::up_on(writer, timing, ceph_defaults)
    }

    /// As [`World::up_with_timing`], the MDS on Ceph's default settings
    /// (`ceph_defaults`) or on the rig's tuned ones.
    pub fn up_on(writer: PathBuf, timing: [u64; 5], ceph_defaults: bool) -> World {
        assert!(
            timing[1] >= F,
            "renew_fail_timeout {} ms is below the rig's floor {F} ms",
            timing[1]
        );
        let no_page_cache = std::env::var_os("VMLEASE_SPLITBRAIN_NO_PAGECACHE").is_some();
        let (ns_guard, sw, netns) = networks();
        let ceph = CephCluster::up_with(CephOptions {
            netns: Some(sw.clone()),
            addr: Some("192.0.2.62".parse().unwrap()),
            name: "splitbrain".into(),
            ..CephOptions::default()
        });
        // A client that keeps capabilities others need is evicted after
        // 1 s (acted on at the next 1 s MDS tick): well below F. With
        // `ceph_defaults` the MDS keeps Ceph's defaults (eviction off,
        // session timeout 60 s, autoclose 300 s): a hung host may then
        // stall the others (the needless fences count it).
        let liveness_file = std::env::var("VMLEASE_SPLITBRAIN_LIVENESS").as_deref() == Ok("file");
        if !ceph_defaults {
            ceph.set_mds_option("mds_cap_revoke_eviction_timeout", "1");
            ceph.set_mds_option("mds_tick_interval", "1");
            ceph.set_session_timeouts(30, 30);
        }
        let check_mount = ceph.mount_with(
            "sbcheck",
            MountOptions {
                netns: Some(sw.clone()),
                ..MountOptions::default()
            },
        );
        let scratch = daemons::Scratch::new("splitbrain");
        let mut hosts = Vec::new();
        let mut mounts = Vec::new();
        let so = daemons::bin("libvmlease.so");
        assert!(
            so.exists(),
            "{} is missing: `cargo build` first (cargo build --tests does not build the cdylib)",
            so.display()
        );
        let mut plugins = Vec::new();
        for (i, ns) in netns.iter().enumerate() {
            let m = mount_host(&ceph, i, ns, no_page_cache);
            let hdir = scratch.0.join(format!("host{}", i + 1));
            fs::create_dir_all(&hdir).unwrap();
            let fifo = hdir.join("watchdog");
            let c = CString::new(fifo.to_str().unwrap()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
            // The host table through RADOS (the product's setting for
            // CephFS), as the host's own Ceph client, from its namespace:
            // a cut storage link cuts it too. VMLEASE_SPLITBRAIN_LIVENESS=file
            // renews through the shared file instead (before issue 21).
            let liveness = if liveness_file {
                String::new()
            } else {
                format!(
                    "liveness_rados = true\nceph_conf = \"{}\"\nceph_client_id = \"sbh{}\"\n",
                    ceph.conf().display(),
                    i + 1
                )
            };
            let mut h = Host::with_timing(
                &scratch,
                (i + 1) as u16,
                &m.path.join("ls"),
                &format!(
                    "{liveness}allow_local_lockspace = false\nstorage_fence_addrs = [\"192.0.2.{}\"]\n\
                     watchdog_device = \"{}\"\n[management]\nprobes = [ {{ type = \"icmp\", \
                     target = \"{MGMT_SWITCH}\" }} ]\ntimeout = {MGMT_TIMEOUT_S}\n\
                     probe_timeout = 0.5\npolicy = \"{}\"\n",
                    i + 1,
                    fifo.display(),
                    if i == 0 { "fence" } else { "report" }
                ),
                timing,
            );
            // Its log lines carry CLOCK_BOOTTIME, the clock of the
            // schedule's event lines.
            h.extra_args.push("--log-boottime".into());
            plugins.push(abi::load(&scratch.0, &so, &h.conf).unwrap());
            hosts.push(h);
            mounts.push(Some(m));
        }
        let doms = (0..VMS)
            .map(|v| Dom {
                uuid: [0x50 + v as u8; 16],
                name: CString::new(format!("vm{v}")).unwrap(),
                // On the CephFS (its path on this machine's mount): the
                // hosts are storage-fenceable (peer_fence.rs).
                disk: CString::new(
                    check_mount
                        .path
                        .join(format!("vm{v}.img"))
                        .display()
                        .to_string(),
                )
                .unwrap(),
            })
            .collect();
        let sh = Arc::new(Shared {
            plugins,
            confs: hosts.iter().map(|h| h.conf.clone()).collect(),
            state_dirs: hosts.iter().map(|h| h.cfg.state_dir.clone()).collect(),
            host_dirs: hosts.iter().map(|h| h.dir.clone()).collect(),
            mountpoints: mounts
                .iter()
                .map(|m| m.as_ref().unwrap().path.clone())
                .collect(),
            hosts: mounts
                .iter()
                .map(|m| {
                    Mutex::new(HostState2 {
                        fuse_conn: m.as_ref().unwrap().fuse_conn(),
                        ..HostState2::default()
                    })
                })
                .collect(),
            instances: Mutex::new(Vec::new()),
            doms,
            writer,
            stop: AtomicBool::new(false),
            next_inc: AtomicU32::new(1),
            disks: Mutex::new(String::new()),
            fencing_disabled: AtomicBool::new(false),
            unreachable: Mutex::new([false; HOSTS]),
            watchdog_ms: timing[3],
            rados: AtomicBool::new(false),
            netns: netns.clone(),
            ceph_conf: ceph.conf(),
            logs: hosts.iter().map(|h| h.log.clone()).collect(),
        });
        let monitors = (0..HOSTS)
            .map(|h| {
                let sh = sh.clone();
                std::thread::spawn(move || monitor(sh, h))
            })
            .collect();
        World {
            sh,
            monitors,
            hosts,
            mounts,
            check_mount,
            graveyard: Vec::new(),
            netns,
            no_page_cache,
            ceph_defaults,
            liveness_file,
            suspect: [false; HOSTS],
            blocklist_noop: false,
            rados_disks: false,
            switch: sw,
            ceph,
            _scratch: scratch,
            _ns: ns_guard,
        }
    }

    /// Brings host `h` back like a rebooted host: a new CephFS client
    /// (the old one is aborted), an empty state directory, the daemon
    /// started again. Does not wait for it to be protected.
    pub fn reboot(&mut self, h: usize) {
        {
            let mut hs = self.sh.hosts[h].lock().unwrap();
            hs.armed = false;
            if let Some(p) = hs.daemon_pid.take() {
                kill(p, libc::SIGKILL);
            }
        }
        if let Some(old) = self.hosts[h].daemon.take() {
            self.graveyard.push(old);
        }
        self.remount(h);
        self.start_daemon(h);
    }

    /// A new CephFS client for host `h` (the old one aborted and gone).
    pub fn remount(&mut self, h: usize) {
        if let Some(m) = self.mounts[h].take() {
            m.umount_hard();
        }
        let m = mount_host(&self.ceph, h, &self.netns[h], self.no_page_cache);
        self.sh.hosts[h].lock().unwrap().fuse_conn = m.fuse_conn();
        self.mounts[h] = Some(m);
    }

    /// Starts host `h`'s daemon on an empty state directory.
    pub fn start_daemon(&mut self, h: usize) {
        let _ = fs::remove_dir_all(&self.sh.state_dirs[h]);
        self.spawn_daemon(h);
        let mut hs = self.sh.hosts[h].lock().unwrap();
        hs.daemon_pid = Some(self.hosts[h].daemon.as_ref().unwrap().pid() as i32);
        hs.last_pet = 0;
        hs.disarmed = false;
        hs.down_since = None;
        hs.armed = true;
    }

    /// Restarts a killed daemon (systemd's Restart=), keeping its state.
    pub fn restart_daemon(&mut self, h: usize) {
        if let Some(old) = self.hosts[h].daemon.take() {
            self.graveyard.push(old);
        }
        self.spawn_daemon(h);
        self.sh.hosts[h].lock().unwrap().daemon_pid =
            Some(self.hosts[h].daemon.as_ref().unwrap().pid() as i32);
    }

    /// Host `h`'s daemon, in the host's network namespace (nsenter execs
    /// it: the pid is the daemon's).
    fn spawn_daemon(&mut self, h: usize) {
        let net = format!("--net=/run/netns/{}", self.netns[h]);
        self.hosts[h].spawn(&["nsenter", &net]);
    }

    /// Stops every daemon without a reset being played.
    ///
    /// A daemon whose threads wait in a CephFS client that will never
    /// answer (blocklisted by a peer's fence, or evicted) cannot be reaped
    /// until that client goes: after 5 s its FUSE connection is aborted,
    /// as a reset would, and the host is remounted before its next
    /// schedule.
    pub fn stop_daemons(&mut self) {
        for h in 0..HOSTS {
            let conn = {
                let mut hs = self.sh.hosts[h].lock().unwrap();
                hs.armed = false;
                hs.daemon_pid = None;
                hs.fuse_conn
            };
            let Some(mut d) = self.hosts[h].daemon.take() else {
                continue;
            };
            d.signal(libc::SIGCONT);
            d.signal(libc::SIGKILL);
            let t = boottime_ms();
            let mut aborted = false;
            while !d.exited() {
                let waited = boottime_ms() - t;
                if waited > 5000 && !aborted {
                    eprintln!(
                        "  host {}'s daemon (pid {}) not reaped 5 s after SIGKILL (threads in its \
                         CephFS client): aborting that client",
                        h + 1,
                        d.pid()
                    );
                    if let Some(c) = conn {
                        let _ = fs::write(format!("/sys/fs/fuse/connections/{c}/abort"), "1");
                    }
                    self.suspect[h] = true;
                    aborted = true;
                }
                assert!(
                    waited < 60_000,
                    "host {}'s daemon (pid {}) still not reaped 60 s after SIGKILL, its CephFS \
                     client (FUSE connection {conn:?}) aborted",
                    h + 1,
                    d.pid()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The content of RADOS object `obj` of [`RADOS_POOL`], read from the
    /// switch (a client that was never faulted); empty when it does not
    /// exist (no instance ever wrote it).
    pub fn rados_get(&self, obj: &str) -> Vec<u8> {
        let o = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.switch))
            .args(["timeout", "60", "rados", "-c"])
            .arg(self.ceph.conf())
            .args(["-p", RADOS_POOL, "get", obj, "-"])
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .expect("run rados get");
        let err = String::from_utf8_lossy(&o.stderr);
        if !o.status.success() {
            assert!(
                err.contains("No such file"),
                "rados get {obj}: {} {err}",
                o.status
            );
            return Vec::new();
        }
        o.stdout
    }

    pub fn status(&self, h: usize) -> Option<Status> {
        Status::read(&self.sh.state_dirs[h]).ok().flatten()
    }

    /// True when host `h`'s daemon says it is fenced.
    pub fn fenced(&self, h: usize) -> bool {
        self.status(h)
            .map(|s| matches!(s.state, HostState::FencedClean | HostState::Fencing))
            .unwrap_or(false)
    }
}

fn mount_host(ceph: &CephCluster, i: usize, ns: &str, no_page_cache: bool) -> CephMount {
    ceph.mount_with(
        &format!("sbh{}", i + 1),
        MountOptions {
            netns: Some(ns.into()),
            no_page_cache,
            ..MountOptions::default()
        },
    )
}

impl Drop for World {
    fn drop(&mut self) {
        self.sh.stop.store(true, Ordering::SeqCst);
        for m in self.monitors.drain(..) {
            let _ = m.join();
        }
        // Hung clients first: a stand-in in D state waits for them.
        for (h, m) in self.mounts.iter().enumerate() {
            if let Some(m) = m {
                m.signal(libc::SIGCONT);
                for link in ["storage", "mgmt"] {
                    let _ = std::process::Command::new("ip")
                        .args(["-n", &self.netns[h], "link", "set", link, "up"])
                        .status();
                }
            }
        }
        self.sh.kill_all("end");
        self.stop_daemons();
    }
}
