//! Scale benchmark: one lockspace with many hosts and many leases.
//!
//! - N-1 lightweight simulated hosts renew their liveness slots while one
//!   real `vmlease-watchdog` (host N) runs: its CPU time, RSS and the bytes
//!   it moves per tick;
//! - lease acquire + release latency through the engine on a local
//!   directory, against a baseline of the raw file operations one acquire
//!   needs (lock, read, write, fsync, rename), measured in the same run.
//!
//! `cargo bench --bench scale` (full: 1000 hosts, 100,000 leases);
//! `cargo bench --bench scale -- --tiny` (CI; `cargo test --all-targets`,
//! which runs it without `--bench`, gets the tiny configuration too);
//! `cargo bench --bench scale -- --ceph` (root, under the heavy-test
//! lock): one renewal at 1,000 hosts on a real CephFS (tests/ceph), the
//! host table through the file against through RADOS (`liveness_rados`).

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[allow(dead_code)]
#[path = "../tests/support/ceph.rs"]
mod ceph;

use vmlease::config::Timing;
use vmlease::engine::Engine;
use vmlease::hosts::{HostRecord, HostState, SLOT_SIZE};
use vmlease::lease::Holder;
use vmlease::lockspace::Lockspace;
use vmlease::process::ProcId;
use vmlease::resource::Resource;

struct Params {
    hosts: u16,
    leases: usize,
    samples: usize,
    run_secs: u64,
}

fn timing() -> Timing {
    Timing {
        renew_interval: 2000,
        renew_fail_timeout: 20000,
        kill_timeout: 10000,
        watchdog_timeout: 15000,
        host_dead_timeout: 41000,
        host_dead_derived: false,
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = &s[s.rfind(')').map(|i| i + 2).unwrap_or(0)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
}

fn rss_kb(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn daemon_at_scale(p: &Params, dir: &Path) -> (f64, u64, f64) {
    let ls_dir = dir.join("ls");
    Lockspace::init(&ls_dir, p.hosts).unwrap();
    let ls = Lockspace::open(&ls_dir).unwrap();
    let conf = dir.join("daemon.conf");
    fs::write(
        &conf,
        format!(
            "host_id = {}\nlockspace_dir = \"{}\"\nstate_dir = \"{}\"\nunsafe_no_watchdog = true\n\
             allow_local_lockspace = true\n",
            p.hosts,
            ls_dir.display(),
            dir.join("run").display()
        ),
    )
    .unwrap();
    // Simulated hosts 1..N-1: one writer thread renews every slot each R.
    let stop = Arc::new(AtomicBool::new(false));
    let (ls2, stop2, n) = (ls.clone(), stop.clone(), p.hosts);
    let writer = std::thread::spawn(move || {
        let mut counter = 0u64;
        while !stop2.load(Ordering::SeqCst) {
            counter += 1;
            let start = Instant::now();
            for id in 1..n {
                let rec = HostRecord {
                    host_id: id,
                    host_name: format!("sim-{id}.bench"),
                    boot_id: "sim-boot".into(),
                    incarnation: 1,
                    counter,
                    state: HostState::Live,
                    timing: timing(),
                    unsafe_no_watchdog: true,
                    mono_ms: 0,
                    wall: 0,
                };
                let f = fs::OpenOptions::new()
                    .write(true)
                    .open(ls2.hosts_path())
                    .unwrap();
                f.write_all_at(&rec.encode(), (id as u64 - 1) * SLOT_SIZE as u64)
                    .unwrap();
            }
            let spent = start.elapsed();
            std::thread::sleep(Duration::from_millis(2000).saturating_sub(spent));
        }
    });
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_vmlease-watchdog"));
    let mut child = Command::new(&exe)
        .args(["--config", conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", exe.display()));
    // The daemon joins after its claim's read-back (2 x io_timeout + R):
    // wait until its status shows every simulated host, bounded.
    let waited = Instant::now();
    let limit = Duration::from_millis(4 * 5000 + 4 * timing().renew_interval + 30_000);
    loop {
        let seen = vmlease::status::Status::read(&dir.join("run"))
            .ok()
            .flatten()
            .map(|st| st.peers.len());
        if seen == Some(p.hosts as usize) {
            break;
        }
        if let Ok(Some(code)) = child.try_wait() {
            panic!("vmlease-watchdog exited ({code}) before it joined");
        }
        if waited.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "waited {limit:?} for the daemon's status to show {} hosts; last saw {seen:?}",
                p.hosts
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (t0, c0) = (Instant::now(), cpu_ticks(child.id()));
    std::thread::sleep(Duration::from_secs(p.run_secs));
    let (secs, c1) = (t0.elapsed().as_secs_f64(), cpu_ticks(child.id()));
    let rss = rss_kb(child.id());
    // The daemon must have observed every simulated host.
    let st = vmlease::status::Status::read(&dir.join("run"))
        .unwrap()
        .unwrap();
    assert_eq!(st.peers.len(), p.hosts as usize, "daemon sees every host");
    let _ = child.kill();
    let _ = child.wait();
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let cpu_pct = (c1 - c0) as f64 / 100.0 / secs * 100.0;
    let read_kb = (p.hosts as usize * SLOT_SIZE) as f64 / 1024.0;
    (cpu_pct, rss, read_kb)
}

fn acquire_latency(p: &Params, dir: &Path) -> (f64, f64, f64, f64) {
    let ls_dir = dir.join("ls-acq");
    Lockspace::init(&ls_dir, 4).unwrap();
    let ls = Lockspace::open(&ls_dir).unwrap();
    let eng = Engine {
        ls: ls.clone(),
        host_id: 1,
        boot_id: "b".into(),
        dead_ms: 41000,
        trust_unsafe_peers: false,
        lock_timeout_ms: 1000,
        view: None,
        process_alive: Arc::new(|_: ProcId| true),
    };
    let me = Holder {
        host_id: 1,
        boot_id: "b".into(),
        pid: 1,
        pid_start: 1,
        domain_uuid: "u".into(),
        domain_name: "bench".into(),
    };
    let mut ours = Vec::new();
    let mut raw = Vec::new();
    for i in 0..p.samples {
        let r = Resource::disk(&format!("/images/{i}.qcow2"), false);
        let t = Instant::now();
        eng.acquire(&r, &me, None).unwrap();
        eng.release(&r.key(), &r.name, &me).unwrap();
        ours.push(t.elapsed().as_secs_f64() * 1e6);
        // Baseline: the same file operations with no protocol.
        let key = format!("raw-{i}");
        let t = Instant::now();
        for _ in 0..2 {
            let _g = ls.lock_record(&key, 1000).unwrap();
            let _ = fs::read(ls.lease_path(&key));
            vmlease::lockspace::write_atomic(&ls.lease_path(&key), &[b'x'; 200]).unwrap();
        }
        raw.push(t.elapsed().as_secs_f64() * 1e6);
    }
    (
        percentile(&mut ours.clone(), 0.5),
        percentile(&mut ours, 0.99),
        percentile(&mut raw.clone(), 0.5),
        percentile(&mut raw, 0.99),
    )
}

fn leases_listing(p: &Params, dir: &Path) -> (usize, f64) {
    let ls_dir = dir.join("ls-many");
    Lockspace::init(&ls_dir, 4).unwrap();
    let ls = Lockspace::open(&ls_dir).unwrap();
    for i in 0..p.leases {
        let mut rec =
            vmlease::lease::LeaseRecord::free(&format!("disk-{i:064x}"), &format!("/images/{i}"));
        rec.version = 1;
        fs::write(ls.lease_path(&rec.key), rec.encode()).unwrap();
    }
    let t = Instant::now();
    let keys = ls.list_leases().unwrap();
    let mut n = 0;
    for k in &keys {
        if ls.read_lease(k, "").is_ok() {
            n += 1;
        }
    }
    (n, t.elapsed().as_secs_f64())
}

/// `vmlease hosts` and `vmlease leases` on a lockspace with `hosts` host
/// records and `leases` lease records, against reading the same files raw
/// (cat) in the same run.
fn cli_at_scale(p: &Params, dir: &Path) -> (f64, f64, f64) {
    let ls_dir = dir.join("ls-cli");
    Lockspace::init(&ls_dir, p.hosts).unwrap();
    let ls = Lockspace::open(&ls_dir).unwrap();
    for id in 1..=p.hosts {
        ls.write_host(&HostRecord {
            host_id: id,
            host_name: format!("hv{id}.bench"),
            boot_id: "b".into(),
            incarnation: 1,
            counter: 1,
            state: HostState::Live,
            timing: timing(),
            unsafe_no_watchdog: false,
            mono_ms: 0,
            wall: 0,
        })
        .unwrap();
    }
    for i in 0..p.leases {
        let mut rec =
            vmlease::lease::LeaseRecord::free(&format!("disk-{i:064x}"), &format!("/images/{i}"));
        rec.version = 1;
        fs::write(ls.lease_path(&rec.key), rec.encode()).unwrap();
    }
    let conf = dir.join("cli.conf");
    fs::write(
        &conf,
        format!(
            "host_id = 1\nlockspace_dir = \"{}\"\nstate_dir = \"{}\"\nio_timeout = 5\n\
             allow_local_lockspace = true\n",
            ls_dir.display(),
            dir.join("cli-run").display()
        ),
    )
    .unwrap();
    let exe = env!("CARGO_BIN_EXE_vmlease");
    let time = |args: &[&str]| {
        let t = Instant::now();
        let out = Command::new(exe).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t.elapsed().as_secs_f64()
    };
    let c = conf.to_str().unwrap();
    let hosts = time(&["--config", c, "hosts"]);
    let leases = time(&["--config", c, "leases"]);
    let t = Instant::now();
    let out = Command::new("sh")
        .args(["-c", &format!("cat {}/hosts > /dev/null && find {}/leases -type f ! -name '*.lock' -exec cat {{}} + > /dev/null", ls_dir.display(), ls_dir.display())])
        .output()
        .unwrap();
    assert!(out.status.success());
    (hosts, leases, t.elapsed().as_secs_f64())
}

/// One renewal's I/O (`renew_io`, as the daemon's renewal thread does
/// it) at 1,000 hosts on a real CephFS: through the file, and through
/// RADOS with the probe file. Prints a table.
fn renewal_on_ceph(samples: usize) {
    let hosts: u16 = 1000;
    let cluster = ceph::CephCluster::up("scale");
    let m = cluster.mount("scale");
    let dir = m.path.join("ls");
    Lockspace::init(&dir, hosts).unwrap();
    let file = Lockspace::open(&dir).unwrap();
    let rec = |id: u16, counter: u64| HostRecord {
        host_id: id,
        host_name: format!("host-{id}"),
        boot_id: "0b6f5b8e-8f2c-4b59-9d7c-7a1e3a0d9c11".into(),
        incarnation: 1,
        counter,
        state: HostState::Live,
        timing: timing(),
        unsafe_no_watchdog: false,
        mono_ms: 0,
        wall: 0,
    };
    for id in 2..=hosts {
        file.write_host(&rec(id, 1)).unwrap();
    }
    let rados = Lockspace::open(&dir)
        .unwrap()
        .via_rados(vmlease::rados::RadosConf {
            conf: cluster.conf(),
            client_id: "scale".into(),
            timeout_ms: 5000,
            worker: env!("CARGO_BIN_EXE_vmlease-watchdog").into(),
        });
    rados.create_probe(1).unwrap();
    let mut rows = Vec::new();
    for (name, ls) in [("file (before)", &file), ("RADOS + probe file", &rados)] {
        let mut last = ls.read_slot_raw(1).unwrap();
        let mut lat = Vec::new();
        let fuse = m.pid() as u32;
        // Through RADOS the I/O runs in the worker process (started by
        // the read above): its CPU counts too.
        let worker = ls.rados.as_ref().and_then(|r| r.worker_pid());
        let cpu_now =
            || cpu_ticks(std::process::id()) + cpu_ticks(fuse) + worker.map(cpu_ticks).unwrap_or(0);
        let cpu0 = cpu_now();
        let t0 = Instant::now();
        for i in 0..samples {
            let r = rec(1, 10 + i as u64);
            let t = Instant::now();
            let io = vmlease::daemon::renew::renew_io(ls, 1, &[last.clone()], Some(&r)).unwrap();
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
            assert!(io.wrote && io.collision.is_none(), "{name}: {io:?}");
            assert_eq!(io.table.len(), hosts as usize * SLOT_SIZE);
            last = r.encode();
        }
        let wall = t0.elapsed().as_secs_f64();
        assert_eq!(
            ls.rados.as_ref().and_then(|r| r.worker_pid()),
            worker,
            "{name}: the RADOS worker was replaced during the run"
        );
        let cpu = (cpu_now() - cpu0) as f64 / 100.0;
        rows.push((
            name,
            percentile(&mut lat, 0.5),
            percentile(&mut lat, 0.99),
            cpu / wall * 100.0,
            cpu / samples as f64 * 1000.0,
        ));
    }
    drop(m);
    println!("## One renewal at {hosts} hosts on CephFS ({samples} samples each, one ceph-fuse client)\n");
    println!("| host table | I/O per renewal | median ms | p99 ms | CPU per renewal, this process + its ceph-fuse + the RADOS worker (ms) |");
    println!("|---|---|---|---|---|");
    for (name, med, p99, _, cpu_each) in rows {
        let ops = if name.starts_with("file") {
            "read 500 KiB + write 512 B (+ fsync), through ceph-fuse"
        } else {
            "probe write 512 B (+ fdatasync) through ceph-fuse; RADOS read 500 KiB + write 512 B"
        };
        println!("| {name} | {ops} | {med:.2} | {p99:.2} | {cpu_each:.2} |");
    }
}

fn main() {
    if std::env::args().any(|a| a == "--ceph") {
        renewal_on_ceph(200);
        return;
    }
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this
    // without it, as a check that it works: the tiny configuration.
    let tiny = std::env::args().any(|a| a == "--tiny") || !std::env::args().any(|a| a == "--bench");
    let p = if tiny {
        Params {
            hosts: 50,
            leases: 500,
            samples: 100,
            run_secs: 4,
        }
    } else {
        Params {
            hosts: 1000,
            leases: 100_000,
            samples: 1000,
            run_secs: 30,
        }
    };
    let dir = std::env::temp_dir().join(format!("vmlease-bench-scale-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();

    let (cpu, rss, read_kb) = daemon_at_scale(&p, &dir);
    let (med, p99, raw_med, raw_p99) = acquire_latency(&p, &dir);
    let (n, list_s) = leases_listing(&p, &dir);
    let (cli_hosts, cli_leases, raw_cat) = cli_at_scale(&p, &dir);
    let _ = fs::remove_dir_all(&dir);

    println!(
        "## Scale ({} hosts, {} leases{})\n",
        p.hosts,
        p.leases,
        if tiny { ", tiny run" } else { "" }
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| watchdog daemon CPU with {} hosts renewing (R = 2 s) | {cpu:.2} % of one core |",
        p.hosts
    );
    println!("| watchdog daemon RSS | {} KiB |", rss);
    println!("| lockspace operations per tick per host | 1 write (512 B + fsync) + 1 read ({read_kb:.0} KiB) |");
    println!("| read and decode {n} lease records | {list_s:.2} s |");
    println!(
        "| `vmlease hosts` with {} hosts | {cli_hosts:.2} s |",
        p.hosts
    );
    println!(
        "| `vmlease leases` with {} records | {cli_leases:.2} s ({:.2} x `cat` of the same files: {raw_cat:.2} s) |",
        p.leases,
        cli_leases / raw_cat
    );
    println!();
    println!(
        "## Acquire + release of one disk lease, local directory ({} samples)\n",
        p.samples
    );
    println!("| path | median µs | p99 µs | ratio to raw file ops (median) |");
    println!("|---|---|---|---|");
    println!("| raw: 2 x (lock, read, write+fsync, rename) | {raw_med:.0} | {raw_p99:.0} | 1.00 |");
    println!(
        "| vmlease engine acquire + release | {med:.0} | {p99:.0} | {:.2} |",
        med / raw_med
    );
}
