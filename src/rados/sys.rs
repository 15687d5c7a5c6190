//! The system calls of the RADOS path: librados through dlopen (the
//! calls vmlease needs; only ever loaded in the worker process,
//! [`super::worker`]). The other system calls of the RADOS path (the
//! worker's scheduling reset, the layout's getxattr) are in `crate::sys`.
#![allow(unsafe_code)]

use super::{cstr, err_of, TableObject};
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int, c_void};
use std::sync::OnceLock;

type Create2 = unsafe extern "C" fn(*mut *mut c_void, *const c_char, *const c_char, u64) -> c_int;
type ConfReadFile = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;
type ConfSet = unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char) -> c_int;
type Connect = unsafe extern "C" fn(*mut c_void) -> c_int;
type Shutdown = unsafe extern "C" fn(*mut c_void);
type IoctxCreate = unsafe extern "C" fn(*mut c_void, *const c_char, *mut *mut c_void) -> c_int;
type IoctxDestroy = unsafe extern "C" fn(*mut c_void);
type SetNamespace = unsafe extern "C" fn(*mut c_void, *const c_char);
type Read = unsafe extern "C" fn(*mut c_void, *const c_char, *mut c_char, usize, u64) -> c_int;
type Write = unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char, usize, u64) -> c_int;

pub struct Lib {
    create2: Create2,
    conf_read_file: ConfReadFile,
    conf_set: ConfSet,
    connect: Connect,
    shutdown: Shutdown,
    ioctx_create: IoctxCreate,
    ioctx_destroy: IoctxDestroy,
    set_namespace: SetNamespace,
    read: Read,
    write: Write,
}

/// Loads librados once per process (never unloaded).
pub fn lib() -> Result<&'static Lib, String> {
    static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();
    LIB.get_or_init(load).as_ref().map_err(|e| e.clone())
}

fn load() -> Result<Lib, String> {
    let name = c"librados.so.2";
    // SAFETY: `name` is NUL-terminated; dlopen has no other
    // precondition. The handle is kept for the life of the process.
    let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if h.is_null() {
        // SAFETY: dlerror returns NULL or a NUL-terminated string owned
        // by libdl, valid until the next dl call on this thread.
        let why = unsafe {
            let e = libc::dlerror();
            if e.is_null() {
                "unknown error".to_string()
            } else {
                CStr::from_ptr(e).to_string_lossy().into_owned()
            }
        };
        return Err(format!(
            "cannot load librados.so.2 ({why}): install librados2"
        ));
    }
    let sym = |n: &CStr| -> Result<*mut c_void, String> {
        // SAFETY: `h` is a live dlopen handle and `n` NUL-terminated.
        let p = unsafe { libc::dlsym(h, n.as_ptr()) };
        if p.is_null() {
            Err(format!("librados.so.2 has no {}", n.to_string_lossy()))
        } else {
            Ok(p)
        }
    };
    // SAFETY: each symbol is librados's C function of that name, whose
    // prototype in <rados/librados.h> is the type it is transmuted to
    // (rados_t and rados_ioctx_t are void pointers).
    unsafe {
        Ok(Lib {
            create2: std::mem::transmute::<*mut c_void, Create2>(sym(c"rados_create2")?),
            conf_read_file: std::mem::transmute::<*mut c_void, ConfReadFile>(sym(
                c"rados_conf_read_file",
            )?),
            conf_set: std::mem::transmute::<*mut c_void, ConfSet>(sym(c"rados_conf_set")?),
            connect: std::mem::transmute::<*mut c_void, Connect>(sym(c"rados_connect")?),
            shutdown: std::mem::transmute::<*mut c_void, Shutdown>(sym(c"rados_shutdown")?),
            ioctx_create: std::mem::transmute::<*mut c_void, IoctxCreate>(sym(
                c"rados_ioctx_create",
            )?),
            ioctx_destroy: std::mem::transmute::<*mut c_void, IoctxDestroy>(sym(
                c"rados_ioctx_destroy",
            )?),
            set_namespace: std::mem::transmute::<*mut c_void, SetNamespace>(sym(
                c"rados_ioctx_set_namespace",
            )?),
            read: std::mem::transmute::<*mut c_void, Read>(sym(c"rados_read")?),
            write: std::mem::transmute::<*mut c_void, Write>(sym(c"rados_write")?),
        })
    }
}

/// A connected cluster handle with an I/O context on the table's pool.
pub struct Conn {
    lib: &'static Lib,
    cluster: *mut c_void,
    ioctx: *mut c_void,
    oid: CString,
    object: String,
}

// SAFETY: librados handles are thread-safe: a rados_t and its
// rados_ioctx_t may be used from several threads at once (librados
// documentation, "thread safety"); the pointers are only freed in Drop.
unsafe impl Send for Conn {}
// SAFETY: as above.
unsafe impl Sync for Conn {}

impl Conn {
    pub fn connect(
        conf_path: &str,
        client_id: &str,
        timeout_ms: u64,
        obj: &TableObject,
    ) -> std::io::Result<Conn> {
        let lib = lib().map_err(std::io::Error::other)?;
        let cluster_name = cstr("ceph")?;
        let user = cstr(&format!("client.{client_id}"))?;
        let path = cstr(conf_path)?;
        let mut cluster: *mut c_void = std::ptr::null_mut();
        // SAFETY: the out-pointer is valid; the strings are NUL-terminated.
        let rc = unsafe { (lib.create2)(&mut cluster, cluster_name.as_ptr(), user.as_ptr(), 0) };
        if rc < 0 {
            return Err(err_of("rados_create2", rc));
        }
        let mut conn = Conn {
            lib,
            cluster,
            ioctx: std::ptr::null_mut(),
            oid: cstr(&obj.object)?,
            object: obj.object.clone(),
        };
        // SAFETY: `cluster` was created above and not yet connected.
        let rc = unsafe { (lib.conf_read_file)(conn.cluster, path.as_ptr()) };
        if rc < 0 {
            return Err(err_of(&format!("read {conf_path}"), rc));
        }
        let secs = timeout_ms.div_ceil(1000).max(1).to_string();
        for (k, v) in [
            ("rados_osd_op_timeout", secs.as_str()),
            ("rados_mon_op_timeout", secs.as_str()),
            ("client_mount_timeout", secs.as_str()),
            ("log_to_stderr", "false"),
            ("err_to_stderr", "false"),
        ] {
            let (k, v) = (cstr(k)?, cstr(v)?);
            // SAFETY: live, unconnected handle; NUL-terminated strings.
            let rc = unsafe { (lib.conf_set)(conn.cluster, k.as_ptr(), v.as_ptr()) };
            if rc < 0 {
                return Err(err_of("rados_conf_set", rc));
            }
        }
        // SAFETY: live handle, configured above.
        let rc = unsafe { (lib.connect)(conn.cluster) };
        if rc < 0 {
            return Err(err_of("connect to the Ceph cluster", rc));
        }
        let pool = cstr(&obj.pool)?;
        // SAFETY: connected handle; valid out-pointer and pool name.
        let rc = unsafe { (lib.ioctx_create)(conn.cluster, pool.as_ptr(), &mut conn.ioctx) };
        if rc < 0 {
            conn.ioctx = std::ptr::null_mut();
            return Err(err_of(&format!("open pool {}", obj.pool), rc));
        }
        let ns = cstr(&obj.namespace)?;
        // SAFETY: live ioctx; the namespace string is copied by librados.
        unsafe { (lib.set_namespace)(conn.ioctx, ns.as_ptr()) };
        Ok(conn)
    }

    pub fn read(&self, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
        self.read_oid(&self.oid, &self.object, buf, off)
    }

    /// A read of another object of the same pool and namespace.
    pub fn read_object(&self, object: &str, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
        self.read_oid(&cstr(object)?, object, buf, off)
    }

    fn read_oid(
        &self,
        oid: &CString,
        object: &str,
        buf: &mut [u8],
        off: u64,
    ) -> std::io::Result<usize> {
        // SAFETY: live ioctx; NUL-terminated oid; `buf` is writable for
        // its length.
        let rc = unsafe {
            (self.lib.read)(
                self.ioctx,
                oid.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                off,
            )
        };
        if rc < 0 {
            return Err(err_of(&format!("rados read {object}"), rc));
        }
        Ok(rc as usize)
    }

    pub fn write(&self, data: &[u8], off: u64) -> std::io::Result<()> {
        // SAFETY: live ioctx; `data` is readable for its length.
        let rc = unsafe {
            (self.lib.write)(
                self.ioctx,
                self.oid.as_ptr(),
                data.as_ptr().cast(),
                data.len(),
                off,
            )
        };
        if rc < 0 {
            return Err(err_of(&format!("rados write {}", self.object), rc));
        }
        Ok(())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: the handles were created by this Conn and are freed
        // once; no call on them is in flight (the Conn is being dropped).
        unsafe {
            if !self.ioctx.is_null() {
                (self.lib.ioctx_destroy)(self.ioctx);
            }
            (self.lib.shutdown)(self.cluster);
        }
    }
}
