//! libvirt's lock-driver ABI as a test drives it, restated from
//! include/vmlease.h (the header test checks that header against the
//! code): the driver table, the parameter union, and loading a private
//! copy of vmlease.so exactly as libvirtd does (dlopen RTLD_NOW|RTLD_LOCAL,
//! dlsym "virLockDriverImpl"). A private copy per "host" gives each its own
//! statics and its own config.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::fs;
use std::path::Path;

#[repr(C)]
#[derive(Clone, Copy)]
pub union Value {
    pub iv: c_int,
    pub l: i64,
    pub ui: c_uint,
    pub ul: u64,
    pub d: f64,
    pub s: *const c_char,
    pub uuid: [u8; 16],
}

#[repr(C)]
pub struct Param {
    pub type_: c_int,
    pub key: *const c_char,
    pub value: Value,
}

#[repr(C)]
pub struct Manager {
    pub driver: *const Driver,
    pub private: *mut c_void,
}

#[repr(C)]
pub struct Driver {
    pub version: c_uint,
    pub flags: c_uint,
    pub init: unsafe extern "C" fn(c_uint, *const c_char, c_uint) -> c_int,
    pub deinit: unsafe extern "C" fn() -> c_int,
    pub new: unsafe extern "C" fn(*mut Manager, c_uint, usize, *mut Param, c_uint) -> c_int,
    pub free: unsafe extern "C" fn(*mut Manager),
    pub add: unsafe extern "C" fn(
        *mut Manager,
        c_uint,
        *const c_char,
        usize,
        *mut Param,
        c_uint,
    ) -> c_int,
    pub acquire:
        unsafe extern "C" fn(*mut Manager, *const c_char, c_uint, c_int, *mut c_int) -> c_int,
    pub release: unsafe extern "C" fn(*mut Manager, *mut *mut c_char, c_uint) -> c_int,
    pub inquire: unsafe extern "C" fn(*mut Manager, *mut *mut c_char, c_uint) -> c_int,
}

/// drvNew: the domain is being started (not re-attached).
pub const NEW_STARTED: c_uint = 1;
/// drvAcquire: register only (the pre-exec call in the child).
pub const REGISTER_ONLY: c_uint = 1;
/// drvAcquire: restrict the process (seccomp/fd hygiene; a no-op here).
pub const RESTRICT: c_uint = 2;
/// drvAddResource: the disk is read-only.
pub const READONLY: c_uint = 1;
/// drvAddResource: the disk is shared.
pub const SHARED: c_uint = 2;

/// Copies `so` into `dir` under a fresh name and loads it as libvirtd
/// does; the plugin's static driver table (not initialised yet).
pub fn load_private(dir: &Path, so: &Path) -> Result<&'static Driver, String> {
    let copy = dir.join(format!("vmlease-{}.so", vmlease::process::random_u64()));
    fs::copy(so, &copy).map_err(|e| format!("copy {}: {e}", so.display()))?;
    let c = CString::new(copy.to_str().unwrap()).unwrap();
    // SAFETY: dlopen/dlsym as libvirtd does (lock_manager.c).
    let table = unsafe {
        let h = libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if h.is_null() {
            return Err(format!("dlopen {}", copy.display()));
        }
        libc::dlsym(h, c"virLockDriverImpl".as_ptr())
    };
    if table.is_null() {
        return Err("virLockDriverImpl missing".into());
    }
    // SAFETY: the symbol is the plugin's static driver table, which lives
    // as long as the library (never unloaded).
    Ok(unsafe { &*(table as *const Driver) })
}

/// The five parameters libvirt's QEMU driver passes to drvNew for a
/// domain: uuid, name, id, pid, uri (NULL when `uri` is None). The
/// strings must outlive the call.
pub fn domain_params(
    uuid: [u8; 16],
    name: &CStr,
    id: c_uint,
    pid: u32,
    uri: Option<&CStr>,
) -> Vec<Param> {
    vec![
        Param {
            type_: 7,
            key: c"uuid".as_ptr(),
            value: Value { uuid },
        },
        Param {
            type_: 0,
            key: c"name".as_ptr(),
            value: Value { s: name.as_ptr() },
        },
        Param {
            type_: 4,
            key: c"id".as_ptr(),
            value: Value { ui: id },
        },
        Param {
            type_: 4,
            key: c"pid".as_ptr(),
            value: Value { ui: pid },
        },
        Param {
            type_: 1,
            key: c"uri".as_ptr(),
            value: Value {
                s: uri.map(|u| u.as_ptr()).unwrap_or(std::ptr::null()),
            },
        },
    ]
}
