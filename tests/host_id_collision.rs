//! Two machines with the same host id (issue 14, item 2): real daemons on
//! one lockspace, the second one a "cloned" machine with a boot id of its
//! own (a mount namespace where the kernel's boot id file shows another
//! one), and a third host that keeps trying to take the first host's
//! lease. Whatever happens, the third host must never take a lease whose
//! QEMU still runs (takeover rule 2 must not mistake the clone for a
//! reboot), the machine that loses the id must say so naming both, and
//! `vmlease hosts` on it must show the collision.
//!
//! Timings: see tests/support/daemons.rs (R 0.2 s, F 1.5 s, D 4 s,
//! io_timeout 0.5 s: the claim wait is 1.3 s).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::daemons::*;
use vmlease::clock::boottime_ms;
use vmlease::status::Status;

const NOWD: &str = "unsafe_no_watchdog = true\n";
const UUID_A: [u8; 16] = [0xa1; 16];

/// `vmlease ARGS` with `conf`: exit code and all output.
fn cli(conf: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin("vmlease"))
        .arg("--config")
        .arg(conf)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Does this host's daemon renew (judged from its own status file, so it
/// works for a daemon with another boot id too)?
fn renewing(h: &Host) -> bool {
    match Status::read(&h.cfg.state_dir) {
        Ok(Some(st)) => {
            let now = boottime_ms();
            st.last_renewal_ms > 0
                && now.saturating_sub(st.last_renewal_ms) < F / 2
                && st.state.is_running()
        }
        _ => false,
    }
}

fn describe(h: &mut Host) -> String {
    let code = h.exit_code();
    let st = Status::read(&h.cfg.state_dir).ok().flatten();
    format!(
        "[{}: exit {:?}, state {:?} ({}), renewing {}]",
        h.cfg.host_name.clone().unwrap_or_default(),
        code,
        st.as_ref().map(|s| s.state),
        st.as_ref().map(|s| s.reason.clone()).unwrap_or_default(),
        renewing(h)
    )
}

/// How one of the two ended: refused at start (exit 3), or fenced for the
/// collision; the text that says so.
fn lost(h: &mut Host) -> Option<String> {
    if h.exit_code().is_some() {
        return Some(h.log_text());
    }
    let st = Status::read(&h.cfg.state_dir).ok().flatten()?;
    (st.reason.contains("collision")).then(|| format!("{}\n{}", st.reason, h.log_text()))
}

/// The third host tries to take the first host's lease; `Err` when it got
/// it while that lease's QEMU still ran.
struct Taker {
    q: Proc,
    took_at: Option<u64>,
}

impl Taker {
    fn new() -> Taker {
        Taker {
            q: standin_qemu(),
            took_at: None,
        }
    }

    fn attempt(&mut self, c: &Host, victim: &mut Option<Proc>) -> Result<(), String> {
        if self.took_at.is_some() {
            return Ok(());
        }
        let Some(v) = victim.as_mut() else {
            return Ok(());
        };
        if lease(c, UUID_A, "web", &self.q, None).is_ok() {
            self.took_at = Some(boottime_ms());
            // Still running after the takeover: it ran during it. (One
            // that exited meanwhile - killed by its host's fence, which
            // then published fenced-clean - was legitimately taken.)
            if !v.exited() {
                return Err(format!(
                    "host {} took over host 1's lease while its QEMU (pid {}) still runs",
                    c.id,
                    v.pid()
                ));
            }
        }
        Ok(())
    }
}

/// The loser's refusal or fence names the collision and both machines,
/// and `vmlease hosts` with its config shows it.
fn check_loser(loser: &mut Host, winner_name: &str, text: &str) {
    let name = loser.cfg.host_name.clone().unwrap();
    assert!(
        text.contains("host id 1") && (text.contains("collision") || text.contains("in use")),
        "{name}: no message naming the host id collision:\n{text}"
    );
    let this = format!("this host ('{name}'");
    assert!(
        text.contains(&format!("host '{winner_name}'")) && text.contains(&this),
        "{name}: the message does not name both machines ('{winner_name}' and '{name}'):\n{text}"
    );
    let (code, out) = cli(&loser.conf, &["hosts"]);
    assert_eq!(code, 0, "{out}");
    let row = out
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .unwrap_or("");
    assert!(
        row.contains("COLLISION"),
        "vmlease hosts on {name} does not show the collision:\n{out}"
    );
    eprintln!("vmlease hosts on {name}:\n{out}");
}

#[test]
fn two_new_machines_with_one_host_id_started_together() {
    let _g = serial();
    let s = Scratch::new("collide-race");
    let ls = lockspace(&s);
    let mut a = Host::new(&s, 1, &ls, NOWD);
    let mut b = a.clone_of(&s, "clone", "host-1b.test");
    let mut c = Host::new(&s, 3, &ls, NOWD);
    c.start(&[]);
    let wrap = other_machine(&b.dir);
    let wrap: Vec<&str> = wrap.iter().map(String::as_str).collect();
    let t0 = boottime_ms();
    a.spawn(&[]);
    b.spawn(&wrap);
    let gap = boottime_ms() - t0;
    assert!(gap < 100, "the two daemons started {gap} ms apart");

    // Until one of them has lost, and 3 s after: the winner keeps the id,
    // the third host never takes a lease whose QEMU runs.
    let mut q: Option<Proc> = None;
    let mut taker = Taker::new();
    let mut settled_at = None;
    let deadline = t0 + 1300 + D + 3000;
    loop {
        if q.is_none() && vmlease::status::protected_status(&a.cfg).is_ok() {
            let p = standin_qemu();
            if lease(&a, UUID_A, "web", &p, None).is_ok() {
                q = Some(p);
            }
        }
        if let Err(e) = taker.attempt(&c, &mut q) {
            panic!(
                "{e}\n{} {}\nhost 1 log:\n{}\nclone log:\n{}",
                describe(&mut a),
                describe(&mut b),
                a.log_text(),
                b.log_text()
            );
        }
        if settled_at.is_none() && (lost(&mut a).is_some() || lost(&mut b).is_some()) {
            settled_at = Some(boottime_ms());
        }
        if settled_at.is_some_and(|t| boottime_ms() > t + 3000) {
            break;
        }
        assert!(
            boottime_ms() < deadline,
            "neither machine was refused or fenced for the host id collision within {} ms; {} {}",
            deadline - t0,
            describe(&mut a),
            describe(&mut b)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Exactly one keeps the id and renews; the other lost it.
    let (la, lb) = (lost(&mut a), lost(&mut b));
    match (la, lb) {
        (Some(text), None) => {
            assert!(renewing(&b), "{}", describe(&mut b));
            check_loser(&mut a, "host-1b.test", &text);
        }
        (None, Some(text)) => {
            assert!(renewing(&a), "{}", describe(&mut a));
            check_loser(&mut b, "host-1.test", &text);
        }
        (Some(ta), Some(tb)) => {
            check_loser(&mut a, "host-1b.test", &ta);
            check_loser(&mut b, "host-1.test", &tb);
        }
        (None, None) => unreachable!(),
    }
    eprintln!(
        "race: {} {}; third host took the lease: {:?}",
        describe(&mut a),
        describe(&mut b),
        taker.took_at
    );
}

/// Host 1 runs a leased QEMU; its daemon is stopped (SIGSTOP) for longer
/// than the claim wait while a clone with the same id (and `clone_name`)
/// starts.
fn clone_starts_while_renewals_stall(tag: &str, clone_name: &str) {
    let _g = serial();
    let s = Scratch::new(tag);
    let ls = lockspace(&s);
    let mut a = Host::new(&s, 1, &ls, NOWD);
    let mut b = a.clone_of(&s, "clone", clone_name);
    let mut c = Host::new(&s, 3, &ls, NOWD);
    c.start(&[]);
    a.start(&[]);
    let mut q = Some(standin_qemu());
    lease(&a, UUID_A, "web", q.as_ref().unwrap(), None).unwrap();
    let mut taker = Taker::new();
    assert!(
        lease(&c, UUID_A, "web", &taker.q, None).is_err(),
        "host 3 took a live lease"
    );

    // Stalled for 2.5 s: longer than the claim wait (1.3 s) and than the
    // old "own name" watch (0.9 s), shorter than D (4 s).
    let stall = 2500;
    a.daemon.as_ref().unwrap().signal(libc::SIGSTOP);
    let stopped = boottime_ms();
    let wrap = other_machine(&b.dir);
    let wrap: Vec<&str> = wrap.iter().map(String::as_str).collect();
    b.spawn(&wrap);
    let mut resumed = false;
    let deadline = stopped + stall + D + 3000;
    let fail = |e: String, a: &mut Host, b: &mut Host| -> ! {
        panic!(
            "{e}\n{} {}\nhost 1 log:\n{}\nclone log:\n{}",
            describe(a),
            describe(b),
            a.log_text(),
            b.log_text()
        )
    };
    loop {
        if !resumed && boottime_ms() >= stopped + stall {
            a.daemon.as_ref().unwrap().signal(libc::SIGCONT);
            resumed = true;
        }
        if let Err(e) = taker.attempt(&c, &mut q) {
            fail(e, &mut a, &mut b);
        }
        if resumed && lost(&mut b).is_some() && boottime_ms() > stopped + stall + 1000 {
            break;
        }
        if boottime_ms() > deadline {
            fail(
                format!(
                    "the clone was not refused or fenced within {} ms",
                    deadline - stopped
                ),
                &mut a,
                &mut b,
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = lost(&mut b).unwrap();
    check_loser(&mut b, "host-1.test", &text);
    // The first machine is not left renewing next to the clone: the clone
    // wrote nothing it could mistake for its own, or it fenced.
    eprintln!(
        "stall: {} {}; third host took the lease {:?} ms after the stop",
        describe(&mut a),
        describe(&mut b),
        taker.took_at.map(|t| t - stopped)
    );
}

#[test]
fn a_clone_started_while_the_owner_stalls() {
    clone_starts_while_renewals_stall("collide-stall", "host-1b.test");
}

#[test]
fn a_clone_with_the_same_name_started_while_the_owner_stalls() {
    clone_starts_while_renewals_stall("collide-stall-name", "host-1.test");
}
