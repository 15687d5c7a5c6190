//! Helpers shared by the integration tests: bounded polling, processes
//! tracked by pid and stopped on drop, scratch directories, the built
//! artifacts, and running commands with their output in panic messages.
//!
//! Nothing here sleeps for a time tuned to a machine: waits poll a
//! condition with a bound and say what they waited for when they give up.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Polls `f` every `poll` until it returns `Ok`, at most `timeout`.
/// On timeout, panics with what it waited for and the last error `f` gave.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        let last = match f() {
            Ok(v) => return v,
            Err(e) => e,
        };
        if start.elapsed() >= timeout {
            panic!(
                "timed out after {:.1}s waiting for {what}; last seen: {last}",
                timeout.as_secs_f64()
            );
        }
        std::thread::sleep(poll.min(timeout.saturating_sub(start.elapsed())));
    }
}

/// Panics unless the test runs as root. These tests start libvirtd, mount
/// things and create network namespaces; they are meant to fail loudly,
/// not to pass by doing nothing.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        panic!(
            "this test must run as root (it starts libvirtd, mounts and creates network \
             namespaces); euid is {euid}. Run it as root on a machine prepared by \
             scripts/setup-test-env.sh."
        );
    }
}

/// A name no other test in this process or any other running process
/// uses: `PREFIX-PID-N`.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------- artifacts

/// The directory holding the built binaries (`target/debug`), derived from
/// the `vmlease` binary cargo built for this integration test.
pub fn bin_dir() -> PathBuf {
    let exe = Path::new(env!("CARGO_BIN_EXE_vmlease"));
    exe.parent()
        .expect("the vmlease binary has a directory")
        .into()
}

/// The cargo target directory (`target`).
pub fn cargo_target_dir() -> PathBuf {
    bin_dir()
        .parent()
        .expect("the profile directory has a parent")
        .into()
}

/// A built binary of this package: `vmlease`, `vmlease-watchdog`.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// The lock-manager plugin as cargo builds it: `target/debug/libvmlease.so`.
pub fn cdylib() -> PathBuf {
    bin_dir().join("libvmlease.so")
}

/// A directory holding `vmlease.so` (a symlink to the built
/// `libvmlease.so`), for `LIBVIRT_LOCK_MANAGER_PLUGIN_DIR`.
pub fn plugin_dir() -> PathBuf {
    let so = cdylib();
    assert!(
        so.exists(),
        "{} is missing: build the library first (cargo build)",
        so.display()
    );
    let dir = cargo_target_dir().join("vmlease-test").join("plugin");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let link = dir.join("vmlease.so");
    if fs::canonicalize(&link).ok() != fs::canonicalize(&so).ok() {
        // Atomic: parallel test binaries may do this at the same time.
        let tmp = dir.join(format!(".vmlease.so.{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&so, &tmp)
            .unwrap_or_else(|e| panic!("symlink {}: {e}", tmp.display()));
        fs::rename(&tmp, &link).unwrap_or_else(|e| panic!("rename {}: {e}", link.display()));
    }
    dir
}

/// Compiles a C helper from `tests/support/NAME.c` once per test process
/// into `target/vmlease-test/NAME` and returns its path.
pub fn c_helper(name: &str) -> PathBuf {
    c_program(&format!("tests/support/{name}.c"))
}

/// The C compiler's flags for every helper program, also those the shell
/// harness builds (`scripts/lib/vmhosts.sh`): one build, whoever builds.
pub const C_FLAGS: [&str; 3] = ["-O2", "-Wall", "-pthread"];

/// Compiles the C program `src` (a path in the repository, e.g.
/// `scripts/lib/subreaper.c`) once per test process into
/// `target/vmlease-test/STEM` and returns its path.
pub fn c_program(src: &str) -> PathBuf {
    static BUILT: OnceLock<std::sync::Mutex<Vec<(String, PathBuf)>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = built.iter().find(|(n, _)| n == src) {
        return p.clone();
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(src);
    let name = path
        .file_stem()
        .unwrap_or_else(|| panic!("{src}: no file name"))
        .to_string_lossy()
        .into_owned();
    let dir = cargo_target_dir().join("vmlease-test");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let out = dir.join(&name);
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let o = Command::new("cc")
        .args(C_FLAGS)
        .arg("-o")
        .arg(&tmp)
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cc (to build {}): {e}; run scripts/setup-test-env.sh",
                path.display()
            )
        });
    assert!(o.status.success(), "cc {}: {}", path.display(), text(&o));
    // Atomic: a running copy keeps its old inode.
    fs::rename(&tmp, &out).unwrap_or_else(|e| panic!("rename {}: {e}", out.display()));
    built.push((src.into(), out.clone()));
    out
}

// ----------------------------------------------------------------- commands

/// stdout then stderr of a finished command, as text.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `argv`, panicking with its status and output unless it succeeds;
/// returns its stdout.
pub fn run_ok(argv: &[&str]) -> String {
    let o = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", argv.join(" ")));
    assert!(
        o.status.success(),
        "`{}` failed ({}): {}",
        argv.join(" "),
        o.status,
        text(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Quotes a word for POSIX sh.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return s.into();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The last `n` lines of a file (at most its last 64 KiB), or a note that
/// it cannot be read.
pub fn tail(path: &Path, n: usize) -> String {
    let mut f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("({}: {e})\n", path.display()),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let s = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = s.lines().collect();
    let mut out = lines[lines.len().saturating_sub(n)..].join("\n");
    out.push('\n');
    out
}

// ---------------------------------------------------------------- processes

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A process the test started, tracked by pid (through a pidfd, so a
/// recycled pid is never signalled) and stopped on drop: SIGCONT, SIGTERM,
/// a bounded wait, then SIGKILL. Works for the test's own children and for
/// processes started elsewhere (e.g. inside a host's namespaces).
pub struct ProcGuard {
    what: String,
    pid: i32,
    /// None: the process was already gone when it was adopted.
    pidfd: Option<OwnedFd>,
    child: Option<Child>,
    status: Option<ExitStatus>,
    log: Option<PathBuf>,
}

/// How long a process gets to exit after SIGTERM before SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(5);

impl ProcGuard {
    /// Spawns `cmd` and tracks it.
    pub fn spawn(cmd: &mut Command, what: &str) -> ProcGuard {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({cmd:?}): {e}"));
        let pid = child.id() as i32;
        // Our unreaped child: the pid cannot be recycled yet.
        let pidfd = pidfd_open(pid).unwrap_or_else(|e| panic!("pidfd_open({pid}) for {what}: {e}"));
        ProcGuard {
            what: what.into(),
            pid,
            pidfd: Some(pidfd),
            child: Some(child),
            status: None,
            log: None,
        }
    }

    /// Spawns `cmd` with stdin from /dev/null and stdout and stderr appended
    /// to `log`.
    pub fn spawn_logged(cmd: &mut Command, what: &str, log: &Path) -> ProcGuard {
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let err = f.try_clone().expect("dup a log fd");
        cmd.stdin(Stdio::null()).stdout(f).stderr(err);
        let mut p = ProcGuard::spawn(cmd, what);
        p.log = Some(log.into());
        p
    }

    /// Tracks a process that is not our child. A process that is already
    /// gone gives a guard that reports it exited; other errors are Err.
    pub fn adopt(pid: i32, what: &str, log: Option<PathBuf>) -> std::io::Result<ProcGuard> {
        let pidfd = match pidfd_open(pid) {
            Ok(fd) => Some(fd),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => None,
            Err(e) => return Err(e),
        };
        Ok(ProcGuard {
            what: what.into(),
            pid,
            pidfd,
            child: None,
            status: None,
            log,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// What this process is, for messages ("libvirtd on host a").
    pub fn what(&self) -> &str {
        &self.what
    }

    /// Its log file, if it was started with one.
    pub fn log(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        match &self.log {
            Some(l) => tail(l, n),
            None => "(no log)\n".into(),
        }
    }

    /// The stdin pipe of a child spawned with `Stdio::piped()`.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.as_mut().and_then(|c| c.stdin.take())
    }

    /// Sends `sig`; false if the process is gone.
    pub fn signal(&self, sig: i32) -> bool {
        let Some(fd) = &self.pidfd else {
            return false;
        };
        // SAFETY: pidfd_send_signal on a pidfd we own; null siginfo is allowed.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        r == 0
    }

    fn poll_exit(&self, timeout: Duration) -> bool {
        let Some(fd) = &self.pidfd else {
            return true;
        };
        let start = Instant::now();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd, for the duration of the call.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r > 0 {
                return true;
            }
            if r == 0 && start.elapsed() >= timeout {
                return false;
            }
            // EINTR or an early wakeup: poll again for the time left.
        }
    }

    /// True while the process has not exited (a zombie has exited).
    pub fn is_running(&self) -> bool {
        !self.poll_exit(Duration::ZERO)
    }

    /// Waits at most `timeout` for the process to exit; our own child is
    /// reaped. True if it has exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        if !self.poll_exit(timeout) {
            return false;
        }
        if let Some(c) = self.child.as_mut() {
            if self.status.is_none() {
                if let Ok(s) = c.wait() {
                    self.status = Some(s);
                }
            }
        }
        true
    }

    /// Its exit status, once it has exited (our own children only).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.wait_exit(Duration::ZERO);
        self.status
    }

    /// SIGCONT, SIGTERM, waits up to `grace`, then SIGKILL and waits again.
    /// True if it exited on SIGTERM (or before).
    pub fn stop_within(&mut self, grace: Duration) -> bool {
        if self.wait_exit(Duration::ZERO) {
            return true;
        }
        self.signal(libc::SIGCONT);
        self.signal(libc::SIGTERM);
        if self.wait_exit(grace) {
            return true;
        }
        eprintln!(
            "{} (pid {}) ignored SIGTERM for {:.1}s: SIGKILL",
            self.what,
            self.pid,
            grace.as_secs_f64()
        );
        self.kill();
        false
    }

    /// Stops it as on drop (see `stop_within`, with `TERM_GRACE`).
    pub fn stop(&mut self) -> bool {
        self.stop_within(TERM_GRACE)
    }

    /// SIGKILL, and waits (bounded) until it is gone.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        if !self.wait_exit(Duration::from_secs(10)) {
            eprintln!(
                "{} (pid {}) still exists 10 s after SIGKILL (uninterruptible sleep?)",
                self.what, self.pid
            );
        }
    }
}

impl Drop for ProcGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

// ------------------------------------------------------------------ scratch

/// A scratch directory under /tmp, removed on drop after unmounting
/// anything still mounted inside it (in the test's mount namespace). If
/// something cannot be unmounted the directory is left alone, never
/// deleted through a mount. `VMLEASE_TEST_KEEP=1` keeps it for inspection.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    pub fn new(prefix: &str) -> Scratch {
        remove_stale_scratch();
        let path = PathBuf::from("/tmp").join(unique_name(&format!("vmlease-{prefix}")));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        let marker = path.join(SCRATCH_MARKER);
        fs::write(&marker, format!("{}\n", std::process::id()))
            .unwrap_or_else(|e| panic!("write {}: {e}", marker.display()));
        Scratch { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A subdirectory, created.
    pub fn dir(&self, rel: &str) -> PathBuf {
        let p = self.path.join(rel);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        p
    }
}

/// Marks a scratch directory and names the test process that made it.
const SCRATCH_MARKER: &str = ".vmlease-scratch-pid";

/// Removes scratch directories of test processes that died without
/// cleaning up (killed with SIGKILL, say): marked, their pid gone, and
/// nothing mounted inside.
fn remove_stale_scratch() {
    let Ok(rd) = fs::read_dir("/tmp") else {
        return;
    };
    for e in rd.flatten() {
        let path = e.path();
        let Ok(pid) = fs::read_to_string(path.join(SCRATCH_MARKER)) else {
            continue;
        };
        let alive = Path::new("/proc").join(pid.trim()).exists();
        if !alive && !pid.trim().is_empty() && mounts_under(&path).is_empty() {
            eprintln!("removing the stale scratch directory {}", path.display());
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// Mount points at or below `dir` in this process's mount namespace,
/// deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

fn unescape_mountinfo(s: &str) -> String {
    // Spaces, tabs, newlines and backslashes appear as \ooo (octal).
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(d) if b[i] == b'\\' => {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Detaches every mount at or below `dir` (lazily, deepest first). True
/// when none is left.
pub fn unmount_all_under(dir: &Path) -> bool {
    for m in mounts_under(dir) {
        let c = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()).unwrap_or_default();
        // SAFETY: a valid NUL-terminated path; MNT_DETACH has no other inputs.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    mounts_under(dir).is_empty()
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("VMLEASE_TEST_KEEP").is_some() {
            eprintln!("VMLEASE_TEST_KEEP: keeping {}", self.path.display());
            return;
        }
        if !unmount_all_under(&self.path) {
            eprintln!(
                "not removing {}: still mounted inside: {:?}",
                self.path.display(),
                mounts_under(&self.path)
            );
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("removing {}: {e}", self.path.display());
        }
    }
}
