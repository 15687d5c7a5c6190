//! One running test host: its namespaces, its anchor, its daemons, and
//! what a test does with it (commands inside it, virsh, domains, links,
//! libvirtd restarts, migration); everything stopped by pid on drop.

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::super::util::{c_program, run_ok, sh_quote, tail, text, wait_until, ProcGuard};
use super::domain::{create_image, Domain, Format};
use super::files::{save_capabilities, seed_capabilities, setup_script, write_etc};
use super::net::{Link, Netns, Switch};
use super::spec::HostSpec;
use super::{IMAGES_DIR, LIBVIRTD_READY, POLL};

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
    pub(super) fn up(
        spec: HostSpec,
        index: usize,
        id: &str,
        cluster_dir: &Path,
        switch: &Switch,
    ) -> Host {
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
            .arg(c_program("scripts/lib/subreaper.c"))
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
        run_ok(&["ip", "-n", &self.switch_ns, "link", "set", &dev, state]);
    }

    /// Sets the host's own interface of a link administratively up or down.
    pub fn set_iface(&self, link: &str, up: bool) {
        let dev = self.iface(link).to_string();
        let state = if up { "up" } else { "down" };
        run_ok(&["ip", "-n", self.netns.name(), "link", "set", &dev, state]);
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
