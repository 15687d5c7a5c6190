//! The ABI harness: loads the built vmlease.so exactly as libvirtd does
//! (dlopen RTLD_NOW|RTLD_LOCAL, dlsym "virLockDriverImpl", drvInit) and
//! replays libvirt's call sequences with real processes: fork, register in
//! the single-threaded child, exec a stand-in QEMU, acquire from the parent
//! on its pid; pause/resume with state, migration handover, fake reboot,
//! hotplug, shared and read-only disks, bad arguments, no watchdog.
//!
//! Each "host" is a separate copy of the .so (its own statics, its own
//! config) next to a real vmlease-watchdog. libvirt's error reporter is
//! stood in by tests/abi/report.c, found by the plugin with dlsym.

mod support;

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use support::daemons::*;
use support::lockabi::*;
use vmlease::clock::boottime_ms;
use vmlease::resource::{format_uuid, Resource};

// --- libvirt's error reporter stand-in ----------------------------------------

struct Reporter {
    last: unsafe extern "C" fn() -> *const c_char,
    code: unsafe extern "C" fn() -> c_int,
    clear: unsafe extern "C" fn(),
}

fn reporter() -> &'static Reporter {
    static R: OnceLock<Reporter> = OnceLock::new();
    R.get_or_init(|| {
        let out = std::env::temp_dir().join(format!("vmlease-report-{}.so", std::process::id()));
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/abi/report.c");
        let st = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("cc");
        assert!(st.success(), "cannot build the reporter stand-in");
        let c = CString::new(out.to_str().unwrap()).unwrap();
        // SAFETY: loading our own small C library; RTLD_GLOBAL puts its
        // virReportErrorHelper where dlsym(RTLD_DEFAULT) finds it.
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
                last: std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> *const c_char>(
                    sym(c"harness_last_error"),
                ),
                code: std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> c_int>(sym(
                    c"harness_last_code",
                )),
                clear: std::mem::transmute::<*mut c_void, unsafe extern "C" fn()>(sym(
                    c"harness_clear_error",
                )),
            }
        }
    })
}

fn last_error() -> String {
    // SAFETY: returns a pointer to a NUL-terminated static buffer.
    unsafe {
        CStr::from_ptr((reporter().last)())
            .to_string_lossy()
            .into_owned()
    }
}

fn last_code() -> i32 {
    // SAFETY: plain getter.
    unsafe { (reporter().code)() }
}

fn clear_error() {
    // SAFETY: plain setter.
    unsafe { (reporter().clear)() }
}

// --- a loaded plugin (one per host) -------------------------------------------

struct Plugin {
    d: &'static Driver,
}

fn so_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vmlease")).with_file_name("libvmlease.so")
}

/// Loads a private copy of vmlease.so and initialises it with `conf`.
fn load(dir: &Path, conf: &Path) -> (Plugin, c_int) {
    reporter();
    let d = load_private(dir, &so_path()).unwrap();
    assert_eq!(d.version, 1_000_000);
    assert_eq!(d.flags, 1, "USES_STATE");
    let cc = CString::new(conf.to_str().unwrap()).unwrap();
    clear_error();
    // SAFETY: version, a valid path, flags 0: libvirt's call.
    let rc = unsafe { (d.init)(1_000_000, cc.as_ptr(), 0) };
    (Plugin { d }, rc)
}

struct Dom {
    uuid: [u8; 16],
    name: CString,
    disks: Vec<(CString, c_uint)>,
}

impl Dom {
    fn new(uuid: [u8; 16], name: &str, disks: &[(&str, c_uint)]) -> Dom {
        Dom {
            uuid,
            name: CString::new(name).unwrap(),
            disks: disks
                .iter()
                .map(|(p, f)| (CString::new(*p).unwrap(), *f))
                .collect(),
        }
    }
}

const URI: &CStr = c"qemu:///system";

fn obj_params(dom: &Dom, pid: u32, uri: bool) -> Vec<Param> {
    domain_params(dom.uuid, &dom.name, 3, pid, uri.then_some(URI))
}

impl Plugin {
    /// drvNew + AddResource for `disks` (None: all of dom's). Err: message.
    fn manager(
        &self,
        dom: &Dom,
        pid: u32,
        flags: c_uint,
        uri: bool,
        disks: Option<&[usize]>,
    ) -> Result<Box<Manager>, String> {
        let mut m = Box::new(Manager {
            driver: self.d,
            private: std::ptr::null_mut(),
        });
        let mut p = obj_params(dom, pid, uri);
        clear_error();
        // SAFETY: libvirt's drvNew call with 5 valid params.
        if unsafe { (self.d.new)(&mut *m, 0, p.len(), p.as_mut_ptr(), flags) } != 0 {
            return Err(last_error());
        }
        let all: Vec<usize> = (0..dom.disks.len()).collect();
        for &i in disks.unwrap_or(&all) {
            let (path, f) = &dom.disks[i];
            // SAFETY: valid manager and NUL-terminated path, no params.
            if unsafe { (self.d.add)(&mut *m, 0, path.as_ptr(), 0, std::ptr::null_mut(), *f) } != 0
            {
                let e = last_error();
                self.free(m);
                return Err(e);
            }
        }
        Ok(m)
    }

    // Boxed on purpose: libvirt allocates the manager on the heap and the
    // plugin keeps pointers into it between calls.
    #[allow(clippy::boxed_local)]
    fn free(&self, mut m: Box<Manager>) {
        // SAFETY: a manager drvNew succeeded on.
        unsafe { (self.d.free)(&mut *m) };
    }

    fn acquire(
        &self,
        dom: &Dom,
        pid: u32,
        state: Option<&str>,
        disks: Option<&[usize]>,
    ) -> Result<(), String> {
        let mut m = self.manager(dom, pid, 0, true, disks)?;
        let st = state.map(|s| CString::new(s).unwrap());
        clear_error();
        // SAFETY: valid manager; state NULL or NUL-terminated; fd NULL as
        // in the daemon-side calls.
        let rc = unsafe {
            (self.d.acquire)(
                &mut *m,
                st.as_ref().map(|s| s.as_ptr()).unwrap_or(std::ptr::null()),
                0,
                0,
                std::ptr::null_mut(),
            )
        };
        let e = last_error();
        self.free(m);
        if rc == 0 {
            Ok(())
        } else {
            Err(e)
        }
    }

    /// Release; `with_state`: pause/migration (returns the state).
    fn release(
        &self,
        dom: &Dom,
        pid: u32,
        with_state: bool,
        disks: Option<&[usize]>,
    ) -> Result<Option<String>, String> {
        let mut m = self.manager(dom, pid, 0, false, disks)?;
        let mut out: *mut c_char = std::ptr::null_mut();
        let slot: *mut *mut c_char = if with_state {
            &mut out
        } else {
            std::ptr::null_mut()
        };
        clear_error();
        // SAFETY: valid manager; slot NULL or a valid char* slot.
        let rc = unsafe { (self.d.release)(&mut *m, slot, 0) };
        let e = last_error();
        self.free(m);
        if rc != 0 {
            return Err(e);
        }
        Ok(take_c_string(out))
    }

    fn inquire(&self, dom: &Dom, pid: u32) -> Result<String, String> {
        let mut m = self.manager(dom, pid, 0, false, None)?;
        let mut out: *mut c_char = std::ptr::null_mut();
        clear_error();
        // SAFETY: valid manager and state slot.
        let rc = unsafe { (self.d.inquire)(&mut *m, &mut out, 0) };
        let e = last_error();
        self.free(m);
        if rc != 0 {
            return Err(e);
        }
        Ok(take_c_string(out).unwrap_or_default())
    }

    /// libvirt's start: fork; the child registers (REGISTER_ONLY|RESTRICT)
    /// and execs a stand-in QEMU; then the parent acquires on its pid.
    fn start(&self, dom: &Dom) -> Result<Qemu, String> {
        let q = self.spawn_registered(dom)?;
        self.acquire(dom, q.pid, None, None).map(|_| q)
    }

    fn spawn_registered(&self, dom: &Dom) -> Result<Qemu, String> {
        let mut fds = [0 as c_int; 2];
        // SAFETY: a pipe for the child's stderr; CLOEXEC so exec closes it.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fork; the child only calls the plugin (as libvirt's
        // pre-exec hook does), dup2, exec and _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: in the child: stderr to the pipe, then the hook call.
            unsafe {
                let saved = libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 10);
                libc::dup2(fds[1], 2);
                let me = libc::getpid() as u32;
                let mut m = Manager {
                    driver: self.d,
                    private: std::ptr::null_mut(),
                };
                let mut p = obj_params(dom, me, true);
                let mut ok = (self.d.new)(&mut m, 0, p.len(), p.as_mut_ptr(), NEW_STARTED) == 0;
                for (path, f) in &dom.disks {
                    ok = ok
                        && (self.d.add)(&mut m, 0, path.as_ptr(), 0, std::ptr::null_mut(), *f) == 0;
                }
                let mut fd: c_int = -1;
                ok = ok
                    && (self.d.acquire)(
                        &mut m,
                        std::ptr::null(),
                        REGISTER_ONLY | RESTRICT,
                        0,
                        &mut fd,
                    ) == 0;
                (self.d.free)(&mut m);
                if !ok {
                    libc::_exit(3);
                }
                // Registered: QEMU gets the real stderr back, and exec
                // closes the pipe, which tells the parent.
                libc::dup2(saved, 2);
                let argv = [c"sleep".as_ptr(), c"1000".as_ptr(), std::ptr::null()];
                libc::execv(c"/bin/sleep".as_ptr(), argv.as_ptr());
                libc::_exit(4);
            }
        }
        // SAFETY: parent closes its copy of the write end.
        unsafe { libc::close(fds[1]) };
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            // SAFETY: reading into a valid buffer from our pipe.
            let n = unsafe { libc::read(fds[0], chunk.as_mut_ptr().cast(), chunk.len()) };
            if n <= 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n as usize]);
        }
        // SAFETY: our fd.
        unsafe { libc::close(fds[0]) };
        let q = Qemu { pid: pid as u32 };
        if buf.is_empty() {
            Ok(q)
        } else {
            Err(String::from_utf8_lossy(&buf).into_owned())
        }
    }
}

fn take_c_string(p: *mut c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the plugin returned a malloc'd NUL-terminated string that
    // is ours to free, as libvirt does.
    let s = unsafe { CStr::from_ptr(p).to_string_lossy().into_owned() };
    // SAFETY: allocated with malloc by the plugin.
    unsafe { libc::free(p.cast()) };
    Some(s)
}

/// A stand-in QEMU started by fork; killed and reaped on drop.
struct Qemu {
    pid: u32,
}

impl Qemu {
    fn kill(&self) {
        // SAFETY: our child.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGKILL);
            libc::waitpid(self.pid as i32, std::ptr::null_mut(), 0);
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
    }
}

fn key_holders(ls: &Path, key: &str) -> Vec<(u16, u32)> {
    vmlease::lockspace::Lockspace::open(ls)
        .unwrap()
        .read_lease(key, "")
        .map(|r| r.holders.iter().map(|h| (h.host_id, h.pid)).collect())
        .unwrap_or_default()
}

fn dom_key(d: &Dom) -> String {
    Resource::domain(&format_uuid(&d.uuid)).key()
}

fn disk_key(p: &str) -> String {
    Resource::disk(p, false).key()
}

struct Cluster {
    s: Scratch,
    ls: PathBuf,
    a: Host,
    _b: Host,
    pa: Plugin,
    pb: Plugin,
}

fn cluster(name: &str) -> Cluster {
    cluster_on(name, None)
}

/// Two hosts; the lockspace in `ls` (made here, e.g. on a CephFS) or in
/// the scratch directory.
fn cluster_on(name: &str, ls: Option<PathBuf>) -> Cluster {
    let s = Scratch::new(name);
    let ls = match ls {
        Some(p) => {
            vmlease::lockspace::Lockspace::init(&p, 16).unwrap();
            p
        }
        None => lockspace(&s),
    };
    let mut a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    let mut b = Host::new(&s, 2, &ls, "unsafe_no_watchdog = true\n");
    a.start(&[]);
    b.start(&[]);
    let (pa, rc) = load(&s.0, &a.conf);
    assert_eq!(rc, 0, "{}", last_error());
    let (pb, rc) = load(&s.0, &b.conf);
    assert_eq!(rc, 0, "{}", last_error());
    Cluster {
        s,
        ls,
        a,
        _b: b,
        pa,
        pb,
    }
}

#[test]
fn start_conflict_fake_reboot_pause_resume() {
    let _g = serial();
    let c = cluster("abi-start");
    let web = Dom::new(
        [0x11; 16],
        "web",
        &[("/images/web.qcow2", 0), ("/images/web.iso", READONLY)],
    );
    let qa = c.pa.start(&web).unwrap();
    assert_eq!(key_holders(&c.ls, &dom_key(&web)), vec![(1, qa.pid)]);
    assert_eq!(
        key_holders(&c.ls, &disk_key("/images/web.qcow2")),
        vec![(1, qa.pid)]
    );
    assert!(
        key_holders(&c.ls, &disk_key("/images/web.iso")).is_empty(),
        "read-only disk leased"
    );

    // The same domain on host B: the child registers (B is protected),
    // the real acquire is refused with a message naming A and the domain.
    let e = c.pb.start(&web).err().expect("host B must be refused");
    assert!(
        e.contains("vmlease:") && e.contains("host 1 (host-1.test)") && e.contains("'web'"),
        "{e}"
    );
    assert_eq!(last_code(), 87, "VIR_ERR_RESOURCE_BUSY");

    // Fake reboot: a second acquire by the same pid is idempotent.
    c.pa.acquire(&web, qa.pid, None, None).unwrap();
    assert_eq!(key_holders(&c.ls, &dom_key(&web)), vec![(1, qa.pid)]);

    // Pause: release with state; resume with that state.
    let st =
        c.pa.release(&web, qa.pid, true, None)
            .unwrap()
            .expect("a state");
    assert!(
        st.starts_with("vmlease1 ") && st.contains(&dom_key(&web)),
        "{st}"
    );
    assert!(!st.contains(['<', '>', '&']));
    assert!(key_holders(&c.ls, &dom_key(&web)).is_empty());
    // libvirt may release twice on one pause: same state again.
    let st2 = c.pa.release(&web, qa.pid, true, None).unwrap().unwrap();
    assert_eq!(st, st2);
    c.pa.acquire(&web, qa.pid, Some(&st), None).unwrap();
    assert_eq!(key_holders(&c.ls, &dom_key(&web)), vec![(1, qa.pid)]);

    // Paused again; B starts and stops the domain in between: A's resume
    // with its old state must fail.
    let st = c.pa.release(&web, qa.pid, true, None).unwrap().unwrap();
    let qb = c.pb.start(&web).unwrap();
    c.pb.release(&web, qb.pid, true, None).unwrap();
    let e = c.pa.acquire(&web, qa.pid, Some(&st), None).unwrap_err();
    assert!(
        e.contains("lease version is") && e.contains("another owner held it"),
        "{e}"
    );
    assert!(
        key_holders(&c.ls, &dom_key(&web)).is_empty(),
        "a refused resume holds nothing"
    );
    drop((qa, qb));
}

#[test]
fn migration_handover_with_state() {
    let _g = serial();
    let c = cluster("abi-migrate");
    let m = Dom::new([0x22; 16], "db", &[("/images/db.qcow2", 0)]);
    let qa = c.pa.start(&m).unwrap();
    // Source: Begin inquires, the switch-over releases with state.
    let inq = c.pa.inquire(&m, qa.pid).unwrap();
    let st = c.pa.release(&m, qa.pid, true, None).unwrap().unwrap();
    assert_eq!(inq, st, "inquire and release report the same versions");
    // Destination: QEMU -incoming registers in the child, Finish acquires
    // with the source's state.
    let qb = c.pb.spawn_registered(&m).unwrap();
    c.pb.acquire(&m, qb.pid, Some(&st), None).unwrap();
    assert_eq!(key_holders(&c.ls, &dom_key(&m)), vec![(2, qb.pid)]);
    // The source's stale state cannot take it back (failed-migration
    // recovery after someone else took over).
    let e = c.pa.acquire(&m, qa.pid, Some(&st), None).unwrap_err();
    assert!(e.contains("leased") || e.contains("lease version"), "{e}");
}

#[test]
fn hotplug_shared_and_readonly_disks() {
    let _g = serial();
    let c = cluster("abi-hotplug");
    let d = Dom::new(
        [0x33; 16],
        "app",
        &[
            ("/images/app.qcow2", 0),
            ("/images/hot.qcow2", 0),
            ("/images/shared.img", SHARED),
        ],
    );
    let base = Dom::new(
        [0x33; 16],
        "app",
        &[("/images/app.qcow2", 0), ("/images/shared.img", SHARED)],
    );
    let qa = c.pa.start(&base).unwrap();
    // ImageAttach: a manager with only the new image, acquire(NULL).
    c.pa.acquire(&d, qa.pid, None, Some(&[1])).unwrap();
    assert_eq!(
        key_holders(&c.ls, &disk_key("/images/hot.qcow2")),
        vec![(1, qa.pid)]
    );
    // ImageDetach: release(NULL) with only that image; the domain lease stays.
    assert_eq!(c.pa.release(&d, qa.pid, false, Some(&[1])).unwrap(), None);
    assert!(key_holders(&c.ls, &disk_key("/images/hot.qcow2")).is_empty());
    assert_eq!(key_holders(&c.ls, &dom_key(&d)), vec![(1, qa.pid)]);
    // A shareable disk is shared with another domain on host B.
    let other = Dom::new([0x34; 16], "app2", &[("/images/shared.img", SHARED)]);
    let qb = c.pb.start(&other).unwrap();
    let mut h = key_holders(&c.ls, &Resource::disk("/images/shared.img", true).key());
    h.sort();
    assert_eq!(h, vec![(1, qa.pid), (2, qb.pid)]);
    // ...but a writer of that disk is refused.
    let writer = Dom::new([0x35; 16], "writer", &[("/images/shared.img", 0)]);
    assert!(c.pb.start(&writer).is_err());
    // A disk leased by B cannot be hot-plugged on A.
    let qb2 =
        c.pb.start(&Dom::new([0x36; 16], "b2", &[("/images/b2.qcow2", 0)]))
            .unwrap();
    let plug = Dom::new([0x33; 16], "app", &[("/images/b2.qcow2", 0)]);
    let e = c.pa.acquire(&plug, qa.pid, None, Some(&[0])).unwrap_err();
    assert!(
        e.contains("held by host 2 (host-2.test) for domain 'b2'"),
        "{e}"
    );
    drop(qb2);
}

#[test]
fn bad_arguments_fail_cleanly() {
    let _g = serial();
    let c = cluster("abi-bad");
    let d = c.pa.d;
    let web = Dom::new([0x44; 16], "bad", &[]);
    // SAFETY: each call passes what libvirt might pass by mistake; the
    // plugin must answer -1 without crashing or writing out-params.
    unsafe {
        assert_eq!(
            (d.new)(std::ptr::null_mut(), 0, 0, std::ptr::null_mut(), 0),
            -1
        );
        let mut m = Manager {
            driver: d,
            private: std::ptr::null_mut(),
        };
        assert_eq!((d.new)(&mut m, 0, 3, std::ptr::null_mut(), 0), -1);
        assert!(m.private.is_null());
        let mut p = obj_params(&web, 1, true);
        p[2].type_ = 99;
        assert_eq!((d.new)(&mut m, 0, p.len(), p.as_mut_ptr(), 0), -1);
        assert!(last_error().contains("unknown type 99"), "{}", last_error());
        let bad_name = [0xffu8, 0xfe, 0];
        let mut p = obj_params(&web, 1, true);
        p[1].value = Value {
            s: bad_name.as_ptr().cast(),
        };
        assert_eq!((d.new)(&mut m, 0, p.len(), p.as_mut_ptr(), 0), -1);
        assert!(last_error().contains("UTF-8"), "{}", last_error());
        assert_eq!((d.new)(&mut m, 7, 0, std::ptr::null_mut(), 0), -1);
        (d.free)(std::ptr::null_mut());
        assert_eq!(
            (d.add)(
                std::ptr::null_mut(),
                0,
                c"/x".as_ptr(),
                0,
                std::ptr::null_mut(),
                0
            ),
            -1
        );
        assert_eq!(
            (d.acquire)(
                std::ptr::null_mut(),
                std::ptr::null(),
                0,
                0,
                std::ptr::null_mut()
            ),
            -1
        );
        assert_eq!(
            (d.release)(std::ptr::null_mut(), std::ptr::null_mut(), 0),
            -1
        );
        assert_eq!(
            (d.inquire)(std::ptr::null_mut(), std::ptr::null_mut(), 0),
            -1
        );
    }
    let q = c.pa.start(&web).unwrap();
    let mut m = c.pa.manager(&web, q.pid, 0, true, Some(&[])).unwrap();
    // SAFETY: bad flags, unknown resource type, NULL name, NULL inquire slot.
    unsafe {
        assert_eq!(
            (d.acquire)(&mut *m, std::ptr::null(), 0x80, 0, std::ptr::null_mut()),
            -1
        );
        assert_eq!(
            (d.add)(&mut *m, 5, c"/x".as_ptr(), 0, std::ptr::null_mut(), 0),
            -1
        );
        assert_eq!(
            (d.add)(&mut *m, 0, std::ptr::null(), 0, std::ptr::null_mut(), 0),
            -1
        );
        assert_eq!(
            (d.add)(&mut *m, 1, c"key".as_ptr(), 0, std::ptr::null_mut(), 0),
            -1,
            "<lease> without lockspace"
        );
        assert_eq!((d.inquire)(&mut *m, std::ptr::null_mut(), 0), -1);
        assert_eq!((d.release)(&mut *m, std::ptr::null_mut(), 9), -1);
    }
    c.pa.free(m);
    for bad in [
        "<x>&",
        "__LIBVIRT__DISKS__:abc:/x:0:5",
        "vmlease1 disk-a:notanumber",
    ] {
        let e = c.pa.acquire(&web, q.pid, Some(bad), None).unwrap_err();
        assert!(e.contains("lock state"), "{bad}: {e}");
    }

    // drvInit with a malformed config fails, naming the key and line.
    let badconf = c.s.0.join("bad.conf");
    fs::write(&badconf, "host_id = 1\nrenew_interval = \"fast\"\n").unwrap();
    let (_p, rc) = load(&c.s.0, &badconf);
    assert_eq!(rc, -1);
    assert!(last_error().contains("bad.conf:2"), "{}", last_error());
    // A missing config file loads (libvirtd must start), acquires fail.
    let (p, rc) = load(&c.s.0, &c.s.0.join("missing.conf"));
    assert_eq!(rc, 0);
    let e = p.acquire(&web, q.pid, None, None).unwrap_err();
    assert!(e.contains("host_id is not set"), "{e}");
    // A missing lockspace: the acquire fails naming it.
    let noconf = c.s.0.join("nols.conf");
    let text = fs::read_to_string(&c.a.conf)
        .unwrap()
        .replace(c.ls.to_str().unwrap(), "/nonexistent/vmlease-ls");
    fs::write(&noconf, text).unwrap();
    let (p, rc) = load(&c.s.0, &noconf);
    assert_eq!(rc, 0);
    let e = p.acquire(&web, q.pid, None, None).unwrap_err();
    assert!(e.contains("/nonexistent/vmlease-ls"), "{e}");
}

#[test]
fn no_watchdog_no_leases() {
    let _g = serial();
    let s = Scratch::new("abi-nowd");
    let ls = lockspace(&s);
    let h = Host::new(&s, 3, &ls, "unsafe_no_watchdog = true\n");
    let (p, rc) = load(&s.0, &h.conf);
    assert_eq!(rc, 0);
    let d = Dom::new([0x55; 16], "lonely", &[("/images/l.qcow2", 0)]);
    // In the child: one line on stderr, the start never reaches exec.
    let e = p.spawn_registered(&d).err().expect("refused in the child");
    assert!(
        e.starts_with("vmlease: host not protected: the vmlease-watchdog daemon is not running"),
        "{e}"
    );
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    // From libvirtd (e.g. resume, hotplug): refused as well.
    let me = std::process::id();
    let e = p.acquire(&d, me, None, None).unwrap_err();
    assert!(e.contains("not running"), "{e}");
    assert_eq!(last_code(), 9, "VIR_ERR_OPERATION_FAILED");
    assert!(
        fs::read_dir(ls.join("leases")).unwrap().next().is_none(),
        "nothing was leased"
    );
}

#[test]
fn sigkill_of_qemu_what_the_plugin_and_the_daemon_guarantee() {
    let _g = serial();
    let c = cluster("abi-kill");
    let d = Dom::new([0x66; 16], "victim", &[("/images/v.qcow2", 0)]);
    // Plugin alone (daemon frozen): the record still names the dead pid;
    // this host may re-acquire for a new QEMU (rule 3), others may not.
    c.a.daemon.as_ref().unwrap().signal(libc::SIGSTOP);
    let q1 = c.pa.start(&d).unwrap();
    let dead = q1.pid;
    q1.kill();
    assert_eq!(key_holders(&c.ls, &dom_key(&d)), vec![(1, dead)]);
    let q2 = c.pa.spawn_registered(&d);
    c.a.daemon.as_ref().unwrap().signal(libc::SIGCONT);
    let q2 = q2.unwrap();
    c.pa.acquire(&d, q2.pid, None, None).unwrap();
    assert_eq!(key_holders(&c.ls, &dom_key(&d)), vec![(1, q2.pid)]);
    assert!(c.pb.start(&d).is_err(), "host B sees host A alive");
    // With the daemon: released within 1 s of SIGKILL.
    let t = boottime_ms();
    q2.kill();
    let took = wait_until(
        "the daemon to release the killed QEMU's leases",
        3000,
        || {
            let h = key_holders(&c.ls, &dom_key(&d));
            if h.is_empty() {
                Ok(boottime_ms() - t)
            } else {
                Err(format!("{h:?}"))
            }
        },
    );
    eprintln!("SIGKILL of the stand-in QEMU -> leases released after {took} ms");
    assert!(took < 1000, "{took} ms");
    let qb = c.pb.start(&d).unwrap();
    drop(qb);
}

/// Also bench/acquire-latency's measurement: VMLEASE_BENCH_LOCKSPACE_ROOT
/// puts the lockspace under that directory (a CephFS mount) and
/// VMLEASE_BENCH_ACQUIRES sets the number of acquires (default 1,000).
/// The per-domain figure of bench/acquire-latency: a domain with four
/// writable disks resumed through the ABI (Acquire with the state its
/// pause returned: 1 + 4 leases), each acquire paired with one plain
/// record write (write + fsync + rename of one lease record, the unit of
/// storage work) in the same lockspace, in alternating order. Next to
/// the write, the time of five record writes at once (five threads, one
/// record each, as the acquire's I/O threads): what the storage itself
/// charges for writing a domain's records, the floor of any acquire that
/// writes each record.
#[test]
fn acquire_latency_per_domain() {
    let _g = serial();
    let root = std::env::var_os("VMLEASE_BENCH_LOCKSPACE_ROOT").map(PathBuf::from);
    let ls = root
        .as_ref()
        .map(|r| r.join(format!("abi-latency-{}", std::process::id())));
    let c = cluster_on("abi-latency", ls.clone());
    let disks = [
        "/images/f1.qcow2",
        "/images/f2.qcow2",
        "/images/f3.qcow2",
        "/images/f4.qcow2",
    ];
    let d = Dom::new(
        [0x77; 16],
        "fast",
        &disks.iter().map(|p| (*p, 0)).collect::<Vec<_>>(),
    );
    let q = c.pa.start(&d).unwrap();
    let n: usize = std::env::var("VMLEASE_BENCH_ACQUIRES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let store = vmlease::lockspace::Lockspace::open(&c.ls).unwrap();
    let mut rec = vmlease::lease::LeaseRecord::free("bench-write", "bench");
    let mut five: Vec<_> = (0..5)
        .map(|k| vmlease::lease::LeaseRecord::free(&format!("bench-write-{k}"), "bench"))
        .collect();
    let (mut acq, mut wr, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    let (mut wr5, mut ratio5) = (Vec::new(), Vec::new());
    for i in 0..n {
        let st = c.pa.release(&d, q.pid, true, None).unwrap();
        let time_writes = |rec: &mut vmlease::lease::LeaseRecord,
                           five: &mut [vmlease::lease::LeaseRecord]| {
            rec.version += 1;
            let t = Instant::now();
            store.write_lease(rec, 1).unwrap();
            let one = t.elapsed().as_secs_f64() * 1e6;
            let t = Instant::now();
            std::thread::scope(|s| {
                for r in five.iter_mut() {
                    let store = &store;
                    s.spawn(move || {
                        r.version += 1;
                        store.write_lease(r, 1).unwrap();
                    });
                }
            });
            (one, t.elapsed().as_secs_f64() * 1e6)
        };
        let mut w = (0.0, 0.0);
        if i % 2 == 0 {
            w = time_writes(&mut rec, &mut five);
        }
        let t = Instant::now();
        c.pa.acquire(&d, q.pid, st.as_deref(), None).unwrap();
        let a = t.elapsed().as_secs_f64() * 1e6;
        if i % 2 == 1 {
            w = time_writes(&mut rec, &mut five);
        }
        acq.push(a);
        wr.push(w.0);
        ratio.push(a / w.0);
        wr5.push(w.1);
        ratio5.push(w.1 / w.0);
    }
    let pct = |v: &mut Vec<f64>, p: usize| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[(v.len() * p).div_ceil(100).max(1) - 1]
    };
    let (am, ap) = (pct(&mut acq, 50), pct(&mut acq, 99));
    let (wm, wp) = (pct(&mut wr, 50), pct(&mut wr, 99));
    let rm = pct(&mut ratio, 50);
    let (fm, fp, fr) = (pct(&mut wr5, 50), pct(&mut wr5, 99), pct(&mut ratio5, 50));
    eprintln!(
        "lockspace {}: per-domain acquire (1 + 4 leases) median {am:.0} µs p99 {ap:.0} µs; \
         one record write median {wm:.0} µs p99 {wp:.0} µs; paired ratio median {rm:.2}; \
         five record writes at once median {fm:.0} µs p99 {fp:.0} µs, {fr:.2} x one write \
         ({n} rounds)",
        c.ls.display()
    );
    // For bench/acquire-latency.
    eprintln!(
        "bench-acquire-latency-us median={am:.0} p99={ap:.0} write_median={wm:.0} write_p99={wp:.0} ratio={rm:.2} n={n}"
    );
    eprintln!("bench-five-writes-us median={fm:.0} p99={fp:.0} ratio={fr:.2} n={n}");
    assert_eq!(key_holders(&c.ls, &dom_key(&d)), vec![(1, q.pid)]);
    for p in disks {
        assert_eq!(key_holders(&c.ls, &disk_key(p)), vec![(1, q.pid)]);
    }
    drop(q);
    drop(c);
    if let Some(ls) = ls {
        let _ = fs::remove_dir_all(ls);
    }
}

/// All or nothing with every record at once: a domain whose third disk
/// another host's domain holds is refused, and the leases this acquire
/// took meanwhile (domain and the other three disks) are given back; no
/// intent stays in the registry.
#[test]
fn a_refused_domain_acquire_gives_back_every_lease_it_took() {
    let _g = serial();
    let c = cluster("abi-partway");
    let disks = [
        "/images/p1.qcow2",
        "/images/p2.qcow2",
        "/images/p3.qcow2",
        "/images/p4.qcow2",
    ];
    let web = Dom::new(
        [0x61; 16],
        "web",
        &disks.iter().map(|p| (*p, 0)).collect::<Vec<_>>(),
    );
    let other = Dom::new([0x62; 16], "other", &[(disks[2], 0)]);
    let qb = c.pb.start(&other).unwrap();
    let qa = c.pa.spawn_registered(&web).unwrap();
    let e = c.pa.acquire(&web, qa.pid, None, None).unwrap_err();
    assert!(
        e.contains("disk /images/p3.qcow2") && e.contains("host 2") && e.contains("'other'"),
        "{e}"
    );
    assert_eq!(last_code(), 87, "VIR_ERR_RESOURCE_BUSY");
    let mut left = vec![(dom_key(&web), key_holders(&c.ls, &dom_key(&web)))];
    for p in [disks[0], disks[1], disks[3]] {
        left.push((p.to_string(), key_holders(&c.ls, &disk_key(p))));
    }
    assert!(
        left.iter().all(|(_, h)| h.is_empty()),
        "a refused acquire must hold nothing: {left:?}"
    );
    assert_eq!(key_holders(&c.ls, &disk_key(disks[2])), vec![(2, qb.pid)]);
    let reg = vmlease::registry::Registry::new(&c.a.cfg.state_dir);
    let entries: Vec<_> = reg
        .list()
        .unwrap()
        .into_iter()
        .map(|e| e.unwrap())
        .collect();
    assert!(
        entries.iter().all(|e| e.acquiring.is_empty()),
        "intents left in the registry: {entries:?}"
    );
    // Once the other domain is gone, the same start succeeds.
    c.pb.release(&other, qb.pid, true, None).unwrap();
    c.pa.acquire(&web, qa.pid, None, None).unwrap();
    for p in disks {
        assert_eq!(key_holders(&c.ls, &disk_key(p)), vec![(1, qa.pid)]);
    }
    drop((qa, qb));
}

/// A damaged record among a domain's records is an error naming its file,
/// never a free lease: the acquire fails, gives back what it took, and
/// leaves the damaged file as it was (for `vmlease dump`).
#[test]
fn a_corrupt_record_among_a_domains_fails_its_acquire() {
    let _g = serial();
    let c = cluster("abi-corrupt");
    let disks = [
        "/images/c1.qcow2",
        "/images/c2.qcow2",
        "/images/c3.qcow2",
        "/images/c4.qcow2",
    ];
    let web = Dom::new(
        [0x63; 16],
        "web",
        &disks.iter().map(|p| (*p, 0)).collect::<Vec<_>>(),
    );
    let bad = c.ls.join("leases").join(disk_key(disks[1]));
    // A holder line cut off mid-way (a torn or hand-edited file).
    let junk = format!(
        "vmlease-lease v1\nkey={}\nresource=/images/c2.qcow2\nversion=4\nmode=exclusive\nholder=2 b\n",
        disk_key(disks[1])
    );
    fs::write(&bad, &junk).unwrap();
    let qa = c.pa.spawn_registered(&web).unwrap();
    let e = c.pa.acquire(&web, qa.pid, None, None).unwrap_err();
    assert!(
        e.contains("corrupt lease record") && e.contains(&disk_key(disks[1])),
        "{e}"
    );
    let mut left = vec![(dom_key(&web), key_holders(&c.ls, &dom_key(&web)))];
    for p in [disks[0], disks[2], disks[3]] {
        left.push((p.to_string(), key_holders(&c.ls, &disk_key(p))));
    }
    assert!(
        left.iter().all(|(_, h)| h.is_empty()),
        "a failed acquire must hold nothing: {left:?}"
    );
    assert_eq!(
        fs::read_to_string(&bad).unwrap(),
        junk,
        "the damaged record was changed"
    );
    drop(qa);
}

/// domain_lease = false and a domain whose only disks libvirt does not
/// pass to lock managers (RBD, read-only): nothing would be leased, and
/// the VM would run unprotected. The start is refused unless the config
/// allows unleased domains.
#[test]
fn a_start_that_would_lease_nothing_is_refused() {
    let _g = serial();
    let s = Scratch::new("abi-unleased");
    let ls = lockspace(&s);
    let mut a = Host::new(
        &s,
        1,
        &ls,
        "unsafe_no_watchdog = true\ndomain_lease = false\n",
    );
    a.start(&[]);
    let (p, rc) = load(&s.0, &a.conf);
    assert_eq!(rc, 0, "{}", last_error());
    let rbd_only = Dom::new([0x57; 16], "rbd-only", &[("/images/seed.iso", READONLY)]);
    let e = p
        .start(&rbd_only)
        .err()
        .expect("a start that leases nothing must be refused");
    assert!(
        e.contains("domain 'rbd-only' would run with no lease")
            && e.contains("allow_unleased_domains"),
        "{e}"
    );
    // A domain with a writable disk still starts (its disk lease).
    let ok = Dom::new([0x58; 16], "with-disk", &[("/images/w.qcow2", 0)]);
    let q = p.start(&ok).unwrap();
    drop(q);

    let b = Host::new(
        &s,
        2,
        &ls,
        "unsafe_no_watchdog = true\ndomain_lease = false\nallow_unleased_domains = true\n",
    );
    let mut b = b;
    b.start(&[]);
    let (pb, rc) = load(&s.0, &b.conf);
    assert_eq!(rc, 0, "{}", last_error());
    let q = pb.start(&rbd_only).unwrap();
    drop(q);
}

/// A pause whose release failed: libvirt keeps no state and resumes with
/// Acquire(NULL). Meanwhile another domain on host B used the disk. The
/// resume must be refused: the versions this QEMU held are in the registry.
#[test]
fn resume_after_a_failed_pause_release_checks_the_versions() {
    let _g = serial();
    let c = cluster("abi-failrel");
    let web = Dom::new([0x59; 16], "web", &[("/images/fr.qcow2", 0)]);
    let qa = c.pa.start(&web).unwrap();
    // The domain lease's record lock is held elsewhere: that release
    // fails, the disk's succeeds; libvirt gets an error and no state.
    let ls = vmlease::lockspace::Lockspace::open(&c.ls).unwrap();
    let stall = ls.lock_record(&dom_key(&web), 100).unwrap();
    let e = c.pa.release(&web, qa.pid, true, None).unwrap_err();
    assert!(e.contains("record lock"), "{e}");
    drop(stall);
    assert!(key_holders(&c.ls, &disk_key("/images/fr.qcow2")).is_empty());
    // Another domain on B writes the disk and stops.
    let other = Dom::new([0x5a; 16], "other", &[("/images/fr.qcow2", 0)]);
    let qb = c.pb.start(&other).unwrap();
    c.pb.release(&other, qb.pid, true, None).unwrap();
    // libvirt resumes A with no state.
    let e = c.pa.acquire(&web, qa.pid, None, None).unwrap_err();
    assert!(
        e.contains("lease version is") && e.contains("another owner held it"),
        "{e}"
    );
    assert!(
        key_holders(&c.ls, &disk_key("/images/fr.qcow2")).is_empty(),
        "a refused resume holds nothing"
    );
    drop((qa, qb));
}

/// The lockspace freezes (fsfreeze: writes block in D, as on hung CephFS)
/// while an acquire writes its record: libvirt's call returns at its
/// deadline, libvirt kills the QEMU, the storage thaws and the stuck write
/// lands. The record must end free within one sweep interval, and the
/// daemon log must say why it kept watching that QEMU's leases.
#[test]
fn an_acquire_abandoned_on_frozen_storage_leaves_no_holder() {
    let _g = serial();
    let s = Scratch::new("abi-frozen");
    let mut fz = support::frozen::Frozen::new(&s);
    let ls = fz.mnt.join("ls");
    vmlease::lockspace::Lockspace::init(&ls, 16).unwrap();
    // F = 6 s: renewals stalled by the freeze (about 3.5 s) do not fence.
    let mut a = Host::with_timing(
        &s,
        1,
        &ls,
        "unsafe_no_watchdog = true\n",
        [200, 6000, 500, 1000, 8000],
    );
    a.start(&[]);
    let (p, rc) = load(&s.0, &a.conf);
    assert_eq!(rc, 0, "{}", last_error());
    // Two records (domain and disk), written at once by two I/O threads:
    // both get stuck, both are abandoned, both are undone.
    let web = Dom::new([0x5b; 16], "web", &[("/images/frozen.qcow2", 0)]);
    let keys = [dom_key(&web), disk_key("/images/frozen.qcow2")];
    // The record lock files exist (the domain ran here before): the
    // acquire takes the locks and blocks in the writes.
    for key in &keys {
        drop(
            vmlease::lockspace::Lockspace::open(&ls)
                .unwrap()
                .lock_record(key, 100)
                .unwrap(),
        );
    }
    let q = p.spawn_registered(&web).unwrap();
    fz.freeze();
    let t0 = boottime_ms();
    let e = p.acquire(&web, q.pid, None, None).unwrap_err();
    let budget = a.cfg.io_timeout + a.cfg.lock_timeout;
    println!(
        "acquire on frozen storage failed after {} ms: {e}",
        boottime_ms() - t0
    );
    assert!(e.contains("no answer from storage"), "{e}");
    // libvirt kills the QEMU of the failed start.
    q.kill();
    wait_until("the daemon to see the QEMU exit", 3000, || {
        if a.log_text().contains(&format!("QEMU pid {} of", q.pid)) {
            Ok(())
        } else {
            Err(a.log_text())
        }
    });
    wait_until("the daemon to say why it keeps sweeping", 3000, || {
        let log = a.log_text();
        if log.contains(&format!(
            "QEMU pid {} exited while an acquire for it is still in flight",
            q.pid
        )) {
            Ok(())
        } else {
            Err(log)
        }
    });
    fz.thaw();
    let thawed = boottime_ms();
    // The stuck call ends: its write lands, sees its caller gave up, and
    // is undone; then it clears its note in the registry.
    let reg = vmlease::registry::Registry::new(&a.cfg.state_dir);
    wait_until("the stuck acquire to end", budget + 3000, || {
        match reg.list().unwrap().into_iter().find_map(|e| e.ok()) {
            Some(e) if !e.acquiring.is_empty() => Err(format!("{e:?}")),
            _ => Ok(()),
        }
    });
    println!(
        "stuck acquire ended {} ms after the thaw",
        boottime_ms() - thawed
    );
    wait_until(
        "the records to be free within one sweep interval",
        vmlease::daemon::reaper::SWEEP_MS + 1000,
        || {
            let h: Vec<_> = keys.iter().map(|k| key_holders(&ls, k)).collect();
            if h.iter().all(|h| h.is_empty()) {
                Ok(())
            } else {
                Err(format!("holders {h:?}; daemon log:\n{}", a.log_text()))
            }
        },
    );
    for key in &keys {
        let version = vmlease::lockspace::Lockspace::open(&ls)
            .unwrap()
            .read_lease(key, "")
            .unwrap()
            .version;
        println!(
            "record {key} free {} ms after the thaw (version {version})",
            boottime_ms() - thawed
        );
    }
    // Once the stuck call ended, the daemon forgets that QEMU.
    wait_until(
        "the registry entry to go",
        vmlease::daemon::reaper::SWEEP_MS + 2000,
        || match reg.list().unwrap().len() {
            0 => Ok(()),
            n => Err(format!("{n} entries; log:\n{}", a.log_text())),
        },
    );
    drop(q);
}
