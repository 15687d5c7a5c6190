//! Several libvirt "hypervisor hosts" on one machine, for tests with a
//! real libvirtd and real QEMU.
//!
//! A host is a set of namespaces and daemons:
//! - its own network namespace, joined to the others through a switch
//!   namespace (see `net.rs`), with one interface per link;
//! - its own mount and UTS namespaces (hostname `host-NAME.test`), with
//!   private bind mounts over /run/libvirt, /var/lib/libvirt,
//!   /var/log/libvirt, /var/cache/libvirt, /etc/libvirt and /run/vmlease,
//!   and without the machine's /run/netns mounts (they would pin every
//!   test's network namespaces);
//! - an anchor: a child subreaper (`subreaper.c`) running a shell that
//!   starts the host's daemons in the background on request. Daemons and
//!   the QEMUs libvirt double-forks are orphans of the anchor, which reaps
//!   them at once (PID 1 here reaps late, and libvirt waits for a killed
//!   QEMU to disappear);
//! - virtlogd, libvirtd and optionally virtlockd, in the foreground with
//!   their pid files in the private /run/libvirt.
//!
//! The host's directories live in a scratch directory and are visible to
//! the test at the same time: `Host::dir()`, the libvirt socket, logs,
//! QEMU pid files. `/var/lib/libvirt/images` (`IMAGES_DIR`) is private per
//! host, so the same image path is a different inode on each host, as on
//! separate machines with the lease key shared (QEMU's own image locking
//! refuses a second opener of one inode on one machine).
//!
//! Everything is stopped by pid on drop, also when the test panics: the
//! QEMUs, the daemons, any other process left in the host's mount
//! namespace, the anchor; then the network namespaces go (and the veths
//! with them) and the scratch directory is removed.

pub mod domain;
pub mod net;

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

// Re-exported for the tests; not every test binary uses each.
#[allow(unused_imports)]
pub use domain::{create_image, random_uuid, Disk, Domain, Format, Lease};
#[allow(unused_imports)]
pub use net::{Link, Netns, Switch};

use super::util::{
    self, c_helper, sh_quote, tail, text, unique_name, wait_until, ProcGuard, Scratch,
};

/// Where each host keeps its disk images (its own directory per host).
pub const IMAGES_DIR: &str = "/var/lib/libvirt/images";

/// The links every cluster has unless it asks for others.
pub const DEFAULT_LINKS: &[&str] = &["storage", "mgmt"];

/// How long libvirtd may take to answer after it is started.
pub const LIBVIRTD_READY: Duration = Duration::from_secs(20);

const POLL: Duration = Duration::from_millis(20);

/// Network namespaces are named `vml-TESTPID-N-HOST` (`-sw`: the switch).
const NETNS_PREFIX: &str = "vml";

/// What a host runs and how libvirt is configured there.
#[derive(Clone, Debug)]
pub struct HostSpec {
    /// Short name ("a"): the hostname is `host-NAME.test`; interface
    /// names on the switch are `NAME-LINK` (15 bytes at most).
    pub name: String,
    /// qemu.conf `lock_manager`; None leaves it unset (nop).
    pub lock_manager: Option<String>,
    /// `LIBVIRT_LOCK_MANAGER_PLUGIN_DIR` for libvirtd.
    pub plugin_dir: Option<PathBuf>,
    /// Start virtlockd (for `lock_manager = "lockd"`).
    pub virtlockd: bool,
    /// Lines appended to the generated qemu.conf.
    pub qemu_conf: String,
    /// Lines appended to the generated libvirtd.conf.
    pub libvirtd_conf: String,
    /// Files written into the host's /etc/libvirt: (path relative to it,
    /// content, mode).
    pub etc_files: Vec<(String, String, u32)>,
    /// Extra bind mounts: (path outside, path inside the host).
    pub binds: Vec<(PathBuf, PathBuf)>,
    /// Extra environment for libvirtd.
    pub libvirtd_env: Vec<(String, String)>,
    /// Start libvirtd when the host comes up (default true).
    pub start_libvirtd: bool,
}

impl HostSpec {
    pub fn new(name: &str) -> HostSpec {
        HostSpec {
            name: name.into(),
            lock_manager: None,
            plugin_dir: None,
            virtlockd: false,
            qemu_conf: String::new(),
            libvirtd_conf: String::new(),
            etc_files: Vec::new(),
            binds: Vec::new(),
            libvirtd_env: Vec::new(),
            start_libvirtd: true,
        }
    }

    pub fn lock_manager(mut self, name: &str) -> HostSpec {
        self.lock_manager = Some(name.into());
        self
    }

    /// `lock_manager = "lockd"` with virtlockd running; `file_lockspace_dir`
    /// (a path inside the host) shares the lock files between hosts when
    /// it is the same directory for all of them.
    pub fn lockd(mut self, file_lockspace_dir: Option<&str>) -> HostSpec {
        self.lock_manager = Some("lockd".into());
        self.virtlockd = true;
        let mut conf = String::from("auto_disk_leases = 1\n");
        if let Some(d) = file_lockspace_dir {
            conf.push_str(&format!("file_lockspace_dir = \"{d}\"\n"));
        }
        self.etc_file("qemu-lockd.conf", &conf)
    }

    /// The vmlease plugin from this build (`util::plugin_dir()`), with its
    /// config file `/etc/libvirt/qemu-vmlease.conf` inside the host.
    pub fn vmlease(mut self, config: &str) -> HostSpec {
        self.lock_manager = Some("vmlease".into());
        self.plugin_dir = Some(util::plugin_dir());
        self.etc_file("qemu-vmlease.conf", config)
    }

    pub fn plugin_dir(mut self, dir: &Path) -> HostSpec {
        self.plugin_dir = Some(dir.into());
        self
    }

    pub fn virtlockd(mut self) -> HostSpec {
        self.virtlockd = true;
        self
    }

    pub fn qemu_conf(mut self, lines: &str) -> HostSpec {
        self.qemu_conf.push_str(lines);
        self.qemu_conf.push('\n');
        self
    }

    pub fn libvirtd_conf(mut self, lines: &str) -> HostSpec {
        self.libvirtd_conf.push_str(lines);
        self.libvirtd_conf.push('\n');
        self
    }

    /// A file in the host's /etc/libvirt (mode 0644).
    pub fn etc_file(mut self, rel: &str, content: &str) -> HostSpec {
        self.etc_files.push((rel.into(), content.into(), 0o644));
        self
    }

    /// An executable qemu hook, `/etc/libvirt/hooks/qemu.d/NAME` (libvirt
    /// looks for hooks when libvirtd starts).
    pub fn qemu_hook(mut self, name: &str, script: &str) -> HostSpec {
        self.etc_files
            .push((format!("hooks/qemu.d/{name}"), script.into(), 0o755));
        self
    }

    pub fn bind(mut self, outside: &Path, inside: &Path) -> HostSpec {
        self.binds.push((outside.into(), inside.into()));
        self
    }

    pub fn libvirtd_env(mut self, key: &str, value: &str) -> HostSpec {
        self.libvirtd_env.push((key.into(), value.into()));
        self
    }

    /// Bring the host up without libvirtd (start it with `start_libvirtd`).
    pub fn without_libvirtd(mut self) -> HostSpec {
        self.start_libvirtd = false;
        self
    }
}

// ------------------------------------------------------------------ cluster

/// Hosts on one switch, in one scratch directory. Dropping it stops every
/// host, deletes the namespaces and removes the scratch directory.
pub struct Cluster {
    // Drop order: hosts (processes), then the switch, then the files.
    hosts: Vec<Host>,
    switch: Switch,
    id: String,
    scratch: Scratch,
}

impl Cluster {
    /// An empty cluster with the default links ("storage", "mgmt").
    /// `test` names the scratch directory and appears in messages.
    pub fn new(test: &str) -> Cluster {
        Cluster::with_links(test, DEFAULT_LINKS)
    }

    pub fn with_links(test: &str, links: &[&str]) -> Cluster {
        util::require_root();
        net::remove_stale_netns(NETNS_PREFIX);
        let scratch = Scratch::new(test);
        // Netns names must not clash with other tests or test binaries.
        let id = unique_name(NETNS_PREFIX);
        let switch = Switch::new(&format!("{id}-sw"), links);
        Cluster {
            hosts: Vec::new(),
            switch,
            id,
            scratch,
        }
    }

    /// A cluster with these hosts up (brought up in parallel).
    pub fn start(test: &str, specs: Vec<HostSpec>) -> Cluster {
        let mut c = Cluster::new(test);
        c.add_hosts(specs);
        c
    }

    /// Brings a host up and returns it.
    pub fn add_host(&mut self, spec: HostSpec) -> &Host {
        self.add_hosts(vec![spec]);
        self.hosts.last().expect("just added")
    }

    /// Brings several hosts up, in parallel.
    pub fn add_hosts(&mut self, specs: Vec<HostSpec>) {
        let first = self.hosts.len();
        for (i, s) in specs.iter().enumerate() {
            assert!(
                self.hosts.iter().all(|h| h.name != s.name)
                    && specs[..i].iter().all(|o| o.name != s.name),
                "two hosts named {:?}",
                s.name
            );
        }
        let (switch, id, dir) = (&self.switch, &self.id, self.scratch.path());
        let made: Vec<std::thread::Result<Host>> = std::thread::scope(|sc| {
            let handles: Vec<_> = specs
                .into_iter()
                .enumerate()
                .map(|(i, spec)| sc.spawn(move || Host::up(spec, first + i, id, dir, switch)))
                .collect();
            handles.into_iter().map(|h| h.join()).collect()
        });
        let mut failure = None;
        for m in made {
            match m {
                Ok(h) => self.hosts.push(h),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if let Some(e) = failure {
            std::panic::resume_unwind(e);
        }
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name:?} in cluster {}", self.id))
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    /// A directory every host and the test see at the same path with the
    /// same inodes (like a shared filesystem): `SCRATCH/shared`.
    pub fn shared_dir(&self) -> PathBuf {
        self.scratch.dir("shared")
    }

    pub fn switch(&self) -> &Switch {
        &self.switch
    }

    /// The switch's address on a link (a probe target for the hosts).
    pub fn gateway(&self, link: &str) -> Ipv4Addr {
        self.switch.gateway(link)
    }

    /// A command that runs in the switch's network namespace (e.g. a
    /// storage server every host reaches on its "storage" link at
    /// `gateway("storage")`, and loses when that link is cut).
    pub fn command_in_switch(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.switch.ns.path().display()))
            .arg("--")
            .args(argv)
            .stdin(Stdio::null());
        c
    }

    /// Starts a long-running process in the switch's network namespace,
    /// stdout and stderr appended to `SCRATCH/switch-BASENAME.log`.
    pub fn spawn_in_switch(&self, argv: &[&str], env: &[(&str, &str)]) -> ProcGuard {
        let base = Path::new(argv[0])
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| argv[0].into());
        let log = self.scratch.path().join(format!("switch-{base}.log"));
        let mut c = self.command_in_switch(argv);
        c.envs(env.iter().copied());
        ProcGuard::spawn_logged(&mut c, &format!("{base} in the switch namespace"), &log)
    }

    /// One line per host: where everything is, for failure messages.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "cluster {} (switch netns {}, scratch {}):\n",
            self.id,
            self.switch.ns.name(),
            self.scratch.path().display()
        );
        for h in &self.hosts {
            s.push_str(&format!("  {}\n", h.describe()));
        }
        s
    }
}

// --------------------------------------------------------------------- host

/// The daemons of a host, tracked by pid.
#[derive(Default)]
struct Daemons {
    virtlogd: Option<ProcGuard>,
    virtlockd: Option<ProcGuard>,
    libvirtd: Option<ProcGuard>,
}

struct Anchor {
    proc: ProcGuard,
    stdin: Option<ChildStdin>,
}

/// One libvirt host (see the module documentation).
pub struct Host {
    name: String,
    hostname: String,
    spec: HostSpec,
    dir: PathBuf,
    links: Vec<Link>,
    switch_ns: String,
    anchor_pid: i32,
    /// `mnt:[INODE]` of the host's mount namespace.
    mnt_ns: String,
    anchor: Mutex<Anchor>,
    daemons: Mutex<Daemons>,
    spawned: AtomicU32,
    // Dropped after the processes (Drop for Host runs first).
    netns: Netns,
}

impl Host {
    fn up(spec: HostSpec, index: usize, id: &str, cluster_dir: &Path, switch: &Switch) -> Host {
        let name = spec.name.clone();
        let hostname = format!("host-{name}.test");
        let dir = cluster_dir.join(format!("host-{name}"));
        for d in [
            "run",
            "lib/images",
            "log",
            "cache/qemu/capabilities",
            "etc/qemu/networks",
            "etc/hooks",
            "vmlease",
            "logs",
            "xml",
            "spawn",
        ] {
            fs::create_dir_all(dir.join(d))
                .unwrap_or_else(|e| panic!("host {name}: mkdir {}: {e}", dir.display()));
        }
        write_etc(&spec, &dir.join("etc"), index);
        seed_capabilities(&dir.join("cache/qemu/capabilities"));

        let netns = Netns::add(&format!("{id}-{name}"));
        let links = switch.connect(&netns, index, &name);

        let setup = dir.join("setup.sh");
        fs::write(&setup, setup_script(&spec, &hostname, &dir))
            .unwrap_or_else(|e| panic!("write {}: {e}", setup.display()));
        let anchor_log = dir.join("logs/anchor.log");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", netns.path().display()))
            .args([
                "--",
                "unshare",
                "--mount",
                "--uts",
                "--propagation",
                "private",
                "--",
            ])
            .arg(c_helper("subreaper"))
            .args(["sh", "-c", "sh \"$0\" && exec sh -s"])
            .arg(&setup)
            .env("PATH", daemon_path());
        let log = fs::File::create(&anchor_log).expect("create the anchor log");
        cmd.stdin(Stdio::piped())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        let mut child_proc = ProcGuard::spawn(&mut cmd, &format!("anchor of host {name}"));
        let anchor_pid = child_proc.pid();
        let stdin = child_proc
            .take_stdin()
            .expect("the anchor has a piped stdin");

        let ready = dir.join("ready");
        wait_until(
            &format!("host {name}'s namespaces to be set up"),
            Duration::from_secs(10),
            POLL,
            || {
                if ready.exists() {
                    return Ok(());
                }
                if !child_proc.is_running() {
                    panic!(
                        "host {name}: setting up the namespaces failed ({:?}):\n{}",
                        child_proc.exit_status(),
                        tail(&anchor_log, 30)
                    );
                }
                Err(tail(&anchor_log, 5))
            },
        );
        let mnt_ns = fs::read_link(format!("/proc/{anchor_pid}/ns/mnt"))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|e| panic!("host {name}: the anchor's mount namespace: {e}"));

        let host = Host {
            name,
            hostname,
            spec,
            dir,
            links,
            switch_ns: switch.ns.name().into(),
            anchor_pid,
            mnt_ns,
            anchor: Mutex::new(Anchor {
                proc: child_proc,
                stdin: Some(stdin),
            }),
            daemons: Mutex::new(Daemons::default()),
            spawned: AtomicU32::new(0),
            netns,
        };
        host.start_daemons();
        host
    }

    fn start_daemons(&self) {
        let p = self.spawn_in_host(&["virtlogd", "-p", "/run/libvirt/virtlogd.pid"], &[]);
        self.wait_socket(&p, "virtlogd-sock");
        self.daemons().virtlogd = Some(p);
        if self.spec.virtlockd {
            let p = self.spawn_in_host(&["virtlockd", "-p", "/run/libvirt/virtlockd.pid"], &[]);
            self.wait_socket(&p, "virtlockd-sock");
            self.daemons().virtlockd = Some(p);
        }
        if self.spec.start_libvirtd {
            self.start_libvirtd();
        }
    }

    fn wait_socket(&self, p: &ProcGuard, sock: &str) {
        let path = self.dir.join("run").join(sock);
        let pid = p.pid();
        wait_until(
            &format!("{} to create {}", p.what(), path.display()),
            Duration::from_secs(10),
            POLL,
            || {
                if path.exists() {
                    Ok(())
                } else if !p.is_running() {
                    panic!("{} (pid {pid}) exited:\n{}", p.what(), p.log_tail(20))
                } else {
                    Err("no socket yet".into())
                }
            },
        );
    }

    fn daemons(&self) -> std::sync::MutexGuard<'_, Daemons> {
        self.daemons.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ------------------------------------------------------------ facts

    /// The short name ("a").
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The hostname inside the host (`host-a.test`).
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    pub fn spec(&self) -> &HostSpec {
        &self.spec
    }

    /// The host's directory (outside view): `run` is its /run/libvirt,
    /// `lib` /var/lib/libvirt, `log` /var/log/libvirt, `cache`
    /// /var/cache/libvirt, `etc` /etc/libvirt, `vmlease` /run/vmlease;
    /// `logs` holds the stdout/stderr of processes started in the host.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The host's /etc/libvirt, seen from outside.
    pub fn etc_dir(&self) -> PathBuf {
        self.dir.join("etc")
    }

    /// The host's /run/vmlease, seen from outside.
    pub fn vmlease_state_dir(&self) -> PathBuf {
        self.dir.join("vmlease")
    }

    /// The host's IMAGES_DIR, seen from outside.
    pub fn images_dir(&self) -> PathBuf {
        self.dir.join("lib/images")
    }

    /// The name of the host's network namespace (`ip -n NAME`).
    pub fn netns(&self) -> &str {
        self.netns.name()
    }

    /// The name of the switch's network namespace.
    pub fn switch_netns(&self) -> &str {
        &self.switch_ns
    }

    /// The pid of the anchor (the subreaper): `nsenter -t PID -m -u -n`
    /// enters the host.
    pub fn anchor_pid(&self) -> i32 {
        self.anchor_pid
    }

    pub fn links(&self) -> &[Link] {
        &self.links
    }

    pub fn link(&self, link: &str) -> &Link {
        self.links
            .iter()
            .find(|l| l.name == link)
            .unwrap_or_else(|| panic!("host {}: no link {link:?}", self.name))
    }

    /// The host's address on a link.
    pub fn addr(&self, link: &str) -> Ipv4Addr {
        self.link(link).addr
    }

    /// The interface of a link inside the host's namespace.
    pub fn iface(&self, link: &str) -> &str {
        &self.link(link).host_dev
    }

    /// The peer interface of a link in the switch namespace.
    pub fn switch_iface(&self, link: &str) -> &str {
        &self.link(link).switch_dev
    }

    /// The libvirt socket (outside path, reachable from every host too).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("run/libvirt-sock")
    }

    /// `qemu+unix:///system?socket=...`: this host's libvirtd, from the
    /// test or from any other host (e.g. as a migration destination).
    pub fn uri(&self) -> String {
        format!("qemu+unix:///system?socket={}", self.socket().display())
    }

    pub fn describe(&self) -> String {
        let addrs: Vec<String> = self
            .links
            .iter()
            .map(|l| format!("{}={}", l.name, l.addr))
            .collect();
        format!(
            "host {} ({}, netns {}, {}, anchor pid {}, dir {})",
            self.name,
            self.hostname,
            self.netns.name(),
            addrs.join(" "),
            self.anchor_pid,
            self.dir.display()
        )
    }

    // ------------------------------------------------------ links

    /// Cuts a link at the switch: the host's interface loses its carrier.
    pub fn cut_link(&self, link: &str) {
        self.switch_link(link, "down");
    }

    /// Restores a link cut with `cut_link`.
    pub fn restore_link(&self, link: &str) {
        self.switch_link(link, "up");
    }

    fn switch_link(&self, link: &str, state: &str) {
        let dev = self.switch_iface(link).to_string();
        util::run_ok(&["ip", "-n", &self.switch_ns, "link", "set", &dev, state]);
    }

    /// Sets the host's own interface of a link administratively up or down.
    pub fn set_iface(&self, link: &str, up: bool) {
        let dev = self.iface(link).to_string();
        let state = if up { "up" } else { "down" };
        util::run_ok(&["ip", "-n", self.netns.name(), "link", "set", &dev, state]);
    }

    /// One ping (1 s deadline) from this host to `addr`.
    pub fn ping(&self, addr: Ipv4Addr) -> bool {
        self.exec_in_host(&["ping", "-n", "-q", "-c", "1", "-W", "1", &addr.to_string()])
            .status
            .success()
    }

    // ------------------------------------------------ running things

    /// A command that runs inside the host's mount, UTS and network
    /// namespaces (through nsenter), in the test's working directory.
    pub fn command_in_host(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.anchor_pid.to_string())
            .args(["-m", "-u", "-n", "-w", "--"])
            .args(argv)
            .stdin(Stdio::null());
        c
    }

    /// Runs `argv` inside the host and returns its output.
    pub fn exec_in_host(&self, argv: &[&str]) -> Output {
        self.command_in_host(argv)
            .output()
            .unwrap_or_else(|e| panic!("host {}: nsenter {argv:?}: {e}", self.name))
    }

    /// Runs `argv` inside the host; panics with its output (and the host)
    /// unless it succeeds. Returns its stdout.
    pub fn exec_in_host_ok(&self, argv: &[&str]) -> String {
        let o = self.exec_in_host(argv);
        assert!(
            o.status.success(),
            "host {}: `{}` failed ({}): {}",
            self.name,
            argv.join(" "),
            o.status,
            text(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Starts a long-running process inside the host, as a child of the
    /// host's anchor (so its orphans are reaped at once), with `env` added
    /// to the environment, stdin from /dev/null and stdout and stderr
    /// appended to `logs/BASENAME.log` in the host's directory.
    pub fn spawn_in_host(&self, argv: &[&str], env: &[(&str, &str)]) -> ProcGuard {
        assert!(!argv.is_empty(), "spawn_in_host: empty argv");
        let base = Path::new(argv[0])
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| argv[0].into());
        let what = format!("{base} on host {}", self.name);
        let log = self.dir.join("logs").join(format!("{base}.log"));
        let n = self.spawned.fetch_add(1, Ordering::Relaxed);
        let pidfile = self.dir.join("spawn").join(format!("{n}.pid"));
        let mut words = vec!["env".to_string()];
        for (k, v) in env {
            words.push(sh_quote(&format!("{k}={v}")));
        }
        words.extend(argv.iter().map(|a| sh_quote(a)));
        let pf = sh_quote(&pidfile.display().to_string());
        // The outer subshell exits at once: the command is orphaned to the
        // anchor (a subreaper) rather than left to the shell.
        let line = format!(
            "( {} </dev/null >>{} 2>&1 & echo $! >{pf}.tmp && mv {pf}.tmp {pf} )\n",
            words.join(" "),
            sh_quote(&log.display().to_string()),
        );
        {
            let mut a = self.anchor.lock().unwrap_or_else(|e| e.into_inner());
            let stdin = a.stdin.as_mut().expect("the anchor's stdin is open");
            if let Err(e) = stdin.write_all(line.as_bytes()).and_then(|_| stdin.flush()) {
                panic!(
                    "host {}: the anchor shell is gone ({e}); anchor log:\n{}",
                    self.name,
                    tail(&self.dir.join("logs/anchor.log"), 20)
                );
            }
        }
        let pid: i32 = wait_until(
            &format!("host {} to start {what}", self.name),
            Duration::from_secs(10),
            POLL,
            || match fs::read_to_string(&pidfile) {
                Ok(s) => s.trim().parse().map_err(|e| format!("pid file {s:?}: {e}")),
                Err(e) => Err(format!("{}: {e}", pidfile.display())),
            },
        );
        let p = ProcGuard::adopt(pid, &what, Some(log))
            .unwrap_or_else(|e| panic!("host {}: pidfd of {what} (pid {pid}): {e}", self.name));
        // A fast exit and a recycled pid would name another process.
        let ns = fs::read_link(format!("/proc/{pid}/ns/mnt"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        assert!(
            !p.is_running() || ns == self.mnt_ns,
            "host {}: pid {pid} of {what} is not in the host's mount namespace",
            self.name
        );
        p
    }

    // --------------------------------------------------------- libvirtd

    /// Starts libvirtd and waits until it answers (`virsh hostname`).
    /// Panics with its log if it exits or does not answer in time.
    pub fn start_libvirtd(&self) {
        if let Err(e) = self.try_start_libvirtd() {
            panic!("{e}");
        }
    }

    /// Starts libvirtd; Err (with the log) if it exits before it answers,
    /// e.g. because the lock plugin's init failed.
    pub fn try_start_libvirtd(&self) -> Result<(), String> {
        assert!(
            self.daemons().libvirtd.is_none(),
            "host {}: libvirtd is already running",
            self.name
        );
        let mut env: Vec<(&str, &str)> = Vec::new();
        let dir;
        if let Some(d) = &self.spec.plugin_dir {
            dir = d.display().to_string();
            env.push(("LIBVIRT_LOCK_MANAGER_PLUGIN_DIR", &dir));
        }
        for (k, v) in &self.spec.libvirtd_env {
            env.push((k, v));
        }
        let mut p = self.spawn_in_host(&["libvirtd", "-p", "/run/libvirt/libvirtd.pid"], &env);
        let start = Instant::now();
        let mut last = String::new();
        loop {
            let o = self.virsh(&["hostname"]);
            if o.status.success() {
                self.daemons().libvirtd = Some(p);
                return Ok(());
            }
            last = if o.stderr.is_empty() { last } else { text(&o) };
            if !p.is_running() {
                return Err(format!(
                    "host {}: libvirtd exited while starting; last virsh error: {last}\n{}",
                    self.name,
                    self.logs_tail(30)
                ));
            }
            if start.elapsed() > LIBVIRTD_READY {
                p.kill();
                return Err(format!(
                    "host {}: libvirtd did not answer within {}s; last virsh error: {last}\n{}",
                    self.name,
                    LIBVIRTD_READY.as_secs(),
                    self.logs_tail(30)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops libvirtd (SIGTERM, bounded wait, SIGKILL). Running domains
    /// keep running, as on a real host.
    pub fn stop_libvirtd(&self) {
        let p = self.daemons().libvirtd.take();
        match p {
            Some(mut p) => {
                p.stop();
            }
            None => panic!("host {}: libvirtd is not running", self.name),
        }
    }

    pub fn restart_libvirtd(&self) {
        self.stop_libvirtd();
        self.start_libvirtd();
    }

    /// libvirtd's pid, if this harness started it and it runs.
    pub fn libvirtd_pid(&self) -> Option<i32> {
        let mut d = self.daemons();
        d.libvirtd
            .as_mut()
            .and_then(|p| if p.is_running() { Some(p.pid()) } else { None })
    }

    /// `virsh -q -c URI ARGS...` against this host's libvirtd.
    pub fn virsh(&self, args: &[&str]) -> Output {
        Command::new("virsh")
            .args(["-q", "-c", &self.uri()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("virsh: {e} (install libvirt-clients)"))
    }

    /// `virsh` that must succeed: panics with the host, the command, its
    /// output and the tail of the host's logs. Returns stdout.
    pub fn virsh_ok(&self, args: &[&str]) -> String {
        let o = self.virsh(args);
        if !o.status.success() {
            panic!(
                "host {}: `virsh {}` failed: {}\n{}",
                self.name,
                args.join(" "),
                text(&o).trim_end(),
                self.logs_tail(30)
            );
        }
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The tail of libvirtd's log, its stdout/stderr and the anchor's log.
    pub fn logs_tail(&self, n: usize) -> String {
        format!(
            "--- host {} libvirtd.log ---\n{}--- host {} libvirtd stdout/stderr ---\n{}",
            self.name,
            tail(&self.dir.join("log/libvirtd.log"), n),
            self.name,
            tail(&self.dir.join("logs/libvirtd.log"), n.min(10)),
        )
    }

    // ---------------------------------------------------------- domains

    /// Writes a domain's XML into the host's directory; returns the path.
    pub fn write_xml(&self, d: &Domain) -> PathBuf {
        let p = self.dir.join("xml").join(format!("{}.xml", d.name));
        fs::write(&p, d.xml()).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }

    /// `virsh create` (a transient domain, started).
    pub fn create(&self, d: &Domain) -> Output {
        let x = self.write_xml(d);
        self.virsh(&["create", &x.display().to_string()])
    }

    /// `virsh create` that must succeed.
    pub fn create_ok(&self, d: &Domain) {
        let x = self.write_xml(d);
        self.virsh_ok(&["create", &x.display().to_string()]);
    }

    /// `virsh define` that must succeed.
    pub fn define_ok(&self, d: &Domain) {
        let x = self.write_xml(d);
        self.virsh_ok(&["define", &x.display().to_string()]);
    }

    /// `virsh start NAME`.
    pub fn start(&self, name: &str) -> Output {
        self.virsh(&["start", name])
    }

    /// `virsh destroy NAME` that must succeed.
    pub fn destroy_ok(&self, name: &str) {
        self.virsh_ok(&["destroy", name]);
    }

    /// `virsh domstate NAME` ("running", "shut off", ...), None if the
    /// domain does not exist on this host.
    pub fn domstate(&self, name: &str) -> Option<String> {
        let o = self.virsh(&["domstate", name]);
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    /// Waits until `domstate` is `want` ("running", "shut off"; None: the
    /// domain is gone).
    pub fn wait_domstate(&self, name: &str, want: Option<&str>, timeout: Duration) {
        wait_until(
            &format!("domain {name} on host {} to be {want:?}", self.name),
            timeout,
            Duration::from_millis(50),
            || {
                let s = self.domstate(name);
                if s.as_deref() == want {
                    Ok(())
                } else {
                    Err(format!("state {s:?}"))
                }
            },
        );
    }

    /// Names of the domains libvirt knows here (running and defined).
    pub fn domains(&self) -> Vec<String> {
        self.virsh_ok(&["list", "--all", "--name"])
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// The pid of a running domain's QEMU, from the host's
    /// /run/libvirt/qemu/NAME.pid, if that process exists.
    pub fn qemu_pid(&self, name: &str) -> Option<i32> {
        let f = self.dir.join("run/qemu").join(format!("{name}.pid"));
        let pid: i32 = fs::read_to_string(f).ok()?.trim().parse().ok()?;
        let ns = fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()?;
        (ns.display().to_string() == self.mnt_ns).then_some(pid)
    }

    /// SIGKILLs a running domain's QEMU and waits until it is gone;
    /// returns its pid.
    pub fn kill_qemu(&self, name: &str) -> i32 {
        self.try_kill_qemu(name).unwrap_or_else(|| {
            panic!(
                "host {}: domain {name} has no running QEMU\n{}",
                self.name,
                self.logs_tail(20)
            )
        })
    }

    fn try_kill_qemu(&self, name: &str) -> Option<i32> {
        let pid = self.qemu_pid(name)?;
        let what = format!("QEMU of {name} on host {}", self.name);
        let mut p = ProcGuard::adopt(pid, &what, None).ok()?;
        p.kill();
        Some(pid)
    }

    /// The tail of a domain's QEMU log (/var/log/libvirt/qemu/NAME.log).
    pub fn qemu_log_tail(&self, name: &str, n: usize) -> String {
        tail(&self.dir.join("log/qemu").join(format!("{name}.log")), n)
    }

    /// Creates an image in this host's private IMAGES_DIR and returns its
    /// path inside the host.
    pub fn create_image(&self, file: &str, format: Format, size_mib: u32) -> String {
        create_image(&self.images_dir().join(file), format, size_mib);
        format!("{IMAGES_DIR}/{file}")
    }

    /// Live migration of `name` to `dest` with `virsh migrate --live
    /// --unsafe` (the storage is "shared" by path), the migration stream on
    /// `link`. `p2p`: the source libvirtd talks to the destination itself.
    pub fn migrate(&self, name: &str, dest: &Host, link: &str, p2p: bool) -> Output {
        let dest_uri = dest.uri();
        let mig = format!("tcp://{}", dest.addr(link));
        let mut args = vec!["migrate", "--live", "--unsafe"];
        if p2p {
            args.push("--p2p");
        }
        args.extend([name, &dest_uri, "--migrateuri", &mig]);
        self.virsh(&args)
    }

    // ---------------------------------------------------------- teardown

    /// Processes in this host's mount namespace other than the anchor.
    fn processes(&self) -> Vec<i32> {
        let mut v = Vec::new();
        let Ok(rd) = fs::read_dir("/proc") else {
            return v;
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if pid == self.anchor_pid {
                continue;
            }
            if let Ok(ns) = fs::read_link(format!("/proc/{pid}/ns/mnt")) {
                if ns.display().to_string() == self.mnt_ns {
                    v.push(pid);
                }
            }
        }
        v
    }

    fn kill_namespace(&self) {
        let mut left = Vec::new();
        for pid in self.processes() {
            if let Ok(p) = ProcGuard::adopt(pid, &format!("pid {pid} on host {}", self.name), None)
            {
                // Still ours after the pidfd was opened?
                let ns = fs::read_link(format!("/proc/{pid}/ns/mnt"))
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                if ns == self.mnt_ns {
                    p.signal(libc::SIGKILL);
                    left.push(p);
                }
            }
        }
        for mut p in left {
            p.kill();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // The QEMUs first: libvirtd leaves them running when it stops.
        if let Ok(rd) = fs::read_dir(self.dir.join("run/qemu")) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if let Some(dom) = n.strip_suffix(".pid") {
                    self.try_kill_qemu(dom);
                }
            }
        }
        let (l, k, g) = {
            let mut d = self.daemons();
            (d.libvirtd.take(), d.virtlockd.take(), d.virtlogd.take())
        };
        for p in [l, k, g].into_iter().flatten() {
            drop(p); // SIGTERM, bounded wait, SIGKILL
        }
        // Whatever else was started in the host (processes started with
        // spawn_in_host whose guards the test still holds, leftovers of
        // exec_in_host), then the anchor.
        self.kill_namespace();
        {
            let mut a = self.anchor.lock().unwrap_or_else(|e| e.into_inner());
            a.stdin.take();
            a.proc.stop();
        }
        save_capabilities(&self.dir.join("cache/qemu/capabilities"));
    }
}

/// PATH for the daemons: the sbin directories first (libvirtd, virtlogd,
/// ip, ...), then the test's own.
fn daemon_path() -> String {
    let mut p = String::from("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    if let Ok(old) = std::env::var("PATH") {
        p.push(':');
        p.push_str(&old);
    }
    p
}

/// The script run inside the new namespaces before anything else.
fn setup_script(spec: &HostSpec, hostname: &str, dir: &Path) -> String {
    let q = |p: &Path| sh_quote(&p.display().to_string());
    let mut s = String::from(
        "# Generated by tests/support/libvirt.rs: runs inside the host's new\n\
         # mount + UTS namespaces (and its network namespace).\n\
         set -eu\n",
    );
    s.push_str(&format!("hostname {}\n", sh_quote(hostname)));
    s.push_str(
        "# The machine's network namespaces are bind mounts under /run/netns;\n\
         # their copies here would keep every test's namespaces alive.\n\
         if mountpoint -q /run/netns; then umount -l /run/netns; fi\n\
         for f in /run/netns/*; do\n\
         \x20   if mountpoint -q \"$f\"; then umount -l \"$f\"; fi\n\
         done\n",
    );
    s.push_str(
        "# sysfs shows the network namespace of whoever mounted it: the\n\
         # host's own interfaces under /sys/class/net, as `ip netns exec` does.\n\
         umount -l /sys\n\
         mount -t sysfs sysfs /sys\n",
    );
    let mut binds: Vec<(PathBuf, PathBuf)> = [
        ("run", "/run/libvirt"),
        ("lib", "/var/lib/libvirt"),
        ("log", "/var/log/libvirt"),
        ("cache", "/var/cache/libvirt"),
        ("etc", "/etc/libvirt"),
        ("vmlease", "/run/vmlease"),
    ]
    .iter()
    .map(|(a, b)| (dir.join(a), PathBuf::from(b)))
    .collect();
    binds.extend(spec.binds.iter().cloned());
    for (src, dst) in &binds {
        if src.is_dir() {
            s.push_str(&format!("mkdir -p {}\n", q(dst)));
        } else {
            let parent = dst.parent().unwrap_or(Path::new("/"));
            s.push_str(&format!(
                "mkdir -p {}\n[ -e {d} ] || : >{d}\n",
                q(parent),
                d = q(dst)
            ));
        }
        s.push_str(&format!("mount --bind {} {}\n", q(src), q(dst)));
    }
    s.push_str(&format!(": >{}\n", q(&dir.join("ready"))));
    s
}

/// The host's /etc/libvirt: the machine's daemon configs (not its domains,
/// networks, hooks or lock-plugin configs), then generated files.
fn write_etc(spec: &HostSpec, etc: &Path, index: usize) {
    if let Ok(rd) = fs::read_dir("/etc/libvirt") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let skip = n == "qemu.conf" || n == "libvirtd.conf" || n.starts_with("qemu-");
            if n.ends_with(".conf") && !skip && e.path().is_file() {
                let _ = fs::copy(e.path(), etc.join(&n));
            }
        }
    }
    let mut qemu = String::from(
        "# Generated by tests/support/libvirt.rs: what QEMU needs in this sandbox.\n\
         user = \"root\"\n\
         group = \"root\"\n\
         dynamic_ownership = 0\n\
         security_driver = \"none\"\n\
         cgroup_controllers = [ ]\n\
         namespaces = [ ]\n\
         vnc_listen = \"127.0.0.1\"\n",
    );
    if let Some(lm) = &spec.lock_manager {
        qemu.push_str(&format!("lock_manager = \"{lm}\"\n"));
    }
    qemu.push_str(&spec.qemu_conf);
    // A distinct host UUID per libvirtd: live migration refuses to migrate
    // to "the same host" otherwise.
    let uuid = format!(
        "{}{:04x}",
        &random_uuid()[..32],
        (index as u16).wrapping_add(1)
    );
    let libvirtd = format!(
        "# Generated by tests/support/libvirt.rs.\n\
         host_uuid = \"{uuid}\"\n\
         auth_unix_ro = \"none\"\n\
         auth_unix_rw = \"none\"\n\
         log_level = 3\n\
         log_filters = \"1:locking\"\n\
         log_outputs = \"1:file:/var/log/libvirt/libvirtd.log\"\n\
         {}",
        spec.libvirtd_conf
    );
    let mut files = vec![
        ("qemu.conf".to_string(), qemu, 0o644),
        ("libvirtd.conf".to_string(), libvirtd, 0o644),
    ];
    files.extend(spec.etc_files.iter().cloned());
    for (rel, content, mode) in files {
        let p = etc.join(&rel);
        if let Some(parent) = p.parent() {
            let _ = fs::create_dir_all(parent);
        }
        fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
    }
}

/// Where a probed QEMU capabilities cache is kept for later hosts when the
/// machine has none (`/var/cache/libvirt/qemu/capabilities`).
fn capabilities_seed() -> PathBuf {
    util::cargo_target_dir().join("vmlease-test/qemu-capabilities")
}

fn xml_files(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "xml"))
                .collect()
        })
        .unwrap_or_default()
}

/// Copies QEMU's capabilities into a new host so that its first domain
/// does not wait for a probe (libvirt re-probes if they are stale).
fn seed_capabilities(dst: &Path) {
    let machine = Path::new("/var/cache/libvirt/qemu/capabilities");
    let mut src = xml_files(machine);
    if src.is_empty() {
        src = xml_files(&capabilities_seed());
    }
    for f in src {
        if let Some(n) = f.file_name() {
            let _ = fs::copy(&f, dst.join(n));
        }
    }
}

fn save_capabilities(from: &Path) {
    let seed = capabilities_seed();
    let files = xml_files(from);
    if files.is_empty() || !xml_files(&seed).is_empty() {
        return;
    }
    let tmp = seed.with_file_name(format!(".qemu-capabilities.{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    if fs::create_dir_all(&tmp).is_err() {
        return;
    }
    for f in files {
        if let Some(n) = f.file_name() {
            let _ = fs::copy(&f, tmp.join(n));
        }
    }
    let _ = fs::remove_dir(&seed); // only if empty
    if fs::rename(&tmp, &seed).is_err() {
        let _ = fs::remove_dir_all(&tmp); // another test was first
    }
}
