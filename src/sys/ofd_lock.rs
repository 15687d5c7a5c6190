//! Open-file-description locks (F_OFD_SETLK): per open file, not per
//! process, and honoured across CephFS clients.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};

fn whole_file() -> libc::flock {
    libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0, // to the end, however long the file grows
        l_pid: 0, // must be 0 for OFD locks
    }
}

/// Takes an exclusive lock on the whole file, waiting.
pub fn lock_wait(file: &File) -> io::Result<()> {
    let fl = whole_file();
    loop {
        match fcntl(file, FcntlArg::F_OFD_SETLKW(&fl)) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(super::io_err(e)),
        }
    }
}

/// Tries to take an exclusive lock on the whole file without waiting.
/// Ok(false): another open file description holds it.
pub fn try_lock(file: &File) -> io::Result<bool> {
    match fcntl(file, FcntlArg::F_OFD_SETLK(&whole_file())) {
        Ok(_) => Ok(true),
        Err(Errno::EAGAIN) | Err(Errno::EACCES) => Ok(false),
        Err(e) => Err(super::io_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_file_cannot_take_the_lock_until_the_first_closes() {
        let path = std::env::temp_dir().join(format!("vmlease-ofd-{}", std::process::id()));
        let a = File::create(&path).unwrap();
        let b = File::options().write(true).open(&path).unwrap();
        assert!(try_lock(&a).unwrap(), "the first lock is free");
        assert!(!try_lock(&b).unwrap(), "a second open file is refused");
        drop(a);
        assert!(try_lock(&b).unwrap(), "free again once the holder closed");
        let c = File::options().write(true).open(&path).unwrap();
        assert!(!try_lock(&c).unwrap());
        drop(b);
        lock_wait(&c).unwrap();
        let _ = std::fs::remove_file(&path);
    }
}
