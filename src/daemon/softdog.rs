//! Is the watchdog device one that never resets the host? The kernel's
//! softdog loaded with `soft_noboot=1` only logs "Triggered - Reboot
//! ignored" when it fires: a host whose daemon hangs is never reset, and
//! the peers that take its leases over after D would run its VMs twice.
//!
//! The device is identified through sysfs (`/sys/class/watchdog/*/dev`,
//! whose `identity` is "Software Watchdog" for softdog). softdog declares
//! `soft_noboot` with permission 0, so mainline kernels do not show it
//! under `/sys/module/softdog/parameters/`; it is read there when present,
//! else from where it can be set: the kernel command line
//! (`softdog.soft_noboot=1`) and modprobe's `options softdog` lines.
#![forbid(unsafe_code)]

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

const SOFTDOG_IDENTITY: &str = "Software Watchdog";
/// The legacy `/dev/watchdog` (misc 10:130) is the first watchdog device.
const LEGACY: (u64, u64) = (10, 130);

/// `Err` (why) when `device` is a watchdog that never resets the host.
/// `root` is `/` except in tests.
pub fn check(root: &Path, device: &Path) -> Result<(), String> {
    let Ok(meta) = fs::metadata(device) else {
        return Ok(()); // opening it reports the error
    };
    if !meta.file_type().is_char_device() {
        return Ok(()); // the FIFO stand-in of the tests
    }
    let rdev = meta.rdev();
    let dev = (libc::major(rdev) as u64, libc::minor(rdev) as u64);
    let Some(class) = class_dir(root, dev) else {
        return Ok(()); // not a registered watchdog: opening it fails
    };
    let identity = fs::read_to_string(class.join("identity")).unwrap_or_default();
    if identity.trim() != SOFTDOG_IDENTITY {
        return Ok(());
    }
    match soft_noboot(root) {
        Some((v, from)) if v != 0 => Err(format!(
            "{} is softdog with soft_noboot={v} (from {from}): it never resets the host, so a \
             hung daemon would go unnoticed while other hosts take over its VMs; load softdog \
             without soft_noboot, use a hardware watchdog, or (tests and demos only) \
             reset_action = \"record\"",
            device.display()
        )),
        _ => Ok(()),
    }
}

/// `/sys/class/watchdog/watchdogN` for a device number.
fn class_dir(root: &Path, dev: (u64, u64)) -> Option<PathBuf> {
    let base = root.join("sys/class/watchdog");
    if dev == LEGACY {
        let p = base.join("watchdog0");
        return p.exists().then_some(p);
    }
    let want = format!("{}:{}", dev.0, dev.1);
    fs::read_dir(&base)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            fs::read_to_string(p.join("dev"))
                .map(|d| d.trim() == want)
                .unwrap_or(false)
        })
}

fn parse_value(v: &str) -> Option<i64> {
    match v.trim() {
        "Y" | "y" => Some(1),
        "N" | "n" => Some(0),
        v => v.parse().ok(),
    }
}

/// softdog's soft_noboot and where it was read; `None`: not set anywhere
/// (the default, 0).
fn soft_noboot(root: &Path) -> Option<(i64, String)> {
    let sysfs = root.join("sys/module/softdog/parameters/soft_noboot");
    if let Some(v) = fs::read_to_string(&sysfs)
        .ok()
        .and_then(|t| parse_value(&t))
    {
        return Some((v, "/sys/module/softdog/parameters/soft_noboot".into()));
    }
    let cmdline = fs::read_to_string(root.join("proc/cmdline")).unwrap_or_default();
    let from_cmdline = cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("softdog.soft_noboot="))
        .filter_map(parse_value)
        .next_back();
    if let Some(v) = from_cmdline {
        return Some((v, "/proc/cmdline".into()));
    }
    // modprobe reads these directories; a later file and a later line win.
    let mut found = None;
    for dir in [
        "lib/modprobe.d",
        "usr/lib/modprobe.d",
        "run/modprobe.d",
        "etc/modprobe.d",
    ] {
        let Ok(rd) = fs::read_dir(root.join(dir)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "conf"))
            .collect();
        files.sort();
        for f in files {
            for line in fs::read_to_string(&f).unwrap_or_default().lines() {
                let mut w = line.split_whitespace();
                if w.next() != Some("options") || w.next() != Some("softdog") {
                    continue;
                }
                for opt in w {
                    if let Some(v) = opt.strip_prefix("soft_noboot=").and_then(parse_value) {
                        found = Some((v, format!("/{dir}/{}", f.file_name()?.to_string_lossy())));
                    }
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::PathBuf;

    /// A fake root whose watchdog1 is /dev/null's device number (1:3),
    /// so that /dev/null stands for the device.
    struct Root(PathBuf);

    impl Root {
        fn new(identity: &str) -> Root {
            let dir = std::env::temp_dir()
                .join(format!("vmlease-softdog-{}", crate::process::random_u64()));
            let wd = dir.join("sys/class/watchdog/watchdog1");
            fs::create_dir_all(&wd).unwrap();
            fs::write(wd.join("dev"), "1:3\n").unwrap();
            fs::write(wd.join("identity"), format!("{identity}\n")).unwrap();
            fs::create_dir_all(dir.join("proc")).unwrap();
            fs::write(dir.join("proc/cmdline"), "quiet\n").unwrap();
            Root(dir)
        }

        fn put(&self, rel: &str, text: &str) {
            let p = self.0.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }

        fn check(&self) -> Result<(), String> {
            check(&self.0, Path::new("/dev/null"))
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn softdog_with_soft_noboot_in_sysfs_is_refused() {
        let r = Root::new("Software Watchdog");
        r.put("sys/module/softdog/parameters/soft_noboot", "1\n");
        let e = r.check().unwrap_err();
        assert!(e.contains("soft_noboot=1"), "{e}");
        assert!(e.contains("never resets"), "{e}");
        r.put("sys/module/softdog/parameters/soft_noboot", "0\n");
        assert_eq!(r.check(), Ok(()));
    }

    #[test]
    fn softdog_with_soft_noboot_on_the_command_line_is_refused() {
        let r = Root::new("Software Watchdog");
        r.put("proc/cmdline", "quiet softdog.soft_noboot=1 panic=1\n");
        let e = r.check().unwrap_err();
        assert!(e.contains("/proc/cmdline"), "{e}");
    }

    #[test]
    fn softdog_with_soft_noboot_in_modprobe_options_is_refused() {
        let r = Root::new("Software Watchdog");
        r.put(
            "etc/modprobe.d/softdog.conf",
            "# test\noptions softdog soft_margin=10 soft_noboot=1\n",
        );
        let e = r.check().unwrap_err();
        assert!(e.contains("softdog.conf"), "{e}");
    }

    #[test]
    fn a_resetting_softdog_and_other_devices_are_accepted() {
        let r = Root::new("Software Watchdog");
        assert_eq!(r.check(), Ok(()));
        let r = Root::new("iTCO_wdt");
        r.put("sys/module/softdog/parameters/soft_noboot", "1\n");
        assert_eq!(r.check(), Ok(()));
    }
}
