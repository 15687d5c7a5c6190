//! The host table through RADOS instead of through the CephFS client.
//!
//! On CephFS a client that has touched a file holds *capabilities* on it,
//! and another client's conflicting access waits until the MDS takes them
//! back: from a frozen or cut-off client only after `session_timeout`
//! (60 s by default). With every host renewing its slot in the one shared
//! `hosts` file through its ceph-fuse (or kernel) client, one hung host
//! stalled every other host's renewal past F, and they all fenced
//! (docs/cephfs.md, "What a frozen client blocks").
//!
//! RADOS has no capabilities. The `hosts` file's data lives in the object
//! `<inode hex>.00000000` of the file system's data pool (the whole table
//! is within the first stripe unit, checked), so a host reads the table
//! and writes its own slot there directly, as its own librados client:
//! the same bytes at the same offsets as through the file, one read and
//! one write per renewal as before, and nothing a frozen peer holds can
//! make them wait. A host that reads the file through CephFS (an older
//! vmlease, the CLI, the plugin's takeover check) reads what RADOS
//! writers wrote: the data is the object's, and vmlease reads with
//! O_DIRECT, which ceph-fuse serves from the OSDs.
//!
//! librados is loaded at run time (`dlopen("librados.so.2")`), only by a
//! daemon configured with `liveness_rados = true`: vmlease neither links
//! nor packages it. Every call is bounded by librados's own op timeouts,
//! set to the daemon's io_timeout.
#![deny(unsafe_code)]

use std::ffi::{CStr, CString};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// How to reach the cluster: the host's Ceph configuration and the client
/// identity its CephFS mount uses (that identity may read and write the
/// file system's data pool).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RadosConf {
    /// `ceph.conf` (monitors, keyring).
    pub conf: PathBuf,
    /// The client id, without `client.` (`admin` by default).
    pub client_id: String,
    /// Bound of every librados call (ms), the daemon's io_timeout.
    pub timeout_ms: u64,
}

/// Where the host table's data lives in RADOS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableObject {
    pub pool: String,
    pub namespace: String,
    pub object: String,
}

/// Finds the RADOS object that holds the first `len` bytes of `file`
/// (a file on CephFS) from its inode number and its `ceph.file.layout`.
pub fn table_object(file: &Path, len: usize) -> Result<TableObject, String> {
    let meta = std::fs::metadata(file).map_err(|e| format!("stat {}: {e}", file.display()))?;
    let layout = sys::getxattr(file, "ceph.file.layout").map_err(|e| {
        format!(
            "{}: no CephFS layout ({e}): liveness_rados needs the lockspace on CephFS",
            file.display()
        )
    })?;
    parse_layout(&layout, meta.ino(), len)
}

/// Parses a `ceph.file.layout` value (`stripe_unit=4194304
/// stripe_count=1 object_size=4194304 pool=cephfs_data
/// [pool_namespace=ns]`) into the object of the first `len` bytes.
pub fn parse_layout(layout: &str, ino: u64, len: usize) -> Result<TableObject, String> {
    let get = |k: &str| {
        layout
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
    };
    let num = |k: &str| -> Result<u64, String> {
        get(k)
            .ok_or_else(|| format!("layout '{layout}' has no {k}"))?
            .parse()
            .map_err(|_| format!("layout '{layout}': bad {k}"))
    };
    let stripe_unit = num("stripe_unit")?;
    let object_size = num("object_size")?;
    if stripe_unit < len as u64 || object_size < len as u64 {
        return Err(format!(
            "the host table ({len} bytes) spans more than one object (layout '{layout}')"
        ));
    }
    let pool = get("pool").ok_or_else(|| format!("layout '{layout}' has no pool"))?;
    Ok(TableObject {
        pool: pool.to_string(),
        namespace: get("pool_namespace").unwrap_or("").to_string(),
        object: format!("{ino:x}.00000000"),
    })
}

/// The host table's object, reached through librados. Connects on first
/// use (on the thread that does the I/O, never at open) and again after
/// a failed connect.
#[derive(Clone)]
pub struct RadosTable {
    conf: RadosConf,
    hosts_file: PathBuf,
    len: usize,
    conn: Arc<Mutex<Option<Arc<sys::Conn>>>>,
}

impl std::fmt::Debug for RadosTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RadosTable")
            .field("conf", &self.conf)
            .field("hosts_file", &self.hosts_file)
            .finish()
    }
}

impl RadosTable {
    pub fn new(conf: RadosConf, hosts_file: &Path, len: usize) -> RadosTable {
        RadosTable {
            conf,
            hosts_file: hosts_file.to_path_buf(),
            len,
            conn: Arc::new(Mutex::new(None)),
        }
    }

    fn conn(&self) -> std::io::Result<Arc<sys::Conn>> {
        let mut g = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = g.as_ref() {
            return Ok(c.clone());
        }
        let obj = table_object(&self.hosts_file, self.len)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::Unsupported, e))?;
        let c = Arc::new(sys::Conn::connect(&self.conf, &obj)?);
        *g = Some(c.clone());
        Ok(c)
    }

    /// Connects now (at daemon start, so that the first renewal and the
    /// claim's reads, which run with the I/O deadline, need no connect).
    pub fn connect(&self) -> std::io::Result<()> {
        self.conn().map(|_| ())
    }

    /// `len` bytes at `off`; a missing object or a short one reads as
    /// zeros (the file is sparse until written), exactly as the file.
    pub fn read(&self, off: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let c = self.conn()?;
        let mut buf = vec![0u8; len];
        match c.read(&mut buf, off) {
            Ok(_) => Ok(buf),
            // Never written yet (a new lockspace): the file reads zeros.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(buf),
            Err(e) => Err(e),
        }
    }

    /// Writes `data` at `off`; durable on every replica when it returns.
    pub fn write(&self, off: u64, data: &[u8]) -> std::io::Result<()> {
        self.conn()?.write(data, off)
    }
}

/// Whether librados can be loaded on this host.
pub fn available() -> Result<(), String> {
    sys::lib().map(|_| ())
}

fn cstr(s: &str) -> std::io::Result<CString> {
    CString::new(s).map_err(|_| std::io::Error::other(format!("'{s}' contains NUL")))
}

/// The error of a librados call that returned `rc` (-errno). Its kind is
/// the errno's (`NotFound` for ENOENT), which callers test.
fn err_of(what: &str, rc: i32) -> std::io::Error {
    let e = std::io::Error::from_raw_os_error(-rc);
    std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[allow(unsafe_code)]
mod sys {
    //! librados through dlopen: the eight calls vmlease needs.

    use super::*;
    use std::os::raw::{c_char, c_int, c_void};
    use std::sync::OnceLock;

    type Create2 =
        unsafe extern "C" fn(*mut *mut c_void, *const c_char, *const c_char, u64) -> c_int;
    type ConfReadFile = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;
    type ConfSet = unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char) -> c_int;
    type Connect = unsafe extern "C" fn(*mut c_void) -> c_int;
    type Shutdown = unsafe extern "C" fn(*mut c_void);
    type IoctxCreate = unsafe extern "C" fn(*mut c_void, *const c_char, *mut *mut c_void) -> c_int;
    type IoctxDestroy = unsafe extern "C" fn(*mut c_void);
    type SetNamespace = unsafe extern "C" fn(*mut c_void, *const c_char);
    type Read = unsafe extern "C" fn(*mut c_void, *const c_char, *mut c_char, usize, u64) -> c_int;
    type Write =
        unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char, usize, u64) -> c_int;

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
        pub fn connect(conf: &RadosConf, obj: &TableObject) -> std::io::Result<Conn> {
            let lib = lib().map_err(std::io::Error::other)?;
            let cluster_name = cstr("ceph")?;
            let user = cstr(&format!("client.{}", conf.client_id))?;
            let path = cstr(&conf.conf.to_string_lossy())?;
            let mut cluster: *mut c_void = std::ptr::null_mut();
            // SAFETY: the out-pointer is valid; the strings are NUL-terminated.
            let rc =
                unsafe { (lib.create2)(&mut cluster, cluster_name.as_ptr(), user.as_ptr(), 0) };
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
                return Err(err_of(&format!("read {}", conf.conf.display()), rc));
            }
            let secs = conf.timeout_ms.div_ceil(1000).max(1).to_string();
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
            // SAFETY: live ioctx; `buf` is writable for its length.
            let rc = unsafe {
                (self.lib.read)(
                    self.ioctx,
                    self.oid.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    off,
                )
            };
            if rc < 0 {
                return Err(err_of(&format!("rados read {}", self.object), rc));
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

    /// One extended attribute of `path` as text.
    pub fn getxattr(path: &Path, name: &str) -> std::io::Result<String> {
        use std::os::unix::ffi::OsStrExt;
        let p = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::other("path contains NUL"))?;
        let n = cstr(name)?;
        let mut buf = vec![0u8; 1024];
        // SAFETY: NUL-terminated path and name; `buf` writable for its length.
        let rc =
            unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        buf.truncate(rc as usize);
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_to_object() {
        let o = parse_layout(
            "stripe_unit=4194304 stripe_count=1 object_size=4194304 pool=cephfs_data",
            0x1000000000a,
            1_024_000,
        )
        .unwrap();
        assert_eq!(
            o,
            TableObject {
                pool: "cephfs_data".into(),
                namespace: String::new(),
                object: "1000000000a.00000000".into()
            }
        );
        let o = parse_layout(
            "stripe_unit=4194304 stripe_count=4 object_size=8388608 pool=data pool_namespace=vm",
            255,
            4096,
        )
        .unwrap();
        assert_eq!(
            (o.namespace.as_str(), o.object.as_str()),
            ("vm", "ff.00000000")
        );
        let e = parse_layout(
            "stripe_unit=65536 stripe_count=4 object_size=4194304 pool=d",
            1,
            1_024_000,
        )
        .unwrap_err();
        assert!(e.contains("more than one object"), "{e}");
        assert!(parse_layout("stripe_unit=4194304 object_size=4194304", 1, 512).is_err());
    }

    #[test]
    fn a_missing_object_is_told_by_its_kind() {
        // rados_read of an object never written returns -ENOENT: the
        // table then reads as zeros, as the sparse file does.
        let e = err_of("rados read x", -libc::ENOENT);
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
        assert!(e.to_string().contains("rados read x"), "{e}");
        assert_ne!(
            err_of("w", -libc::ETIMEDOUT).kind(),
            std::io::ErrorKind::NotFound
        );
    }

    #[test]
    fn a_file_off_cephfs_has_no_object() {
        let d = std::env::temp_dir().join(format!("vmlease-rados-{}", std::process::id()));
        std::fs::write(&d, b"x").unwrap();
        let e = table_object(&d, 512).unwrap_err();
        assert!(e.contains("no CephFS layout"), "{e}");
        std::fs::remove_file(&d).unwrap();
    }
}
