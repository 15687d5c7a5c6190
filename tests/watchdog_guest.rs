//! vmlease-watchdog on a real kernel watchdog driver: a small Linux guest
//! under QEMU (TCG) with QEMU's emulated Intel 6300ESB (`-device
//! i6300esb`), Debian's kernel and busybox taken from the package archive
//! (tests/watchdog-guest/build.sh), the daemon on `/dev/watchdog` with a
//! lockspace on the guest's tmpfs. The guest's /init
//! (tests/watchdog-guest/init) does one case per boot and reports on the
//! serial console; `-no-reboot` makes QEMU exit when the watchdog resets
//! the guest, so the reset is timed from here.
//!
//! Heavy (one QEMU at a time, each case a boot of ~2 s): run under the
//! shared lock. When the packages cannot be fetched the test fails.

mod support;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use support::daemons::{bin, manager, serial, wait_until, Scratch};
use vmlease::clock::boottime_ms;

/// The watchdog timeout W the guest's daemon sets (whole seconds: the
/// device counts in seconds).
const W_MS: u64 = 3000;
/// i6300esb accepts 1..=2046 s and refuses the rest (EINVAL) rather than
/// rounding: one past its maximum.
const OVERSIZE_S: u64 = 2047;
/// Where the fetched packages are kept between runs.
const CACHE: &str = "/var/cache/vmlease-test";

fn config(w_s: u64, d_s: u64) -> String {
    format!(
        "host_id = 1\nhost_name = \"guest.test\"\nlockspace_dir = \"/tmp/ls\"\n\
         allow_local_lockspace = true\nstate_dir = \"/run/vmlease\"\nrenew_interval = 0.5\nrenew_fail_timeout = 3\n\
         kill_timeout = 1\nwatchdog_timeout = {w_s}\nhost_dead_timeout = {d_s}\n\
         watchdog_device = \"/dev/watchdog\"\n"
    )
}

/// The kernel and initramfs, built once per test run.
struct Image {
    _dir: Scratch,
    kernel: PathBuf,
    initrd: PathBuf,
}

fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = Scratch::new("guest");
        let stage = dir.0.join("stage");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/watchdog-guest");
        fs::create_dir_all(stage.join("etc")).unwrap();
        fs::create_dir_all(stage.join("bin")).unwrap();
        fs::copy(src.join("init"), stage.join("init")).unwrap();
        fs::write(stage.join("etc/vmlease.conf"), config(W_MS / 1000, 8)).unwrap();
        fs::write(
            stage.join("etc/vmlease-oversize.conf"),
            config(OVERSIZE_S, OVERSIZE_S + 60),
        )
        .unwrap();
        for b in ["vmlease-watchdog", "vmlease"] {
            fs::copy(bin(b), stage.join("bin").join(b)).unwrap();
        }
        // This test binary leases a stand-in inside the guest through the
        // plugin's own code (guest_lease_helper below).
        fs::copy(std::env::current_exe().unwrap(), stage.join("bin/lease-helper")).unwrap();
        let out = dir.0.join("out");
        let run = Command::new("sh")
            .arg(src.join("build.sh"))
            .args([Path::new(CACHE), &stage, &out])
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "building the guest failed (are the Debian kernel and busybox-static packages reachable?): {}\n{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
        Image {
            kernel: out.join("vmlinuz"),
            initrd: out.join("initrd.gz"),
            _dir: dir,
        }
    })
}

/// One boot of the guest: QEMU tracked by pid and killed on drop; each
/// serial line with the host's boottime when it arrived.
struct Guest {
    qemu: Child,
    lines: Arc<Mutex<Vec<(u64, String)>>>,
    exited_ms: Option<u64>,
}

impl Guest {
    fn boot(case: &str) -> Guest {
        let img = image();
        let mut qemu = Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg",
                "-m",
                "512",
                "-nodefaults",
                "-display",
                "none",
            ])
            .args(["-serial", "stdio", "-monitor", "none", "-no-reboot"])
            .args(["-device", "i6300esb"])
            .arg("-kernel")
            .arg(&img.kernel)
            .arg("-initrd")
            .arg(&img.initrd)
            .args([
                "-append",
                &format!("console=ttyS0 quiet vmlease.case={case}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-system-x86_64 (scripts/setup-test-env.sh installs it)");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = qemu.stdout.take().unwrap();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).split(b'\n') {
                let Ok(line) = line else { break };
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                l.lock().unwrap().push((boottime_ms(), text));
            }
        });
        Guest {
            qemu,
            lines,
            exited_ms: None,
        }
    }

    fn log(&self) -> String {
        let l = self.lines.lock().unwrap();
        l.iter().map(|(_, t)| format!("{t}\n")).collect()
    }

    /// The first report `VMLEASE-GUEST <event> ...`: (host ms, guest
    /// uptime in ms, the rest of the line).
    fn event(&self, event: &str) -> Option<(u64, u64, String)> {
        let l = self.lines.lock().unwrap();
        l.iter()
            .find_map(|(at, t)| parse(t, event).map(|(up, rest)| (*at, up, rest)))
    }

    fn last_event(&self, event: &str) -> Option<(u64, u64, String)> {
        let l = self.lines.lock().unwrap();
        l.iter()
            .rev()
            .find_map(|(at, t)| parse(t, event).map(|(up, rest)| (*at, up, rest)))
    }

    fn wait_event(&mut self, event: &str, timeout_ms: u64) -> (u64, u64, String) {
        wait_until(
            &format!("the guest to report '{event}'"),
            timeout_ms,
            || {
                if let Some(e) = self.event(event) {
                    return Ok(e);
                }
                if self.event("end").is_some() {
                    panic!("the guest ended before '{event}':\n{}", self.log());
                }
                Err(format!("serial so far:\n{}", self.log()))
            },
        )
    }

    /// Waits for QEMU to exit (a reset with -no-reboot, or a poweroff);
    /// returns the host boottime when it was seen.
    fn wait_exit(&mut self, timeout_ms: u64) -> u64 {
        let q = &mut self.qemu;
        let lines = self.lines.clone();
        let at = wait_until(
            "QEMU to exit (guest reset or poweroff)",
            timeout_ms,
            || match q.try_wait() {
                Ok(Some(st)) => Ok((boottime_ms(), st)),
                _ => Err(format!(
                    "still running; serial so far:\n{}",
                    lines
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|(_, t)| format!("{t}\n"))
                        .collect::<String>()
                )),
            },
        );
        assert!(
            at.1.success(),
            "QEMU exited with {}; serial:\n{}",
            at.1,
            self.log()
        );
        self.exited_ms = Some(at.0);
        // The reader thread drains what was left in the pipe.
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            !self.log().contains("Kernel panic"),
            "the guest panicked:\n{}",
            self.log()
        );
        at.0
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if self.exited_ms.is_none() {
            let _ = self.qemu.kill();
        }
        let _ = self.qemu.wait();
    }
}

fn parse(line: &str, event: &str) -> Option<(u64, String)> {
    let rest = line.split("VMLEASE-GUEST ").nth(1)?;
    let mut it = rest.splitn(3, ' ');
    if it.next()? != event {
        return None;
    }
    let up: f64 = it.next()?.parse().ok()?;
    Some((
        (up * 1000.0).round() as u64,
        it.next().unwrap_or("").to_string(),
    ))
}

/// Boots, waits until the daemon protects the guest with the timeout set
/// on the device, and checks that.
fn protected_guest(case: &str) -> Guest {
    let mut g = Guest::boot(case);
    let (_, _, drv) = g.wait_event("driver", 60_000);
    eprintln!("{case}: driver {drv}");
    let (_, up, p) = g.wait_event("protected", 120_000);
    eprintln!("{case}: protected at guest uptime {up} ms: {p}");
    assert!(
        p.contains(&format!("timeout={} ", W_MS / 1000)) && p.contains("state=active"),
        "the device does not run with watchdog_timeout: {p}\n{}",
        g.log()
    );
    g
}

/// After `event`, the guest must be reset by the watchdog after about W:
/// QEMU exits with no "end" report. Returns (host ms from the event's
/// arrival to QEMU's exit, guest ms from the event to its last report).
fn expect_reset(g: &mut Guest, case: &str, event: &str) -> (u64, u64) {
    let (at, up, _) = g.wait_event(event, 10_000);
    let exit = g.wait_exit(W_MS + 20_000);
    let log = g.log();
    assert!(g.event("end").is_none(), "{case}: not a reset:\n{log}");
    let host = exit - at;
    let (_, last_up, _) = g.last_event("alive").expect("alive reports");
    let guest = last_up.saturating_sub(up);
    eprintln!(
        "{case}: reset {host} ms after '{event}' (host clock); last report {guest} ms after it (guest uptime)"
    );
    // The daemon petted at most R (0.5 s) before: the reset comes after
    // W - R at the earliest, and, on a loaded machine, late by scheduling.
    assert!(
        guest + 500 + 300 >= W_MS,
        "{case}: reset {guest} ms after '{event}', before W - R:\n{log}"
    );
    assert!(
        host <= W_MS + 3000,
        "{case}: reset {host} ms after '{event}', long after W:\n{log}"
    );
    (host, guest)
}

#[test]
fn sigkill_of_the_daemon_resets_the_guest_after_w() {
    let _g = serial();
    let mut g = protected_guest("kill");
    expect_reset(&mut g, "kill", "kill");
    assert!(
        g.log().contains("watchdog did not stop!"),
        "the kernel did not see an unexpected close:\n{}",
        g.log()
    );
}

#[test]
fn sigstop_of_the_daemon_resets_the_guest_after_w() {
    let _g = serial();
    let mut g = protected_guest("stop");
    expect_reset(&mut g, "stop", "stop");
}

#[test]
fn clean_stop_with_nothing_leased_disarms_the_watchdog() {
    let _g = serial();
    let mut g = protected_guest("clean");
    let (_, term_up, _) = g.wait_event("term", 10_000);
    let (_, _, code) = g.wait_event("daemon-exited", 10_000);
    assert_eq!(code, "0", "{}", g.log());
    g.wait_exit(30_000);
    let log = g.log();
    let (_, up, why) = g.event("end").unwrap_or_else(|| panic!("reset:\n{log}"));
    assert_eq!(why, "survived", "{log}");
    let after = up - term_up;
    eprintln!("clean: guest still up {after} ms after the clean stop (W = {W_MS} ms)");
    assert!(after >= W_MS + 3000, "{after} ms:\n{log}");
    assert!(!log.contains("watchdog did not stop!"), "{log}");
    assert!(log.contains("left the lockspace cleanly"), "{log}");
}

#[test]
fn clean_stop_with_a_leased_process_keeps_the_watchdog_armed() {
    let _g = serial();
    let mut g = protected_guest("leased");
    g.wait_event("leased", 30_000);
    let (_, _, code) = g.wait_event("daemon-exited", 10_000);
    // 6: stopped while leased VMs run (docs/daemon.md).
    assert_eq!(code, "6", "{}", g.log());
    assert!(
        g.log()
            .contains("stopping with 1 leased QEMU process(es) running"),
        "{}",
        g.log()
    );
    expect_reset(&mut g, "leased", "daemon-exited");
}

#[test]
fn a_timeout_the_driver_cannot_set_is_refused() {
    let _g = serial();
    let mut g = Guest::boot("oversize");
    let (_, _, drv) = g.wait_event("driver", 60_000);
    assert!(drv.contains("max_timeout=2046"), "{drv}");
    let (_, _, code) = g.wait_event("daemon-exited", 30_000);
    let log = g.log();
    // exit 4: the watchdog device problem (docs/daemon.md).
    assert_eq!(code, "4", "{log}");
    assert!(log.contains("open hardware watchdog"), "{log}");
    assert!(log.contains("refuses a timeout of 2047 s (EINVAL"), "{log}");
    assert!(g.event("protected").is_none(), "{log}");
    eprintln!("oversize: exit {code}\n{log}");
    g.wait_exit(30_000);
}

/// Runs inside the guest only (started by its /init): leases a stand-in
/// QEMU (`sleep`) through the plugin's register and acquire, as libvirt
/// would, and leaves it running.
#[test]
#[ignore = "runs inside the watchdog test guest"]
fn guest_lease_helper() {
    let conf = std::env::var("VMLEASE_GUEST_HELPER").expect("only inside the watchdog test guest");
    let cfg = vmlease::config::load(Path::new(&conf)).unwrap();
    let child = Command::new("/bin/sleep")
        .arg("100000")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let m = manager([0x5a; 16], "standin", child.id());
    vmlease::plugin::register(&cfg, &m).unwrap();
    vmlease::plugin::acquire(&cfg, &m, None).unwrap();
    println!("leased stand-in pid {}", child.id());
    // Left running: the daemon's stop must see it.
    std::mem::forget(child);
}
