//! A real Ceph cluster with a CephFS for the integration tests, built by
//! `tests/ceph/cluster.sh` in a scratch directory: one mon on loopback (or
//! in a network namespace the test made), one mgr, one OSD, one MDS.
//!
//! - [`CephCluster::up`] builds it from nothing (~6 s here) and panics with
//!   the daemons' log tails when it does not come up.
//! - [`CephCluster::mount`] mounts the file system with `ceph-fuse` as its
//!   own client (its own MDS session): two mounts behave like two hosts.
//!   The [`CephMount`] guard unmounts on drop, also a hung or dead mount,
//!   and exposes the ceph-fuse pid for fault injection (`hang`, `resume`,
//!   `kill`, `abort`).
//! - [`CephCluster::evict`], [`CephCluster::set_session_timeouts`] and
//!   [`CephCluster::ceph`] act on the cluster through the `ceph` CLI.
//!
//! Dropping the cluster stops every daemon by pid (SIGCONT, SIGTERM, a
//! bounded wait, SIGKILL) after aborting and lazy-unmounting its mounts,
//! also while a test panics. Should the test process die without running
//! its destructors, a watcher started with the cluster notices within a
//! second and brings the cluster down.
//!
//! Self-contained on purpose (only `std` and `libc`).

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one `cluster.sh` invocation may run before it is killed. The
/// script bounds its own waits well below this.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

/// The OSD's object store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OsdStore {
    /// In RAM: the fastest to build, lost on restart.
    Memstore,
    /// BlueStore on a 4 GiB sparse file in the scratch directory.
    Bluestore,
}

/// How to build a cluster; `CephOptions::default()` is a memstore OSD with
/// every daemon on 127.0.0.1 in the test's network namespace.
#[derive(Clone, Debug)]
pub struct CephOptions {
    /// Run the daemons in this network namespace (`/run/netns/NAME`),
    /// made by the test, binding `addr`: for clients in other namespaces
    /// whose storage link can be cut.
    pub netns: Option<String>,
    /// The address the daemons bind; 127.0.0.1 unless set.
    pub addr: Option<Ipv4Addr>,
    pub store: OsdStore,
    /// Lines appended to the `[global]` section of ceph.conf.
    pub conf_extra: String,
    /// A name in the scratch directory's name, for the humans.
    pub name: String,
}

impl Default for CephOptions {
    fn default() -> CephOptions {
        CephOptions {
            netns: None,
            addr: None,
            store: OsdStore::Memstore,
            conf_extra: String::new(),
            name: "ceph".into(),
        }
    }
}

/// How to mount: `MountOptions::default()` mounts at `DIR/mnt/CLIENT` in
/// the test's own namespaces.
#[derive(Clone, Debug, Default)]
pub struct MountOptions {
    /// Run ceph-fuse in this network namespace (the cluster must be
    /// reachable from there: see `CephOptions::netns`).
    pub netns: Option<String>,
    /// Mount in this mount namespace (e.g. `/proc/PID/ns/mnt` of a test
    /// host); `mountpoint` is then a path in that namespace.
    pub mntns: Option<PathBuf>,
    /// Where to mount; `DIR/mnt/CLIENT` unless set.
    pub mountpoint: Option<PathBuf>,
    /// Mount with `--fuse_disable_pagecache=true` (no kernel page cache).
    /// Off by default: the tests run vmlease on ceph-fuse's defaults, which
    /// vmlease must be safe on (it reads the lockspace with O_DIRECT).
    pub no_page_cache: bool,
    /// More ceph-fuse arguments.
    pub args: Vec<String>,
}

struct Shared {
    dir: PathBuf,
    keep: std::sync::atomic::AtomicBool,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The last owner (cluster or mount) is gone and the cluster is down.
        if self.keep.load(Ordering::Relaxed) || std::env::var_os("VMLEASE_KEEP_CEPH").is_some() {
            eprintln!("ceph: keeping {} for a post-mortem", self.dir.display());
        } else if mounts_under(&self.dir).is_empty() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!(
                "ceph: not removing {}: something is still mounted under it",
                self.dir.display()
            );
        }
    }
}

/// A running cluster; brought down by pid on drop.
pub struct CephCluster {
    /// The scratch directory (also `dir()`).
    pub dir: PathBuf,
    shared: Arc<Shared>,
    up_time: Duration,
    is_down: bool,
}

/// One ceph-fuse mount: its own client and MDS session. Unmounted on drop
/// (cleanly when healthy, else by aborting the FUSE connection, killing
/// ceph-fuse and lazy-unmounting).
pub struct CephMount {
    /// Where the file system is mounted (also `path()`).
    pub path: PathBuf,
    shared: Arc<Shared>,
    client: String,
    pid: i32,
    mntns: Option<PathBuf>,
    fuse_conn: Option<u32>,
    unmounted: bool,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ceph/cluster.sh")
}

/// Runs `cluster.sh ARGS` with `env`, bounded; Ok(stdout, stderr) when it
/// exits 0, else Err with its output.
fn run_script(
    dir: &Path,
    args: &[OsString],
    env: &[(&str, String)],
) -> Result<(String, String), String> {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    // Not under DIR/log: `up` starts by emptying that.
    let out_path = dir.join(format!(".script-{}-{n}.stdout", std::process::id()));
    let err_path = dir.join(format!(".script-{}-{n}.stderr", std::process::id()));
    let what = format!(
        "cluster.sh {}",
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut cmd = Command::new("sh");
    cmd.arg(script())
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).map_err(|e| format!("{what}: {e}"))?)
        .stderr(fs::File::create(&err_path).map_err(|e| format!("{what}: {e}"))?);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|e| format!("{what}: {e}"))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() < SCRIPT_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{what}: still running after {} s; killed. stderr:\n{}",
                    SCRIPT_TIMEOUT.as_secs(),
                    read_lossy(&err_path)
                ));
            }
            Err(e) => return Err(format!("{what}: wait: {e}")),
        }
    };
    let out = read_lossy(&out_path);
    let err = read_lossy(&err_path);
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    if status.success() {
        Ok((out, err))
    } else {
        Err(format!("{what}: {status}\n{out}{err}"))
    }
}

fn read_lossy(p: &Path) -> String {
    let mut v = Vec::new();
    if let Ok(mut f) = fs::File::open(p) {
        let _ = f.read_to_end(&mut v);
    }
    String::from_utf8_lossy(&v).into_owned()
}

fn os(s: impl Into<OsString>) -> OsString {
    s.into()
}

/// The state letter of /proc/PID/stat (R, S, D, T, Z...), None when gone.
fn proc_state(pid: i32) -> Option<char> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(") ")?.1.chars().next()
}

/// Running (zombies count as gone: PID 1 reaps late here).
fn proc_alive(pid: i32) -> bool {
    matches!(proc_state(pid), Some(c) if c != 'Z' && c != 'X')
}

fn signal(pid: i32, sig: i32) -> bool {
    // SAFETY: kill(2) with a pid this module started (a ceph-fuse recorded
    // by cluster.sh) and a valid signal number; no memory is involved.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Polls `f` every 10 ms until it holds, at most `timeout`; panics with
/// `what` and the last state `f` reported.
fn poll(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    loop {
        let last = match f() {
            Ok(()) => return,
            Err(e) => e,
        };
        if start.elapsed() >= timeout {
            panic!(
                "timed out after {:.1} s waiting for {what}; last seen: {last}",
                timeout.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Mountpoints of ceph-fuse mounts under `dir` in this mount namespace.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(mi) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    mi.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let m = PathBuf::from(f.get(4)?);
            (l.contains(" - fuse.ceph-fuse ") && m.starts_with(dir)).then_some(m)
        })
        .collect()
}

fn scratch_dir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    // Short: the daemons' admin sockets live under it (108-byte limit).
    let base = std::env::var_os("VMLEASE_CEPH_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join(format!(
        "vmlease-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

impl CephCluster {
    /// A cluster with the default options (memstore OSD, loopback), named
    /// `name` in its scratch directory's name.
    pub fn up(name: &str) -> CephCluster {
        CephCluster::up_with(CephOptions {
            name: name.into(),
            ..CephOptions::default()
        })
    }

    pub fn up_with(opts: CephOptions) -> CephCluster {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "the Ceph tests run as root (they start Ceph daemons and mount ceph-fuse)"
        );
        let dir = scratch_dir(&opts.name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            keep: false.into(),
        });
        let mut env = vec![
            ("CEPH_OWNER_PID", std::process::id().to_string()),
            (
                "CEPH_OSD_STORE",
                match opts.store {
                    OsdStore::Memstore => "memstore".into(),
                    OsdStore::Bluestore => "bluestore".into(),
                },
            ),
            ("CEPH_CONF_EXTRA", opts.conf_extra.clone()),
        ];
        if let Some(ns) = &opts.netns {
            env.push(("CEPH_NETNS", ns.clone()));
        }
        if let Some(a) = opts.addr {
            env.push(("CEPH_ADDR", a.to_string()));
        }
        let start = Instant::now();
        // cluster.sh brings down what it started when `up` fails.
        match run_script(&dir, &[os("up"), dir.clone().into()], &env) {
            Ok((_, err)) => {
                let up_time = start.elapsed();
                eprintln!(
                    "ceph: cluster up in {:.1} s in {}",
                    up_time.as_secs_f64(),
                    dir.display()
                );
                if std::env::var_os("VMLEASE_CEPH_VERBOSE").is_some() {
                    eprint!("{err}");
                }
                CephCluster {
                    dir,
                    shared,
                    up_time,
                    is_down: false,
                }
            }
            Err(e) => {
                shared.keep.store(true, Ordering::Relaxed);
                panic!(
                    "the Ceph cluster did not come up (scratch {} kept):\n{e}",
                    dir.display()
                );
            }
        }
    }

    /// The scratch directory (ceph.conf, logs, daemon data, `pids`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn conf(&self) -> PathBuf {
        self.dir().join("ceph.conf")
    }

    /// How long `up` took.
    pub fn up_time(&self) -> Duration {
        self.up_time
    }

    /// Mounts the file system as `client.CLIENT` at `DIR/mnt/CLIENT`.
    pub fn mount(&self, client: &str) -> CephMount {
        self.mount_with(client, MountOptions::default())
    }

    pub fn mount_with(&self, client: &str, opts: MountOptions) -> CephMount {
        let path = opts
            .mountpoint
            .clone()
            .unwrap_or_else(|| self.dir().join("mnt").join(client));
        let mut args = vec![
            os("mount"),
            self.dir().into(),
            os(client),
            path.clone().into(),
        ];
        if opts.no_page_cache {
            args.push(os("--fuse_disable_pagecache=true"));
        }
        args.extend(opts.args.iter().map(os));
        let mut env = Vec::new();
        if let Some(ns) = &opts.netns {
            env.push(("NETNS", ns.clone()));
        }
        if let Some(ns) = &opts.mntns {
            env.push(("MNTNS", ns.display().to_string()));
        }
        let (out, _) = run_script(self.dir(), &args, &env).unwrap_or_else(|e| {
            panic!(
                "mounting CephFS as client.{client} at {} failed:\n{e}",
                path.display()
            )
        });
        let pid: i32 = out
            .trim()
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("cluster.sh mount printed no pid: {out:?}"));
        let fuse_conn = self.pid_line(pid).and_then(|f| f.get(5)?.parse().ok());
        CephMount {
            shared: self.shared.clone(),
            client: client.into(),
            path,
            pid,
            mntns: opts.mntns,
            fuse_conn,
            unmounted: false,
        }
    }

    /// The fields of the last line of DIR/pids recording `pid`.
    fn pid_line(&self, pid: i32) -> Option<Vec<String>> {
        let pids = fs::read_to_string(self.dir().join("pids")).ok()?;
        pids.lines()
            .rev()
            .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
            .find(|f| f.first().map(String::as_str) == Some(&pid.to_string()))
    }

    /// Runs the `ceph` CLI against this cluster; stdout, or Err with the
    /// output.
    pub fn try_ceph(&self, args: &[&str]) -> Result<String, String> {
        let mut v = vec![os("ceph"), self.dir().into()];
        v.extend(args.iter().map(os));
        run_script(self.dir(), &v, &[]).map(|(out, _)| out)
    }

    /// Runs the `ceph` CLI against this cluster; panics when it fails.
    pub fn ceph(&self, args: &[&str]) -> String {
        self.try_ceph(args)
            .unwrap_or_else(|e| panic!("ceph {}: {e}", args.join(" ")))
    }

    /// Evicts `client.CLIENT` from the MDS (which blocklists it): its
    /// mount fails from then on, its capabilities and locks go to others.
    pub fn evict(&self, client: &str) {
        run_script(
            self.dir(),
            &[os("evict"), self.dir().into(), os(client)],
            &[],
        )
        .unwrap_or_else(|e| panic!("evicting client.{client}: {e}"));
    }

    /// `ceph fs set cephfs session_timeout T` and `session_autoclose A`
    /// (seconds; Ceph refuses values below 30? see docs/cephfs.md).
    pub fn set_session_timeouts(&self, timeout: u32, autoclose: u32) {
        run_script(
            self.dir(),
            &[
                os("set-session"),
                self.dir().into(),
                os(timeout.to_string()),
                os(autoclose.to_string()),
            ],
            &[],
        )
        .unwrap_or_else(|e| panic!("setting the session timeouts: {e}"));
    }

    /// An MDS option at runtime (`ceph config set mds NAME VALUE`), e.g.
    /// `mds_cap_revoke_eviction_timeout`.
    pub fn set_mds_option(&self, name: &str, value: &str) {
        self.ceph(&["config", "set", "mds", name, value]);
    }

    /// The MDS's sessions as (client name, state), e.g. ("hosta", "open").
    pub fn sessions(&self) -> Vec<(String, String)> {
        let out = self.ceph(&["tell", "mds.a", "session", "ls"]);
        // Each session has a "state" before its client_metadata's
        // "entity_id": pair them up in order, without a JSON parser.
        let mut v = Vec::new();
        let mut state = None;
        for line in out.lines() {
            let l = line.trim();
            if let Some(s) = json_str_field(l, "state") {
                state = Some(s);
            } else if let Some(id) = json_str_field(l, "entity_id") {
                if let Some(s) = state.take() {
                    v.push((id, s));
                }
            }
        }
        v
    }

    /// The last `n` lines of each daemon log, for panic messages.
    pub fn log_tail(&self, n: usize) -> String {
        let mut s = String::new();
        for name in ["mon.a", "mds.a", "osd.0"] {
            let p = self.dir().join("log").join(format!("{name}.log"));
            let text = read_lossy(&p);
            let lines: Vec<&str> = text.lines().collect();
            s.push_str(&format!("--- {}\n", p.display()));
            for l in &lines[lines.len().saturating_sub(n)..] {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    /// Brings the cluster down now (also done on drop); how long it took.
    pub fn down(mut self) -> Duration {
        let start = Instant::now();
        self.down_inner();
        start.elapsed()
    }

    fn down_inner(&mut self) {
        if self.is_down {
            return;
        }
        self.is_down = true;
        if let Err(e) = run_script(self.dir(), &[os("down"), self.dir().into()], &[]) {
            eprintln!("ceph: bringing the cluster down failed: {e}");
            self.shared.keep.store(true, Ordering::Relaxed);
        }
    }
}

fn json_str_field(line: &str, key: &str) -> Option<String> {
    let rest = line.strip_prefix(&format!("\"{key}\": \""))?;
    Some(rest.trim_end_matches(',').trim_end_matches('"').to_string())
}

impl Drop for CephCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.shared.keep.store(true, Ordering::Relaxed);
            eprintln!(
                "ceph: the test panicked; the daemons' last log lines:\n{}",
                self.log_tail(15)
            );
        }
        self.down_inner();
    }
}

impl CephMount {
    /// Where the file system is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The client name (`client.NAME`'s NAME).
    pub fn client(&self) -> &str {
        &self.client
    }

    /// The ceph-fuse process serving this mount.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The FUSE connection number (`/sys/fs/fuse/connections/N`).
    pub fn fuse_conn(&self) -> Option<u32> {
        self.fuse_conn
    }

    /// ceph-fuse still runs (a stopped one counts as running).
    pub fn is_alive(&self) -> bool {
        proc_alive(self.pid)
    }

    /// Freezes the client (SIGSTOP of ceph-fuse): every new request on the
    /// mount waits, the MDS gets no answer from it, as on a partitioned
    /// host. Returns once the process is stopped.
    pub fn hang(&self) {
        assert!(signal(self.pid, libc::SIGSTOP), "SIGSTOP {}", self.pid);
        poll(
            &format!("ceph-fuse {} of {} to stop", self.pid, self.client),
            Duration::from_secs(5),
            || match proc_state(self.pid) {
                Some('T') | Some('t') => Ok(()),
                s => Err(format!("state {s:?}")),
            },
        );
    }

    /// Lets a hung client go on (SIGCONT).
    pub fn resume(&self) {
        signal(self.pid, libc::SIGCONT);
        poll(
            &format!("ceph-fuse {} of {} to continue", self.pid, self.client),
            Duration::from_secs(5),
            || match proc_state(self.pid) {
                Some('T') | Some('t') => Err("stopped".into()),
                _ => Ok(()),
            },
        );
    }

    /// Sends `sig` to ceph-fuse.
    pub fn signal(&self, sig: i32) -> bool {
        signal(self.pid, sig)
    }

    /// A client crash: SIGKILL of ceph-fuse; returns once it is gone (the
    /// MDS session stays until the MDS times it out or it is evicted).
    pub fn kill(&self) {
        signal(self.pid, libc::SIGCONT);
        signal(self.pid, libc::SIGKILL);
        poll(
            &format!("ceph-fuse {} of {} to die", self.pid, self.client),
            Duration::from_secs(10),
            || {
                if proc_alive(self.pid) {
                    Err(format!("state {:?}", proc_state(self.pid)))
                } else {
                    Ok(())
                }
            },
        );
    }

    /// Aborts the FUSE connection: every request on the mount, even one in
    /// D state, ends with ECONNABORTED/ENOTCONN.
    pub fn abort(&self) {
        let conn = self.fuse_conn.expect("the mount's FUSE connection number");
        let ctl = Path::new("/sys/fs/fuse/connections");
        if !ctl.join(conn.to_string()).exists() {
            let _ = Command::new("mount")
                .args(["-t", "fusectl", "fusectl"])
                .arg(ctl)
                .status();
        }
        let p = ctl.join(conn.to_string()).join("abort");
        fs::write(&p, "1").unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }

    /// Unmounts now (also done on drop): cleanly when the client is
    /// healthy (its MDS session closes, its caps and locks go at once),
    /// else abort + kill + lazy unmount.
    pub fn umount(mut self) {
        self.do_umount(false);
    }

    /// Unmounts without trying a clean unmount: for a client that is hung,
    /// dead or evicted.
    pub fn umount_hard(mut self) {
        self.do_umount(true);
    }

    fn do_umount(&mut self, hard: bool) {
        if self.unmounted {
            return;
        }
        self.unmounted = true;
        let mut args = vec![
            os("umount"),
            self.shared.dir.clone().into(),
            self.path.clone().into(),
        ];
        if hard {
            args.push(os("hard"));
        }
        let mut env = Vec::new();
        if let Some(ns) = &self.mntns {
            env.push(("MNTNS", ns.display().to_string()));
        }
        if let Err(e) = run_script(&self.shared.dir, &args, &env) {
            eprintln!("ceph: unmounting {}: {e}", self.path.display());
        }
    }
}

impl Drop for CephMount {
    fn drop(&mut self) {
        self.do_umount(false);
    }
}
