//! The operator's commands answer during a storage incident, on a real
//! Ceph cluster (tests/ceph/cluster.sh) with Ceph's default MDS settings:
//! `vmlease status`, `hosts`, `leases`, `can-evacuate` and
//! `storage-fence` print an answer and exit within their documented
//! deadline (docs/cli.md, "Deadlines")
//!
//! - on host B whose own ceph-fuse is healthy while host A's is frozen
//!   (SIGSTOP) after writing the host table and a lease record: B's reads
//!   of those files wait in the cluster for A (tests/cephfs_behaviour.rs,
//!   "frozen"), in uninterruptible sleep, which no thread deadline can
//!   end and which keeps a process from exiting;
//! - on host A itself, whose own ceph-fuse is frozen.
//!
//! Times are printed (`--nocapture`); docs/cli.md records them.

mod support;

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::ceph::*;
use support::daemons::{bin, serial, Host, Scratch};
use vmlease::lease::LeaseRecord;
use vmlease::lockspace::Lockspace;
use vmlease::resource::Resource;

/// What a command printed, its exit code and how long it took.
struct Ran {
    code: Option<i32>,
    out: String,
    took: Duration,
}

/// Runs `vmlease --config CONF ARGS`; gives up (and says so) after
/// `limit`: the process is then stuck and is left to the cleanup.
fn run(conf: &Path, args: &[&str], limit: Duration) -> Ran {
    let start = Instant::now();
    let mut child = Command::new(bin("vmlease"))
        .arg("--config")
        .arg(conf)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmlease");
    let (mut o, mut e) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = o.read_to_string(&mut s);
        let _ = e.read_to_string(&mut s);
        s
    });
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let took = start.elapsed();
            return Ran {
                code: st.code(),
                out: reader.join().unwrap(),
                took,
            };
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            return Ran {
                code: None,
                out: "(still running; output not collected)".into(),
                took: start.elapsed(),
            };
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The fence's `--timeout` in these runs (s).
const FENCE_TIMEOUT_S: u64 = 2;

/// The documented deadline of a command (docs/cli.md, "Deadlines").
fn deadline(h: &Host, command: &str) -> Duration {
    let io = h.cfg.io_timeout;
    let t = FENCE_TIMEOUT_S * 1000;
    Duration::from_millis(
        1000 + match command {
            "status" => io + 1000,
            "hosts" => 2 * io,
            // The wait for the blocklist and two ceph commands.
            "storage-fence" => 4 * io + t + 2 * t,
            _ => 7 * io,
        },
    )
}

/// Each command on `h` returns within its deadline with the expected
/// exit code; the times, for the record.
/// `peer`: the host `storage-fence` is asked to fence (last: it never
/// gets as far as a blocklist here, the host table read hangs first).
fn commands_answer(h: &Host, who: &str, peer: &str) -> Vec<String> {
    let mut failures = Vec::new();
    let timeout = FENCE_TIMEOUT_S.to_string();
    for (args, want) in [
        (&["status"][..], 1),
        (&["hosts"][..], 3),
        (&["leases"][..], 3),
        (&["can-evacuate", "1"][..], 3),
        (&["--json", "can-evacuate", "1"][..], 3),
        (&["storage-fence", peer, "--timeout", &timeout][..], 3),
    ] {
        let command = args.iter().find(|a| !a.starts_with("--")).unwrap();
        let limit = deadline(h, command);
        // Slack for process start and a loaded machine, never for the I/O.
        let r = run(&h.conf, args, limit + Duration::from_secs(10));
        eprintln!(
            "{who}: vmlease {} -> exit {:?} after {} ms (deadline {} ms)\n    {}",
            args.join(" "),
            r.code,
            r.took.as_millis(),
            limit.as_millis(),
            r.out.trim().replace('\n', "\n    ")
        );
        if r.code != Some(want) || r.took > limit + Duration::from_millis(500) {
            failures.push(format!(
                "{who}: vmlease {}: exit {:?} after {} ms; wanted exit {want} within {} ms: {}",
                args.join(" "),
                r.code,
                r.took.as_millis(),
                limit.as_millis(),
                r.out.trim()
            ));
        }
        if *command == "status" && !r.out.contains("protected:") {
            failures.push(format!("{who}: status printed no answer: {}", r.out));
        }
    }
    failures
}

#[test]
fn commands_answer_while_a_ceph_client_is_frozen() {
    let _g = serial();
    let ceph = CephCluster::up("clifrozen");
    let (ma, mb) = (ceph.mount("hosta"), ceph.mount("hostb"));
    let s = Scratch::new("cli-frozen");
    let extra = "unsafe_no_watchdog = true\n";
    // io_timeout F/3 = 3 s: above the MDS's occasional multi-second
    // capability hand-overs between healthy clients (mds_tick_interval is
    // 5 s by default), which would otherwise look like a hang.
    let timing = [1000, 9000, 2000, 3000, 15000];
    let a = Host::with_timing(&s, 1, &ma.path().join("ls"), extra, timing);
    let b = Host::with_timing(&s, 2, &mb.path().join("ls"), extra, timing);
    // A creates the lockspace and a lease record; B reads them; then A
    // writes both again (a renewal, a lease update), as a live host does.
    let ls_a = ma.path().join("ls");
    Lockspace::init(&ls_a, 16).unwrap();
    let key = Resource::domain("aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa").key();
    let la = Lockspace::open(&ls_a).unwrap();
    la.write_lease(&LeaseRecord::free(&key, "x"), 1).unwrap();
    for args in [&["hosts"][..], &["leases"][..]] {
        // A capability hand-over between healthy clients may take an MDS
        // tick or two: a few tries.
        let mut r = run(&b.conf, args, Duration::from_secs(60));
        for _ in 0..5 {
            if r.code == Some(0) {
                break;
            }
            r = run(&b.conf, args, Duration::from_secs(60));
        }
        assert_eq!(
            r.code,
            Some(0),
            "B's vmlease {args:?} before the fault: {}",
            r.out
        );
    }
    let table = ls_a.join("hosts");
    let f = OpenOptions::new().write(true).open(&table).unwrap();
    f.write_all_at(&[0; 512], 15 * 512).unwrap();
    f.sync_all().unwrap();
    // Closed before the freeze: every process this test starts would
    // otherwise inherit the descriptor and, closing it at exec, wait for
    // the frozen client to flush it.
    drop(f);
    la.write_lease(&LeaseRecord::free(&key, "x"), 1).unwrap();

    ma.hang();
    let mut failures = commands_answer(&b, "B (healthy client; A frozen)", "1");
    failures.extend(commands_answer(&a, "A (its own client frozen)", "2"));
    ma.resume();
    // The workers left behind finish once A answers.
    drop(ma);
    drop(mb);
    ceph.down();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
