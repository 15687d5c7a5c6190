//! Shared harness for the daemon and CLI suites: vmlease-watchdog
//! processes as "hosts" on one lockspace, stand-in QEMU processes leased
//! through the plugin's own code, tracked by pid and stopped on drop.
//!
//! Timings are small but satisfy the safety inequality: R=0.2 s, F=1.5 s,
//! K=0.5 s, W=1 s, D=4 s.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use vmlease::clock::boottime_ms;
use vmlease::config::{self, Config};
use vmlease::lockspace::Lockspace;
use vmlease::plugin::{self, Manager, Param, Value};
use vmlease::resource::Resource;
use vmlease::status::Status;

pub const R: u64 = 200;
pub const F: u64 = 1500;
pub const K: u64 = 500;
pub const W: u64 = 1000;
pub const D: u64 = 4000;

pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn bin(name: &str) -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_vmlease"));
    exe.with_file_name(name)
}

/// Polls `f` until it returns Ok, at most `timeout_ms`.
pub fn wait_until<T>(what: &str, timeout_ms: u64, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = boottime_ms();
    let mut last;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        if boottime_ms() - start > timeout_ms {
            panic!("timed out after {timeout_ms} ms waiting for {what}; last seen: {last}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!(
            "vmlease-wd-{name}-{}-{}",
            std::process::id(),
            vmlease::process::random_u64() % 100000
        ));
        fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process stopped by pid on drop (SIGCONT, SIGKILL, reap).
pub struct Proc {
    pub child: Child,
    pub what: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill with a pid we own.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
        let _ = &self.what;
    }
}

pub fn standin_qemu() -> Proc {
    let child = Command::new("sleep")
        .arg("1000")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    Proc {
        child,
        what: "stand-in QEMU".into(),
    }
}

pub struct Host {
    pub id: u16,
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub cfg: Config,
    pub daemon: Option<Proc>,
    pub log: PathBuf,
    /// Arguments added after `--config FILE` (e.g. `--log-boottime`).
    pub extra_args: Vec<String>,
}

impl Host {
    pub fn new(s: &Scratch, id: u16, lockspace: &Path, extra: &str) -> Host {
        Host::with_timing(s, id, lockspace, extra, [R, F, K, W, D])
    }

    /// A host with its own timing [R, F, K, W, D] in ms (must satisfy the
    /// inequality: the config loader checks it). The lockspace of these
    /// tests is a local directory: `allow_local_lockspace = true` unless
    /// `extra` sets the key itself (a CephFS lockspace sets it false).
    pub fn with_timing(s: &Scratch, id: u16, lockspace: &Path, extra: &str, t: [u64; 5]) -> Host {
        let [r, f, k, w, d] = t;
        let local = if extra.contains("allow_local_lockspace") {
            ""
        } else {
            "allow_local_lockspace = true\n"
        };
        let dir = s.0.join(format!("host{id}"));
        fs::create_dir_all(&dir).unwrap();
        let text = format!(
            "host_id = {id}\nhost_name = \"host-{id}.test\"\nlockspace_dir = \"{}\"\nstate_dir = \"{}\"\n\
             renew_interval = {}\nrenew_fail_timeout = {}\nkill_timeout = {}\nwatchdog_timeout = {}\n\
             host_dead_timeout = {}\nio_timeout = {}\nlock_timeout = 1\n\
             reset_action = \"record\"\nreset_record_file = \"{}\"\n{local}{extra}",
            lockspace.display(),
            dir.join("run").display(),
            r as f64 / 1000.0,
            f as f64 / 1000.0,
            k as f64 / 1000.0,
            w as f64 / 1000.0,
            d as f64 / 1000.0,
            (f / 3) as f64 / 1000.0,
            dir.join("reset").display(),
        );
        let conf = dir.join("vmlease.conf");
        fs::write(&conf, text).unwrap();
        let cfg = config::load(&conf).unwrap();
        Host {
            id,
            log: dir.join("daemon.log"),
            dir,
            conf,
            cfg,
            daemon: None,
            extra_args: Vec::new(),
        }
    }

    /// Starts the daemon, optionally wrapped (unshare, ip netns exec), and
    /// waits until the host is protected.
    pub fn start(&mut self, wrap: &[&str]) {
        self.spawn(wrap);
        let cfg = self.cfg.clone();
        let log = self.log.clone();
        wait_until(&format!("host {} to be protected", self.id), 10_000, || {
            vmlease::status::protected_status(&cfg)
                .map(|_| ())
                .map_err(|e| format!("{e}; log: {}", fs::read_to_string(&log).unwrap_or_default()))
        });
    }

    /// Starts the daemon (waiting until it is protected) in a private mount
    /// namespace where `real` is bind-mounted on `view`, the lockspace this
    /// host's config names: unmounting or freezing `view` in there cuts
    /// this host's storage only.
    pub fn start_with_own_view(&mut self, real: &Path, view: &Path) {
        let inner = format!(
            "mount --bind '{}' '{}' && exec \"$0\" \"$@\"",
            real.display(),
            view.display()
        );
        self.start_in_own_mount_ns(&inner, &[]);
    }

    /// Starts the daemon (waiting until it is protected) under `sh -c
    /// SCRIPT ARGS...` in a private mount namespace; `script` sets up the
    /// mounts and ends with an exec of the daemon's command line.
    pub fn start_in_own_mount_ns(&mut self, script: &str, args: &[&str]) {
        let mut wrap = vec![
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
        ];
        wrap.extend_from_slice(args);
        self.start(&wrap);
    }

    /// Starts the daemon without waiting for anything.
    pub fn spawn(&mut self, wrap: &[&str]) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut argv: Vec<String> = wrap.iter().map(|s| s.to_string()).collect();
        argv.push(bin("vmlease-watchdog").display().to_string());
        argv.push("--config".into());
        argv.push(self.conf.display().to_string());
        argv.extend(self.extra_args.iter().cloned());
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(Proc {
            child,
            what: format!("vmlease-watchdog host {}", self.id),
        });
    }

    pub fn stop(&mut self) {
        let d = self.daemon.as_mut().unwrap();
        d.signal(libc::SIGTERM);
        wait_until("the daemon to stop", 5000, || {
            if d.exited() {
                Ok(())
            } else {
                Err("running".into())
            }
        });
    }

    pub fn status(&self) -> Status {
        Status::read(&self.cfg.state_dir)
            .unwrap()
            .expect("daemon status")
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to 2 s) for a line the daemon has logged: its stderr is
    /// written by a writer thread, a moment after the event.
    pub fn wait_log(&self, needle: &str) {
        wait_until(&format!("the daemon to log '{needle}'"), 2000, || {
            let t = self.log_text();
            if t.contains(needle) {
                Ok(())
            } else {
                Err(t)
            }
        });
    }

    pub fn reset_record(&self) -> Option<String> {
        fs::read_to_string(self.dir.join("reset")).ok()
    }
}

pub fn manager(uuid: [u8; 16], name: &str, pid: u32) -> Manager {
    let params = vec![
        Param {
            key: "uuid".into(),
            value: Value::Uuid(uuid),
        },
        Param {
            key: "name".into(),
            value: Value::Str(Some(name.into())),
        },
        Param {
            key: "id".into(),
            value: Value::UInt(1),
        },
        Param {
            key: "pid".into(),
            value: Value::UInt(pid as u64),
        },
        Param {
            key: "uri".into(),
            value: Value::Str(Some("qemu:///system".into())),
        },
    ];
    Manager::new(0, &params, 0).unwrap()
}

/// Registers and leases a stand-in QEMU as libvirt would (register in the
/// "child", acquire from the "parent").
pub fn lease(
    h: &Host,
    uuid: [u8; 16],
    name: &str,
    q: &Proc,
    disk: Option<&str>,
) -> Result<(), String> {
    let mut m = manager(uuid, name, q.pid());
    if let Some(d) = disk {
        m.add_resource(&h.cfg, 0, d, &[], 0).unwrap();
    }
    plugin::register(&h.cfg, &m).map_err(|e| e.to_string())?;
    plugin::acquire(&h.cfg, &m, None).map_err(|e| e.to_string())
}

/// Polls `lease` of `q` on host `h` until it succeeds (another host's
/// takeover); panics when it still fails at `deadline` (boottime ms).
/// Returns when it succeeded and the last refusal before that.
pub fn take_over(
    h: &Host,
    uuid: [u8; 16],
    name: &str,
    q: &Proc,
    disk: Option<&str>,
    deadline: u64,
) -> (u64, String) {
    let mut last_err = String::new();
    loop {
        match lease(h, uuid, name, q, disk) {
            Ok(()) => return (boottime_ms(), last_err),
            Err(e) => last_err = e,
        }
        assert!(
            boottime_ms() < deadline,
            "host {} never took over {name}; last refusal: {last_err}",
            h.id
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `q` has exited (e.g. killed by a fence); when it did
/// (boottime ms). `ctx` says what was seen meanwhile, for the failure.
pub fn wait_exit(what: &str, q: &mut Proc, timeout_ms: u64, ctx: impl Fn() -> String) -> u64 {
    wait_until(what, timeout_ms, || {
        if q.exited() {
            Ok(boottime_ms())
        } else {
            Err(format!("still running; {}", ctx()))
        }
    })
}

pub fn holders(ls: &Path, r: &Resource) -> Vec<u32> {
    let ls = Lockspace::open(ls).unwrap();
    ls.read_lease(&r.key(), &r.name)
        .unwrap()
        .holders
        .iter()
        .map(|h| h.pid)
        .collect()
}

pub fn lockspace(s: &Scratch) -> PathBuf {
    let p = s.0.join("ls");
    Lockspace::init(&p, 16).unwrap();
    p
}

/// Runs a command, panicking with its output on failure.
pub fn sh(cmd: &str) {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Host {
    /// A second machine configured with this host's id (a cloned config):
    /// its own state dir, and host name `name`.
    pub fn clone_of(&self, s: &Scratch, tag: &str, name: &str) -> Host {
        let dir = s.0.join(format!("host{}-{tag}", self.id));
        fs::create_dir_all(&dir).unwrap();
        let text = fs::read_to_string(&self.conf)
            .unwrap()
            .replace(&self.dir.display().to_string(), &dir.display().to_string())
            .replace(
                &format!("host_name = \"host-{}.test\"", self.id),
                &format!("host_name = \"{name}\""),
            );
        let conf = dir.join("vmlease.conf");
        fs::write(&conf, text).unwrap();
        let cfg = config::load(&conf).unwrap();
        assert_eq!(cfg.host_name.as_deref(), Some(name));
        Host {
            id: self.id,
            log: dir.join("daemon.log"),
            dir,
            conf,
            cfg,
            daemon: None,
            extra_args: Vec::new(),
        }
    }

    /// The daemon's exit code, once it has exited.
    pub fn exit_code(&mut self) -> Option<i32> {
        let d = self.daemon.as_mut()?;
        match d.child.try_wait() {
            Ok(Some(st)) => st.code(),
            _ => None,
        }
    }
}

/// A wrapper for `Host::spawn` that runs the daemon as another machine:
/// in a mount namespace of its own where the kernel's boot id file shows
/// a boot id of its own (written to `dir`).
pub fn other_machine(dir: &Path) -> Vec<String> {
    let r = vmlease::process::random_u64();
    let boot = format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        r as u32,
        (r >> 32) as u16,
        (r >> 48) & 0xfff,
        (r >> 20) & 0xfff,
        r & 0xffff_ffff_ffff
    );
    let file = dir.join("boot_id");
    fs::write(&file, format!("{boot}\n")).unwrap();
    vec![
        "unshare".into(),
        "-m".into(),
        "sh".into(),
        "-c".into(),
        format!(
            "mount --bind '{}' /proc/sys/kernel/random/boot_id && exec \"$0\" \"$@\"",
            file.display()
        ),
    ]
}
