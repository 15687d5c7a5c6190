//! Extended attributes (nix has no getxattr; libc does).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// One extended attribute of `path` as text (at most 1 KiB: ERANGE for
/// a longer one).
pub fn get(path: &Path, name: &str) -> io::Result<String> {
    let p = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let n = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains NUL"))?;
    let mut buf = vec![0u8; 1024];
    // SAFETY: NUL-terminated path and name; `buf` is writable for its
    // length, which is what the kernel is told.
    let rc = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(rc as usize);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
