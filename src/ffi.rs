//! The C ABI boundary with libvirtd: the exported `virLockDriverImpl`
//! table, the struct layouts of `lock_driver.h` (libvirt does not install
//! that header, so they are restated here and checked by size tests), one
//! panic guard around every callback, and every pointer and C-string check.
//! All decisions are made by [`crate::plugin`].
//!
//! Rules kept here:
//! - nothing unwinds into libvirtd: every callback runs under [`boundary`],
//!   which catches a panic, reports it like any error and returns -1;
//! - out-parameters are written only on success, with memory from libc's
//!   allocator (libvirt frees them with `free`);
//! - the pre-exec child (REGISTER_ONLY) takes no lock another thread could
//!   hold and starts no thread: errors go to stderr as one line.
#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals)]
#![allow(unsafe_code)]

// The boundary catches panics; with `panic = "abort"` a panic in any
// callback would abort libvirtd with every VM of the host in it.
#[cfg(panic = "abort")]
compile_error!(
    "vmlease must be built with panic = \"unwind\": its cdylib runs inside libvirtd, \
     and src/ffi.rs turns a panic into a reported error instead of aborting the daemon"
);

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use log::{error, info, warn};

use crate::config::{self, Config};
use crate::error::Error;
use crate::plugin::{self, Manager, Param, Value};

/// libvirt's lock-manager plugin ABI version (1.0.0).
pub const VIR_LOCK_MANAGER_VERSION: c_uint = 1_000_000;

/// One parameter value (`lock_driver.h`, union of 16 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub union virLockManagerParamValue {
    pub iv: c_int,
    pub l: i64,
    pub ui: c_uint,
    pub ul: u64,
    pub d: f64,
    pub str_: *mut c_char,
    pub cstr: *const c_char,
    pub uuid: [u8; 16],
}

/// One typed parameter passed to New and AddResource.
#[repr(C)]
pub struct virLockManagerParam {
    pub type_: c_int,
    pub key: *const c_char,
    pub value: virLockManagerParamValue,
}

/// The per-operation object libvirt allocates; `privateData` is ours.
#[repr(C)]
pub struct virLockManager {
    pub driver: *const virLockDriver,
    pub privateData: *mut c_void,
}

pub type DrvInit = unsafe extern "C" fn(c_uint, *const c_char, c_uint) -> c_int;
pub type DrvDeinit = unsafe extern "C" fn() -> c_int;
pub type DrvNew = unsafe extern "C" fn(
    *mut virLockManager,
    c_uint,
    usize,
    *mut virLockManagerParam,
    c_uint,
) -> c_int;
pub type DrvFree = unsafe extern "C" fn(*mut virLockManager);
pub type DrvAddResource = unsafe extern "C" fn(
    *mut virLockManager,
    c_uint,
    *const c_char,
    usize,
    *mut virLockManagerParam,
    c_uint,
) -> c_int;
pub type DrvAcquire =
    unsafe extern "C" fn(*mut virLockManager, *const c_char, c_uint, c_int, *mut c_int) -> c_int;
pub type DrvRelease = unsafe extern "C" fn(*mut virLockManager, *mut *mut c_char, c_uint) -> c_int;
pub type DrvInquire = unsafe extern "C" fn(*mut virLockManager, *mut *mut c_char, c_uint) -> c_int;

/// The driver table (`struct _virLockDriver`, 72 bytes on LP64).
#[repr(C)]
pub struct virLockDriver {
    pub version: c_uint,
    pub flags: c_uint,
    pub drvInit: DrvInit,
    pub drvDeinit: DrvDeinit,
    pub drvNew: DrvNew,
    pub drvFree: DrvFree,
    pub drvAddResource: DrvAddResource,
    pub drvAcquire: DrvAcquire,
    pub drvRelease: DrvRelease,
    pub drvInquire: DrvInquire,
}

/// The table libvirtd looks up with `dlsym(handle, "virLockDriverImpl")`.
/// `flags` = VIR_LOCK_MANAGER_USES_STATE: vmlease hands a state string
/// (lease versions) from pause to resume and across migration.
#[no_mangle]
pub static virLockDriverImpl: virLockDriver = virLockDriver {
    version: VIR_LOCK_MANAGER_VERSION,
    flags: 1,
    drvInit: vmlease_drv_init,
    drvDeinit: vmlease_drv_deinit,
    drvNew: vmlease_drv_new,
    drvFree: vmlease_drv_free,
    drvAddResource: vmlease_drv_add_resource,
    drvAcquire: vmlease_drv_acquire,
    drvRelease: vmlease_drv_release,
    drvInquire: vmlease_drv_inquire,
};

const PARAM_STRING: c_int = 0;
const PARAM_CSTRING: c_int = 1;
const PARAM_INT: c_int = 2;
const PARAM_LONG: c_int = 3;
const PARAM_UINT: c_int = 4;
const PARAM_ULONG: c_int = 5;
const PARAM_DOUBLE: c_int = 6;
const PARAM_UUID: c_int = 7;

const VIR_FROM_LOCKING: c_int = 42;
const VIR_ERR_INTERNAL_ERROR: c_int = 1;
const VIR_ERR_INVALID_ARG: c_int = 8;
const VIR_ERR_OPERATION_FAILED: c_int = 9;
const VIR_ERR_CONFIG_UNSUPPORTED: c_int = 67;
const VIR_ERR_RESOURCE_BUSY: c_int = 87;

/// The loaded configuration (first drvInit wins; a plugin may be
/// initialised once per libvirt driver).
static CONFIG: OnceLock<Config> = OnceLock::new();

/// The one guard-and-report wrapper of every exported callback (the
/// pattern of rustls-ffi's `ffi_panic_boundary!`): runs `body` under
/// `catch_unwind`; `Ok` is 0; an error is reported to libvirt as failing
/// `op` and returns -1; a panic is reported the same way, as an internal
/// error, and returns -1. Nothing unwinds into libvirtd.
fn boundary(op: &str, body: impl FnOnce() -> Result<(), Error>) -> c_int {
    boundary_with(op, report, body)
}

/// [`boundary`] with its own reporter: the pre-exec child reports on
/// stderr instead of through libvirt (see [`report_child`]). `to` runs
/// under the guard too.
fn boundary_with(
    op: &str,
    to: impl FnOnce(&str, &Error),
    body: impl FnOnce() -> Result<(), Error>,
) -> c_int {
    // A reporter that panics loses only its message.
    let send = |e: &Error| {
        let _ = catch_unwind(AssertUnwindSafe(|| to(op, e)));
    };
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            send(&e);
            -1
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            send(&Error::Internal(format!("panic: {what}")));
            -1
        }
    }
}

fn error_code(e: &Error) -> c_int {
    match e {
        Error::Busy { .. } | Error::VersionMismatch { .. } => VIR_ERR_RESOURCE_BUSY,
        Error::Unprotected(_)
        | Error::Timeout { .. }
        | Error::Stuck { .. }
        | Error::Abandoned { .. }
        | Error::Lockspace { .. } => VIR_ERR_OPERATION_FAILED,
        Error::Config(_) => VIR_ERR_CONFIG_UNSUPPORTED,
        Error::Invalid(_) => VIR_ERR_INVALID_ARG,
        Error::Io { .. } | Error::Corrupt { .. } | Error::Internal(_) => VIR_ERR_INTERNAL_ERROR,
    }
}

type ReportFn =
    unsafe extern "C" fn(c_int, c_int, *const c_char, *const c_char, usize, *const c_char, ...);

static REPORT: AtomicUsize = AtomicUsize::new(0);
const REPORT_MISSING: usize = 1;

/// Finds libvirt's (private, unversioned-bound) error reporter at runtime.
fn reporter() -> Option<ReportFn> {
    let mut p = REPORT.load(Ordering::Acquire);
    if p == 0 {
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name is
        // always safe to call; it returns NULL when the symbol is absent.
        let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"virReportErrorHelper".as_ptr()) };
        p = if sym.is_null() {
            REPORT_MISSING
        } else {
            sym as usize
        };
        REPORT.store(p, Ordering::Release);
    }
    if p == REPORT_MISSING {
        return None;
    }
    // SAFETY: p is the address of virReportErrorHelper, whose C signature
    // (virerror.h) is exactly ReportFn; it has been stable since 9.0.
    Some(unsafe { std::mem::transmute::<usize, ReportFn>(p) })
}

/// Reports an error to libvirt (daemon context) and syslog.
fn report(op: &str, e: &Error) {
    if op == "acquiring leases" {
        error!(event = "lease-refused"; "{op}: {e}");
    } else {
        error!("{op}: {e}");
    }
    let msg = format!("vmlease: {e}");
    let Ok(c) = CString::new(msg.replace('\0', " ")) else {
        return;
    };
    if let Some(f) = reporter() {
        // SAFETY: all pointers are valid NUL-terminated strings for the
        // duration of the call; the format is a constant "%s" consuming
        // exactly one string argument.
        unsafe {
            f(
                VIR_FROM_LOCKING,
                error_code(e),
                c"vmlease".as_ptr(),
                c"vmlease".as_ptr(),
                0,
                c"%s".as_ptr(),
                c.as_ptr(),
            )
        };
    }
}

/// Reports an error in the pre-exec child: one line on stderr (the domain
/// log, shown by virsh) and syslog. No libvirt call, no lock.
fn report_child(e: &Error) {
    let line = format!("vmlease: {e}\n");
    crate::logging::syslog(log::Level::Error, &format!("start refused: {e}"));
    let bytes = line.as_bytes();
    // SAFETY: writing a valid buffer to fd 2 is always memory-safe; a
    // short or failed write only loses the message.
    unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
}

/// Copies a C string; NULL is `Ok(None)`, invalid UTF-8 an error.
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string valid for the call.
unsafe fn opt_str(p: *const c_char, what: &str) -> Result<Option<String>, Error> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(|s| Some(s.to_string()))
        .map_err(|_| Error::Invalid(format!("{what} is not valid UTF-8")))
}

/// Copies libvirt's parameter array.
///
/// # Safety
/// `params` must be NULL (then `n` must be 0) or point to `n` valid params.
unsafe fn read_params(n: usize, params: *const virLockManagerParam) -> Result<Vec<Param>, Error> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if params.is_null() {
        return Err(Error::Invalid(format!("{n} parameters but a NULL array")));
    }
    if n > 1024 {
        return Err(Error::Invalid(format!("implausible parameter count {n}")));
    }
    // SAFETY: non-NULL and n elements long by the caller's contract.
    let slice = unsafe { std::slice::from_raw_parts(params, n) };
    let mut out = Vec::with_capacity(n);
    for p in slice {
        // SAFETY: libvirt passes NUL-terminated keys valid for the call.
        let key = unsafe { opt_str(p.key, "parameter key") }?
            .ok_or_else(|| Error::Invalid("parameter with a NULL key".into()))?;
        // SAFETY: each arm reads the union member that libvirt's declared
        // type says was written (lock_driver.h, domain_lock.c); pointers
        // are NULL or NUL-terminated strings valid for the call.
        let value = unsafe {
            match p.type_ {
                PARAM_STRING => Value::Str(opt_str(p.value.str_, &key)?),
                PARAM_CSTRING => Value::Str(opt_str(p.value.cstr, &key)?),
                PARAM_INT => Value::Int(p.value.iv as i64),
                PARAM_LONG => Value::Int(p.value.l),
                PARAM_UINT => Value::UInt(p.value.ui as u64),
                PARAM_ULONG => Value::UInt(p.value.ul),
                PARAM_DOUBLE => Value::Double(p.value.d),
                PARAM_UUID => Value::Uuid(p.value.uuid),
                t => {
                    return Err(Error::Invalid(format!(
                        "parameter '{key}' has unknown type {t}"
                    )))
                }
            }
        };
        out.push(Param { key, value });
    }
    Ok(out)
}

fn config() -> Result<&'static Config, Error> {
    CONFIG
        .get()
        .ok_or_else(|| Error::Config("the vmlease plugin was used before drvInit".into()))
}

/// # Safety
/// `man` must be NULL or a manager whose privateData we set in drvNew.
unsafe fn manager<'a>(man: *mut virLockManager) -> Result<&'a mut Manager, Error> {
    if man.is_null() {
        return Err(Error::Invalid("NULL lock manager".into()));
    }
    // SAFETY: non-NULL; libvirt owns the struct for the whole call.
    let pd = unsafe { (*man).privateData };
    if pd.is_null() {
        return Err(Error::Invalid("lock manager without private data".into()));
    }
    // SAFETY: privateData was created by Box::into_raw in drvNew and is
    // only freed in drvFree; libvirt serialises calls on one manager.
    Ok(unsafe { &mut *(pd as *mut Manager) })
}

/// Hands a string to libvirt, allocated with libc (libvirt frees it).
fn c_alloc(s: &str) -> Result<*mut c_char, Error> {
    let c = CString::new(s).map_err(|_| Error::Invalid("state contains NUL".into()))?;
    // SAFETY: c is a valid NUL-terminated string; strdup copies it into
    // malloc'd memory or returns NULL.
    let p = unsafe { libc::strdup(c.as_ptr()) };
    if p.is_null() {
        return Err(Error::Io {
            op: "allocate lock state",
            path: "-".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOMEM),
        });
    }
    Ok(p)
}

/// drvInit: loads the configuration once per process.
///
/// # Safety
/// `config_file` must be NULL or a NUL-terminated string valid for the
/// call (libvirt passes its `lock_manager` config path).
unsafe extern "C" fn vmlease_drv_init(
    version: c_uint,
    config_file: *const c_char,
    flags: c_uint,
) -> c_int {
    // Only an invalid config file may fail init (it takes the QEMU driver
    // down, which is what an operator must see).
    boundary("loading the vmlease plugin", || {
        crate::logging::init(false, log::LevelFilter::Info);
        if CONFIG.get().is_some() {
            return Ok(()); // loaded again for another libvirt driver
        }
        if version != VIR_LOCK_MANAGER_VERSION {
            warn!(
                "libvirt lock manager ABI version {version}, built for {VIR_LOCK_MANAGER_VERSION}"
            );
        }
        if flags != 0 {
            return Err(Error::Invalid(format!(
                "unsupported init flags 0x{flags:x}"
            )));
        }
        // SAFETY: libvirt passes NULL or a NUL-terminated path.
        let path = unsafe { opt_str(config_file, "config file path") }?
            .unwrap_or_else(|| config::DEFAULT_PATH.to_string());
        let cfg = config::load(std::path::Path::new(&path))?;
        for w in cfg.warnings() {
            warn!("{path}: {w}");
        }
        info!(
            "plugin loaded: config {path}, host id {:?}, lockspace {}",
            cfg.host_id,
            cfg.lockspace_dir.display()
        );
        let _ = CONFIG.set(cfg);
        Ok(())
    })
}

/// drvDeinit: refuses to unload. The one callback without [`boundary`]:
/// it runs no code that could panic.
///
/// # Safety
/// None: it takes no arguments and touches no memory.
unsafe extern "C" fn vmlease_drv_deinit() -> c_int {
    // Stay loaded: an abandoned I/O thread (hung storage) may still run
    // our code, so the library must never be unmapped.
    -1
}

/// drvNew: creates the per-operation [`Manager`] in `privateData`.
///
/// # Safety
/// `man` must be NULL or a `virLockManager` that libvirt owns for the
/// call; `params` must be NULL with `nparams` 0, or point to `nparams`
/// valid parameters whose keys and strings are NUL-terminated.
unsafe extern "C" fn vmlease_drv_new(
    man: *mut virLockManager,
    obj_type: c_uint,
    nparams: usize,
    params: *mut virLockManagerParam,
    flags: c_uint,
) -> c_int {
    boundary("creating a lock manager", || {
        if man.is_null() {
            return Err(Error::Invalid("NULL lock manager".into()));
        }
        config()?;
        // SAFETY: libvirt passes nparams valid params (or NULL and 0).
        let params = unsafe { read_params(nparams, params) }?;
        let m = Manager::new(obj_type, &params, flags)?;
        // SAFETY: man is non-NULL and libvirt's for the call.
        unsafe { (*man).privateData = Box::into_raw(Box::new(m)).cast() };
        Ok(())
    })
}

/// drvFree: drops the [`Manager`] that drvNew made.
///
/// # Safety
/// `man` must be NULL or a `virLockManager` whose `privateData` is NULL
/// or was set by drvNew and not freed since.
unsafe extern "C" fn vmlease_drv_free(man: *mut virLockManager) {
    // Returns nothing: a failure (there is none but a panic) is only
    // reported.
    let _ = boundary("freeing a lock manager", || {
        if man.is_null() {
            return Ok(());
        }
        // SAFETY: man is non-NULL and libvirt's for the call.
        let pd = unsafe { (*man).privateData };
        if !pd.is_null() {
            // SAFETY: created by Box::into_raw in drvNew, freed only here.
            drop(unsafe { Box::from_raw(pd as *mut Manager) });
            // SAFETY: as above.
            unsafe { (*man).privateData = std::ptr::null_mut() };
        }
        Ok(())
    });
}

/// drvAddResource: adds one disk or lease to the manager.
///
/// # Safety
/// `man` as for drvFree; `name` must be NULL or NUL-terminated; `params`
/// as for drvNew. All are valid for the duration of the call.
unsafe extern "C" fn vmlease_drv_add_resource(
    man: *mut virLockManager,
    kind: c_uint,
    name: *const c_char,
    nparams: usize,
    params: *mut virLockManagerParam,
    flags: c_uint,
) -> c_int {
    boundary("adding a lock resource", || {
        // SAFETY: man comes from libvirt for this call.
        let m = unsafe { manager(man) }?;
        // SAFETY: libvirt passes NULL or a NUL-terminated name.
        let name = unsafe { opt_str(name, "resource name") }?
            .ok_or_else(|| Error::Invalid("NULL resource name".into()))?;
        // SAFETY: libvirt passes nparams valid params (or NULL and 0).
        let params = unsafe { read_params(nparams, params) }?;
        m.add_resource(config()?, kind, &name, &params, flags)
    })
}

/// drvAcquire: registers the QEMU process (REGISTER_ONLY, in the pre-exec
/// child) or acquires the leases (in libvirtd, on QEMU's pid).
///
/// # Safety
/// `man` as for drvFree; `state` must be NULL or NUL-terminated and valid
/// for the call. `_fd` is never read or written.
unsafe extern "C" fn vmlease_drv_acquire(
    man: *mut virLockManager,
    state: *const c_char,
    flags: c_uint,
    action: c_int,
    _fd: *mut c_int,
) -> c_int {
    let register_only = flags & plugin::ACQUIRE_REGISTER_ONLY != 0;
    // In the pre-exec child (the manager's pid is our own) an error goes to
    // stderr, never through libvirt, which may hold locks after fork.
    let to = |op: &str, e: &Error| {
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() } as u32;
        // SAFETY: man comes from libvirt for this call (NULL is an Err).
        let in_child = register_only
            && unsafe { manager(man) }
                .map(|m| m.pid == me)
                .unwrap_or(false);
        if in_child {
            report_child(e);
        } else {
            report(op, e);
        }
    };
    boundary_with("acquiring leases", to, || {
        if flags & !(plugin::ACQUIRE_REGISTER_ONLY | plugin::ACQUIRE_RESTRICT) != 0 {
            return Err(Error::Invalid(format!(
                "unsupported acquire flags 0x{flags:x}"
            )));
        }
        let on_failure = plugin::lock_failure::LockFailure::from_c(action)?;
        // SAFETY: man comes from libvirt for this call.
        let m = unsafe { manager(man) }?;
        let cfg = config()?;
        let started = crate::clock::boottime_ms();
        let res = on_failure.check(&m.name).and_then(|note| {
            if register_only {
                return plugin::register(cfg, m).map(|()| None);
            }
            if let Some(n) = note {
                warn!("{n}");
            }
            // SAFETY: libvirt passes NULL or a NUL-terminated state.
            let state = unsafe { opt_str(state, "lock state") }?;
            plugin::acquire_counting(cfg, m, state.as_deref()).map(Some)
        });
        // Counted in the state directory; never fails the call.
        let outcome = match &res {
            Ok(None) => None,
            Ok(Some(takeovers)) => Some(plugin::counters::Outcome::Acquired {
                ms: crate::clock::boottime_ms().saturating_sub(started),
                takeovers: *takeovers,
            }),
            Err(e) => Some(plugin::counters::Outcome::Refused(e)),
        };
        if let Some(o) = outcome {
            plugin::counters::record(&cfg.state_dir, o);
        }
        res.map(|_| ())
    })
}

/// drvRelease: releases the leases, handing back their state when asked.
///
/// # Safety
/// `man` as for drvFree; `state` must be NULL or point to a writable
/// `char *` slot, which is written only on success.
unsafe extern "C" fn vmlease_drv_release(
    man: *mut virLockManager,
    state: *mut *mut c_char,
    flags: c_uint,
) -> c_int {
    boundary("releasing leases", || {
        if flags != 0 {
            return Err(Error::Invalid(format!(
                "unsupported release flags 0x{flags:x}"
            )));
        }
        // SAFETY: man comes from libvirt for this call.
        let m = unsafe { manager(man) }?;
        let out = plugin::release(config()?, m, !state.is_null())?;
        if let Some(s) = out {
            let p = c_alloc(&s)?;
            // SAFETY: state is non-NULL (we only produce a state then)
            // and points to libvirt's char* slot; we assign, never free
            // the previous value.
            unsafe { *state = p };
        }
        Ok(())
    })
}

/// drvInquire: the state string of the leases held (for pause/migration).
///
/// # Safety
/// `man` as for drvFree; `state` must point to a writable `char *` slot
/// (NULL is refused), which is written only on success.
unsafe extern "C" fn vmlease_drv_inquire(
    man: *mut virLockManager,
    state: *mut *mut c_char,
    flags: c_uint,
) -> c_int {
    boundary("inquiring leases", || {
        if flags != 0 {
            return Err(Error::Invalid(format!(
                "unsupported inquire flags 0x{flags:x}"
            )));
        }
        if state.is_null() {
            return Err(Error::Invalid("NULL state pointer for inquire".into()));
        }
        // SAFETY: man comes from libvirt for this call.
        let m = unsafe { manager(man) }?;
        let s = plugin::inquire(config()?, m)?;
        let p = c_alloc(&s)?;
        // SAFETY: state is non-NULL and points to libvirt's char* slot.
        unsafe { *state = p };
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    fn layouts_match_lock_driver_h() {
        assert_eq!(size_of::<virLockDriver>(), 72);
        assert_eq!(align_of::<virLockDriver>(), 8);
        assert_eq!(offset_of!(virLockDriver, drvInit), 8);
        assert_eq!(offset_of!(virLockDriver, drvInquire), 64);
        assert_eq!(size_of::<virLockManager>(), 16);
        assert_eq!(size_of::<virLockManagerParam>(), 32);
        assert_eq!(offset_of!(virLockManagerParam, key), 8);
        assert_eq!(offset_of!(virLockManagerParam, value), 16);
        assert_eq!(size_of::<virLockManagerParamValue>(), 16);
    }

    #[test]
    fn null_and_garbage_arguments_fail_cleanly() {
        // SAFETY: exercising the callbacks with NULL pointers is exactly
        // what they must survive.
        unsafe {
            assert_eq!(
                vmlease_drv_new(std::ptr::null_mut(), 0, 0, std::ptr::null_mut(), 0),
                -1
            );
            vmlease_drv_free(std::ptr::null_mut());
            assert_eq!(
                vmlease_drv_add_resource(
                    std::ptr::null_mut(),
                    0,
                    std::ptr::null(),
                    0,
                    std::ptr::null_mut(),
                    0
                ),
                -1
            );
            assert_eq!(
                vmlease_drv_acquire(
                    std::ptr::null_mut(),
                    std::ptr::null(),
                    0,
                    0,
                    std::ptr::null_mut()
                ),
                -1
            );
            assert_eq!(
                vmlease_drv_release(std::ptr::null_mut(), std::ptr::null_mut(), 0),
                -1
            );
            assert_eq!(
                vmlease_drv_inquire(std::ptr::null_mut(), std::ptr::null_mut(), 0),
                -1
            );
            let mut m = virLockManager {
                driver: &virLockDriverImpl,
                privateData: std::ptr::null_mut(),
            };
            assert_eq!(vmlease_drv_new(&mut m, 0, 3, std::ptr::null_mut(), 0), -1);
            assert!(m.privateData.is_null(), "no out-param written on failure");
        }
    }

    #[test]
    fn boundary_turns_errors_and_panics_into_reported_failure() {
        let seen = std::cell::RefCell::new(Vec::new());
        let to = |op: &str, e: &Error| seen.borrow_mut().push(format!("{op}: {e}"));
        assert_eq!(boundary_with("testing", to, || Ok(())), 0);
        assert_eq!(
            boundary_with("testing", to, || Err(Error::Invalid("bad".into()))),
            -1
        );
        assert_eq!(boundary_with("testing", to, || panic!("boom")), -1);
        assert_eq!(
            boundary_with("testing", to, || -> Result<(), Error> {
                std::panic::panic_any(7u8)
            }),
            -1
        );
        assert_eq!(
            *seen.borrow(),
            [
                "testing: invalid argument: bad",
                "testing: internal error: panic: boom",
                "testing: internal error: panic: unknown panic",
            ]
        );
        // A reporter that panics does not unwind either.
        let bad = |_: &str, _: &Error| panic!("reporter");
        assert_eq!(boundary_with("testing", bad, || panic!("boom")), -1);
    }
}
