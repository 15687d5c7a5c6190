//! vmlease on a real CephFS: a Ceph cluster on loopback, each "host" with
//! its own ceph-fuse client (its own MDS session), real watchdog daemons,
//! and a real storage fault: the host's ceph-fuse frozen (SIGSTOP), so its
//! lockspace calls hang as on a partitioned CephFS client.

mod support;

use std::fs;
use std::time::Instant;

use support::ceph::CephCluster;
use support::daemons::*;
use vmlease::clock::boottime_ms;
use vmlease::hosts::{HostRecord, HostState};
use vmlease::lockspace::Lockspace;

const UUID_A: [u8; 16] = [0xca; 16];
// R, F, K, W, D for the CephFS hosts (D > max(F+K, F+W) + 2R = 10 s).
// F leaves room for the MDS to evict a frozen client: its cap-revoke
// timeout (1 s) plus up to one MDS tick (5 s by default) plus blocklisting.
const CR: u64 = 500;
const CF: u64 = 8000;
const CK: u64 = 1000;
const CW: u64 = 1000;
const CD: u64 = 11000;

/// `vmlease check-config` on a CephFS lockspace: asks the cluster for the
/// MDS settings and warns exactly when they do not fit the timing.
fn check_config_reads_the_mds_settings(ceph: &CephCluster, ls: &std::path::Path) {
    let s = Scratch::new("cephfs-check");
    let conf = s.0.join("vmlease.conf");
    let write_conf = |d: u64| {
        fs::write(
            &conf,
            format!(
                "host_id = 1\nlockspace_dir = \"{}\"\nunsafe_no_watchdog = true\n\
                 renew_interval = 0.5\nrenew_fail_timeout = 8\nkill_timeout = 1\n\
                 watchdog_timeout = 1\nhost_dead_timeout = {d}\n",
                ls.display()
            ),
        )
        .unwrap()
    };
    let ceph_args = format!("-c {}", ceph.dir.join("ceph.conf").display());
    let check = || {
        let out = std::process::Command::new(bin("vmlease"))
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CEPH_ARGS", &ceph_args)
            .args(["--config", conf.to_str().unwrap(), "check-config"])
            .output()
            .unwrap();
        assert!(out.status.success(), "check-config: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let warnings: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("warning: CephFS"))
            .map(String::from)
            .collect();
        (text, warnings)
    };
    let set = |opt: &str, val: &str| ceph.ceph(&["config", "set", "mds", opt, val]);

    // This cluster: cap revoke 1 s + tick 1 s fit F - 2R = 7 s; the
    // default session_autoclose (300 s) exceeds D = 11 s.
    write_conf(11);
    let (text, w) = check();
    assert!(
        text.contains("CephFS: mds_cap_revoke_eviction_timeout 1s, mds_tick_interval 1s"),
        "{text}"
    );
    assert_eq!(w.len(), 1, "{text}");
    assert!(
        w[0].contains("session_autoclose 300s exceeds host_dead_timeout 11s"),
        "{text}"
    );

    // Session timers within D: no CephFS warning.
    ceph.set_session_timeouts(30, 30);
    write_conf(40);
    let (text, w) = check();
    assert!(w.is_empty(), "{text}");

    // Ceph's default (eviction for unreturned capabilities off) is flagged,
    // and so is an eviction too slow for F.
    set("mds_cap_revoke_eviction_timeout", "0");
    let (text, w) = check();
    assert_eq!(w.len(), 1, "{text}");
    assert!(
        w[0].contains("mds_cap_revoke_eviction_timeout is 0 (off)"),
        "{text}"
    );
    set("mds_cap_revoke_eviction_timeout", "6.5");
    let (text, w) = check();
    assert_eq!(w.len(), 1, "{text}");
    assert!(
        w[0].contains("exceeds renew_fail_timeout - 2 * renew_interval = 7s"),
        "{text}"
    );
    set("mds_cap_revoke_eviction_timeout", "1");

    // An evicted client that is not blocklisted can reconnect and write.
    set("mds_session_blocklist_on_evict", "false");
    let (text, w) = check();
    set("mds_session_blocklist_on_evict", "true");
    assert_eq!(w.len(), 1, "{text}");
    assert!(
        w[0].contains("mds_session_blocklist_on_evict is false"),
        "{text}"
    );
    let (text, w) = check();
    assert!(w.is_empty(), "{text}");

    // The cluster cannot be asked: a warning saying so, never silence.
    let out = std::process::Command::new(bin("vmlease"))
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CEPH_ARGS", "-c /nonexistent/ceph.conf")
        .args(["--config", conf.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("warning: CephFS: could not read the cluster's MDS settings"),
        "{text}"
    );
    eprintln!("cephfs: check-config read the MDS settings and warned as expected");
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[test]
fn cephfs_behaviour_and_a_storage_hang_fence() {
    let _g = serial();
    let t0 = Instant::now();
    let ceph = CephCluster::up("fence");
    // Evict a client that keeps capabilities others need after 1 s (the
    // production rule: well below renew_fail_timeout, see docs/cephfs.md).
    for (opt, val) in [
        ("mds_cap_revoke_eviction_timeout", "1"),
        ("mds_tick_interval", "1"),
    ] {
        let out = std::process::Command::new("ceph")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .arg("-c")
            .arg(ceph.dir.join("ceph.conf"))
            .args(["config", "set", "mds", opt, val])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ceph config set {opt}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("ceph cluster up in {:.1} s", t0.elapsed().as_secs_f64());
    let ma = ceph.mount("hosta");
    let mb = ceph.mount("hostb");
    let ls_a = ma.path.join("vmlease");
    let ls_b = mb.path.join("vmlease");
    Lockspace::init(&ls_a, 16).unwrap();
    let la = Lockspace::open(&ls_a).unwrap();
    let lb = Lockspace::open(&ls_b).unwrap();

    // 1. A renewal written and fsynced through A is seen by B's next read.
    let mut rec = HostRecord {
        host_id: 1,
        host_name: "a".into(),
        boot_id: "b".into(),
        incarnation: 1,
        counter: 0,
        state: HostState::Live,
        timing: vmlease::config::parse("", "x").unwrap().timing,
        unsafe_no_watchdog: true,
        mono_ms: 0,
        wall: 0,
    };
    let (mut w, mut r) = (Vec::new(), Vec::new());
    let mut stale = 0;
    for i in 1..=100u64 {
        rec.counter = i;
        let t = Instant::now();
        la.write_host(&rec).unwrap();
        w.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let slots = lb.read_hosts().unwrap();
        r.push(t.elapsed().as_secs_f64() * 1e3);
        // vmlease reads around the page cache (O_DIRECT): on these default
        // ceph-fuse mounts B must see every renewal A completed.
        let seen = slots[0].record().map(|x| x.counter);
        if seen != Some(i) {
            stale += 1;
            eprintln!("cephfs: B read counter {seen:?} right after A wrote {i}");
        }
    }
    assert_eq!(stale, 0, "B read {stale}/100 stale renewals");
    eprintln!(
        "cephfs: renewal write+fsync median {:.2} ms, table read by the other client median {:.2} ms, {stale}/100 stale ",
        median(&mut w),
        median(&mut r)
    );
    // 2. The record lock serialises across clients.
    let g = la.lock_record("k", 100).unwrap();
    assert!(lb.lock_record("k", 200).is_err(), "B got A's record lock");
    drop(g);
    let t = Instant::now();
    drop(lb.lock_record("k", 2000).unwrap());
    eprintln!(
        "cephfs: record lock handed over across clients in {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    check_config_reads_the_mds_settings(&ceph, &ls_a);
    let _ = fs::remove_file(ls_a.join("hosts"));
    drop((la, lb));
    let _ = fs::remove_dir_all(&ls_a);
    Lockspace::init(&ls_a, 16).unwrap();

    // 3. Two hosts on CephFS; A's client freezes: A fences after F, B takes
    //    over only after D.
    let s = Scratch::new("cephfs");
    // CephFS timing: the MDS evicts a client that does not return its
    // capabilities after 1 s (tests/ceph/cluster.sh), well inside F, so a
    // frozen client never stalls the other hosts' renewals for long.
    let (a, b, mut qa, qb) = leased_on_a(&s, &ls_a, &ls_b);

    ma.hang();
    let hung = boottime_ms();
    let killed = wait_exit(
        "A to kill its QEMU after its CephFS client hung",
        &mut qa,
        CF + CK + 5000,
        || format!("A's log: {}", a.log_text()),
    );
    let a_last = a.status().last_renewal_ms;
    assert!(
        killed >= a_last + CF,
        "killed {} ms after A's last renewal, before F",
        killed - a_last
    );
    a.wait_log("renewal I/O has not completed");
    let (took, last_err) = take_over(
        &b,
        UUID_A,
        "web",
        &qb,
        Some("/images/web.qcow2"),
        a_last + CD + 8000,
    );
    assert!(
        took >= a_last + CD,
        "B took over {} ms after A's last renewal, before D",
        took - a_last
    );
    // Refused until then: "may be taken over after ..." once A's client was
    // evicted, or a storage timeout while the MDS was still revoking A's
    // capabilities on the record.
    assert!(
        last_err.contains("may be taken over after") || last_err.contains("no answer from storage"),
        "{last_err}"
    );
    eprintln!(
        "cephfs storage hang: A's QEMU killed {} ms after the hang ({} ms after its last renewal), B acquired {} ms after it (D = {CD} ms)",
        killed - hung,
        killed - a_last,
        took - a_last
    );
    ma.resume();
    // The MDS evicted and blocklisted A's frozen client (it did not give
    // back its capabilities), so A's mount stays dead after the resume:
    // A's fence holds, and nothing A does reaches the lockspace any more.
    let counter = |ls: &std::path::Path| {
        Lockspace::open(ls)
            .and_then(|l| l.read_host(1))
            .ok()
            .and_then(|s| s.record().map(|r| r.counter))
    };
    let frozen_at = counter(&ls_b);
    wait_until("A to report itself fenced", 5000, || {
        let st = a.status();
        if st.state == HostState::FencedClean || st.state == HostState::Fencing {
            Ok(())
        } else {
            Err(format!("{}", st.state))
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(3 * CR));
    assert_eq!(counter(&ls_b), frozen_at, "an evicted client still renewed");
}

/// Hosts A and B (CephFS timing, no watchdog) on the lockspace as each
/// mounts it, A's stand-in QEMU holding "web", B's refused it.
fn leased_on_a(
    s: &Scratch,
    ls_a: &std::path::Path,
    ls_b: &std::path::Path,
) -> (Host, Host, Proc, Proc) {
    let timing = [CR, CF, CK, CW, CD];
    // On CephFS: no allow_local_lockspace needed.
    let on_ceph = "unsafe_no_watchdog = true\nallow_local_lockspace = false\n";
    let mut a = Host::with_timing(s, 1, ls_a, on_ceph, timing);
    let mut b = Host::with_timing(
        s,
        2,
        ls_b,
        &format!("{on_ceph}trust_unsafe_peers = true\n"),
        timing,
    );
    a.start(&[]);
    b.start(&[]);
    let qa = standin_qemu();
    lease(&a, UUID_A, "web", &qa, Some("/images/web.qcow2")).unwrap();
    let qb = standin_qemu();
    let e = lease(&b, UUID_A, "web", &qb, None).unwrap_err();
    assert!(e.contains("held by host 1 (host-1.test)"), "{e}");
    (a, b, qa, qb)
}

/// How host A loses its CephFS client in [`a_host_whose_client_is_gone_fences`].
#[derive(Clone, Copy, Debug)]
enum ClientLoss {
    /// The MDS evicts and blocklists A's session (`ceph tell mds evict`).
    Evicted,
    /// A's ceph-fuse dies (SIGKILL): its mount answers ENOTCONN.
    Crashed,
}

/// Host A's CephFS client is evicted or dies while A holds a lease: A's
/// renewals fail at once; its QEMU is killed at once when Ceph refuses the
/// evicted client (EBLOCKLISTED, fence cause storage-fenced), F after its
/// last renewal when the client died; B acquires the lease D after it,
/// not before. Returns (killed, taken) in
/// ms after A's last renewal.
fn client_loss_fences(ceph: &CephCluster, loss: ClientLoss) -> (u64, u64) {
    let tag = format!("{loss:?}").to_lowercase();
    let ma = ceph.mount(&format!("a-{tag}"));
    let mb = ceph.mount(&format!("b-{tag}"));
    let ls_a = ma.path.join(format!("vmlease-{tag}"));
    let ls_b = mb.path.join(format!("vmlease-{tag}"));
    Lockspace::init(&ls_a, 16).unwrap();
    let s = Scratch::new(&format!("cephfs-{tag}"));
    let (mut a, mut b, mut qa, qb) = leased_on_a(&s, &ls_a, &ls_b);

    match loss {
        ClientLoss::Evicted => ceph.evict(&format!("a-{tag}")),
        ClientLoss::Crashed => ma.kill(),
    }
    // The fault happened: A's mount no longer answers.
    wait_until("A's mount to fail", 10_000, || {
        match fs::metadata(ls_a.join("hosts")) {
            Err(e) => Ok(e),
            Ok(_) => Err("A's mount still works".into()),
        }
    });
    let killed = wait_exit(
        &format!("A to kill its QEMU after its CephFS client was {tag}"),
        &mut qa,
        CF + CK + 5000,
        || format!("A's status {:?}", a.status().state),
    );
    let a_last = a.status().last_renewal_ms;
    match loss {
        // Ceph refuses an evicted client (EBLOCKLISTED): A fences at once,
        // for the blocklist, not only F after its last renewal.
        ClientLoss::Evicted => {
            let reason = a.status().reason;
            assert!(
                reason.starts_with("storage-fenced"),
                "{tag}: A killed its QEMU {} ms after its last renewal for {reason:?}, not for \
                 the blocklist",
                killed - a_last
            );
        }
        // A dead client (ENOTCONN) is no proof of a fence by Ceph: F.
        ClientLoss::Crashed => assert!(
            killed >= a_last + CF,
            "{tag}: killed {} ms after A's last renewal, before F",
            killed - a_last
        ),
    }
    let (took, _) = take_over(
        &b,
        UUID_A,
        "web",
        &qb,
        Some("/images/web.qcow2"),
        a_last + CD + 8000,
    );
    assert!(
        took >= a_last + CD,
        "{tag}: B took over {} ms after A's last renewal, before D",
        took - a_last
    );
    let st = a.status();
    assert!(
        matches!(st.state, HostState::Fencing | HostState::FencedClean),
        "{tag}: A is {} after losing its storage",
        st.state
    );
    a.stop();
    b.stop();
    ma.umount_hard();
    drop(mb);
    (killed - a_last, took - a_last)
}

#[test]
fn a_host_whose_client_is_gone_fences() {
    let _g = serial();
    let ceph = CephCluster::up("loss");
    for (opt, val) in [
        ("mds_cap_revoke_eviction_timeout", "1"),
        ("mds_tick_interval", "1"),
    ] {
        ceph.ceph(&["config", "set", "mds", opt, val]);
    }
    for loss in [ClientLoss::Evicted, ClientLoss::Crashed] {
        let (killed, taken) = client_loss_fences(&ceph, loss);
        eprintln!(
            "cephfs client {loss:?}: A's QEMU killed {killed} ms after its last renewal (F = {CF}), \
             B acquired {taken} ms after it (D = {CD})"
        );
    }
}

/// Waits until `h`'s acquire of "web" for `q` is refused because the
/// other host holds it. On Ceph's default MDS settings the first read of
/// a record another client just wrote may wait for a capability
/// hand-over (the MDS ticks every 5 s) longer than the acquire's
/// deadline: such a refusal ("no answer from storage") is retried.
fn refused_for_holder(h: &Host, q: &Proc, holder: &str) {
    wait_until(
        &format!("host {}'s acquire refused: {holder}", h.id),
        20_000,
        || match lease(h, UUID_A, "web", q, None) {
            Ok(()) => panic!("host {} acquired a lease {holder}", h.id),
            Err(e) if e.contains(holder) => Ok(()),
            Err(e) => Err(e),
        },
    );
}

/// The pid of a host's running daemon.
fn daemon_pid(h: &Host) -> u32 {
    h.daemon
        .as_ref()
        .map(|d| d.pid())
        .expect("a running daemon")
}

/// One `Vm...:` line of /proc/PID/status ("?" when gone).
fn proc_status(pid: u32, key: &str) -> String {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

/// Resident and locked memory of a process, for the log: `VmLck` is the
/// size of its locked mappings (address space, reservations included),
/// `Locked` in smaps_rollup the locked pages actually in memory.
fn mem(pid: u32) -> String {
    let locked = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Locked:"))
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into());
    format!(
        "RSS {}, locked in memory {locked} (locked mappings {})",
        proc_status(pid, "VmRSS"),
        proc_status(pid, "VmLck")
    )
}

/// Whether a shared object whose name contains `lib` is mapped in `pid`.
fn maps_have(pid: u32, lib: &str) -> bool {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/maps: {e}"));
    maps.lines().any(|l| l.contains(lib))
}

/// The RADOS worker (`vmlease-watchdog --rados-worker`) of daemon `pid`.
fn rados_worker(pid: u32) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let child: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(e.path().join("stat")).ok()?;
        let ppid: u32 = stat
            .rsplit(')')
            .next()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let cmd = fs::read(e.path().join("cmdline")).ok()?;
        (ppid == pid && cmd.split(|b| *b == 0).any(|a| a == b"--rados-worker")).then_some(child)
    })
}

/// A worker the test stopped: killed at the end whatever happens (the
/// daemon kills it itself when the test passes), if it is still that
/// daemon's worker.
struct StoppedWorker {
    daemon: u32,
    pid: u32,
}

impl Drop for StoppedWorker {
    fn drop(&mut self) {
        if rados_worker(self.daemon) == Some(self.pid) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
        }
    }
}

/// What host B's daemon did while host A hung, from its status.
struct Watched {
    /// Gaps between B's consecutive renewals (ms).
    gaps: Vec<u64>,
    /// B's state when it was last not running, with its reason.
    fenced: Option<String>,
}

/// Watches host `state_dir`'s status every 20 ms until `stop` is set.
fn watch_renewals(
    state_dir: std::path::PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Watched> {
    std::thread::spawn(move || {
        let mut w = Watched {
            gaps: Vec::new(),
            fenced: None,
        };
        let mut last = None;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            if let Ok(Some(st)) = vmlease::status::Status::read(&state_dir) {
                if !st.state.is_running() && w.fenced.is_none() {
                    w.fenced = Some(format!("{}: {}", st.state, st.reason));
                }
                if let Some(prev) = last {
                    if st.last_renewal_ms > prev {
                        w.gaps.push(st.last_renewal_ms - prev);
                    }
                }
                last = Some(st.last_renewal_ms);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        w
    })
}

/// Issue 21 on Ceph's default MDS settings (cap-revoke eviction off,
/// session timeout 60 s): host A's ceph-fuse freezes (SIGSTOP) while A
/// holds a lease. A fences at F; healthy host B renews throughout - its
/// renewal touches nothing A's client holds capabilities on: the host
/// table through RADOS, its own probe file through CephFS - and takes
/// A's lease over after D (reading the lease record A wrote waits for
/// the MDS to take A's capabilities back: a takeover may be delayed by a
/// hung host, a renewal never). With `rados` false (the host table
/// through the file, as before) B fences: returns what B did.
fn hung_peer(ceph: &CephCluster, tag: &str, rados: bool) -> (Watched, u64, u64) {
    let ma = ceph.mount(&format!("a-{tag}"));
    let mb = ceph.mount(&format!("b-{tag}"));
    let ls_a = ma.path.join("vmlease");
    let ls_b = mb.path.join("vmlease");
    Lockspace::init(&ls_a, 16).unwrap();
    let s = Scratch::new(&format!("cephfs-{tag}"));
    let timing = [CR, CF, CK, CW, CD];
    let extra = |client: &str| {
        let mut e = "unsafe_no_watchdog = true\nallow_local_lockspace = false\n".to_string();
        if rados {
            e += &format!(
                "liveness_rados = true\nceph_conf = \"{}\"\nceph_client_id = \"{client}\"\n",
                ceph.conf().display()
            );
        }
        e
    };
    let mut a = Host::with_timing(&s, 1, &ls_a, &extra(&format!("a-{tag}")), timing);
    let mut b = Host::with_timing(
        &s,
        2,
        &ls_b,
        &format!("{}trust_unsafe_peers = true\n", extra(&format!("b-{tag}"))),
        timing,
    );
    a.start(&[]);
    b.start(&[]);
    if rados {
        a.wait_log("host table through RADOS");
        b.wait_log("host table through RADOS");
    }
    let mut qa = standin_qemu();
    lease(&a, UUID_A, "web", &qa, Some("/images/web.qcow2")).unwrap();
    let qb = standin_qemu();
    refused_for_holder(&b, &qb, "held by host 1 (host-1.test)");
    // Both hosts see each other renew (through whichever path).
    wait_until("B to see A renew", 5_000, || {
        let st = b.status();
        match st.peers.iter().find(|p| p.host_id == 1) {
            Some(p) if p.counter > 2 => Ok(()),
            other => Err(format!("B's view of A: {other:?}")),
        }
    });

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = watch_renewals(b.cfg.state_dir.clone(), stop.clone());
    let a_before = a.status().last_renewal_ms;
    ma.hang();
    let hung_at = boottime_ms();
    let killed = wait_exit(
        "A to kill its QEMU after its ceph-fuse froze",
        &mut qa,
        CF + CK + 5000,
        || format!("A's status {:?}", a.status().state),
    );
    let a_last = a.status().last_renewal_ms.max(a_before);
    assert!(
        killed >= a_last + CF,
        "{tag}: A killed its QEMU {} ms after its last renewal, before F",
        killed - a_last
    );
    // B keeps renewing for the whole time a takeover may take, or fences.
    let mut took = None;
    let deadline = a_last + CD + 90_000;
    let mut last_err = String::new();
    while boottime_ms() < deadline {
        if !b.status().state.is_running() {
            break;
        }
        if took.is_none() {
            match lease(&b, UUID_A, "web", &qb, Some("/images/web.qcow2")) {
                Ok(()) => {
                    took = Some(boottime_ms());
                    // Watch B a while longer: A is still frozen.
                    std::thread::sleep(std::time::Duration::from_millis(2 * CF));
                    break;
                }
                Err(e) => last_err = e,
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let watched = watcher.join().unwrap();
    let pb = daemon_pid(&b);
    match rados_worker(pb) {
        Some(w) => {
            assert!(
                !maps_have(pb, "librados"),
                "{tag}: daemon B has librados mapped"
            );
            eprintln!("{tag}: B's daemon {}; its RADOS worker {}", mem(pb), mem(w));
        }
        None => eprintln!("{tag}: B's daemon {}", mem(pb)),
    }
    ma.resume();
    a.stop();
    b.stop();
    drop(ma);
    drop(mb);
    let took = match (took, &watched.fenced) {
        (Some(t), _) => t,
        (None, Some(_)) => 0,
        (None, None) => panic!(
            "{tag}: B never took over 'web' within D + 90 s of A's last renewal; last refusal: {last_err}"
        ),
    };
    if took > 0 {
        assert!(
            took >= a_last + CD,
            "{tag}: B took over {} ms after A's last renewal, before D",
            took - a_last
        );
    }
    let _ = hung_at;
    (watched, killed - a_last, took.saturating_sub(a_last))
}

/// Migration: a host renewing through the file and one renewing through
/// RADOS on one lockspace (no conversion) see each other renew, hold and
/// refuse leases as usual, and neither fences (a RADOS write clobbered by
/// a CephFS client's write-back would be a collision fence).
fn file_and_rados_hosts_share_a_lockspace(ceph: &CephCluster) {
    let ma = ceph.mount("mix-a");
    let mb = ceph.mount("mix-b");
    let ls_a = ma.path.join("vmlease-mix");
    let ls_b = mb.path.join("vmlease-mix");
    Lockspace::init(&ls_a, 16).unwrap();
    let s = Scratch::new("cephfs-mix");
    let on_ceph = "unsafe_no_watchdog = true\nallow_local_lockspace = false\n";
    let mut a = Host::with_timing(&s, 1, &ls_a, on_ceph, [CR, CF, CK, CW, CD]);
    let mut b = Host::with_timing(
        &s,
        2,
        &ls_b,
        &format!(
            "{on_ceph}liveness_rados = true\nceph_conf = \"{}\"\nceph_client_id = \"mix-b\"\n",
            ceph.conf().display()
        ),
        [CR, CF, CK, CW, CD],
    );
    a.start(&[]);
    b.start(&[]);
    b.wait_log("host table through RADOS");
    let qb = standin_qemu();
    lease(&b, UUID_A, "web", &qb, Some("/images/web.qcow2")).unwrap();
    let qa = standin_qemu();
    refused_for_holder(&a, &qa, "held by host 2 (host-2.test)");
    for (me, other, h) in [(&a, 2u16, "A (file)"), (&b, 1u16, "B (RADOS)")] {
        let from = me
            .status()
            .peers
            .iter()
            .find(|p| p.host_id == other)
            .map(|p| p.counter)
            .unwrap_or(0);
        wait_until(
            &format!("{h} to see host {other} renew 10 times"),
            15_000,
            || {
                let st = me.status();
                assert!(st.state.is_running(), "{h} is {}: {}", st.state, st.reason);
                match st.peers.iter().find(|p| p.host_id == other) {
                    Some(p) if p.counter >= from + 10 => Ok(()),
                    p => Err(format!("{h}'s view of host {other}: {p:?}")),
                }
            },
        );
    }
    for (h, st) in [("A", a.status()), ("B", b.status())] {
        assert!(st.state.is_running(), "{h} is {}: {}", st.state, st.reason);
    }
    // librados runs in B's worker, never in a daemon: the fence path
    // links and loads no network client (the worker's maps show it, or
    // the check would be blind).
    let (pa, pb) = (daemon_pid(&a), daemon_pid(&b));
    let w1 = rados_worker(pb).expect("B's RADOS worker");
    assert!(
        maps_have(w1, "librados"),
        "B's worker {w1} has no librados mapped"
    );
    for (h, pid) in [("A (file)", pa), ("B (RADOS)", pb)] {
        assert!(
            !maps_have(pid, "librados"),
            "daemon {h} (pid {pid}) has librados mapped"
        );
    }
    assert_eq!(
        rados_worker(pa),
        None,
        "A renews through the file: no worker"
    );
    eprintln!(
        "mixed lockspace: daemon through the file: {}; daemon through RADOS: {}; its RADOS \
         worker: {}",
        mem(pa),
        mem(pb),
        mem(w1)
    );
    // A worker that stops answering is hung storage to B for one request:
    // killed at io_timeout, replaced, and B renews again well within F.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = watch_renewals(b.cfg.state_dir.clone(), stop.clone());
    let stopped = StoppedWorker {
        daemon: pb,
        pid: w1,
    };
    let stopped_at = boottime_ms();
    let rc = std::process::Command::new("kill")
        .args(["-STOP", &w1.to_string()])
        .status()
        .unwrap();
    assert!(rc.success(), "kill -STOP {w1}");
    let (w2, seen) = wait_until("B to replace its stopped RADOS worker", CF + 5_000, || {
        let st = b.status();
        assert!(st.state.is_running(), "B is {}: {}", st.state, st.reason);
        match rados_worker(pb) {
            Some(w) if w != w1 => Ok((w, boottime_ms())),
            w => Err(format!("B's worker {w:?} (stopped: {w1})")),
        }
    });
    wait_until("B to renew through its new RADOS worker", CF, || {
        let st = b.status();
        assert!(st.state.is_running(), "B is {}: {}", st.state, st.reason);
        if st.last_renewal_ms > seen {
            Ok(())
        } else {
            Err(format!(
                "B's last renewal at {} ms, new worker seen at {seen} ms",
                st.last_renewal_ms
            ))
        }
    });
    let replaced = boottime_ms() - stopped_at;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let watched = watcher.join().unwrap();
    drop(stopped);
    b.wait_log("did not answer within");
    assert!(
        maps_have(w2, "librados"),
        "B's new worker {w2} has no librados"
    );
    assert!(!maps_have(pb, "librados"), "daemon B has librados mapped");
    let max = watched.gaps.iter().copied().max().unwrap_or(0);
    eprintln!(
        "RADOS worker {w1} stopped: replaced by {w2} and renewing after {replaced} ms; longest \
         gap between B's renewals {max} ms (io_timeout {}, F {CF})",
        b.cfg.io_timeout
    );
    assert_eq!(watched.fenced, None, "B fenced because its worker stopped");
    assert!(
        max < CF,
        "B's renewals stalled {max} ms after its worker stopped (F = {CF})"
    );
    a.stop();
    b.stop();
    drop(ma);
    drop(mb);
}

#[test]
fn a_hung_host_makes_no_other_host_fence() {
    let _g = serial();
    let ceph = CephCluster::up("hung");
    // Ceph's defaults, as an operator who tuned nothing has them.
    let eviction = ceph.ceph(&["config", "get", "mds", "mds_cap_revoke_eviction_timeout"]);
    assert_eq!(eviction.trim().parse::<f64>(), Ok(0.0), "{eviction}");
    file_and_rados_hosts_share_a_lockspace(&ceph);
    let (w, killed, took) = hung_peer(&ceph, "hung", true);
    let mut gaps = w.gaps.clone();
    gaps.sort_unstable();
    let max = gaps.last().copied().unwrap_or(0);
    eprintln!(
        "ceph-fuse frozen on A (Ceph default MDS settings): A's QEMU killed {killed} ms after its \
         last renewal (F = {CF}); B took over {took} ms after it (D = {CD}); B renewed {} times \
         meanwhile, gap between renewals median {} ms, max {max} ms (R = {CR}); B fenced: {:?}",
        gaps.len(),
        gaps.get(gaps.len() / 2).copied().unwrap_or(0),
        w.fenced
    );
    assert_eq!(w.fenced, None, "healthy host B fenced while A was frozen");
    assert!(
        max < CF / 2,
        "B's renewals stalled for {max} ms while A was frozen (F = {CF})"
    );
    assert!(
        gaps.len() as u64 >= (took / CR) / 2,
        "B renewed only {} times",
        gaps.len()
    );
    a_start_waits_out_a_hung_client(&ceph);
}

/// A daemon whose ceph-fuse hangs while it claims its host id waits (its
/// reads of the slot miss their deadline and are done again) instead of
/// exiting, and joins once the client answers. The slot holds a record of
/// another machine, so the claim watches it for that record's D: the
/// client is frozen during the watch.
fn a_start_waits_out_a_hung_client(ceph: &CephCluster) {
    let mc = ceph.mount("slow-claim");
    let ls = mc.path.join("vmlease-slow");
    Lockspace::init(&ls, 16).unwrap();
    let s = Scratch::new("cephfs-slow-claim");
    // The small timing of the local suites: io_timeout F/3 = 0.5 s, the
    // watch D = 4 s. No lease is taken, so the MDS timing does not matter.
    let on_ceph = "unsafe_no_watchdog = true\nallow_local_lockspace = false\n";
    let mut c = Host::new(&s, 1, &ls, on_ceph);
    let gone = HostRecord {
        host_id: 1,
        host_name: "gone-machine".into(),
        boot_id: "an-old-boot".into(),
        incarnation: 1,
        counter: 9,
        state: HostState::Live,
        timing: c.cfg.timing,
        unsafe_no_watchdog: true,
        mono_ms: 0,
        wall: 0,
    };
    Lockspace::open(&ls).unwrap().write_host(&gone).unwrap();
    c.spawn(&[]);
    c.wait_log("watching the slot for");
    mc.hang();
    let hung_at = boottime_ms();
    let slow = "joining the lockspace: the storage is slow";
    wait_until(&format!("the daemon to log '{slow}'"), 10_000, || {
        let t = c.log_text();
        if t.contains(slow) {
            Ok(())
        } else if c.exit_code().is_some() {
            Err(format!("the daemon exited: {t}"))
        } else {
            Err(t)
        }
    });
    // Frozen for longer than the watch: the daemon stays, unprotected.
    while boottime_ms() < hung_at + D + 1000 {
        assert_eq!(c.exit_code(), None, "the daemon exited: {}", c.log_text());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let st = c.status();
    assert!(st.reason.contains(slow), "status while frozen: {st:?}");
    assert!(vmlease::status::protected_status(&c.cfg).is_err());
    mc.resume();
    let resumed_at = boottime_ms();
    wait_until("the daemon to join once its client answers", 15_000, || {
        vmlease::status::protected_status(&c.cfg)
            .map(|_| ())
            .map_err(|e| format!("{e}; log: {}", c.log_text()))
    });
    let joined_at = boottime_ms();
    let log = c.log_text();
    let (slow_at, claimed_at) = (log.find(slow), log.find("host id 1: claimed"));
    assert!(
        matches!((slow_at, claimed_at), (Some(a), Some(b)) if a < b),
        "the log should tell of the slow storage, then of the claim: {log}"
    );
    let now = Lockspace::open(&ls).unwrap().read_hosts().unwrap();
    let rec = now[0].record().expect("a record in slot 1");
    assert_eq!(
        rec.host_name, "host-1.test",
        "slot 1 after the claim: {rec:?}"
    );
    eprintln!(
        "ceph-fuse frozen during the claim's watch for {} ms: the daemon waited, protected {} ms after the client went on",
        resumed_at - hung_at,
        joined_at - resumed_at
    );
    c.stop();
    drop(mc);
}

/// The same with the host table read and written through the file (the
/// layout before `liveness_rados`): B fences because A froze. Run by hand
/// to see the cascade: `cargo test --test cephfs the_cascade_through_the_file
/// -- --ignored --nocapture`.
#[test]
#[ignore]
fn the_cascade_through_the_file() {
    let _g = serial();
    let ceph = CephCluster::up("cascade");
    let (w, killed, took) = hung_peer(&ceph, "cascade", false);
    eprintln!(
        "through the file: A killed {killed} ms after its last renewal, B took over {took} ms \
         after it, B fenced: {:?}, B's renewal gaps {:?}",
        w.fenced, w.gaps
    );
    assert!(w.fenced.is_some(), "B did not fence through the file");
}
