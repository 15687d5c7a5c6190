//! The hardware watchdog, owned by the daemon: petted only while it is safe
//! (see the fence module), magic-closed only on a clean stop with no leases.
//!
//! Three kinds: a real device (`/dev/watchdog`, timeout set with the WDIOC
//! ioctls), a FIFO stand-in for tests (a reader outside records the pets
//! and "fires"; never a regular file), or none (`unsafe_no_watchdog`).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

const WDIOC_KEEPALIVE: libc::c_ulong = 0x8004_5705;
const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;

pub trait Watchdog: Send {
    fn pet(&mut self) -> io::Result<()>;
    /// Disarms on a clean stop (magic close). Not called while leases run.
    fn disarm(&mut self) -> io::Result<()>;
    fn describe(&self) -> String;
    /// False only for a [`Deferred`] device not opened yet.
    fn is_open(&self) -> bool {
        true
    }
}

pub struct Device {
    file: Option<File>,
    path: String,
    stand_in: bool,
}

/// Opens the watchdog at `path` and sets its timeout to `timeout_ms`.
pub fn open(path: &Path, timeout_ms: u64) -> io::Result<Box<dyn Watchdog>> {
    let meta = std::fs::metadata(path)?;
    let ft = meta.file_type();
    if ft.is_fifo() {
        // Test stand-in: fails with ENXIO when nobody listens. Like a
        // device, opening it arms and pings it: the listener sees an 'o'.
        let mut file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        file.write_all(b"o")?;
        return Ok(Box::new(Device {
            file: Some(file),
            path: path.display().to_string(),
            stand_in: true,
        }));
    }
    if !ft.is_char_device() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a watchdog device", path.display()),
        ));
    }
    if !timeout_ms.is_multiple_of(1000) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "watchdog_timeout must be whole seconds for a hardware watchdog",
        ));
    }
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    let mut secs: libc::c_int = (timeout_ms / 1000) as libc::c_int;
    let want = secs;
    // SAFETY: the fd is open; WDIOC_SETTIMEOUT reads and writes one int.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), WDIOC_SETTIMEOUT, &mut secs) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if secs > want {
        // The device rounded the timeout up: that would break the safety
        // inequality.
        let mut f = file;
        let _ = f.write_all(b"V");
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the watchdog device only supports a timeout of {secs} s, more than watchdog_timeout ({want} s)"),
        ));
    }
    Ok(Box::new(Device {
        file: Some(file),
        path: path.display().to_string(),
        stand_in: false,
    }))
}

impl Watchdog for Device {
    fn pet(&mut self) -> io::Result<()> {
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("watchdog already closed"))?;
        if self.stand_in {
            return f.write_all(b".");
        }
        let mut dummy: libc::c_int = 0;
        // SAFETY: the fd is open; WDIOC_KEEPALIVE ignores/writes one int.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), WDIOC_KEEPALIVE, &mut dummy) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn disarm(&mut self) -> io::Result<()> {
        if let Some(mut f) = self.file.take() {
            f.write_all(b"V")?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        if self.stand_in {
            format!("{} (test stand-in)", self.path)
        } else {
            self.path.clone()
        }
    }
}

/// A device opened at its first pet. Opening a watchdog pings it (and
/// WDIOC_SETTIMEOUT does too): a daemon restarted during a fence must not
/// extend the watchdog its predecessor left running before the fence lets
/// it pet. The path is checked at once, so a wrong path still fails at
/// start.
pub struct Deferred {
    path: std::path::PathBuf,
    timeout_ms: u64,
    dev: Option<Box<dyn Watchdog>>,
}

impl Deferred {
    pub fn new(path: &Path, timeout_ms: u64) -> io::Result<Deferred> {
        let ft = std::fs::metadata(path)?.file_type();
        if !ft.is_fifo() && !ft.is_char_device() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a watchdog device", path.display()),
            ));
        }
        Ok(Deferred {
            path: path.to_path_buf(),
            timeout_ms,
            dev: None,
        })
    }
}

impl Watchdog for Deferred {
    fn pet(&mut self) -> io::Result<()> {
        if self.dev.is_none() {
            self.dev = Some(open(&self.path, self.timeout_ms)?);
        }
        self.dev.as_mut().map_or(Ok(()), |d| d.pet())
    }

    fn disarm(&mut self) -> io::Result<()> {
        self.dev.as_mut().map_or(Ok(()), |d| d.disarm())
    }

    fn describe(&self) -> String {
        match &self.dev {
            Some(d) => d.describe(),
            None => format!("{} (not opened yet)", self.path.display()),
        }
    }

    fn is_open(&self) -> bool {
        self.dev.is_some()
    }
}

/// `unsafe_no_watchdog = true`: nothing resets a hung host.
pub struct NoWatchdog;

impl Watchdog for NoWatchdog {
    fn pet(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn disarm(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn describe(&self) -> String {
        "none (unsafe_no_watchdog = true: UNSAFE, tests and demos only)".into()
    }
}
