//! The plugin's C ABI (src/ffi.rs) driven as libvirtd would, but with
//! random call sequences: drvNew with random parameter arrays (types,
//! keys, NULL and non-UTF-8 strings, pids), drvAddResource with random
//! kinds, names, parameters and flags, drvAcquire with random state
//! strings, flags and actions, drvRelease and drvInquire with and without
//! a state slot, and drvInit with random config files. Every call must
//! return 0, or -1 with an error message reported to libvirt; an
//! out-parameter is written only on success and is an XML-safe string.
//!
//! The calls run in a child process (this test binary again, running the
//! ignored test `abi_child`), so that a crash or a hang is caught: the
//! parent reports the signal or the timeout together with the case the
//! child was running. The child is given a valid daemon status (its own
//! pid as the daemon) for most cases, so that acquires reach the
//! lockspace; other cases have a stale, fenced, foreign, damaged or no
//! status, where refusals are expected.

use std::ffi::{c_char, c_int, c_uint, CStr, CString};
use std::fmt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use vmlease::clock::boottime_ms;
use vmlease::hosts::HostState;
use vmlease::status::Status;

use crate::runner::fuzz;
use crate::support::lockabi::{load_private, Driver, Manager, Param, Value};

const DIR_ENV: &str = "VMLEASE_FUZZ_ABI_DIR";
const VERSION: c_uint = 1_000_000;

// --- the case ------------------------------------------------------------------

/// Bytes for a C string (cut at the first NUL, as C would read it); None
/// is a NULL pointer.
type CBytes = Option<Vec<u8>>;

#[derive(Debug, Clone)]
pub enum PVal {
    Str(CBytes),
    Int(i64),
    UInt(u64),
    Double(f64),
    Uuid([u8; 16]),
}

#[derive(Clone)]
pub struct P {
    type_: c_int,
    key: CBytes,
    val: PVal,
}

impl fmt::Debug for P {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = match &self.val {
            PVal::Str(s) => format!("{:?}", s.as_ref().map(|b| String::from_utf8_lossy(b))),
            PVal::Int(i) => format!("int {i}"),
            PVal::UInt(u) => format!("uint {u}"),
            PVal::Double(d) => format!("double {d}"),
            PVal::Uuid(u) => format!("uuid {u:02x?}"),
        };
        let k = self
            .key
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned());
        write!(f, "P(type {}, key {k:?}, {v})", self.type_)
    }
}

#[derive(Debug, Clone, Copy)]
pub enum StatusKind {
    Good,
    Missing,
    Stale,
    Fenced,
    OtherHost,
    Damaged,
}

#[derive(Debug, Clone)]
pub enum Op {
    New {
        obj_type: c_uint,
        params: Vec<P>,
        flags: c_uint,
        /// A NULL array with a non-zero count.
        null_array: bool,
    },
    Add {
        kind: c_uint,
        name: CBytes,
        params: Vec<P>,
        flags: c_uint,
    },
    Acquire {
        state: CBytes,
        flags: c_uint,
        action: c_int,
    },
    Release {
        with_state: bool,
        flags: c_uint,
    },
    Inquire {
        with_state: bool,
        flags: c_uint,
    },
    Free,
    /// The next call gets a NULL manager.
    NullManager,
}

#[derive(Debug, Clone)]
pub struct Case {
    status: StatusKind,
    ops: Vec<Op>,
    /// drvInit on a second copy of the plugin: (version, config text or
    /// None for a missing file, NULL path, flags).
    init: Option<(c_uint, Option<String>, bool, c_uint)>,
}

/// Which pid a parameter names: the test process itself (a real process
/// that may lease), the stand-in QEMU, or junk.
#[derive(Debug, Clone, Copy)]
enum Pid {
    Me,
    Qemu,
    Other(i64),
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[ -~]{0,40}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..40),
        Just(vec![0xff, 0xfe]),
        Just("é".repeat(300).into_bytes()),
    ]
}

fn cbytes() -> impl Strategy<Value = CBytes> {
    prop_oneof![8 => bytes().prop_map(Some), 1 => Just(None)]
}

fn key() -> impl Strategy<Value = CBytes> {
    prop_oneof![
        4 => prop::sample::select(&["uuid", "name", "id", "pid", "uri", "lockspace", "path", "offset"][..])
            .prop_map(|k| Some(k.as_bytes().to_vec())),
        1 => cbytes(),
    ]
}

fn pval() -> impl Strategy<Value = (c_int, PVal)> {
    prop_oneof![
        cbytes().prop_map(|s| (0, PVal::Str(s))),
        cbytes().prop_map(|s| (1, PVal::Str(s))),
        any::<i32>().prop_map(|i| (2, PVal::Int(i as i64))),
        any::<i64>().prop_map(|i| (3, PVal::Int(i))),
        any::<u32>().prop_map(|u| (4, PVal::UInt(u as u64))),
        any::<u64>().prop_map(|u| (5, PVal::UInt(u))),
        any::<f64>().prop_map(|d| (6, PVal::Double(d))),
        any::<[u8; 16]>().prop_map(|u| (7, PVal::Uuid(u))),
        // An unknown type: the union must not be read.
        (8i32..1000, any::<u64>()).prop_map(|(t, u)| (t, PVal::UInt(u))),
        any::<i32>().prop_map(|t| (t, PVal::Int(0))),
    ]
}

fn param() -> impl Strategy<Value = P> {
    (key(), pval()).prop_map(|(key, (type_, val))| P { type_, key, val })
}

fn pid() -> impl Strategy<Value = Pid> {
    prop_oneof![
        4 => Just(Pid::Me),
        2 => Just(Pid::Qemu),
        1 => prop_oneof![Just(0i64), Just(-1), Just(u32::MAX as i64), Just(1), any::<i64>()].prop_map(Pid::Other),
    ]
}

fn uint_param(key: &str, v: u64) -> P {
    P {
        type_: 4,
        key: Some(key.as_bytes().to_vec()),
        val: PVal::UInt(v),
    }
}

/// The parameters libvirt's QEMU driver passes (uuid, name, id, pid, uri),
/// sometimes with one of them changed, dropped or joined by junk.
fn domain_params() -> impl Strategy<Value = (Vec<P>, Pid)> {
    (
        prop_oneof![3 => (0u8..4).prop_map(|b| [b; 16]), 1 => any::<[u8; 16]>()],
        prop_oneof![3 => Just(b"web".to_vec()), 1 => bytes()],
        pid(),
        prop_oneof![4 => Just(Vec::new()), 1 => prop::collection::vec(param(), 1..3)],
        prop::option::weighted(0.15, any::<prop::sample::Index>()),
    )
        .prop_map(|(uuid, name, pid, extra, drop)| {
            let mut v = vec![
                P {
                    type_: 7,
                    key: Some(b"uuid".to_vec()),
                    val: PVal::Uuid(uuid),
                },
                P {
                    type_: 0,
                    key: Some(b"name".to_vec()),
                    val: PVal::Str(Some(name)),
                },
                uint_param("id", 3),
                // The pid is filled in when the case runs.
                uint_param("pid", 0),
                P {
                    type_: 1,
                    key: Some(b"uri".to_vec()),
                    val: PVal::Str(Some(b"qemu:///system".to_vec())),
                },
            ];
            if let Some(i) = drop {
                v.remove(i.index(v.len()));
            }
            v.extend(extra);
            (v, pid)
        })
}

/// A state string: one a release could have handed out (the domain and
/// disk keys this case uses), damaged ones, foreign ones, random bytes.
fn state() -> impl Strategy<Value = CBytes> {
    let item = prop_oneof![
        (0u8..4).prop_map(|b| vmlease::resource::Resource::domain(
            &vmlease::resource::format_uuid(&[b; 16])
        )
        .key()),
        prop::sample::select(&["/images/a.qcow2", "/images/b.qcow2"][..])
            .prop_map(|p| vmlease::resource::Resource::disk(p, false).key()),
        "[a-z0-9-]{1,12}",
        "[ -~]{0,12}",
    ];
    let ver = prop_oneof![
        (0u64..5).prop_map(|v| v.to_string()),
        any::<u64>().prop_map(|v| v.to_string()),
        "[ -~]{0,4}"
    ];
    prop_oneof![
        3 => prop::collection::vec((item, ver), 0..4).prop_map(|v| {
            let items: Vec<String> = v.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
            Some(format!("vmlease1 {}", items.join(" ")).into_bytes())
        }),
        1 => Just(Some(Vec::new())),
        1 => Just(Some(b"__LIBVIRT__DISKS__:abc:/x:0:5".to_vec())),
        1 => cbytes(),
    ]
}

fn flags() -> impl Strategy<Value = c_uint> {
    prop_oneof![4 => Just(0), 2 => 0u32..4, 1 => any::<u32>()]
}

fn op() -> impl Strategy<Value = (Op, Option<Pid>)> {
    prop_oneof![
        4 => (domain_params(), prop_oneof![4 => Just(0u32), 1 => any::<u32>()], prop_oneof![3 => Just(0u32), 1 => Just(1u32), 1 => any::<u32>()])
            .prop_map(|((params, pid), obj_type, flags)| (Op::New { obj_type, params, flags, null_array: false }, Some(pid))),
        1 => (prop::collection::vec(param(), 0..6), any::<u32>(), flags(), any::<bool>())
            .prop_map(|(params, obj_type, flags, null_array)| (Op::New { obj_type, params, flags, null_array }, None)),
        8 => (
            prop_oneof![4 => Just(0u32), 2 => Just(1u32), 1 => any::<u32>()],
            prop_oneof![
                3 => prop::sample::select(&["/images/a.qcow2", "/images/b.qcow2", "key1"][..]).prop_map(|s| Some(s.as_bytes().to_vec())),
                1 => cbytes(),
            ],
            prop_oneof![
                2 => Just(Vec::new()),
                1 => (cbytes()).prop_map(|s| vec![P { type_: 0, key: Some(b"lockspace".to_vec()), val: PVal::Str(s) }]),
                1 => prop::collection::vec(param(), 0..4),
            ],
            flags(),
        )
            .prop_map(|(kind, name, params, flags)| (Op::Add { kind, name, params, flags }, None)),
        10 => (state(), prop_oneof![4 => Just(0u32), 1 => Just(1u32), 1 => Just(3u32), 1 => any::<u32>()], prop_oneof![8 => Just(0i32), 1 => any::<i32>()])
            .prop_map(|(state, flags, action)| (Op::Acquire { state, flags, action }, None)),
        5 => (any::<bool>(), prop_oneof![4 => Just(0u32), 1 => any::<u32>()]).prop_map(|(with_state, flags)| (Op::Release { with_state, flags }, None)),
        3 => (any::<bool>(), prop_oneof![4 => Just(0u32), 1 => any::<u32>()]).prop_map(|(with_state, flags)| (Op::Inquire { with_state, flags }, None)),
        1 => Just((Op::Free, None)),
        1 => Just((Op::NullManager, None)),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![
            6 => Just(StatusKind::Good),
            1 => Just(StatusKind::Missing),
            1 => Just(StatusKind::Stale),
            1 => Just(StatusKind::Fenced),
            1 => Just(StatusKind::OtherHost),
            1 => Just(StatusKind::Damaged),
        ],
        // Most cases begin as libvirt does: a drvNew with the domain's
        // parameters, so that the calls after it reach the lockspace.
        (
            prop::option::weighted(
                0.8,
                (
                    domain_params(),
                    prop_oneof![3 => Just(0u32), 1 => Just(1u32)],
                ),
            ),
            prop::collection::vec(op(), 1..10),
        )
            .prop_map(|(first, mut ops)| {
                if let Some(((params, pid), flags)) = first {
                    let new = Op::New {
                        obj_type: 0,
                        params,
                        flags,
                        null_array: false,
                    };
                    ops.insert(0, (new, Some(pid)));
                }
                ops
            }),
        prop_oneof![
            3 => Just(None),
            1 => (
                prop_oneof![Just(VERSION), any::<u32>()],
                proptest::option::of(prop_oneof![
                    crate::config::config_text(),
                    any::<String>(),
                ]),
                any::<bool>(),
                prop_oneof![4 => Just(0u32), 1 => any::<u32>()],
            )
                .prop_map(Some),
        ],
    )
        .prop_map(|(status, ops, init)| Case {
            status,
            // A pid chosen for a New is written into its "pid" parameter
            // when the case runs (the stand-in QEMU's pid is only known
            // then); here it is kept as a marker value.
            ops: ops
                .into_iter()
                .map(|(op, pid)| match (op, pid) {
                    (
                        Op::New {
                            obj_type,
                            mut params,
                            flags,
                            null_array,
                        },
                        Some(pid),
                    ) => {
                        for p in params.iter_mut() {
                            if p.key.as_deref() == Some(b"pid") && matches!(p.val, PVal::UInt(0)) {
                                p.val = match pid {
                                    Pid::Me => PVal::UInt(MARK_ME),
                                    Pid::Qemu => PVal::UInt(MARK_QEMU),
                                    Pid::Other(v) => PVal::Int(v),
                                };
                            }
                        }
                        Op::New {
                            obj_type,
                            params,
                            flags,
                            null_array,
                        }
                    }
                    (op, _) => op,
                })
                .collect(),
            init,
        })
}

const MARK_ME: u64 = u64::MAX - 1;
const MARK_QEMU: u64 = u64::MAX - 2;

// --- the parent ------------------------------------------------------------------

/// How the child ended.
enum Outcome {
    Passed {
        stderr: String,
    },
    Failed {
        code: String,
        stdout: String,
        stderr: String,
    },
    Signal {
        sig: i32,
        case: String,
        stderr: String,
    },
    Hung {
        case: String,
        stderr: String,
    },
}

/// Runs the child (the ignored test `abi_child` of this binary) with a
/// bound on its time, and reads the case it was running when it ended.
fn run_child(extra_env: &[(&str, &str)]) -> Outcome {
    let dir = std::env::temp_dir().join(format!(
        "vmlease-fuzz-abi-{}-{}",
        std::process::id(),
        vmlease::process::random_u64() % 100_000
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cases: u64 = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(CI_CASES as u64);
    // Generous: a case is a few calls of a few ms each.
    let limit = Duration::from_secs(120 + cases / 5);
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--ignored",
        "--exact",
        "abi::abi_child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(DIR_ENV, &dir)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = ChildGuard(cmd.spawn().unwrap());
    let out = child.0.stdout.take().unwrap();
    let err = child.0.stderr.take().unwrap();
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let (to, te) = (read(Box::new(out)), read(Box::new(err)));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > limit {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let case = std::fs::read_to_string(dir.join("current-case")).unwrap_or_default();
    if status.is_none() {
        child.stop();
    }
    let (stdout, stderr) = (to.join().unwrap(), te.join().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
    use std::os::unix::process::ExitStatusExt;
    match status {
        None => Outcome::Hung { case, stderr },
        Some(st) => match st.signal() {
            Some(sig) => Outcome::Signal { sig, case, stderr },
            None if st.success() && stdout.contains("1 passed") => Outcome::Passed { stderr },
            None => Outcome::Failed {
                code: st.to_string(),
                stdout,
                stderr,
            },
        },
    }
}

#[test]
fn abi_callbacks_never_crash() {
    match run_child(&[]) {
        Outcome::Passed { stderr } => {
            for line in stderr.lines().filter(|l| l.starts_with("fuzz ")) {
                eprintln!("{line}");
            }
        }
        Outcome::Failed {
            code,
            stdout,
            stderr,
        } => panic!(
            "the ABI fuzz child failed ({code}):\nstdout:\n{}\nstderr:\n{}",
            tail(&stdout),
            tail(&stderr)
        ),
        Outcome::Signal { sig, case, stderr } => panic!(
            "the ABI fuzz child died of signal {sig} in this case:\n{case}\nstderr:\n{}",
            tail(&stderr)
        ),
        Outcome::Hung { case, stderr } => panic!(
            "the ABI fuzz child hung in this case:\n{case}\nstderr:\n{}",
            tail(&stderr)
        ),
    }
}

/// The harness itself: a child that crashes is reported with its case.
#[test]
fn abi_child_crash_is_caught() {
    match run_child(&[(CRASH_ENV, "1")]) {
        Outcome::Signal { sig, case, .. } => {
            assert_eq!(sig, libc::SIGABRT);
            assert!(
                case.contains("Case {"),
                "the crashing case is reported: {case:?}"
            );
        }
        Outcome::Passed { .. } => panic!("a crashing child passed"),
        Outcome::Failed { code, stderr, .. } => {
            panic!("not seen as a crash: {code}\n{}", tail(&stderr))
        }
        Outcome::Hung { .. } => panic!("not seen as a crash: hung"),
    }
}

/// Makes the child abort in its first case (for abi_child_crash_is_caught).
const CRASH_ENV: &str = "VMLEASE_FUZZ_ABI_CRASH";

const CI_CASES: u32 = 1000;

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// A child process killed and reaped on drop.
struct ChildGuard(Child);

impl ChildGuard {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

// --- the child ---------------------------------------------------------------------

struct Env {
    dir: PathBuf,
    state_dir: PathBuf,
    driver: &'static Driver,
    init_driver: &'static Driver,
    qemu: ChildGuard,
    boot_id: String,
    report: Reporter,
}

struct Reporter {
    last: unsafe extern "C" fn() -> *const c_char,
    clear: unsafe extern "C" fn(),
}

impl Reporter {
    fn last(&self) -> String {
        // SAFETY: returns a pointer to report.c's NUL-terminated buffer.
        unsafe { CStr::from_ptr((self.last)()).to_string_lossy().into_owned() }
    }
    fn clear(&self) {
        // SAFETY: plain setter.
        unsafe { (self.clear)() }
    }
}

/// libvirt's error reporter stood in by tests/abi/report.c, loaded
/// RTLD_GLOBAL where the plugin's dlsym(RTLD_DEFAULT) finds it.
fn reporter(dir: &Path) -> Reporter {
    let out = dir.join("report.so");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/abi/report.c");
    let st = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("cc");
    assert!(st.success(), "cannot build the reporter stand-in");
    let c = CString::new(out.to_str().unwrap()).unwrap();
    // SAFETY: loading our own small C library.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    assert!(!h.is_null(), "dlopen reporter");
    let sym = |n: &CStr| {
        // SAFETY: h is a valid handle; the names exist in report.c.
        let p = unsafe { libc::dlsym(h, n.as_ptr()) };
        assert!(!p.is_null());
        p
    };
    // SAFETY: the symbols have exactly these C signatures (report.c).
    unsafe {
        Reporter {
            last: std::mem::transmute::<*mut libc::c_void, unsafe extern "C" fn() -> *const c_char>(
                sym(c"harness_last_error"),
            ),
            clear: std::mem::transmute::<*mut libc::c_void, unsafe extern "C" fn()>(sym(
                c"harness_clear_error",
            )),
        }
    }
}

fn so_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vmlease")).with_file_name("libvmlease.so")
}

fn setup(dir: &Path) -> Env {
    let report = reporter(dir);
    let ls = dir.join("ls");
    vmlease::lockspace::Lockspace::init(&ls, 16).unwrap();
    let state_dir = dir.join("run");
    std::fs::create_dir_all(&state_dir).unwrap();
    let conf = dir.join("vmlease.conf");
    std::fs::write(
        &conf,
        format!(
            "host_id = 1\nhost_name = \"host-1.test\"\nlockspace_dir = \"{}\"\nstate_dir = \"{}\"\n\
             renew_interval = 0.2\nrenew_fail_timeout = 1.5\nkill_timeout = 0.5\nwatchdog_timeout = 1\n\
             host_dead_timeout = 4\nio_timeout = 0.5\nlock_timeout = 1\n\
             reset_action = \"record\"\nreset_record_file = \"{}\"\n",
            ls.display(),
            state_dir.display(),
            dir.join("reset").display()
        ),
    )
    .unwrap();
    let driver = load_private(dir, &so_path()).unwrap();
    let c = CString::new(conf.to_str().unwrap()).unwrap();
    // SAFETY: libvirt's drvInit call: version, a valid path, flags 0.
    let rc = unsafe { (driver.init)(VERSION, c.as_ptr(), 0) };
    assert_eq!(rc, 0, "drvInit: {}", report.last());
    let init_driver = load_private(dir, &so_path()).unwrap();
    let mut cmd = Command::new("sleep");
    cmd.arg("100000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: prctl is async-signal-safe; it makes the kernel kill the
    // stand-in when this process dies (a crash must leave no orphan).
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    };
    let qemu = ChildGuard(cmd.spawn().expect("spawn the stand-in QEMU"));
    Env {
        dir: dir.to_path_buf(),
        state_dir,
        driver,
        init_driver,
        qemu,
        boot_id: vmlease::process::boot_id().unwrap(),
        report,
    }
}

impl Env {
    fn write_status(&self, kind: StatusKind) {
        let now = boottime_ms();
        let mut st = Status {
            daemon_pid: std::process::id(),
            host_id: 1,
            boot_id: self.boot_id.clone(),
            incarnation: 1,
            written_ms: now,
            last_renewal_ms: now,
            state: HostState::Live,
            reason: String::new(),
            unsafe_no_watchdog: true,
            lockspace_dir: self.dir.join("ls").display().to_string(),
            lockspace_uuid: vmlease::lockspace::Lockspace::open(&self.dir.join("ls"))
                .ok()
                .and_then(|l| l.uuid)
                .unwrap_or_default(),
            allow_local_lockspace: false,
            local_lockspace: String::new(),
            observing_since_ms: now.saturating_sub(10_000),
            renew_interval_ms: 200,
            renew_fail_timeout_ms: 1500,
            host_dead_timeout_ms: 4000,
            networks: vec![],
            peers: vec![],
        };
        let path = Status::path(&self.state_dir);
        match kind {
            StatusKind::Good => {}
            StatusKind::Missing => {
                let _ = std::fs::remove_file(&path);
                return;
            }
            StatusKind::Stale => st.written_ms = now.saturating_sub(60_000),
            StatusKind::Fenced => st.state = HostState::FencedClean,
            StatusKind::OtherHost => st.host_id = 2,
            StatusKind::Damaged => {
                let mut d = st.encode();
                let at = d.len() / 2;
                d[at] ^= 0x10;
                std::fs::write(&path, d).unwrap();
                return;
            }
        }
        st.write(&self.state_dir).unwrap();
    }
}

/// The C memory of one parameter array (the strings must outlive the call).
struct CParams {
    _strings: Vec<CString>,
    params: Vec<Param>,
}

fn cstring(b: &[u8]) -> CString {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    CString::new(&b[..end]).unwrap()
}

fn c_params(ps: &[P], me: u32, qemu: u32) -> CParams {
    let mut strings = Vec::new();
    let mut ptr = |b: &CBytes| -> *const c_char {
        match b {
            None => std::ptr::null(),
            Some(b) => {
                let c = cstring(b);
                let p = c.as_ptr();
                strings.push(c);
                p
            }
        }
    };
    let params = ps
        .iter()
        .map(|p| {
            let key = ptr(&p.key);
            let value = match &p.val {
                PVal::Str(s) => Value { s: ptr(s) },
                PVal::Int(i) => Value { l: *i },
                PVal::UInt(MARK_ME) => Value { ul: me as u64 },
                PVal::UInt(MARK_QEMU) => Value { ul: qemu as u64 },
                PVal::UInt(u) => Value { ul: *u },
                PVal::Double(d) => Value { d: *d },
                PVal::Uuid(u) => Value { uuid: *u },
            };
            Param {
                type_: p.type_,
                key,
                value,
            }
        })
        .collect();
    CParams {
        _strings: strings,
        params,
    }
}

/// Calls that returned 0 and -1, per callback (drvNew, drvAddResource,
/// drvAcquire, drvRelease, drvInquire, drvInit): the run shows that the
/// cases reached the lockspace, not only the argument checks.
static COUNTS: std::sync::Mutex<Vec<(&'static str, u64, u64)>> = std::sync::Mutex::new(Vec::new());

fn count(what: &'static str, ok: bool) {
    let mut c = COUNTS.lock().unwrap();
    let i = match c.iter().position(|e| e.0 == what) {
        Some(i) => i,
        None => {
            c.push((what, 0, 0));
            c.len() - 1
        }
    };
    if ok {
        c[i].1 += 1
    } else {
        c[i].2 += 1
    }
}

/// Checks one call's result: 0, or -1 with a message for libvirt.
fn check(
    env: &Env,
    what: &'static str,
    rc: c_int,
    may_be_silent: bool,
) -> Result<(), TestCaseError> {
    count(what, rc == 0);
    // Every refusal on stderr, to see which checks the cases stop at.
    if rc != 0 && std::env::var_os("VMLEASE_FUZZ_ABI_VERBOSE").is_some() {
        let m = env.report.last();
        eprintln!("REFUSED {what}: {}", m.chars().take(90).collect::<String>());
    }
    match rc {
        0 => Ok(()),
        -1 => {
            let msg = env.report.last();
            if !may_be_silent && !msg.starts_with("vmlease: ") {
                return Err(TestCaseError::fail(format!(
                    "{what} returned -1 without a message (got {msg:?})"
                )));
            }
            Ok(())
        }
        rc => Err(TestCaseError::fail(format!("{what} returned {rc}"))),
    }
}

/// An out-parameter: NULL unless the call succeeded, then a C string
/// libvirt can embed in XML (freed here, as libvirt does).
fn check_out(what: &str, rc: c_int, out: *mut c_char) -> Result<(), TestCaseError> {
    if out.is_null() {
        return Ok(());
    }
    // SAFETY: the plugin handed us a malloc'd NUL-terminated string.
    let s = unsafe { CStr::from_ptr(out) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: allocated with malloc by the plugin; ours to free.
    unsafe { libc::free(out.cast()) };
    if rc != 0 {
        return Err(TestCaseError::fail(format!(
            "{what} failed but wrote its out-parameter: {s:?}"
        )));
    }
    if s.contains(['<', '>', '&', '"', '\'']) || !s.starts_with("vmlease1") {
        return Err(TestCaseError::fail(format!(
            "{what} handed libvirt a bad state {s:?}"
        )));
    }
    Ok(())
}

fn run_case(env: &Env, case: &Case) -> Result<(), TestCaseError> {
    env.write_status(case.status);
    let d = env.driver;
    let me = std::process::id();
    let qemu = env.qemu.0.id();
    let mut m = Box::new(Manager {
        driver: d,
        private: std::ptr::null_mut(),
    });
    // The pid of the current manager's "pid" parameter (for the child-context
    // rule: a register-only acquire by the process itself reports on stderr).
    let mut m_pid: Option<u64> = None;
    let mut null_next = false;
    if let Some((version, text, null_path, flags)) = &case.init {
        let path = env.dir.join("init.conf");
        match text {
            Some(t) => std::fs::write(&path, t).unwrap(),
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
        // Only configs that must be refused: a valid one would be loaded
        // for good (the first drvInit wins) and end this exploration.
        let valid = *flags == 0
            && (*null_path || vmlease::config::parse(text.as_deref().unwrap_or(""), "x").is_ok());
        if !valid {
            let c = CString::new(path.to_str().unwrap()).unwrap();
            let p = if *null_path {
                std::ptr::null()
            } else {
                c.as_ptr()
            };
            env.report.clear();
            // SAFETY: drvInit with a NULL or valid path; any version and flags.
            let rc = unsafe { (env.init_driver.init)(*version, p, *flags) };
            check(env, "drvInit", rc, false)?;
            prop_assert_eq!(rc, -1, "drvInit accepted an invalid config");
        }
    }
    for op in &case.ops {
        let mp: *mut Manager = if std::mem::take(&mut null_next) {
            std::ptr::null_mut()
        } else {
            &mut *m
        };
        env.report.clear();
        match op {
            Op::NullManager => null_next = true,
            Op::Free => {
                // SAFETY: a manager (or NULL) as libvirt passes it.
                unsafe { (d.free)(mp) };
                if !mp.is_null() {
                    m_pid = None;
                }
            }
            Op::New {
                obj_type,
                params,
                flags,
                null_array,
            } => {
                if !m.private.is_null() {
                    // libvirt never reuses a manager: free the old one.
                    // SAFETY: a manager drvNew succeeded on.
                    unsafe { (d.free)(&mut *m) };
                }
                let mut cp = c_params(params, me, qemu);
                let (n, arr) = if *null_array {
                    (params.len().max(1), std::ptr::null_mut())
                } else {
                    (cp.params.len(), cp.params.as_mut_ptr())
                };
                // SAFETY: n valid params (or NULL with a count: refused).
                let rc = unsafe { (d.new)(mp, *obj_type, n, arr, *flags) };
                check(env, "drvNew", rc, false)?;
                if rc == 0 {
                    m_pid = params
                        .iter()
                        .rev()
                        .find(|p| p.key.as_deref() == Some(b"pid"))
                        .map(|p| match p.val {
                            PVal::UInt(MARK_ME) => me as u64,
                            PVal::UInt(MARK_QEMU) => qemu as u64,
                            PVal::UInt(u) => u,
                            PVal::Int(i) => i as u64,
                            _ => 0,
                        });
                } else if !mp.is_null() && !m.private.is_null() {
                    return Err(TestCaseError::fail("drvNew failed but set privateData"));
                }
            }
            Op::Add {
                kind,
                name,
                params,
                flags,
            } => {
                let mut cp = c_params(params, me, qemu);
                let name_c = name.as_ref().map(|b| cstring(b));
                let np = name_c
                    .as_ref()
                    .map(|c| c.as_ptr())
                    .unwrap_or(std::ptr::null());
                // SAFETY: valid manager or NULL, name NULL or a C string,
                // params.len() valid params.
                let rc = unsafe {
                    (d.add)(
                        mp,
                        *kind,
                        np,
                        cp.params.len(),
                        cp.params.as_mut_ptr(),
                        *flags,
                    )
                };
                check(env, "drvAddResource", rc, false)?;
            }
            Op::Acquire {
                state,
                flags,
                action,
            } => {
                let st = state.as_ref().map(|b| cstring(b));
                let sp = st.as_ref().map(|c| c.as_ptr()).unwrap_or(std::ptr::null());
                let mut fd: c_int = -1;
                let t = Instant::now();
                // SAFETY: valid manager or NULL, state NULL or a C string.
                let rc = unsafe { (d.acquire)(mp, sp, *flags, *action, &mut fd) };
                // A register-only acquire by the process itself is the
                // pre-exec child's: its message goes to stderr.
                let child_ctx = flags & 1 != 0 && m_pid == Some(me as u64);
                check(env, "drvAcquire", rc, child_ctx)?;
                if t.elapsed() > Duration::from_secs(10) {
                    return Err(TestCaseError::fail(format!(
                        "drvAcquire took {:?}",
                        t.elapsed()
                    )));
                }
            }
            Op::Release { with_state, flags } => {
                let mut out: *mut c_char = std::ptr::null_mut();
                let slot: *mut *mut c_char = if *with_state {
                    &mut out
                } else {
                    std::ptr::null_mut()
                };
                // SAFETY: valid manager or NULL; slot NULL or a char* slot.
                let rc = unsafe { (d.release)(mp, slot, *flags) };
                check(env, "drvRelease", rc, false)?;
                check_out("drvRelease", rc, out)?;
            }
            Op::Inquire { with_state, flags } => {
                let mut out: *mut c_char = std::ptr::null_mut();
                let slot: *mut *mut c_char = if *with_state {
                    &mut out
                } else {
                    std::ptr::null_mut()
                };
                // SAFETY: valid manager or NULL; slot NULL or a char* slot.
                let rc = unsafe { (d.inquire)(mp, slot, *flags) };
                check(env, "drvInquire", rc, false)?;
                check_out("drvInquire", rc, out)?;
            }
        }
    }
    if !m.private.is_null() {
        // SAFETY: a manager drvNew succeeded on.
        unsafe { (d.free)(&mut *m) };
    }
    Ok(())
}

/// The child: runs the cases (only when started by the parent above).
#[test]
#[ignore = "run by abi_callbacks_never_crash in a child process"]
fn abi_child() {
    let dir = PathBuf::from(std::env::var_os(DIR_ENV).expect("run by abi_callbacks_never_crash"));
    let env = setup(&dir);
    let current = dir.join("current-case");
    fuzz("abi_callbacks", CI_CASES, case(), |case| {
        std::fs::write(&current, format!("{case:#?}")).unwrap();
        if std::env::var_os(CRASH_ENV).is_some() {
            std::process::abort();
        }
        run_case(&env, &case)
    });
    let c = COUNTS.lock().unwrap().clone();
    let text: Vec<String> = c
        .iter()
        .map(|(w, ok, fail)| format!("{w} {ok} ok/{fail} refused"))
        .collect();
    eprintln!("fuzz abi_callbacks: {}", text.join(", "));
    let ok = |w: &str| c.iter().find(|e| e.0 == w).map(|e| e.1).unwrap_or(0);
    // Not only refusals: leases were taken and handed back with a state.
    assert!(
        ok("drvAcquire") > 0 && ok("drvRelease") > 0,
        "no call got past the argument checks"
    );
    let leases = std::fs::read_dir(dir.join("ls/leases"))
        .map(|d| d.count())
        .unwrap_or(0);
    eprintln!("fuzz abi_callbacks: {leases} lease files in the lockspace");
    assert!(leases > 0, "no lease was ever taken");
}
