//! poll(2) for readability: pidfds (a process exited) and sockets.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::BorrowedFd;

use nix::poll::{PollFd, PollFlags, PollTimeout};

/// Waits up to `timeout_ms` for any of `fds` to turn readable; which ones
/// did (all false on a timeout). EINTR is returned as `Interrupted`.
pub fn readable(fds: &[BorrowedFd<'_>], timeout_ms: u64) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    let timeout = PollTimeout::try_from(timeout_ms).unwrap_or(PollTimeout::MAX);
    let n = nix::poll::poll(&mut pfds, timeout).map_err(super::io_err)?;
    if n == 0 {
        return Ok(vec![false; fds.len()]);
    }
    Ok(pfds
        .iter()
        .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn reports_which_fd_turned_readable() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let (_c, d) = UnixStream::pair().unwrap();
        assert_eq!(
            readable(&[b.as_fd(), d.as_fd()], 0).unwrap(),
            [false, false]
        );
        a.write_all(b"x").unwrap();
        assert_eq!(
            readable(&[b.as_fd(), d.as_fd()], 1000).unwrap(),
            [true, false]
        );
    }
}
