//! The Linux watchdog device's ioctls (`linux/watchdog.h`). nix computes
//! the request numbers from the header's definitions; the calls are
//! unsafe because the kernel writes through the pointer.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

// #define WDIOC_KEEPALIVE   _IOR(WATCHDOG_IOCTL_BASE, 5, int)
nix::ioctl_read!(wdioc_keepalive, b'W', 5, libc::c_int);
// #define WDIOC_SETTIMEOUT  _IOWR(WATCHDOG_IOCTL_BASE, 6, int)
nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, libc::c_int);

/// WDIOC_SETTIMEOUT: asks for `secs`; the device may round it, and the
/// timeout it set is returned.
pub fn set_timeout(dev: &File, secs: libc::c_int) -> io::Result<libc::c_int> {
    let mut secs = secs;
    // SAFETY: the fd is open for the borrow; WDIOC_SETTIMEOUT reads and
    // writes one int, and `secs` is a valid, writable int.
    unsafe { wdioc_settimeout(dev.as_raw_fd(), &mut secs) }.map_err(super::io_err)?;
    Ok(secs)
}

/// WDIOC_KEEPALIVE: pets the device.
pub fn keepalive(dev: &File) -> io::Result<()> {
    let mut dummy: libc::c_int = 0;
    // SAFETY: the fd is open for the borrow; WDIOC_KEEPALIVE ignores (or
    // writes) one int, and `dummy` is a valid, writable int.
    unsafe { wdioc_keepalive(dev.as_raw_fd(), &mut dummy) }.map_err(super::io_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_numbers_are_the_kernels() {
        // The values of linux/watchdog.h on x86_64 and aarch64.
        assert_eq!(
            nix::request_code_read!(b'W', 5, std::mem::size_of::<libc::c_int>()) as u64,
            0x8004_5705
        );
        assert_eq!(
            nix::request_code_readwrite!(b'W', 6, std::mem::size_of::<libc::c_int>()) as u64,
            0xC004_5706
        );
    }
}
