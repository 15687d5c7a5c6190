//! vmlease-watchdog under systemd's service watchdog (`WatchdogSec=`),
//! with a stand-in for systemd: a datagram socket bound at
//! `NOTIFY_SOCKET` that records what the daemon says, and `WATCHDOG_USEC`
//! in its environment as systemd sets it. The keep-alives must come from
//! the main loop: a loop hung in a real kernel wait (its state_dir on an
//! ext4 that is frozen, so the status write blocks in D state) must stop
//! them, while the daemon's other threads run on.
//!
//! Heavy (daemons, a loop mount): run under the shared lock.

mod support;

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::daemons::{lease, lockspace, serial, standin_qemu, wait_until, Host, Scratch, W};
use support::frozen::Frozen;
use vmlease::clock::boottime_ms;

/// systemd's WatchdogSec for these tests: W / 2, the largest the daemon
/// accepts without a warning.
const SD_TIMEOUT_MS: u64 = W / 2;

/// The stand-in for systemd's notification socket: every datagram with
/// the boottime it arrived.
struct Notify {
    path: std::path::PathBuf,
    said: Arc<Mutex<Vec<(u64, String)>>>,
}

impl Notify {
    fn new(dir: &Path) -> Notify {
        let path = dir.join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        let said = Arc::new(Mutex::new(Vec::new()));
        let s = said.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                s.lock().unwrap().push((boottime_ms(), msg));
            }
        });
        Notify { path, said }
    }

    fn env(&self) -> [String; 2] {
        [
            format!("NOTIFY_SOCKET={}", self.path.display()),
            format!("WATCHDOG_USEC={}", SD_TIMEOUT_MS * 1000),
        ]
    }

    /// Arrival times of the WATCHDOG=1 keep-alives at or after `from`.
    fn keepalives(&self, from: u64) -> Vec<u64> {
        self.said
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, m)| *at >= from && m.lines().any(|l| l == "WATCHDOG=1"))
            .map(|(at, _)| *at)
            .collect()
    }

    fn messages(&self) -> Vec<String> {
        self.said
            .lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }
}

fn max_gap(times: &[u64], end: u64) -> u64 {
    let mut gap = 0;
    for w in times.windows(2) {
        gap = gap.max(w[1] - w[0]);
    }
    if let Some(last) = times.last() {
        gap = gap.max(end.saturating_sub(*last));
    }
    gap
}

/// The state letter of thread `tid` of process `pid` (R, S, D, ...).
fn thread_state(pid: u32, tid: u32) -> String {
    let stat = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap_or_default();
    stat.rsplit(") ")
        .next()
        .and_then(|r| r.split(' ').next())
        .unwrap_or("?")
        .to_string()
}

fn spawn_with(a: &mut Host, n: &Notify) {
    let env = n.env();
    a.start(&["env", &env[0], &env[1]]);
}

#[test]
fn a_hung_main_loop_stops_the_systemd_keepalives() {
    let _g = serial();
    let s = Scratch::new("sdwd-hung");
    let ls = lockspace(&s);
    let mut a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    // Declared after the host: dropped (thawed) first, so that a failure
    // while frozen does not leave the daemon's reap waiting on D state.
    let mut fz = Frozen::new(&s);
    // The daemon's state_dir on the freezable filesystem.
    let run = fz.mnt.join("run");
    let text = fs::read_to_string(&a.conf).unwrap().replace(
        &format!("state_dir = \"{}\"", a.cfg.state_dir.display()),
        &format!("state_dir = \"{}\"", run.display()),
    );
    fs::write(&a.conf, text).unwrap();
    a.cfg = vmlease::config::load(&a.conf).unwrap();
    assert_eq!(a.cfg.state_dir, run);
    let n = Notify::new(&s.0);
    spawn_with(&mut a, &n);
    let pid = a.daemon.as_ref().unwrap().pid();

    // Healthy: a keep-alive well within every WatchdogSec.
    let t0 = boottime_ms();
    std::thread::sleep(Duration::from_millis(4 * SD_TIMEOUT_MS));
    let t1 = boottime_ms();
    let healthy = n.keepalives(t0);
    let gap = max_gap(&healthy, t1);
    eprintln!(
        "healthy: {} keep-alives in {} ms, largest gap {gap} ms (WatchdogSec {SD_TIMEOUT_MS} ms)",
        healthy.len(),
        t1 - t0
    );
    assert!(
        gap < SD_TIMEOUT_MS,
        "a gap of {gap} ms between keep-alives, WatchdogSec is {SD_TIMEOUT_MS} ms: {healthy:?}\nsaid: {:?}\nlog: {}",
        n.messages(),
        a.log_text()
    );
    assert!(
        n.messages().iter().any(|m| m.contains("READY=1")),
        "{:?}",
        n.messages()
    );

    // The main loop hangs in its status write on the frozen filesystem.
    fz.freeze();
    let frozen_at = boottime_ms();
    wait_until(
        "the daemon's main thread to block (D state)",
        5000,
        || match thread_state(pid, pid).as_str() {
            "D" => Ok(()),
            s => Err(format!("main thread state {s}")),
        },
    );
    // No keep-alive for longer than WatchdogSec: systemd would kill it.
    let quiet_from = wait_until(
        "the keep-alives to stop for longer than WatchdogSec",
        5000,
        || {
            let k = n.keepalives(frozen_at);
            let last = k.last().copied().unwrap_or(frozen_at);
            let now = boottime_ms();
            if now - last > 3 * SD_TIMEOUT_MS {
                Ok(last)
            } else {
                Err(format!("last keep-alive {} ms ago", now - last))
            }
        },
    );
    // Only the loop is hung: the process lives, other threads run.
    assert!(!a.daemon.as_mut().unwrap().exited(), "{}", a.log_text());
    let threads = fs::read_dir(format!("/proc/{pid}/task")).unwrap().count();
    eprintln!(
        "frozen: last keep-alive {} ms after the freeze, none for {} ms since; main thread D, {threads} threads",
        quiet_from.saturating_sub(frozen_at),
        boottime_ms() - quiet_from
    );
    assert!(threads > 1, "{threads} threads");

    // Thawed: the loop goes on and so do the keep-alives.
    fz.thaw();
    let thawed = boottime_ms();
    let back = wait_until("the keep-alives to resume", 5000, || {
        n.keepalives(thawed)
            .first()
            .copied()
            .ok_or_else(|| "none yet".to_string())
    });
    eprintln!("thawed: keep-alive {} ms after the thaw", back - thawed);
    a.stop();
}

#[test]
fn a_stop_with_a_leased_vm_is_loud() {
    let _g = serial();
    let s = Scratch::new("sdwd-stop");
    let ls = lockspace(&s);
    let mut a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    let n = Notify::new(&s.0);
    spawn_with(&mut a, &n);
    let q = standin_qemu();
    lease(&a, [0x33; 16], "web", &q, None).unwrap();
    let d = a.daemon.as_mut().unwrap();
    d.signal(libc::SIGTERM);
    let code = wait_until("the daemon to stop", 5000, || match d.child.try_wait() {
        Ok(Some(st)) => Ok(st.code()),
        _ => Err("running".into()),
    });
    let log = a.log_text();
    // 6: stopped with leased VMs; systemd shows the unit failed, and a
    // SIGTERM that did not come from systemctl restarts it.
    assert_eq!(code, Some(6), "{log}");
    assert!(
        log.contains("error: stopping with 1 leased QEMU process(es) running"),
        "{log}"
    );
    let said = n.messages();
    assert!(
        said.iter().any(|m| m.contains("STOPPING=1")
            && m.contains("STATUS=STOPPED WITH 1 LEASED VM(S) RUNNING")),
        "{said:?}"
    );
}

#[test]
fn a_clean_stop_with_nothing_leased_exits_0() {
    let _g = serial();
    let s = Scratch::new("sdwd-clean");
    let ls = lockspace(&s);
    let mut a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    let n = Notify::new(&s.0);
    spawn_with(&mut a, &n);
    let d = a.daemon.as_mut().unwrap();
    d.signal(libc::SIGTERM);
    let code = wait_until("the daemon to stop", 5000, || match d.child.try_wait() {
        Ok(Some(st)) => Ok(st.code()),
        _ => Err("running".into()),
    });
    assert_eq!(code, Some(0), "{}", a.log_text());
}

#[test]
fn a_watchdog_sec_not_well_below_watchdog_timeout_is_warned_about() {
    let _g = serial();
    let s = Scratch::new("sdwd-warn");
    let ls = lockspace(&s);
    let mut a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    let sock = s.0.join("notify");
    let _bound = UnixDatagram::bind(&sock).unwrap();
    a.start(&[
        "env",
        &format!("NOTIFY_SOCKET={}", sock.display()),
        &format!("WATCHDOG_USEC={}", W * 1000),
    ]);
    a.wait_log("is not well below watchdog_timeout");
    a.stop();
}
