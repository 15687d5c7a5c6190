//! Every system call vmlease makes outside the C ABI boundary with
//! libvirtd (`crate::ffi`) and librados's dlopen'ed functions
//! (`crate::rados::sys`), in one place: the rest of the crate is
//! `#![forbid(unsafe_code)]` and calls these safe functions.
//!
//! Through `nix` where it wraps the call (OFD locks, statfs, poll,
//! signals, mlockall, clock_gettime, the ICMP socket, the sock_diag netlink socket, the watchdog's ioctl
//! numbers); through `libc` where it does not (pidfd_open,
//! pidfd_send_signal, sched_setscheduler, getxattr). Each `unsafe` block
//! here says why it holds.
#![deny(unsafe_code)]

pub mod clock;
pub mod icmp_socket;
pub mod ofd_lock;
pub mod pidfd;
pub mod poll;
pub mod sched;
pub mod signal;
pub mod statfs;
pub mod tcp_diag;
pub mod watchdog;
pub mod xattr;

use std::io;

/// nix's errno as the `io::Error` the callers report.
fn io_err(e: nix::errno::Errno) -> io::Error {
    io::Error::from(e)
}
