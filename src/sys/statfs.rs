//! The filesystem type of a path, to tell local filesystems from shared
//! ones.
#![forbid(unsafe_code)]

use std::io;
use std::path::Path;

/// statfs(2)'s f_type of the filesystem holding `path`.
pub fn fs_type(path: &Path) -> io::Result<i64> {
    let st = nix::sys::statfs::statfs(path).map_err(super::io_err)?;
    #[allow(clippy::unnecessary_cast)] // f_type's C type differs by arch
    Ok(st.filesystem_type().0 as i64)
}
