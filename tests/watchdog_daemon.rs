//! vmlease-watchdog for real: daemons as separate "hosts" on one lockspace,
//! stand-in QEMU processes holding leases through the plugin's own code,
//! and real faults (storage cut in a host's mount namespace, daemon
//! SIGKILL/SIGSTOP, a management link down in a network namespace).
//!
//! Timings: see tests/support/daemons.rs.

mod support;

use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::daemons::*;
use support::frozen::Frozen;
use vmlease::clock::boottime_ms;
use vmlease::lockspace::Lockspace;
use vmlease::resource::Resource;
use vmlease::status::Status;

const UUID_A: [u8; 16] = [0xaa; 16];

#[test]
fn dead_qemu_leases_are_released_within_one_second() {
    let _g = serial();
    let s = Scratch::new("reap");
    let ls = lockspace(&s);
    let mut a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    a.start(&[]);
    let q = standin_qemu();
    lease(&a, UUID_A, "web", &q, Some("/images/web.qcow2")).unwrap();
    let dom = Resource::domain(&vmlease::resource::format_uuid(&UUID_A));
    let disk = Resource::disk("/images/web.qcow2", false);
    assert_eq!(holders(&ls, &dom), vec![q.pid()]);
    assert_eq!(holders(&ls, &disk), vec![q.pid()]);

    let pid = q.pid();
    let killed = boottime_ms();
    drop(q); // SIGKILL + reap
    let took = wait_until("the daemon to release the dead QEMU's leases", 5000, || {
        let (d, k) = (holders(&ls, &dom), holders(&ls, &disk));
        if d.is_empty() && k.is_empty() {
            Ok(boottime_ms() - killed)
        } else {
            Err(format!("domain holders {d:?}, disk holders {k:?}"))
        }
    });
    eprintln!("leases of killed QEMU pid {pid} released after {took} ms");
    assert!(
        took < 1000,
        "released after {took} ms, more than 1 s; log:\n{}",
        a.log_text()
    );
    a.wait_log(&format!("QEMU pid {pid} of domain 'web'"));
    // The registry entry is gone too.
    let reg = vmlease::registry::Registry::new(&a.cfg.state_dir);
    wait_until("the registry entry to be removed", 2000, || {
        let n = reg.list().unwrap().len();
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} entries"))
        }
    });
}

#[test]
fn daemon_restart_adopts_running_qemu() {
    let _g = serial();
    let s = Scratch::new("adopt");
    let ls = lockspace(&s);
    let mut a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    a.start(&[]);
    let q = standin_qemu();
    lease(&a, UUID_A, "web", &q, None).unwrap();
    let dom = Resource::domain(&vmlease::resource::format_uuid(&UUID_A));
    let before = Lockspace::open(&ls)
        .unwrap()
        .read_lease(&dom.key(), &dom.name)
        .unwrap();
    // Clean stop with a leased VM: no status (nothing new may start), the
    // lease stays.
    a.daemon.as_ref().unwrap().signal(libc::SIGTERM);
    wait_until("the daemon to stop", 5000, || {
        if a.daemon.as_mut().unwrap().exited() {
            Ok(())
        } else {
            Err("running".into())
        }
    });
    assert!(
        a.log_text().contains("stopping with 1 leased QEMU"),
        "{}",
        a.log_text()
    );
    assert!(
        vmlease::status::protected_status(&a.cfg).is_err(),
        "no daemon: no leases"
    );
    assert_eq!(
        Lockspace::open(&ls)
            .unwrap()
            .read_lease(&dom.key(), &dom.name)
            .unwrap(),
        before
    );
    a.start(&[]);
    assert_eq!(
        holders(&ls, &dom),
        vec![q.pid()],
        "the lease survived the restart"
    );
    // Adopted: its death is still noticed.
    drop(q);
    wait_until("the restarted daemon to release the lease", 3000, || {
        let h = holders(&ls, &dom);
        if h.is_empty() {
            Ok(())
        } else {
            Err(format!("holders {h:?}"))
        }
    });
}

#[test]
fn host_id_in_use_by_a_live_host_refuses_to_start() {
    let _g = serial();
    let s = Scratch::new("hostid");
    let ls = lockspace(&s);
    let mut a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    a.start(&[]);
    // Same id, different name: must watch, see the renewals, and refuse.
    let b_conf = s.0.join("other.conf");
    let text = fs::read_to_string(&a.conf).unwrap();
    fs::write(
        &b_conf,
        text.replace("host-1.test", "other.test")
            .replace("/host1/run", "/host1/run-b"),
    )
    .unwrap();
    let out = Command::new(bin("vmlease-watchdog"))
        .args(["--config", b_conf.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("host id 1 is in use by live host 'host-1.test'"),
        "{err}"
    );
}

/// A FIFO watchdog stand-in: records pets and "fires" when none comes for W.
struct FakeWatchdog {
    path: PathBuf,
    fired_at: Arc<AtomicU64>,
    last_pet: Arc<AtomicU64>,
    disarmed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeWatchdog {
    fn new(dir: &Path) -> FakeWatchdog {
        let path = dir.join("watchdog");
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let mut f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        let (fired_at, last_pet) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (disarmed, stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (fa, lp, da, st) = (
            fired_at.clone(),
            last_pet.clone(),
            disarmed.clone(),
            stop.clone(),
        );
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while !st.load(Ordering::SeqCst) {
                match f.read(&mut buf) {
                    Ok(n) if n > 0 => {
                        lp.store(boottime_ms(), Ordering::SeqCst);
                        if buf[..n].ends_with(b"V") {
                            da.store(true, Ordering::SeqCst);
                        }
                    }
                    _ => {}
                }
                let last = lp.load(Ordering::SeqCst);
                if last > 0
                    && !da.load(Ordering::SeqCst)
                    && fa.load(Ordering::SeqCst) == 0
                    && boottime_ms() - last > W
                {
                    fa.store(boottime_ms(), Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        FakeWatchdog {
            path,
            fired_at,
            last_pet,
            disarmed,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeWatchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watchdog_fires_on(sig: i32, expect: &str) {
    let s = Scratch::new("wdfire");
    let ls = lockspace(&s);
    let wd = FakeWatchdog::new(&s.0);
    let mut a = Host::new(
        &s,
        1,
        &ls,
        &format!("watchdog_device = \"{}\"\n", wd.path.display()),
    );
    a.start(&[]);
    wait_until("pets", 2000, || {
        if wd.last_pet.load(Ordering::SeqCst) > 0 {
            Ok(())
        } else {
            Err("no pet".into())
        }
    });
    a.wait_log("(test stand-in)");
    let q = standin_qemu();
    lease(&a, UUID_A, "web", &q, None).unwrap();
    let hit = boottime_ms();
    a.daemon.as_ref().unwrap().signal(sig);
    let fired = wait_until("the watchdog stand-in to fire", 5000, || {
        match wd.fired_at.load(Ordering::SeqCst) {
            0 => Err(format!(
                "last pet {} ms ago",
                boottime_ms() - wd.last_pet.load(Ordering::SeqCst)
            )),
            t => Ok(t),
        }
    });
    eprintln!(
        "watchdog fired {} ms after the daemon got signal {sig}",
        fired - hit
    );
    assert!(
        fired - hit <= W + 500,
        "fired {} ms after the fault",
        fired - hit
    );
    assert!(!wd.disarmed.load(Ordering::SeqCst));
    let q2 = standin_qemu();
    let e = wait_until("the plugin to refuse acquires", 3000, || {
        match lease(&a, [0xbb; 16], "db", &q2, None) {
            Ok(()) => Err("acquire succeeded".into()),
            Err(e) => Ok(e),
        }
    });
    assert!(e.contains(expect), "{e}");
}

#[test]
fn daemon_sigkill_fires_the_watchdog_and_refuses_acquires() {
    let _g = serial();
    watchdog_fires_on(libc::SIGKILL, "is not running");
}

#[test]
fn daemon_sigstop_fires_the_watchdog_and_refuses_acquires() {
    let _g = serial();
    watchdog_fires_on(libc::SIGSTOP, "has not reported");
}

#[test]
fn clean_stop_without_leases_disarms_and_leaves() {
    let _g = serial();
    let s = Scratch::new("leave");
    let ls = lockspace(&s);
    let wd = FakeWatchdog::new(&s.0);
    let mut a = Host::new(
        &s,
        1,
        &ls,
        &format!("watchdog_device = \"{}\"\n", wd.path.display()),
    );
    a.start(&[]);
    a.daemon.as_ref().unwrap().signal(libc::SIGTERM);
    wait_until("the daemon to stop", 5000, || {
        if a.daemon.as_mut().unwrap().exited() {
            Ok(())
        } else {
            Err("running".into())
        }
    });
    wait_until("magic close", 1000, || {
        if wd.disarmed.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("not disarmed".into())
        }
    });
    std::thread::sleep(Duration::from_millis(W + 200));
    assert_eq!(
        wd.fired_at.load(Ordering::SeqCst),
        0,
        "a disarmed watchdog must not fire"
    );
    let slot = Lockspace::open(&ls).unwrap().read_host(1).unwrap();
    assert_eq!(
        slot.record().unwrap().state,
        vmlease::hosts::HostState::Leaving
    );
}

#[test]
fn storage_cut_fences_after_f_and_the_peer_takes_over_after_d() {
    let _g = serial();
    let s = Scratch::new("storage");
    let ls = lockspace(&s);
    // Host A's daemon sees the lockspace through a bind mount in its own
    // mount namespace; cutting it makes every renewal fail.
    let a_view = s.0.join("a-view");
    fs::create_dir_all(&a_view).unwrap();
    let mut a = Host::new(&s, 1, &a_view, "unsafe_no_watchdog = true\n");
    let mut b = Host::new(
        &s,
        2,
        &ls,
        "unsafe_no_watchdog = true\ntrust_unsafe_peers = true\n",
    );
    a.start_with_own_view(&ls, &a_view);
    b.start(&[]);
    // Host A's plugin side writes the real lockspace path.
    let mut a_plugin = a.cfg.clone();
    a_plugin.lockspace_dir = ls.clone();
    let a_host = Host {
        cfg: a_plugin,
        daemon: None,
        ..Host::new(&s, 1, &a_view, "unsafe_no_watchdog = true\n")
    };
    let qa = standin_qemu();
    lease(&a_host, UUID_A, "web", &qa, Some("/images/web.qcow2")).unwrap();

    let qb = standin_qemu();
    let e = lease(&b, UUID_A, "web", &qb, None).unwrap_err();
    assert!(
        e.contains("held by host 1 (host-1.test) for domain 'web'"),
        "{e}"
    );

    let apid = a.daemon.as_ref().unwrap().pid();
    sh(&format!(
        "nsenter -t {apid} -m umount -l '{}'",
        a_view.display()
    ));
    let cut = boottime_ms();
    let a_last = wait_until("A's renewals to stop", 3000, || {
        let st = a.status();
        if boottime_ms() - st.last_renewal_ms > 3 * R {
            Ok(st.last_renewal_ms)
        } else {
            Err(format!(
                "renewed {} ms ago",
                boottime_ms() - st.last_renewal_ms
            ))
        }
    });
    // Not before F: the stand-in is alive shortly before last renewal + F.
    let mut qa = qa;
    while boottime_ms() < a_last + F - 100 {
        assert!(
            !qa.exited(),
            "killed before renew_fail_timeout: log\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let killed_seen = wait_exit("A to kill its QEMU", &mut qa, F + K + 3000, || {
        format!("A's status {:?}", a.status().state)
    });
    eprintln!(
        "storage cut -> A's QEMU killed after {} ms (last renewal {} ms before the cut)",
        killed_seen - cut,
        cut - a_last
    );
    a.wait_log("FENCING: lease renewals failed");
    assert!(
        a.reset_record().is_none(),
        "no reset needed when the kill works"
    );

    // B takes over only after D as observed on its clock, then succeeds.
    let (took, last_err) = take_over(
        &b,
        UUID_A,
        "web",
        &qb,
        Some("/images/web.qcow2"),
        a_last + D + 5000,
    );
    eprintln!(
        "B acquired A's leases {} ms after A's last renewal (D = {D} ms); before that: {last_err}",
        took - a_last
    );
    assert!(
        took >= a_last + D,
        "taken over {} ms after A's last renewal, before D",
        took - a_last
    );
    assert!(last_err.contains("may be taken over after"), "{last_err}");
}

#[test]
fn management_link_loss_reports_or_fences_by_policy() {
    let _g = serial();
    for policy in ["report", "fence"] {
        let s = Scratch::new("mgmt");
        let ls = lockspace(&s);
        let tag = format!("{}{}", std::process::id() % 10000, &policy[..1]);
        let (hns, sns) = (format!("vmlt-h{tag}"), format!("vmlt-s{tag}"));
        let _cleanup = support::netns::Namespaces(vec![hns.clone(), sns.clone()]);
        sh(&format!(
            "ip netns add {hns} && ip netns add {sns} && \
             ip link add vmh{tag} netns {hns} type veth peer name vms{tag} netns {sns} && \
             ip -n {hns} addr add 192.0.2.1/24 dev vmh{tag} && ip -n {sns} addr add 192.0.2.2/24 dev vms{tag} && \
             ip -n {hns} link set vmh{tag} up && ip -n {sns} link set vms{tag} up && \
             ip -n {hns} link set lo up && ip -n {sns} link set lo up"
        ));
        let extra = format!(
            "unsafe_no_watchdog = true\n[management]\nprobes = [ {{ type = \"icmp\", target = \"192.0.2.2\" }}, {{ type = \"carrier\", interface = \"vmh{tag}\" }} ]\nmin_up = 1\ntimeout = 1\nprobe_timeout = 0.3\npolicy = \"{policy}\"\n"
        );
        let mut a = Host::new(&s, 1, &ls, &extra);
        let mut b = Host::new(&s, 2, &ls, "unsafe_no_watchdog = true\n");
        a.start(&["ip", "netns", "exec", &hns]);
        b.start(&[]);
        wait_until("A's management network to be up", 3000, || {
            let st = a.status();
            let n = st
                .networks
                .iter()
                .find(|n| n.name == "management")
                .unwrap()
                .clone();
            if n.state == "up" && n.detail.contains("2/2") {
                Ok(())
            } else {
                Err(format!("{n:?}"))
            }
        });
        let mut qa = standin_qemu();
        lease(&a, UUID_A, "web", &qa, None).unwrap();
        sh(&format!("ip -n {sns} link set vms{tag} down"));
        let cut = boottime_ms();
        let st = wait_until("A to report mgmt-isolated or fence", 5000, || {
            let st = a.status();
            match (policy, st.state) {
                ("report", vmlease::hosts::HostState::MgmtIsolated) => Ok(st),
                ("fence", vmlease::hosts::HostState::FencedClean) => Ok(st),
                _ => Err(format!("state {}, networks {:?}", st.state, st.networks)),
            }
        });
        let mgmt = st.networks.iter().find(|n| n.name == "management").unwrap();
        assert_eq!(mgmt.state, "lost", "{mgmt:?}");
        let qb = standin_qemu();
        if policy == "report" {
            assert!(!qa.exited(), "report policy must leave the VM running");
            let slot = Lockspace::open(&ls).unwrap().read_host(1).unwrap();
            wait_until("mgmt-isolated in the liveness record", 2000, || {
                let slot = Lockspace::open(&ls).unwrap().read_host(1).unwrap();
                match slot.record().map(|r| r.state) {
                    Some(vmlease::hosts::HostState::MgmtIsolated) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            });
            drop(slot);
            assert!(
                lease(&b, UUID_A, "web", &qb, None).is_err(),
                "VMs of an isolated host keep their leases"
            );
        } else {
            assert!(qa.exited(), "fence policy must kill the VM");
            let took = wait_until("B to take over after the fence", 1000 + 2000 + 3000, || {
                lease(&b, UUID_A, "web", &qb, None).map(|_| boottime_ms())
            });
            eprintln!(
                "mgmt link cut -> B acquired after {} ms (mgmt timeout 1000 ms)",
                took - cut
            );
            assert!(
                took - cut <= 1000 + 2000,
                "took {} ms, more than mgmt_timeout + 2 s",
                took - cut
            );
            // The fence survives a daemon restart and holds until the
            // network is back and the operator clears it.
            a.stop();
            a.spawn(&["ip", "netns", "exec", &hns]);
            wait_until(
                "A to come back fenced-clean",
                5000,
                || match Status::read(&a.cfg.state_dir).ok().flatten() {
                    Some(st) if st.state == vmlease::hosts::HostState::FencedClean => Ok(()),
                    other => Err(format!("{:?}", other.map(|s| s.state))),
                },
            );
            let q3 = standin_qemu();
            let e = lease(&a, [0xcc; 16], "other", &q3, None).unwrap_err();
            assert!(
                e.contains("this host is fenced-clean: management network lost"),
                "{e}"
            );
            fs::write(a.cfg.state_dir.join("clear-fence"), "").unwrap();
            wait_until("A to refuse clearing while the link is down", 3000, || {
                if a.log_text().contains("fence not cleared") {
                    Ok(())
                } else {
                    Err("no refusal logged".into())
                }
            });
            sh(&format!("ip -n {sns} link set vms{tag} up"));
            wait_until("A's management network to be up again", 5000, || {
                let st = a.status();
                let n = st
                    .networks
                    .iter()
                    .find(|n| n.name == "management")
                    .unwrap()
                    .clone();
                if n.state == "up" && n.detail.starts_with("2/2") {
                    Ok(())
                } else {
                    Err(format!("{n:?}"))
                }
            });
            fs::write(a.cfg.state_dir.join("clear-fence"), "").unwrap();
            wait_until(
                "A to be live after the operator cleared the fence",
                3000,
                || {
                    let st = a.status();
                    if st.state == vmlease::hosts::HostState::Live {
                        Ok(())
                    } else {
                        Err(format!(
                            "{}; networks {:?}; log:\n{}",
                            st.state,
                            st.networks,
                            a.log_text()
                        ))
                    }
                },
            );
            lease(&a, [0xcc; 16], "other", &q3, None).unwrap();
        }
    }
}

fn proc_state(pid: u32) -> Option<char> {
    thread_states(pid)
        .into_iter()
        .find(|(tid, _)| *tid == pid)
        .map(|(_, s)| s)
}

/// A stand-in QEMU whose disk is on `frozen`, waiting to write to it.
struct StandIn(Proc, std::process::ChildStdin);

fn stand_in_qemu(frozen: &Frozen) -> StandIn {
    let disk = frozen.mnt.join("disk");
    let mut child = Command::new("sh")
        .args([
            "-c",
            &format!("read go; echo data > '{}'; sleep 1000", disk.display()),
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    StandIn(
        Proc {
            child,
            what: "stuck stand-in QEMU".into(),
        },
        stdin,
    )
}

impl StandIn {
    /// Sends "go" (the CPUs start: it writes) and hands the process back.
    /// Bind the result before the guard that thaws a frozen filesystem, so
    /// that on a failure the thaw runs before the stand-in is reaped.
    fn go(self) -> Proc {
        use std::io::Write;
        let StandIn(q, mut stdin) = self;
        stdin.write_all(b"go\n").unwrap();
        drop(stdin);
        q
    }
}

/// Waits until the (single-threaded) stand-in `q` is in uninterruptible
/// sleep (D).
fn wait_blocked(q: &Proc) {
    wait_until(
        "the stand-in to block in D state",
        3000,
        || match proc_state(q.pid()) {
            Some('D') => Ok(()),
            other => Err(format!("state {other:?}")),
        },
    );
}

/// Thaws `frozen` and waits for the stand-in (SIGKILLed while in D) to
/// die.
fn thaw_and_reap(frozen: &mut Frozen, q: &mut Proc) {
    frozen.thaw();
    wait_until("the stand-in to die after the thaw", 3000, || {
        if q.exited() {
            Ok(())
        } else {
            Err("alive".into())
        }
    });
}

#[test]
fn qemu_stuck_in_uninterruptible_io_leads_to_the_recorded_reset() {
    let _g = serial();
    let s = Scratch::new("dstate");
    let ls = lockspace(&s);
    let mut frozen = Frozen::new(&s);
    let a_view = s.0.join("a-view");
    fs::create_dir_all(&a_view).unwrap();
    let mut a = Host::new(&s, 1, &a_view, "unsafe_no_watchdog = true\n");
    a.start_with_own_view(&ls, &a_view);
    let mut a_plugin = Host::new(&s, 1, &a_view, "unsafe_no_watchdog = true\n");
    a_plugin.cfg.lockspace_dir = ls.clone();
    a_plugin.cfg.state_dir = a.cfg.state_dir.clone();

    let q = stand_in_qemu(&frozen);
    lease(&a_plugin, UUID_A, "web", &q.0, None).unwrap();
    frozen.freeze();
    let mut q = q.go();
    // Declared after the stand-in: on a failure it thaws before the
    // stand-in is reaped.
    let _undo = OnDrop(vec![format!(
        "fsfreeze -u '{}' 2>/dev/null",
        frozen.mnt.display()
    )]);
    wait_blocked(&q);

    let apid = a.daemon.as_ref().unwrap().pid();
    sh(&format!(
        "nsenter -t {apid} -m umount -l '{}'",
        a_view.display()
    ));
    let reset = wait_until("A to record a host reset", F + K + 4000, || {
        a.reset_record()
            .ok_or_else(|| format!("no reset yet; stand-in state {:?}", proc_state(q.pid())))
    });
    let st = a.status();
    assert!(reset.contains("reason=lease renewals failed"), "{reset}");
    let at: u64 = reset
        .split_whitespace()
        .find_map(|w| w.strip_prefix("boottime_ms="))
        .and_then(|v| v.parse().ok())
        .unwrap();
    eprintln!(
        "stand-in stuck in D state: reset recorded {} ms after A's last renewal (F + K = {} ms)",
        at - st.last_renewal_ms,
        F + K
    );
    assert!(at >= st.last_renewal_ms + F + K, "reset before F + K");
    a.wait_log("survived kill_timeout");
    assert_eq!(
        proc_state(q.pid()),
        Some('D'),
        "the kill really could not end it"
    );
    // Thawing lets the pending SIGKILL finish it.
    thaw_and_reap(&mut frozen, &mut q);
}

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[test]
fn wall_clocks_hours_apart_do_not_change_the_judgement() {
    let _g = serial();
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} missing: scripts/setup-test-env.sh installs the faketime package"
    );
    let s = Scratch::new("skew");
    let ls = lockspace(&s);
    let mut a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    let mut b = Host::new(
        &s,
        2,
        &ls,
        "unsafe_no_watchdog = true\ntrust_unsafe_peers = true\n",
    );
    // Host A's wall clock is 5 hours ahead, host B's 7 hours behind; their
    // monotonic clocks are their own.
    let fake = |offset: &str| {
        vec![
            "env".to_string(),
            format!("LD_PRELOAD={LIBFAKETIME}"),
            format!("FAKETIME={offset}"),
            "FAKETIME_DONT_FAKE_MONOTONIC=1".to_string(),
        ]
    };
    let fa = fake("+5h");
    let fb = fake("-7h");
    a.start(&fa.iter().map(String::as_str).collect::<Vec<_>>());
    b.start(&fb.iter().map(String::as_str).collect::<Vec<_>>());
    let wall_a = wait_until("A's record", 2000, || {
        Lockspace::open(&ls)
            .unwrap()
            .read_host(1)
            .unwrap()
            .record()
            .map(|r| r.wall)
            .ok_or("no record".to_string())
    });
    let wall_b = wait_until("B's record", 2000, || {
        Lockspace::open(&ls)
            .unwrap()
            .read_host(2)
            .unwrap()
            .record()
            .map(|r| r.wall)
            .ok_or("no record".to_string())
    });
    let apart = wall_a.abs_diff(wall_b);
    eprintln!(
        "wall clocks in the liveness records are {} h apart",
        apart / 3600
    );
    assert!(
        apart > 11 * 3600,
        "faketime did not skew the wall clocks ({apart} s)"
    );

    let qa = standin_qemu();
    lease(&a, UUID_A, "web", &qa, None).unwrap();
    let qb = standin_qemu();
    // While A renews, B must not take over, whatever the wall clocks say.
    // B refuses either because A's slot changed since B's last look ("its
    // host is alive") or because it has not changed yet, and only for less
    // than D ("has not renewed for 0s as observed here"): which one depends
    // on whether A renewed between B's last tick and this call.
    let e = lease(&b, UUID_A, "web", &qb, None).unwrap_err();
    assert!(
        e.contains("its host is alive")
            || (e.contains("has not renewed for") && e.contains("it may be taken over after")),
        "B refused for another reason than A being alive: {e}"
    );
    // A's daemon hangs: B takes over after D on its own clock, not before.
    a.daemon.as_ref().unwrap().signal(libc::SIGSTOP);
    let stopped = boottime_ms();
    let a_last = Lockspace::open(&ls)
        .unwrap()
        .read_host(1)
        .unwrap()
        .record()
        .unwrap()
        .counter;
    let (took, last_err) = take_over(&b, UUID_A, "web", &qb, None, stopped + D + 5000);
    let counter_now = Lockspace::open(&ls)
        .unwrap()
        .read_host(1)
        .unwrap()
        .record()
        .unwrap()
        .counter;
    assert_eq!(a_last, counter_now, "A renewed while stopped?");
    let a_renewed = a.status().last_renewal_ms;
    eprintln!(
        "B took over {} ms after A's daemon stopped, {} ms after its last renewal (D = {D} ms)",
        took - stopped,
        took - a_renewed
    );
    assert!(
        took >= a_renewed + D,
        "took over {} ms after A's last renewal, before D",
        took - a_renewed
    );
    assert!(last_err.contains("may be taken over after"), "{last_err}");
}

/// Runs shell commands when dropped (declared after the processes they
/// unblock, so that it runs before their drops wait for them).
struct OnDrop(Vec<String>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        for c in &self.0 {
            let _ = Command::new("sh").args(["-c", c]).status();
        }
    }
}

/// A daemon restarted in the middle of a storage fence, with a leased QEMU
/// that the kill cannot end (stuck in D), must not re-arm the hardware
/// watchdog its predecessor left running (opening a watchdog pings it):
/// the watchdog fires W after the last pet, and the new daemon records the
/// reset at once (its fence continues from the last renewal, KB4).
#[test]
fn a_restart_during_a_fence_does_not_rearm_the_watchdog() {
    let _g = serial();
    let s = Scratch::new("refence");
    let ls = lockspace(&s);
    let wd = FakeWatchdog::new(&s.0);
    let mut a = Host::new(
        &s,
        1,
        &ls,
        &format!("watchdog_device = \"{}\"\n", wd.path.display()),
    );
    a.start(&[]);
    // The QEMU's disk on a filesystem that is then frozen: it blocks in D.
    let mut frozen = Frozen::new(&s);
    let q = stand_in_qemu(&frozen);
    lease(&a, UUID_A, "web", &q.0, None).unwrap();
    let hosts = ls.join("hosts");
    frozen.freeze();
    let mut q = q.go();
    // Declared after the stand-in: on a failure it thaws before the
    // stand-in is reaped.
    let _undo = OnDrop(vec![
        format!("fsfreeze -u '{}' 2>/dev/null", frozen.mnt.display()),
        format!("chattr -i '{}'", hosts.display()),
    ]);
    wait_blocked(&q);
    // Renewals fail (the host table is immutable), reads still work: a
    // restarted daemon gets through its start.
    sh(&format!("chattr +i '{}'", hosts.display()));
    wait_until("A to start fencing", F + 3000, || {
        let st = a.status();
        if st.state == vmlease::hosts::HostState::Fencing {
            Ok(())
        } else {
            Err(format!("{}", st.state))
        }
    });
    // Kill the daemon before K runs out, and start a new one at once.
    a.daemon.as_ref().unwrap().signal(libc::SIGKILL);
    wait_until("the daemon to die", 3000, || {
        if a.daemon.as_mut().unwrap().exited() {
            Ok(())
        } else {
            Err("alive".into())
        }
    });
    let killed = boottime_ms();
    let last_pet = wd.last_pet.load(Ordering::SeqCst);
    assert!(
        a.reset_record().is_none(),
        "the first daemon reset already: kill it earlier"
    );
    a.spawn(&[]);
    let reset = wait_until("the new daemon to record the reset", 5000, || {
        a.reset_record()
            .ok_or_else(|| format!("no reset yet; log: {}", a.log_text()))
    });
    let fired = wait_until("the watchdog stand-in to fire", W + 3000, || {
        match wd.fired_at.load(Ordering::SeqCst) {
            0 => Err(format!(
                "last pet {} ms ago",
                boottime_ms() - wd.last_pet.load(Ordering::SeqCst)
            )),
            t => Ok(t),
        }
    });
    a.wait_log("opened (armed) only once it is safe");
    let log = a.log_text();
    eprintln!(
        "restart during a fence: last pet {} ms before the daemon's SIGKILL, the watchdog fired \
         {} ms after the last pet (W = {W} ms); the new daemon: {}",
        killed - last_pet,
        fired - last_pet,
        reset.trim()
    );
    assert_eq!(
        wd.last_pet.load(Ordering::SeqCst),
        last_pet,
        "the restarted daemon pinged the watchdog; log: {log}"
    );
    assert!(fired - last_pet <= W + 500, "fired late");
    assert!(log.contains("opened (armed) only once it is safe"), "{log}");
    assert!(reset.contains("reason=lease renewals failed"), "{reset}");
    assert_eq!(
        proc_state(q.pid()),
        Some('D'),
        "the stand-in is still stuck"
    );
    // Thaw: the pending SIGKILL ends the stand-in.
    thaw_and_reap(&mut frozen, &mut q);
}

/// The daemon's stderr is a pipe nobody reads (a stalled journald): once
/// the pipe is full, every log line would block. Renewals and pets must go
/// on past F, and the host must not fence.
#[test]
fn a_full_stderr_pipe_stops_neither_renewals_nor_pets() {
    use std::io::Write;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let _g = serial();
    let s = Scratch::new("stderr");
    let ls = lockspace(&s);
    let wd = FakeWatchdog::new(&s.0);
    let a = Host::new(
        &s,
        1,
        &ls,
        &format!("watchdog_device = \"{}\"\n", wd.path.display()),
    );
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2");
    // SAFETY: pipe2 just returned these two descriptors; nothing else owns them.
    let (unread, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let _daemon = Proc {
        child: Command::new(bin("vmlease-watchdog"))
            .args(["--config", a.conf.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(wr))
            .spawn()
            .unwrap(),
        what: "vmlease-watchdog with an unread stderr".into(),
    };
    let cfg = a.cfg.clone();
    wait_until("host 1 to be protected", 10_000, || {
        vmlease::status::protected_status(&cfg)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    // Fill the pipe through a second, non-blocking open of it (the
    // daemon's stderr stays blocking).
    let mut filler = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", unread.as_raw_fd()))
        .unwrap();
    let mut filled = 0usize;
    for chunk in [4096usize, 1] {
        while let Ok(n) = filler.write(&vec![b'x'; chunk]) {
            filled += n;
        }
    }
    let counter = || {
        Lockspace::open(&ls)
            .unwrap()
            .read_host(1)
            .unwrap()
            .record()
            .map(|r| r.counter)
            .unwrap_or(0)
    };
    let t0 = boottime_ms();
    let (mut last, mut changed_at, mut renewals) = (counter(), t0, 0u32);
    let clear = a.cfg.state_dir.join("clear-fence");
    // Each clear-fence request makes the daemon log one line.
    while boottime_ms() - t0 < 2 * F {
        if !clear.exists() {
            fs::write(&clear, "").unwrap();
        }
        let now = boottime_ms();
        let c = counter();
        if c != last {
            (last, changed_at, renewals) = (c, now, renewals + 1);
        }
        let pet_age = now.saturating_sub(wd.last_pet.load(Ordering::SeqCst));
        assert!(
            now - changed_at < F && pet_age < W,
            "with stderr full ({filled} bytes unread) the daemon stalled: no renewal for {} ms \
             (counter {last}, {renewals} renewals since the pipe filled), last pet {pet_age} ms ago",
            now - changed_at
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(wd.fired_at.load(Ordering::SeqCst), 0, "the watchdog fired");
    assert_eq!(a.reset_record(), None, "the host reset itself");
    let st = a.status();
    assert_eq!(st.state, vmlease::hosts::HostState::Live, "{st:?}");
    eprintln!(
        "stderr full ({filled} bytes): {renewals} renewals in {} ms, no fence",
        boottime_ms() - t0
    );
    // Once stderr is read again, the queued lines arrive.
    let mut reader = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", unread.as_raw_fd()))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 65536];
    wait_until("the queued log lines once stderr is read", 5000, || {
        if let Ok(n) = reader.read(&mut buf) {
            seen.extend(buf[..n].iter().filter(|&&b| b != b'x'));
        }
        let text = String::from_utf8_lossy(&seen).into_owned();
        if text.contains("operator asked to clear the fence") {
            Ok(())
        } else {
            Err(format!("log so far: {text:?}"))
        }
    });
    drop(unread);
}

/// The status file's write hangs (its temporary file is a pipe nobody
/// drains): in the split-brain rig a healthy host's main loop sat 2 s in
/// the fsync of its status on a busy local disk and its watchdog fired.
/// Renewals and pets must go on past F and the host must not fence; the
/// status goes stale meanwhile and is written again once the write
/// returns.
#[test]
fn a_hung_status_write_stops_neither_renewals_nor_pets() {
    use std::io::Write;
    let _g = serial();
    let s = Scratch::new("status-hang");
    let ls = lockspace(&s);
    let wd = FakeWatchdog::new(&s.0);
    let mut a = Host::new(
        &s,
        1,
        &ls,
        &format!("watchdog_device = \"{}\"\n", wd.path.display()),
    );
    a.start(&[]);
    let pid = a.daemon.as_ref().unwrap().pid();
    let status = Status::path(&a.cfg.state_dir);
    // The daemon's next status goes to this temporary name: a FIFO, its
    // pipe full, so that the write blocks as on a stalled disk.
    let tmp = a.cfg.state_dir.join(format!(".status.{pid}.tmp"));
    let c = std::ffi::CString::new(tmp.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let mut reader = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&tmp)
        .unwrap();
    let mut filler = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&tmp)
        .unwrap();
    let mut filled = 0usize;
    for chunk in [4096usize, 1] {
        while let Ok(n) = filler.write(&vec![b'x'; chunk]) {
            filled += n;
        }
    }
    let before = fs::read(&status).unwrap();
    let counter = || {
        Lockspace::open(&ls)
            .unwrap()
            .read_host(1)
            .unwrap()
            .record()
            .map(|r| r.counter)
            .unwrap_or(0)
    };
    let t0 = boottime_ms();
    let (mut last, mut changed_at, mut renewals) = (counter(), t0, 0u32);
    while boottime_ms() - t0 < 2 * F {
        let now = boottime_ms();
        let c = counter();
        if c != last {
            (last, changed_at, renewals) = (c, now, renewals + 1);
        }
        let pet_age = now.saturating_sub(wd.last_pet.load(Ordering::SeqCst));
        assert!(
            now - changed_at < F && pet_age < W,
            "with its status write hung ({filled} bytes in the pipe) the daemon stalled: no \
             renewal for {} ms (counter {last}, {renewals} renewals since), last pet {pet_age} \
             ms ago (W = {W} ms)",
            now - changed_at
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The write did hang all along: the status is the one from before.
    assert_eq!(
        fs::read(&status).unwrap(),
        before,
        "the status changed: its write did not hang"
    );
    assert_eq!(wd.fired_at.load(Ordering::SeqCst), 0, "the watchdog fired");
    assert_eq!(a.reset_record(), None, "the host reset itself");
    eprintln!(
        "status write hung for {} ms: {renewals} renewals, pets on, no fence",
        boottime_ms() - t0
    );
    // The hang ends: the name goes first (the pending write's rename
    // fails), then the pipe drains; the next status is written.
    fs::remove_file(&tmp).unwrap();
    let mut buf = vec![0u8; 65536];
    wait_until("a fresh status once the write returns", 5000, || {
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
        let now = fs::read(&status).unwrap_or_default();
        if now != before && vmlease::status::protected_status(&a.cfg).is_ok() {
            Ok(())
        } else {
            Err(format!("status unchanged; log: {}", a.log_text()))
        }
    });
    let st = a.status();
    assert_eq!(st.state, vmlease::hosts::HostState::Live, "{st:?}");
    drop(filler);
}

/// The storage-fence target is written into the shared lockspace after
/// the watchdog is armed. In the split-brain rig on Ceph's default MDS
/// settings a restarted daemon's create of it waited for a peer's frozen
/// CephFS client while its watchdog, opened, went unpetted. Here the create
/// hangs (the temporary name is a FIFO nobody opens) for longer than W
/// (io_timeout = F/3 = 1.5 s, W = 1 s): the first pets must not wait for
/// it.
#[test]
fn a_hung_target_publish_does_not_delay_the_first_pets() {
    let _g = serial();
    let s = Scratch::new("target-hang");
    let ls = lockspace(&s);
    let wd = FakeWatchdog::new(&s.0);
    let mut a = Host::with_timing(
        &s,
        1,
        &ls,
        &format!("watchdog_device = \"{}\"\n", wd.path.display()),
        [R, 4500, K, W, 7000],
    );
    assert!(a.cfg.io_timeout > W, "io_timeout {}", a.cfg.io_timeout);
    let fences = vmlease::storage_fence::dir(&ls);
    // The daemon's pid is the shell's (exec): its temporary name is known
    // before it starts.
    a.start(&[
        "sh",
        "-c",
        "mkdir -p \"$0\" && mkfifo \"$0/.target-1.$$.tmp\" && exec \"$@\"",
        fences.to_str().unwrap(),
    ]);
    // The publish did hang (and gave up at its deadline).
    wait_until("the publish to give up", 5000, || {
        let log = a.log_text();
        if log.contains("cannot publish the storage-fence target") {
            Ok(())
        } else {
            Err(format!("log: {log}"))
        }
    });
    assert_eq!(
        wd.fired_at.load(Ordering::SeqCst),
        0,
        "the watchdog stand-in fired (no pet for W = {W} ms) while the target's create hung; \
         log: {}",
        a.log_text()
    );
    assert_eq!(a.reset_record(), None, "the host reset itself");
}

// ---------------------------------------------------------------------------
// A QEMU is dead only when its whole thread group is gone (issue 14, item 1).

/// A multi-threaded stand-in QEMU (tests/support/sb_writer.c): the leader
/// waits for "go" on stdin (unless `opts` has "now"), then a worker thread
/// appends a record to `disk` every 20 ms.
fn threaded_stand_in(disk: &Path, opts: &[&str]) -> StandIn {
    let mut child = Command::new(support::util::c_helper("sb_writer"))
        .arg(disk)
        .args(["1", "0", "1", "20"])
        .args(opts)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    StandIn(
        Proc {
            child,
            what: "multi-threaded stand-in QEMU".into(),
        },
        stdin,
    )
}

/// Every thread of `pid` with its state, from /proc/PID/task.
fn thread_states(pid: u32) -> Vec<(u32, char)> {
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out: Vec<(u32, char)> = rd
        .flatten()
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let t = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
            let state = t[t.rfind(')')? + 1..].split_whitespace().next()?;
            Some((tid, state.chars().next()?))
        })
        .collect();
    out.sort();
    out
}

/// Waits until the leader of `pid` shows `leader` and another of its
/// threads one of `worker`; returns the threads seen.
fn wait_threads(pid: u32, leader: char, worker: &str, what: &str) -> Vec<(u32, char)> {
    wait_until(what, 3000, || {
        let t = thread_states(pid);
        let l = t.iter().find(|(tid, _)| *tid == pid).map(|x| x.1);
        let w = t.iter().any(|(tid, s)| *tid != pid && worker.contains(*s));
        if l == Some(leader) && w {
            Ok(t)
        } else {
            Err(format!("threads (tid, state): {t:?}"))
        }
    })
}

/// The kernel's own answer: a pidfd turns readable once the whole thread
/// group has exited.
struct PidFd(i32);

impl PidFd {
    fn open(pid: u32) -> PidFd {
        // SAFETY: pidfd_open with a pid of our own unreaped child.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        assert!(
            fd >= 0,
            "pidfd_open({pid}): {}",
            std::io::Error::last_os_error()
        );
        PidFd(fd as i32)
    }
    fn group_exited(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no timeout.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }
}

impl Drop for PidFd {
    fn drop(&mut self) {
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(self.0) };
    }
}

fn file_len(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Waits until `disk` grew by `records` 64-byte records.
fn wait_writes(disk: &Path, records: u64, what: &str) {
    let before = file_len(disk);
    wait_until(what, 3000, || {
        let now = file_len(disk);
        if now >= before + records * 64 {
            Ok(())
        } else {
            Err(format!("{} bytes, {before} before", now))
        }
    });
}

/// `ProcId::liveness` judges the whole thread group: a process whose main
/// thread (the pid libvirt registers) has exited shows 'Z' for that pid
/// while a worker thread still writes; it is alive, as the kernel's pidfd
/// says, until its last thread has exited.
#[test]
fn a_process_whose_main_thread_exited_is_alive_until_its_last_thread_exits() {
    use vmlease::process::{Liveness, ProcId};
    let s = Scratch::new("leader");
    let disk = s.0.join("disk");
    let q = threaded_stand_in(&disk, &["now", "leader-exits"]).0;
    let pid = q.pid();
    let id = ProcId::of(pid).unwrap();
    let fd = PidFd::open(pid);
    let seen = wait_threads(
        pid,
        'Z',
        "RSD",
        "the main thread to exit while its worker runs",
    );
    wait_writes(&disk, 3, "the worker to write on after its leader exited");
    assert!(!fd.group_exited(), "the kernel: pidfd readable already");
    assert_eq!(
        id.liveness(),
        Liveness::Alive,
        "pid {pid}: its main thread exited, a worker thread still writes (threads {seen:?})"
    );
    q.signal(libc::SIGKILL);
    wait_until("the whole thread group to exit", 3000, || {
        if fd.group_exited() {
            Ok(())
        } else {
            Err(format!("threads {:?}", thread_states(pid)))
        }
    });
    // Not reaped yet: a zombie with no thread left.
    assert_eq!(thread_states(pid), vec![(pid, 'Z')]);
    assert_eq!(
        id.liveness(),
        Liveness::Dead,
        "every thread gone, not reaped"
    );
    drop(q);
    assert_eq!(id.liveness(), Liveness::Dead, "reaped");
}

/// Every user of process liveness on the host keeps the leases of a QEMU
/// whose main thread has exited while another thread writes: the engine's
/// rule 3 (a second start of the domain on the same host), the reaper, the
/// daemon's stop path (no 'leaving' with a live QEMU) and the adoption by a
/// restarted daemon.
#[test]
fn a_qemu_whose_main_thread_exited_keeps_its_leases() {
    let _g = serial();
    let s = Scratch::new("zleader");
    let ls = lockspace(&s);
    let mut a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    a.start(&[]);
    let disk = s.0.join("disk");
    let q = threaded_stand_in(&disk, &["leader-exits"]);
    lease(&a, UUID_A, "web", &q.0, None).unwrap();
    let q = q.go();
    let pid = q.pid();
    wait_threads(pid, 'Z', "RSD", "the main thread to exit");
    wait_writes(&disk, 3, "the worker to write");
    let dom = Resource::domain(&vmlease::resource::format_uuid(&UUID_A));

    // Rule 3: the same host starts the domain again.
    let q2 = standin_qemu();
    let e = lease(&a, UUID_A, "web", &q2, None)
        .err()
        .unwrap_or_else(|| {
            panic!(
                "a second QEMU took the lease of live pid {pid} (threads {:?})",
                thread_states(pid)
            )
        });
    assert!(
        e.contains(&format!("its QEMU process {pid} is alive on this host")),
        "{e}"
    );
    drop(q2);
    let reg = vmlease::registry::Registry::new(&a.cfg.state_dir);
    wait_until("the refused QEMU's registry entry to go", 3000, || {
        let n = reg.list().map_err(|e| e.to_string())?.len();
        if n == 1 {
            Ok(())
        } else {
            Err(format!("{n} entries"))
        }
    });
    // The reaper keeps it.
    std::thread::sleep(Duration::from_millis(5 * R));
    assert_eq!(holders(&ls, &dom), vec![pid], "log:\n{}", a.log_text());

    // The stop path: a live leased QEMU keeps the host from leaving.
    a.stop();
    let log = a.log_text();
    assert!(log.contains("stopping with 1 leased QEMU"), "{log}");
    let slot = Lockspace::open(&ls).unwrap().read_host(1).unwrap();
    assert_ne!(
        slot.record().unwrap().state,
        vmlease::hosts::HostState::Leaving,
        "left the lockspace with a live QEMU"
    );

    // Adoption: the restarted daemon keeps watching it (a full registry
    // scan runs at least every second).
    a.start(&[]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        holders(&ls, &dom),
        vec![pid],
        "adoption released a live QEMU's lease; log:\n{}",
        a.log_text()
    );
    wait_writes(&disk, 1, "the worker to write on");

    // Its last thread exits: released at once.
    let killed = boottime_ms();
    drop(q);
    let took = wait_until("the daemon to release the lease", 3000, || {
        let h = holders(&ls, &dom);
        if h.is_empty() {
            Ok(boottime_ms() - killed)
        } else {
            Err(format!("holders {h:?}"))
        }
    });
    eprintln!("a QEMU with a zombie leader: lease kept while it wrote, released {took} ms after its last thread exited");
}

/// A leased multi-threaded QEMU whose I/O thread is stuck in D on a frozen
/// filesystem while its renewals fail: the fence's SIGKILL ends the leader
/// (or it had exited already) but not the stuck thread, which may still
/// write. The fence must not complete: no fenced-clean, no pet after F, no
/// release; the host reaches the reset step at F + K, its watchdog fires
/// W after the last pet, and the other host takes the lease only after D.
fn stuck_io_thread_is_not_dead(leader_exits: bool) {
    let s = Scratch::new("dthread");
    let ls = lockspace(&s);
    let wd = FakeWatchdog::new(&s.0);
    // Host A's daemon sees the lockspace through a bind mount in its own
    // mount namespace; cutting it makes its renewals fail, not B's.
    let a_view = s.0.join("a-view");
    fs::create_dir_all(&a_view).unwrap();
    let extra = format!("watchdog_device = \"{}\"\n", wd.path.display());
    let mut a = Host::new(&s, 1, &a_view, &extra);
    let mut b = Host::new(&s, 2, &ls, "unsafe_no_watchdog = true\n");
    a.start_with_own_view(&ls, &a_view);
    b.start(&[]);
    // Host A's plugin side writes the real lockspace path.
    let mut a_plugin = Host::new(&s, 1, &a_view, &extra);
    a_plugin.cfg.lockspace_dir = ls.clone();
    a_plugin.cfg.state_dir = a.cfg.state_dir.clone();
    let mut frozen = Frozen::new(&s);
    let opts: &[&str] = if leader_exits { &["leader-exits"] } else { &[] };
    let q = threaded_stand_in(&frozen.mnt.join("disk"), opts);
    lease(&a_plugin, UUID_A, "web", &q.0, None).unwrap();
    frozen.freeze();
    let mut q = q.go();
    // Declared after the stand-in: on a failure it thaws before the
    // stand-in is reaped.
    let _undo = OnDrop(vec![format!(
        "fsfreeze -u '{}' 2>/dev/null",
        frozen.mnt.display()
    )]);
    let pid = q.pid();
    let leader = if leader_exits { 'Z' } else { 'S' };
    wait_threads(pid, leader, "D", "the worker thread to block in D");
    let apid = a.daemon.as_ref().unwrap().pid();
    sh(&format!(
        "nsenter -t {apid} -m umount -l '{}'",
        a_view.display()
    ));
    let qb = standin_qemu();
    let e = lease(&b, UUID_A, "web", &qb, None).unwrap_err();
    assert!(e.contains("held by host 1"), "{e}");

    let mut a_last = 0;
    let mut fencing_pet = 0;
    let reset = wait_until("A to record a host reset", F + K + 5000, || {
        let st = a.status();
        assert_ne!(
            st.state,
            vmlease::hosts::HostState::FencedClean,
            "A's fence completed while pid {pid} has a thread in D (threads {:?}); log:\n{}",
            thread_states(pid),
            a.log_text()
        );
        if st.state == vmlease::hosts::HostState::Fencing && fencing_pet == 0 {
            a_last = st.last_renewal_ms;
            fencing_pet = wd.last_pet.load(Ordering::SeqCst);
        }
        if let Ok(()) = lease(&b, UUID_A, "web", &qb, None) {
            panic!(
                "B took the lease {} ms after A's last renewal (D = {D} ms) while pid {pid} has a thread in D (threads {:?}); A's log:\n{}",
                boottime_ms() - st.last_renewal_ms,
                thread_states(pid),
                a.log_text()
            );
        }
        a.reset_record().ok_or_else(|| {
            format!(
                "no reset yet; A's state {}, threads of pid {pid}: {:?}",
                st.state,
                thread_states(pid)
            )
        })
    });
    assert!(a_last > 0, "A was never seen fencing");
    assert!(reset.contains("reason=lease renewals failed"), "{reset}");
    let at: u64 = reset
        .split_whitespace()
        .find_map(|w| w.strip_prefix("boottime_ms="))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(at >= a_last + F + K, "reset before F + K");
    let fired = wait_until("the watchdog stand-in to fire", W + 3000, || {
        match wd.fired_at.load(Ordering::SeqCst) {
            0 => Err(format!(
                "last pet {} ms ago",
                boottime_ms() - wd.last_pet.load(Ordering::SeqCst)
            )),
            t => Ok(t),
        }
    });
    let last_pet = wd.last_pet.load(Ordering::SeqCst);
    assert_eq!(last_pet, fencing_pet, "A petted the watchdog while fencing");
    assert!(
        last_pet <= a_last + F + R,
        "last pet {} ms after A's last renewal (F = {F} ms)",
        last_pet - a_last
    );
    // The fence's SIGKILL ended the leader, not the stuck thread.
    let t = thread_states(pid);
    assert!(
        t.contains(&(pid, 'Z')) && t.iter().any(|(tid, s)| *tid != pid && *s == 'D'),
        "threads {t:?}"
    );
    let (took, last_err) = take_over(&b, UUID_A, "web", &qb, None, a_last + D + 5000);
    eprintln!(
        "stuck I/O thread (leader {}): reset recorded {} ms after A's last renewal (F + K = {} ms), \
         watchdog fired {} ms after the last pet (W = {W} ms), B took over after {} ms (D = {D} ms)",
        if leader_exits { "exited first" } else { "killed by the fence" },
        at - a_last,
        F + K,
        fired - last_pet,
        took - a_last
    );
    assert!(took >= a_last + D, "B took over before D");
    assert!(last_err.contains("may be taken over after"), "{last_err}");
    let log = a.log_text();
    assert!(!log.contains("fenced-clean"), "{log}");
    // Thawing lets the pending SIGKILL finish it.
    thaw_and_reap(&mut frozen, &mut q);
}

#[test]
fn a_killed_qemu_with_an_io_thread_stuck_in_d_is_not_dead() {
    let _g = serial();
    stuck_io_thread_is_not_dead(false);
}

#[test]
fn a_qemu_whose_leader_exited_with_an_io_thread_stuck_in_d_is_not_dead() {
    let _g = serial();
    stuck_io_thread_is_not_dead(true);
}
