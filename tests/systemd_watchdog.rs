//! vmlease-watchdog under systemd's service watchdog (`WatchdogSec=`),
//! with a stand-in for systemd: a datagram socket bound at
//! `NOTIFY_SOCKET` that records what the daemon says, and `WATCHDOG_USEC`
//! in its environment as systemd sets it. The keep-alives must come from
//! the main loop: a hung loop (its thread stopped through ptrace; the
//! loop itself waits for no file system any more) must stop them, while
//! the daemon's other threads run on.
//!
//! Heavy (daemons): run under the shared lock.

mod support;

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::daemons::{lease, lockspace, serial, standin_qemu, wait_until, Host, Scratch, W};
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

/// Stops one thread of another process (a ptrace stop of that thread
/// only; the process's other threads run on), as a main loop that hangs
/// does. The daemon's main loop no longer waits for any file system (its
/// status is written by a thread of its own), so the test makes it hang
/// this way. Resumed (detached) on drop, also when the test fails.
struct ThreadStop(libc::pid_t);

impl ThreadStop {
    fn new(tid: u32) -> ThreadStop {
        let tid = tid as libc::pid_t;
        let null = std::ptr::null_mut::<libc::c_void>();
        // SAFETY: ptrace on a thread id with null address and data, as
        // PTRACE_SEIZE and PTRACE_INTERRUPT take them; waitpid with a
        // valid status pointer.
        unsafe {
            if libc::ptrace(libc::PTRACE_SEIZE, tid, null, null) != 0 {
                panic!("PTRACE_SEIZE {tid}: {}", std::io::Error::last_os_error());
            }
            let stop = ThreadStop(tid);
            if libc::ptrace(libc::PTRACE_INTERRUPT, tid, null, null) != 0 {
                panic!(
                    "PTRACE_INTERRUPT {tid}: {}",
                    std::io::Error::last_os_error()
                );
            }
            let mut status = 0;
            if libc::waitpid(tid, &mut status, libc::__WALL) != tid {
                panic!("waitpid {tid}: {}", std::io::Error::last_os_error());
            }
            stop
        }
    }
}

impl Drop for ThreadStop {
    fn drop(&mut self) {
        let null = std::ptr::null_mut::<libc::c_void>();
        // SAFETY: detaches the thread this test seized; resumes it.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.0, null, null) };
    }
}

#[test]
fn a_hung_main_loop_stops_the_systemd_keepalives() {
    let _g = serial();
    let s = Scratch::new("sdwd-hung");
    let ls = lockspace(&s);
    let mut a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
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

    // The main loop hangs; the other threads run on.
    let hang = ThreadStop::new(pid);
    let hung_at = boottime_ms();
    wait_until(
        "the daemon's main thread to stop (t: tracing stop)",
        5000,
        || match thread_state(pid, pid).as_str() {
            "t" => Ok(()),
            s => Err(format!("main thread state {s}")),
        },
    );
    // No keep-alive for longer than WatchdogSec: systemd would kill it.
    let quiet_from = wait_until(
        "the keep-alives to stop for longer than WatchdogSec",
        5000,
        || {
            let k = n.keepalives(hung_at);
            let last = k.last().copied().unwrap_or(hung_at);
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
    let running = fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| t.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&t| t != pid && thread_state(pid, t) != "t")
        .count();
    eprintln!(
        "hung: last keep-alive {} ms after the main thread stopped, none for {} ms since; {threads} threads, {running} of the others not stopped",
        quiet_from.saturating_sub(hung_at),
        boottime_ms() - quiet_from
    );
    assert!(
        threads > 1 && running == threads - 1,
        "{threads} threads, {running} others not stopped"
    );

    // Resumed: the loop goes on and so do the keep-alives.
    drop(hang);
    let resumed = boottime_ms();
    let back = wait_until("the keep-alives to resume", 5000, || {
        n.keepalives(resumed)
            .first()
            .copied()
            .ok_or_else(|| "none yet".to_string())
    });
    eprintln!(
        "resumed: keep-alive {} ms after the main thread",
        back - resumed
    );
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
