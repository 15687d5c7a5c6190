//! The hardware watchdog, owned by the daemon: petted only while it is safe
//! (see the fence module), magic-closed only on a clean stop with no leases.
//!
//! Three kinds: a real device (`/dev/watchdog`, timeout set with the WDIOC
//! ioctls), a FIFO stand-in for tests (a reader outside records the pets
//! and "fires"; never a regular file), or none (`unsafe_no_watchdog`).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

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
    let want = device_secs(timeout_ms)?;
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    let set = crate::sys::watchdog::set_timeout(&file, want);
    // Refused (any way): the device is left as it is, armed, never
    // magic-closed - a watchdog this daemon could not take over may be
    // one its predecessor left running over leased VMs.
    check_set(want, set)?;
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
        crate::sys::watchdog::keepalive(f)
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

/// The one rule for a hardware watchdog's timeout: `watchdog_timeout` in
/// whole seconds (WDIOC_SETTIMEOUT takes seconds), checked before the
/// device is opened, both at a start and for a deferred open.
pub fn device_secs(timeout_ms: u64) -> io::Result<libc::c_int> {
    if timeout_ms == 0 || !timeout_ms.is_multiple_of(1000) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "watchdog_timeout must be whole seconds for a hardware watchdog, got {}",
                crate::config::secs(timeout_ms)
            ),
        ));
    }
    libc::c_int::try_from(timeout_ms / 1000).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "watchdog_timeout is too large for a hardware watchdog",
        )
    })
}

/// ...and the device must then run with exactly that timeout. Drivers
/// differ: some refuse a timeout out of their range (EINVAL, e.g.
/// i6300esb above 2046 s), others round or clamp it (the ioctl returns
/// the timeout it set). Either way the daemon does not start: rounded up,
/// a hung host would be reset later than the safety inequality assumes;
/// rounded down or refused, the configured W is not what runs, and
/// `vmlease status`, the liveness record and the metrics would say
/// otherwise.
pub fn check_set(want: libc::c_int, set: io::Result<libc::c_int>) -> io::Result<()> {
    match set {
        Ok(got) if got == want => Ok(()),
        Ok(got) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the watchdog device set a timeout of {got} s instead of watchdog_timeout ({want} s): \
                 it must run with exactly watchdog_timeout; set one the driver supports"
            ),
        )),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the watchdog device refuses a timeout of {want} s (EINVAL: outside the driver's range); \
                 set a watchdog_timeout the driver supports"
            ),
        )),
        Err(e) => Err(e),
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
        // The timeout rule is checked now, not at the first pet.
        if ft.is_char_device() {
            device_secs(timeout_ms)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_for_the_device_timeout() {
        assert_eq!(device_secs(3000).unwrap(), 3);
        for bad in [0, 1500, 2999] {
            let e = device_secs(bad).unwrap_err().to_string();
            assert!(e.contains("whole seconds"), "{bad}: {e}");
        }
        assert!(check_set(3, Ok(3)).is_ok());
        let up = check_set(3, Ok(4)).unwrap_err().to_string();
        assert!(
            up.contains("set a timeout of 4 s instead of watchdog_timeout (3 s)"),
            "{up}"
        );
        let down = check_set(3, Ok(2)).unwrap_err().to_string();
        assert!(down.contains("2 s instead of"), "{down}");
        let einval = check_set(2047, Err(io::Error::from_raw_os_error(libc::EINVAL)))
            .unwrap_err()
            .to_string();
        assert!(
            einval.contains("refuses a timeout of 2047 s (EINVAL"),
            "{einval}"
        );
        let other = check_set(3, Err(io::Error::from_raw_os_error(libc::ENOTTY))).unwrap_err();
        assert_eq!(other.raw_os_error(), Some(libc::ENOTTY));
    }

    #[test]
    fn a_deferred_open_checks_the_rule_at_start() {
        // /dev/null is a character device: the rule applies, before any
        // open.
        let e = Deferred::new(Path::new("/dev/null"), 1500)
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("whole seconds"), "{e}");
        assert!(Deferred::new(Path::new("/dev/null"), 2000).is_ok());
        let e = open(Path::new("/dev/null"), 1500)
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("whole seconds"), "{e}");
    }
}
