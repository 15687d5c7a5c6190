//! vmlease.so loaded as libvirtd loads it (dlopen RTLD_NOW|RTLD_LOCAL,
//! dlsym "virLockDriverImpl", drvInit with the host's config), one private
//! copy per host, and libvirt's start sequence: fork; in the child
//! drvNew(NEW_STARTED) + AddResource + Acquire(REGISTER_ONLY|RESTRICT),
//! exec the stand-in QEMU; in the parent drvNew + AddResource +
//! Acquire(flags 0) on the child's pid. The stand-in starts writing only
//! when the parent tells it the acquire succeeded (libvirt starts the CPUs
//! only then). The ABI itself is tests/support/lockabi.rs.

use std::ffi::{c_char, c_int, CString};
use std::path::Path;

use crate::support::lockabi::*;

/// One host's copy of the plugin.
pub struct Plugin {
    d: &'static Driver,
}

/// A domain: UUID, name and one writable disk (the path libvirt passes,
/// the same on every host).
pub struct Dom {
    pub uuid: [u8; 16],
    pub name: CString,
    pub disk: CString,
}

/// A started stand-in QEMU: its pid (our child, reaped by the caller) and
/// the "CPUs started" pipe.
pub struct Started {
    pub pid: i32,
    go: c_int,
}

impl Started {
    /// Lets the stand-in run (libvirt starting the CPUs).
    pub fn go(self) {
        // SAFETY: writing one byte from a valid buffer to our pipe, then
        // closing the fd we own.
        unsafe {
            libc::write(self.go, b"g".as_ptr().cast(), 1);
            libc::close(self.go);
        }
    }

    /// The start failed: the stand-in sees EOF and exits; it is killed
    /// too. The caller reaps it.
    pub fn abort(self) {
        // SAFETY: our fd; kill of our own unreaped child.
        unsafe {
            libc::close(self.go);
            libc::kill(self.pid, libc::SIGKILL);
        }
    }
}

pub fn load(dir: &Path, so: &Path, conf: &Path) -> Result<Plugin, String> {
    let d = load_private(dir, so)?;
    let cc = CString::new(conf.to_str().unwrap()).unwrap();
    // SAFETY: version, a valid path, flags 0: libvirt's call.
    let rc = unsafe { (d.init)(1_000_000, cc.as_ptr(), 0) };
    if rc != 0 {
        return Err(format!("drvInit({}) failed", conf.display()));
    }
    Ok(Plugin { d })
}

fn params(dom: &Dom, pid: u32) -> Vec<Param> {
    domain_params(dom.uuid, &dom.name, 1, pid, Some(c"qemu:///system"))
}

impl Plugin {
    /// libvirt's start of `dom`: fork, register in the child, exec `argv`
    /// (fd 0 = the "CPUs started" pipe), acquire in the parent. Ok: the
    /// lease is held and the stand-in waits for `go`. Err: the refusal
    /// (the child's stderr line, or the parent's acquire failing); the
    /// stand-in is killed and must still be reaped when its pid is given.
    pub fn start(&self, dom: &Dom, argv: &[CString]) -> Result<Started, (Option<i32>, String)> {
        let mut err = [0 as c_int; 2];
        let mut go = [0 as c_int; 2];
        // SAFETY: two pipes, close-on-exec.
        unsafe {
            assert_eq!(libc::pipe2(err.as_mut_ptr(), libc::O_CLOEXEC), 0);
            assert_eq!(libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC), 0);
        }
        let mut ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        // SAFETY: fork; the child only calls the plugin (as libvirt's
        // pre-exec hook does), dup2, exec and _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: in the child: stderr to the pipe, the hook call,
            // the go pipe as stdin, exec.
            unsafe {
                let saved = libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 10);
                libc::dup2(err[1], 2);
                let me = libc::getpid() as u32;
                let mut m = Manager {
                    driver: self.d,
                    private: std::ptr::null_mut(),
                };
                let mut p = params(dom, me);
                let mut ok = (self.d.new)(&mut m, 0, p.len(), p.as_mut_ptr(), NEW_STARTED) == 0;
                ok = ok
                    && (self.d.add)(&mut m, 0, dom.disk.as_ptr(), 0, std::ptr::null_mut(), 0) == 0;
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
                libc::dup2(saved, 2);
                libc::dup2(go[0], 0);
                libc::execv(ptrs[0], ptrs.as_ptr());
                libc::_exit(4);
            }
        }
        // SAFETY: the parent closes its copies of the child's ends.
        unsafe {
            libc::close(err[1]);
            libc::close(go[0]);
        }
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            // SAFETY: reading into a valid buffer from our pipe.
            let n = unsafe { libc::read(err[0], chunk.as_mut_ptr().cast(), chunk.len()) };
            if n <= 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n as usize]);
        }
        // SAFETY: our fd.
        unsafe { libc::close(err[0]) };
        let started = Started { pid, go: go[1] };
        if !buf.is_empty() {
            started.abort();
            return Err((
                Some(pid),
                format!("register: {}", String::from_utf8_lossy(&buf).trim()),
            ));
        }
        match self.acquire(dom, pid as u32) {
            Ok(()) => Ok(started),
            Err(e) => {
                started.abort();
                Err((Some(pid), e))
            }
        }
    }

    fn acquire(&self, dom: &Dom, pid: u32) -> Result<(), String> {
        let mut m = Box::new(Manager {
            driver: self.d,
            private: std::ptr::null_mut(),
        });
        let mut p = params(dom, pid);
        // SAFETY: libvirt's drvNew call with 5 valid params.
        if unsafe { (self.d.new)(&mut *m, 0, p.len(), p.as_mut_ptr(), 0) } != 0 {
            return Err("drvNew failed".into());
        }
        // SAFETY: valid manager and NUL-terminated path, no params.
        let rc = unsafe { (self.d.add)(&mut *m, 0, dom.disk.as_ptr(), 0, std::ptr::null_mut(), 0) };
        let rc = if rc != 0 {
            rc
        } else {
            // SAFETY: valid manager; state NULL; fd NULL as in libvirtd.
            unsafe { (self.d.acquire)(&mut *m, std::ptr::null(), 0, 0, std::ptr::null_mut()) }
        };
        // SAFETY: a manager drvNew succeeded on.
        unsafe { (self.d.free)(&mut *m) };
        if rc == 0 {
            Ok(())
        } else {
            // The reason went to libvirt's error reporter (not loaded
            // here: the plugin logs it); the controller needs yes or no.
            Err("acquire refused".into())
        }
    }
}
