//! What vmlease relies on from CephFS, checked on a real Ceph cluster
//! (tests/ceph/cluster.sh) with ceph-fuse mounts as hosts A and B, each its
//! own client with its own MDS session:
//!
//! (a) a 512-byte pwrite+fsync at an offset of the shared host table by A
//!     is seen by B when B opens and reads the file anew - with O_DIRECT or
//!     on mounts with `fuse_disable_pagecache=true`; through ceph-fuse's
//!     default kernel page cache B may read stale data, for many renewals
//!     in a row, on a busy machine (reported, not asserted: it is a race);
//!     two hosts renewing neighbouring slots never undo each other's writes;
//! (b) a record replaced by rename is seen by the other host on open;
//! (c) OFD locks exclude across clients and are handed over on close (as
//!     vmlease releases them);
//! (d) a hung client (ceph-fuse SIGSTOPped): calls on its mount hang,
//!     while B keeps working - except on files A holds capabilities for:
//!     B's renewal in the shared table waits for A;
//! (e) `mds_cap_revoke_eviction_timeout` bounds that wait: the MDS evicts
//!     the hung client;
//! (f) an explicit MDS eviction: A's calls fail, B gets A's lock;
//! (g) a crashed client (SIGKILL of ceph-fuse): its mount fails with
//!     ENOTCONN at once, its lock stays with its session until eviction.
//!
//! `frozen_peer` (cephfs_behaviour/frozen_peer.rs) measures, with Ceph's
//! default MDS settings, what one frozen client blocks on a healthy one.
//!
//! One cluster for all of it: the cases run in sequence in one test.
//! Latencies are printed (`--nocapture` shows them); docs/cephfs.md
//! records what they were on the project's machine.

#[path = "cephfs_behaviour/frozen_peer.rs"]
mod frozen_peer;
mod support;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use support::ceph::*;
use support::netns;
use vmlease::lockspace;
// The record lock as vmlease takes it: the lockspace's own OFD lock calls
// on the whole file. vmlease releases it by closing the file (dropping
// it), and so do these tests; there is no separate unlock.
use vmlease::lockspace::{ofd_lock_wait as lock_wait, ofd_try_lock as try_lock};

/// A host's slot in the shared host table.
const SLOT: u64 = 512;
const SLOTS: u64 = 16;
/// Iterations of each measured operation.
const N: usize = 200;
/// Renewals per read mode on the idle machine in (a).
const N_IDLE: u64 = 100;
/// Iterations where some take seconds (capability revocations wait for
/// the MDS's tick): renewals by both hosts at once, rename-over.
const N_BOTH: u64 = 20;
/// Iterations with every CPU busy.
const N_LOAD: u64 = 60;
/// Renewals at most while trying to get a page-cache reader stuck.
const N_PROVOKE: u64 = 150;
/// Renewals, one a second, that a stuck reader is watched for.
const STUCK_CHECKS: u64 = 3;
const N_RENAME: usize = 20;
/// How long a call must stay blocked to count as hanging. Blocked calls
/// are also seen waiting in the kernel (wchan) before this is judged.
const HANG_PROOF: Duration = Duration::from_secs(2);
/// How long a call that must work may take, at most.
const BOUND: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- timing

struct Lat {
    what: &'static str,
    v: Vec<Duration>,
}

impl Lat {
    fn new(what: &'static str) -> Lat {
        Lat {
            what,
            v: Vec::new(),
        }
    }

    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        self.v.push(t.elapsed());
        r
    }

    fn report(&self) -> String {
        let mut v = self.v.clone();
        v.sort();
        let n = v.len();
        let p99 = v[(n * 99).div_ceil(100).max(1) - 1];
        format!(
            "{}: median {:.2} ms, p99 {:.2} ms, max {:.2} ms (n={n})",
            self.what,
            ms(v[n / 2]),
            ms(p99),
            ms(v[n - 1])
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ------------------------------------------------ file ops as vmlease's

/// A slot's content: "TAG COUNTER", zero-padded to 512 bytes.
fn slot_bytes(tag: &str, counter: u64) -> Vec<u8> {
    let mut v = format!("{tag} {counter}\n").into_bytes();
    v.resize(SLOT as usize, 0);
    v
}

/// The counter in slot `slot` of a table read whole, if that slot is set.
fn slot_counter(table: &[u8], slot: u64) -> Option<u64> {
    let s = table.get((slot * SLOT) as usize..((slot + 1) * SLOT) as usize)?;
    let text = std::str::from_utf8(s).ok()?.trim_end_matches('\0');
    text.split_whitespace().nth(1)?.parse().ok()
}

/// A renewal: open, pwrite 512 bytes at the slot, fsync, close.
fn write_slot(table: &Path, slot: u64, data: &[u8]) -> io::Result<()> {
    let f = OpenOptions::new().read(true).write(true).open(table)?;
    f.write_all_at(data, slot * SLOT)?;
    f.sync_all()
}

/// A record replaced as vmlease does it: the lockspace's own routine
/// (a temp file beside it, fsync, rename over).
fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    lockspace::write_atomic(path, data).map_err(|e| io::Error::other(e.to_string()))
}

fn open_lock(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn errno_name(e: &io::Error) -> String {
    let n = e.raw_os_error().unwrap_or(0);
    let name = match n {
        libc::ENOTCONN => "ENOTCONN",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ESHUTDOWN => "ESHUTDOWN",
        libc::EIO => "EIO",
        libc::ENOENT => "ENOENT",
        _ => "",
    };
    format!("{name} ({n}, {e})")
}

// ------------------------------------------------ calls that may hang

/// An operation on its own thread, so that a hang can be observed (and
/// outlived) by the test.
struct Pending<T> {
    what: String,
    tid: i32,
    rx: mpsc::Receiver<(T, Duration)>,
}

fn spawn_op<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> Pending<T> {
    let (tid_tx, tid_rx) = mpsc::channel();
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name(what.chars().take(15).collect())
        .spawn(move || {
            // SAFETY: gettid has no preconditions.
            let _ = tid_tx.send(unsafe { libc::gettid() });
            let t = Instant::now();
            let r = f();
            let _ = tx.send((r, t.elapsed()));
        })
        .expect("spawn a thread");
    let tid = tid_rx.recv().expect("the thread's tid");
    Pending {
        what: what.into(),
        tid,
        rx,
    }
}

impl<T> Pending<T> {
    /// The result, if the call completes within `within`.
    fn wait(&self, within: Duration) -> Option<(T, Duration)> {
        self.rx.recv_timeout(within).ok()
    }

    /// The result; panics naming the call when it takes longer than `within`.
    fn expect_done(&self, within: Duration) -> (T, Duration) {
        self.wait(within).unwrap_or_else(|| {
            panic!(
                "{} did not complete within {:.1} s (thread {} state {:?}, wchan {:?})",
                self.what,
                within.as_secs_f64(),
                self.tid,
                self.state(),
                self.wchan()
            )
        })
    }

    /// Asserts the call is hanging: it is seen asleep in the kernel and
    /// has not completed after HANG_PROOF. Returns the kernel function it
    /// waits in.
    fn expect_hanging(&self) -> String {
        let start = Instant::now();
        // First see it blocked in the kernel (the FUSE request waiting).
        let mut wchan = String::new();
        while start.elapsed() < BOUND {
            if let Ok(r) = self.rx.try_recv() {
                panic!(
                    "{} completed after {:.1} ms although it should hang",
                    self.what,
                    ms(r.1)
                );
            }
            wchan = self.wchan();
            if matches!(self.state(), Some('S') | Some('D')) && wchan != "0" && !wchan.is_empty() {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        if let Some(r) = self.wait(HANG_PROOF) {
            panic!(
                "{} completed after {:.1} ms although it should hang",
                self.what,
                ms(r.1)
            );
        }
        wchan
    }

    fn state(&self) -> Option<char> {
        let s = fs::read_to_string(format!("/proc/self/task/{}/stat", self.tid)).ok()?;
        s.rsplit_once(") ")?.1.chars().next()
    }

    fn wchan(&self) -> String {
        fs::read_to_string(format!("/proc/self/task/{}/wchan", self.tid)).unwrap_or_default()
    }
}

/// Polls `f` until it returns true, at most `within`; how long it took.
fn poll_until(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> Result<bool, String>,
) -> Duration {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < within {
        match f() {
            Ok(true) => return start.elapsed(),
            Ok(false) => last = "not yet".into(),
            Err(e) => last = e,
        }
        thread::sleep(Duration::from_millis(5));
    }
    panic!(
        "timed out after {:.1} s waiting for {what}; last: {last}",
        within.as_secs_f64()
    );
}

// ---------------------------------------------------------------- setup

/// A and B: the same directory seen through each host's mount.
struct Pair {
    a: PathBuf,
    b: PathBuf,
}

impl Pair {
    fn new(ma: &CephMount, mb: &CephMount, rel: &str) -> Pair {
        let a = ma.path().join(rel);
        fs::create_dir_all(&a).unwrap_or_else(|e| panic!("mkdir {}: {e}", a.display()));
        Pair {
            a,
            b: mb.path().join(rel),
        }
    }
}

/// A zeroed host table of SLOTS slots, created through `dir`.
fn new_table(dir: &Path) -> PathBuf {
    let p = dir.join("hosts");
    let f = File::create(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    f.write_all_at(&vec![0; (SLOT * SLOTS) as usize], 0)
        .unwrap();
    f.sync_all().unwrap();
    p
}

/// A few protocol ticks in an order that leaves A holding read
/// capabilities on the table B writes next: A renews, B renews, A reads
/// the table (after B's write), B reads it. With two hosts ticking on
/// their own clocks, this is the usual state of a live cluster.
fn protocol_ticks(p: &Pair, table: &str, ticks: u64) {
    let (ta, tb) = (p.a.join(table), p.b.join(table));
    for i in 1..=ticks {
        write_slot(&ta, 1, &slot_bytes("A", i)).unwrap();
        write_slot(&tb, 2, &slot_bytes("B", i)).unwrap();
        assert_eq!(slot_counter(&fs::read(&ta).unwrap(), 2), Some(i));
        assert_eq!(slot_counter(&fs::read(&tb).unwrap(), 1), Some(i));
    }
}

// ---------------------------------------------------------------- cases

/// How B reads the table in (a).
#[derive(Clone, Copy, Debug)]
enum ReadMode {
    /// open + read through the kernel page cache.
    Plain,
    /// vmlease's own read of the lockspace (`read_uncached`: open with
    /// O_DIRECT, around the kernel page cache).
    Direct,
}

fn read_table(path: &Path, mode: ReadMode) -> io::Result<Vec<u8>> {
    match mode {
        ReadMode::Plain => fs::read(path),
        ReadMode::Direct => read_direct(path),
    }
}

/// Reads a whole file as vmlease reads the lockspace (O_DIRECT).
fn read_direct(path: &Path) -> io::Result<Vec<u8>> {
    vmlease::lockspace::read_uncached_whole(path)
}

/// Keeps every CPU busy while alive: the load under which ceph-fuse's
/// kernel page cache goes stale (see (a)).
struct CpuLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl CpuLoad {
    fn start() -> CpuLoad {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let n = thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                })
            })
            .collect();
        CpuLoad { stop, threads }
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A renews `n` times through `a`; after each renewal B reads the table
/// anew through `b` in `mode`. Returns (stale reads, the largest lag in
/// renewals, write latencies, read latencies).
fn renew_and_read(
    a: &Path,
    b: &Path,
    mode: ReadMode,
    n: u64,
    tag: &'static str,
) -> (usize, u64, Lat, Lat) {
    let table = new_table(a);
    let tb = b.join(table.file_name().unwrap());
    let mut w = Lat::new("A pwrite 512 B + fsync");
    let mut r = Lat::new(tag);
    let (mut stale, mut max_lag) = (0, 0);
    for i in 1..=n {
        w.time(|| write_slot(&table, 1, &slot_bytes("A", i)))
            .unwrap_or_else(|e| panic!("A's renewal {i}: {e}"));
        let t = r
            .time(|| read_table(&tb, mode))
            .unwrap_or_else(|e| panic!("B's read {i}: {e}"));
        let seen = slot_counter(&t, 1).unwrap_or(0);
        if seen != i {
            stale += 1;
            max_lag = max_lag.max(i - seen);
        }
    }
    (stale, max_lag, w, r)
}

/// A reader whose page-cache view of the table stopped moving.
struct Stuck {
    a: PathBuf,
    b: PathBuf,
    /// A's last renewal and what B read through the page cache.
    renewal: u64,
    seen: u64,
}

/// A renews quickly, B reads through ceph-fuse's page cache after each
/// renewal, until B's view stands still for 20 renewals in a row or
/// N_PROVOKE renewals went by. Meant to run with every CPU busy.
fn provoke_stuck_reader(a: &Path, b: &Path) -> Option<Stuck> {
    let dir = a.join("stuck");
    fs::create_dir_all(&dir).unwrap();
    let table = new_table(&dir);
    let tb = b.join("stuck").join("hosts");
    let (mut stale, mut in_a_row) = (0, 0);
    for i in 1..=N_PROVOKE {
        write_slot(&table, 1, &slot_bytes("A", i)).unwrap();
        let seen = slot_counter(&fs::read(&tb).unwrap(), 1).unwrap_or(0);
        if seen == i {
            in_a_row = 0;
            continue;
        }
        stale += 1;
        in_a_row += 1;
        if in_a_row == 20 {
            eprintln!(
                "(a) CPUs busy: B's page-cache reads got stuck at renewal {seen} while A wrote \
                 {i} ({stale} stale reads in {i})"
            );
            return Some(Stuck {
                a: table,
                b: tb,
                renewal: i,
                seen,
            });
        }
    }
    None
}

/// With the machine idle again and A renewing at a protocol's pace (every
/// second here), a stuck page-cache view stays stuck, while O_DIRECT sees
/// every renewal: through the page cache a live host looks dead.
fn stuck_reader_stays_stuck(s: Stuck) {
    let start = Instant::now();
    let mut still = 0;
    for k in 1..=STUCK_CHECKS {
        let i = s.renewal + k;
        write_slot(&s.a, 1, &slot_bytes("A", i)).unwrap();
        let plain = slot_counter(&fs::read(&s.b).unwrap(), 1).unwrap_or(0);
        let direct = slot_counter(&read_direct(&s.b).unwrap(), 1).unwrap_or(0);
        assert_eq!(direct, i, "B's O_DIRECT read missed renewal {i}");
        if plain == s.seen {
            still += 1;
        }
        thread::sleep(Duration::from_secs(1));
    }
    eprintln!(
        "(a) UNSAFE: the machine idle again, A renewing every second: B's page-cache view stood \
         still at renewal {} for {still}/{STUCK_CHECKS} renewals ({:.1} s), while O_DIRECT saw every one. \
         Reading the table through ceph-fuse's page cache, a live host can look dead for longer \
         than host_dead_timeout (measured: over 50 s).",
        s.seen,
        start.elapsed().as_secs_f64()
    );
}

/// (a) Renewals seen by the other host on reopen; neighbouring slots do
/// not clobber each other.
fn renewals_are_seen_on_reopen(ca: &CephMount, cb: &CephMount, na: &CephMount, nb: &CephMount) {
    // An idle machine: ceph-fuse's defaults (kernel page cache) with
    // plain and O_DIRECT reads, and mounts without the page cache.
    let p = Pair::new(ca, cb, "a-pagecache");
    let q = Pair::new(na, nb, "a-nocache");
    let (stale, lag, w, r) = renew_and_read(
        &p.a,
        &p.b,
        ReadMode::Plain,
        N_IDLE,
        "page cache: B open + read 8 KiB table",
    );
    let (stale_d, _, _, rd) = renew_and_read(
        &p.a,
        &p.b,
        ReadMode::Direct,
        N_IDLE,
        "page cache: B open(O_DIRECT) + read",
    );
    let (stale_n, _, wn, rn) = renew_and_read(
        &q.a,
        &q.b,
        ReadMode::Plain,
        N_IDLE,
        "fuse_disable_pagecache: B open + read",
    );
    for l in [&w, &r, &rd] {
        eprintln!("(a) page cache: {}", l.report());
    }
    for l in [&wn, &rn] {
        eprintln!("(a) fuse_disable_pagecache: {}", l.report());
    }
    eprintln!(
        "(a) idle machine: B read a stale slot {stale}/{N_IDLE} times (largest lag {lag}) through the \
         page cache, {stale_d}/{N_IDLE} with O_DIRECT, {stale_n}/{N_IDLE} without the page cache"
    );
    assert_eq!(stale_d, 0, "B read a stale renewal with O_DIRECT");
    assert_eq!(
        stale_n, 0,
        "B read a stale renewal with fuse_disable_pagecache"
    );

    // With every CPU busy: through the page cache (until B's view stops
    // moving), with O_DIRECT, and without the page cache.
    let load = CpuLoad::start();
    let stuck = provoke_stuck_reader(&p.a, &p.b);
    let (stale_d, lag_d, _, _) = renew_and_read(&p.a, &p.b, ReadMode::Direct, N_LOAD, "direct");
    let (stale_n, lag_n, wn, rn) =
        renew_and_read(&q.a, &q.b, ReadMode::Plain, N_LOAD, "B open + read");
    drop(load);
    eprintln!(
        "(a) CPUs busy: stale reads by B opening the table anew: {stale_d}/{N_LOAD} with O_DIRECT \
         (lag {lag_d}), {stale_n}/{N_LOAD} on mounts with fuse_disable_pagecache=true (lag \
         {lag_n})"
    );
    eprintln!("(a) CPUs busy, fuse_disable_pagecache: {}", wn.report());
    eprintln!("(a) CPUs busy, fuse_disable_pagecache: {}", rn.report());
    assert_eq!(stale_d, 0, "B read a stale renewal with O_DIRECT");
    assert_eq!(
        stale_n, 0,
        "B read a stale renewal with fuse_disable_pagecache"
    );
    match stuck {
        None => eprintln!(
            "(a) CPUs busy: B's reads through the page cache did not get stuck this run \
             ({N_PROVOKE} renewals)"
        ),
        Some(s) => stuck_reader_stays_stuck(s),
    }

    // Both hosts renew neighbouring slots at once, each reading the table
    // (O_DIRECT) after its write: its own slot must hold what it wrote,
    // the other's counter never goes back.
    let ta = new_table(&q.a);
    let tb = q.b.join("hosts");
    let run = |table: PathBuf, own: u64, other: u64, tag: &'static str| {
        move || -> Result<Lat, String> {
            let mut lat = Lat::new(if own == 1 {
                "A renew + read, both hosts renewing"
            } else {
                "B renew + read, both hosts renewing"
            });
            let mut seen_other = 0;
            for i in 1..=N_BOTH {
                let t = lat.time(|| {
                    write_slot(&table, own, &slot_bytes(tag, i))?;
                    read_direct(&table)
                });
                let t = t.map_err(|e| format!("{tag} {i}: {e}"))?;
                if slot_counter(&t, own) != Some(i) {
                    return Err(format!(
                        "{tag}'s own slot reads {:?} right after writing {i}: the other host's \
                         write undid it",
                        slot_counter(&t, own)
                    ));
                }
                let o = slot_counter(&t, other).unwrap_or(0);
                if o < seen_other {
                    return Err(format!(
                        "{tag} saw the other slot go back from {seen_other} to {o}"
                    ));
                }
                seen_other = o;
            }
            Ok(lat)
        }
    };
    let ha = thread::spawn(run(ta.clone(), 1, 2, "A"));
    let hb = thread::spawn(run(tb.clone(), 2, 1, "B"));
    let la = ha
        .join()
        .expect("A's thread")
        .unwrap_or_else(|e| panic!("{e}"));
    let lb = hb
        .join()
        .expect("B's thread")
        .unwrap_or_else(|e| panic!("{e}"));
    for t in [&ta, &tb] {
        let table = read_direct(t).unwrap();
        assert_eq!(slot_counter(&table, 1), Some(N_BOTH), "{}", t.display());
        assert_eq!(slot_counter(&table, 2), Some(N_BOTH), "{}", t.display());
    }
    eprintln!("(a) {}", la.report());
    eprintln!("(a) {}", lb.report());
}

/// (b) A record replaced by rename is seen by the other host on open.
fn rename_over_is_seen_on_open(ma: &CephMount, mb: &CephMount) {
    let p = Pair::new(ma, mb, "b-rename");
    let (ra, rb) = (p.a.join("lease"), p.b.join("lease"));
    let mut w = Lat::new("A temp + fsync + rename over");
    let mut r = Lat::new("B open + read the record");
    let mut stale = 0;
    for i in 0..N_RENAME {
        let v = format!("record version {i}\n");
        w.time(|| write_atomic(&ra, v.as_bytes()))
            .unwrap_or_else(|e| panic!("A's replace {i}: {e}"));
        let got = r
            .time(|| fs::read(&rb))
            .unwrap_or_else(|e| panic!("B's read {i}: {e}"));
        if got != v.as_bytes() {
            stale += 1;
        }
    }
    eprintln!("(b) {}", w.report());
    eprintln!("(b) {}", r.report());
    let stalls = r.v.iter().filter(|d| **d > Duration::from_secs(1)).count();
    eprintln!(
        "(b) B read an old record {stale}/{N_RENAME} times; {stalls} of its reads stalled over 1 s \
         (the MDS revoking A's capabilities on the replaced inode)"
    );
    assert_eq!(stale, 0, "B read a replaced record");
}

/// (c) OFD locks exclude across clients; closing the file hands over.
fn ofd_locks_exclude_across_clients(ma: &CephMount, mb: &CephMount) {
    let p = Pair::new(ma, mb, "c-locks");
    let (path_a, path_b) = (p.a.join("rec.lock"), p.b.join("rec.lock"));
    let la = open_lock(&path_a);
    let lb = open_lock(&path_b);
    assert!(try_lock(&la).unwrap(), "A could not take a free lock");
    assert!(!try_lock(&lb).unwrap(), "B got the lock A holds");
    // Closing the file description releases its lock.
    drop(la);
    let t = Instant::now();
    poll_until("B to get the lock after A closed its file", BOUND, || {
        try_lock(&lb).map_err(|e| e.to_string())
    });
    let handover = t.elapsed();
    let la = open_lock(&path_a);
    assert!(!try_lock(&la).unwrap(), "A got the lock B holds");
    drop(lb);
    let t = Instant::now();
    poll_until("A to get the lock after B closed its file", BOUND, || {
        try_lock(&la).map_err(|e| e.to_string())
    });
    let back = t.elapsed();
    drop(la);
    eprintln!(
        "(c) lock handed over to the other client {:.2} ms after A closed its file, {:.2} ms \
         after B closed its file (try-lock polling)",
        ms(handover),
        ms(back)
    );

    let mut lu = Lat::new("open + OFD lock + close, one client, uncontended");
    for _ in 0..N {
        lu.time(|| {
            let l = open_lock(&path_a);
            assert!(try_lock(&l).unwrap());
            drop(l);
        });
    }
    eprintln!("(c) {}", lu.report());

    // Blocking handover: B waits in F_OFD_SETLKW while A holds the lock.
    let mut bh = Lat::new("F_OFD_SETLKW wakes on the other client after close");
    for _ in 0..20 {
        // B's close released its lock; the MDS may take a moment.
        let la = open_lock(&path_a);
        poll_until("A to get the lock B closed", BOUND, || {
            try_lock(&la).map_err(|e| e.to_string())
        });
        let pb = path_b.clone();
        let waiter = spawn_op("B lock wait", move || {
            let f = open_lock(&pb);
            lock_wait(&f).map(|()| (f, Instant::now()))
        });
        // B is waiting once it sleeps in the kernel.
        poll_until("B to wait for the lock", BOUND, || {
            Ok(matches!(waiter.state(), Some('S')) && !waiter.wchan().is_empty())
        });
        let t = Instant::now();
        drop(la);
        let (r, _) = waiter.expect_done(BOUND);
        let (fb, acquired) = r.unwrap_or_else(|e| panic!("B's F_OFD_SETLKW: {e}"));
        bh.v.push(acquired.duration_since(t));
        drop(fb);
    }
    eprintln!("(c) {}", bh.report());

    // A whole record update as vmlease does it, alternating hosts: lock,
    // read the record, replace it by rename, close the lock file.
    let mut upd = Lat::new("record update (lock, read, replace, close), alternating hosts");
    let rec = [p.a.join("rec"), p.b.join("rec")];
    let locks = [path_a, path_b];
    write_atomic(&rec[0], b"0").unwrap();
    for i in 0..N_RENAME {
        let h = i % 2;
        upd.time(|| {
            let l = open_lock(&locks[h]);
            lock_wait(&l).unwrap();
            let v: usize = String::from_utf8(fs::read(&rec[h]).unwrap())
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(v, i, "host {h} read a stale record");
            write_atomic(&rec[h], (v + 1).to_string().as_bytes()).unwrap();
            drop(l);
        });
    }
    eprintln!("(c) {}", upd.report());
}

/// (d) A hung client: its calls hang; B works, but waits for A on the
/// shared table A holds capabilities for. Resuming A releases both.
fn hung_client(ma: &CephMount, mb: &CephMount) {
    let p = Pair::new(ma, mb, "d-hang");
    new_table(&p.a);
    protocol_ticks(&p, "hosts", 5);
    let b_own = p.b.join("b-only");
    fs::create_dir_all(&b_own).unwrap();
    fs::write(b_own.join("file"), b"before").unwrap();

    ma.hang();
    let hung_at = Instant::now();
    let ta = p.a.join("hosts");
    let a_read = spawn_op("A read (hung)", move || fs::read(&ta).map(|_| ()));
    let wchan = a_read.expect_hanging();
    eprintln!(
        "(d) A's ceph-fuse stopped: A's open+read of the table hangs (thread asleep in {wchan:?})"
    );

    // B keeps working on what A holds no capabilities for.
    let t = Instant::now();
    let f = b_own.join("new");
    write_atomic(&f, b"B works").unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"B works");
    write_slot(&b_own.join("file"), 0, &slot_bytes("B", 1)).unwrap();
    let l = open_lock(&b_own.join("x.lock"));
    assert!(try_lock(&l).unwrap());
    drop(l);
    let table = fs::read(p.b.join("hosts")).unwrap();
    assert_eq!(slot_counter(&table, 1), Some(5));
    eprintln!(
        "(d) meanwhile B created, replaced, wrote+fsynced, locked its own files and read the \
         shared table in {:.1} ms",
        ms(t.elapsed())
    );

    // B's renewal in the shared table needs A to give up its capabilities.
    let tb = p.b.join("hosts");
    let b_renew = spawn_op("B renew (shared)", move || {
        write_slot(&tb, 2, &slot_bytes("B", 6))
    });
    let wchan = b_renew.expect_hanging();
    eprintln!(
        "(d) B's renewal in the shared table waits for hung A (asleep in {wchan:?}): the MDS must \
         revoke A's read capabilities first"
    );
    ma.resume();
    let resumed = Instant::now();
    let (r, took) = b_renew.expect_done(BOUND);
    r.unwrap_or_else(|e| panic!("B's renewal after A resumed: {e}"));
    let (r, _) = a_read.expect_done(BOUND);
    r.unwrap_or_else(|e| panic!("A's read after it resumed: {e}"));
    eprintln!(
        "(d) A resumed after {:.1} s; B's renewal completed {:.1} ms later (it waited {:.1} s in all)",
        hung_at.elapsed().as_secs_f64() - resumed.elapsed().as_secs_f64(),
        ms(resumed.elapsed().min(took)),
        took.as_secs_f64()
    );
    let table = fs::read(p.a.join("hosts")).unwrap();
    assert_eq!(slot_counter(&table, 2), Some(6), "A sees B's renewal");
}

/// (e) mds_cap_revoke_eviction_timeout bounds how long a hung client can
/// block the others: the MDS evicts it.
fn cap_revoke_eviction(ceph: &CephCluster, ma: &CephMount, mb: &CephMount, secs: u32) {
    let p = Pair::new(ma, mb, "e-revoke");
    new_table(&p.a);
    protocol_ticks(&p, "hosts", 3);
    ceph.set_mds_option("mds_cap_revoke_eviction_timeout", &secs.to_string());
    ma.hang();
    let tb = p.b.join("hosts");
    let b_renew = spawn_op("B renew (revoke)", move || {
        write_slot(&tb, 2, &slot_bytes("B", 9))
    });
    let (r, took) = b_renew.expect_done(Duration::from_secs(u64::from(secs)) + BOUND);
    r.unwrap_or_else(|e| panic!("B's renewal: {e}"));
    ceph.set_mds_option("mds_cap_revoke_eviction_timeout", "0");
    let sessions = ceph.sessions();
    eprintln!(
        "(e) with mds_cap_revoke_eviction_timeout = {secs} s, B's renewal waited {:.1} s for hung A; \
         the MDS sessions now: {sessions:?}",
        took.as_secs_f64()
    );
    assert!(
        took >= Duration::from_secs(u64::from(secs)) - Duration::from_millis(500),
        "B's renewal completed after {took:?}, before the revoke timeout: A was not in the way?"
    );
    assert!(
        !sessions.iter().any(|(c, _)| c == ma.client()),
        "A was not evicted: {sessions:?}"
    );
    ma.resume();
    // A learns of its eviction at its next exchange with the cluster;
    // until then reads may still be served from its caches. A renewal
    // (write + fsync) must fail.
    let ta = p.a.join("hosts");
    let t = Instant::now();
    let read_after = fs::read(&ta).map(|_| ()).map_err(|e| errno_name(&e));
    let renew = spawn_op("A renew evicted", move || {
        write_slot(&ta, 1, &slot_bytes("A", 99)).map_err(|e| errno_name(&e))
    });
    let (r, _) = renew.expect_done(BOUND);
    let e = r.expect_err("evicted A renewed (write + fsync succeeded)");
    eprintln!(
        "(e) A, resumed after its eviction: a read right away {}; its renewal fails with {e} \
         after {:.1} ms",
        match read_after {
            Ok(()) => "still succeeded (from A's cache)".to_string(),
            Err(e) => format!("failed with {e}"),
        },
        ms(t.elapsed())
    );
}

/// (f) An explicit eviction of a live client: its calls fail, B gets its
/// lock.
fn explicit_eviction(ceph: &CephCluster, ma: &CephMount, mb: &CephMount) {
    let p = Pair::new(ma, mb, "f-evict");
    fs::write(p.a.join("data"), b"A's").unwrap();
    let la = open_lock(&p.a.join("rec.lock"));
    let lb = open_lock(&p.b.join("rec.lock"));
    assert!(try_lock(&la).unwrap());
    assert!(!try_lock(&lb).unwrap(), "B got the lock A holds");
    let t = Instant::now();
    ceph.evict(ma.client());
    let evict_took = t.elapsed();
    let t = Instant::now();
    let got = poll_until("B to get the lock of evicted A", BOUND, || {
        try_lock(&lb).map_err(|e| e.to_string())
    });
    let e = fs::read(p.a.join("data")).expect_err("A's read after its eviction succeeded");
    let w = la.write_all_at(b"late", 0).and_then(|()| la.sync_all());
    eprintln!(
        "(f) `ceph tell mds.a client evict` took {:.1} s; B got A's lock {:.1} ms after it \
         returned; A's read fails with {}; A's write+fsync through the fd it locked: {}",
        evict_took.as_secs_f64(),
        ms(got.min(t.elapsed())),
        errno_name(&e),
        match &w {
            Ok(()) => "succeeded (!)".to_string(),
            Err(e) => format!("fails with {}", errno_name(e)),
        }
    );
    assert!(
        w.is_err(),
        "evicted A could still write through its open fd"
    );
    assert_eq!(
        fs::read(p.b.join("data")).unwrap(),
        b"A's",
        "A's write reached the file"
    );
}

/// (g) A client crash: the mount fails at once with ENOTCONN; the MDS
/// keeps the dead client's lock until its session goes (evicted here).
fn crashed_client(ceph: &CephCluster, ma: &CephMount, mb: &CephMount) {
    let p = Pair::new(ma, mb, "g-crash");
    let la = open_lock(&p.a.join("rec.lock"));
    let lb = open_lock(&p.b.join("rec.lock"));
    assert!(try_lock(&la).unwrap());
    ma.kill();
    let t = Instant::now();
    let e = fs::metadata(ma.path()).expect_err("stat of a dead mount succeeded");
    let failed_in = t.elapsed();
    // ENOTCONN once the kernel sees the FUSE device closed; ECONNABORTED
    // when the connection was aborted first (seen in CI): both fail at once.
    assert!(
        matches!(
            e.raw_os_error(),
            Some(libc::ENOTCONN) | Some(libc::ECONNABORTED)
        ),
        "the dead mount failed with {}",
        errno_name(&e)
    );
    assert!(failed_in < Duration::from_secs(1), "took {failed_in:?}");
    assert!(
        !try_lock(&lb).unwrap(),
        "B got the lock of the crashed client at once"
    );
    let sessions = ceph.sessions();
    assert!(
        sessions.iter().any(|(c, _)| c == ma.client()),
        "the dead client's session is gone already: {sessions:?}"
    );
    ceph.evict(ma.client());
    let got = poll_until("B to get the lock of the evicted dead A", BOUND, || {
        try_lock(&lb).map_err(|e| e.to_string())
    });
    eprintln!(
        "(g) A's ceph-fuse killed: stat on A's mount fails with {} in {:.3} ms; its session stays \
         ({sessions:?}) and B cannot take its lock until the eviction; B got it {:.1} ms after",
        errno_name(&e),
        ms(failed_in),
        ms(got)
    );
    drop(la);
}

#[test]
fn cephfs_behaviour() {
    let t_all = Instant::now();
    let ceph = CephCluster::up("behaviour");
    let t = Instant::now();
    // A pair of mounts without the kernel page cache (docs/cephfs.md
    // recommends it), and a pair with ceph-fuse's defaults.
    let nocache = |client: &str| {
        ceph.mount_with(
            client,
            MountOptions {
                no_page_cache: true,
                ..MountOptions::default()
            },
        )
    };
    let (ma, mb) = (nocache("hosta"), nocache("hostb"));
    let (pa, pb) = (ceph.mount("hosta-pagecache"), ceph.mount("hostb-pagecache"));
    eprintln!(
        "cluster up in {:.1} s; four ceph-fuse mounts in {:.2} s",
        ceph.up_time().as_secs_f64(),
        t.elapsed().as_secs_f64()
    );

    let step = |name: &str, t: Instant| {
        eprintln!("-- {name} took {:.1} s", t.elapsed().as_secs_f64());
    };
    let t = Instant::now();
    renewals_are_seen_on_reopen(&pa, &pb, &ma, &mb);
    pa.umount();
    pb.umount();
    step("(a)", t);
    let t = Instant::now();
    rename_over_is_seen_on_open(&ma, &mb);
    step("(b)", t);
    let t = Instant::now();
    ofd_locks_exclude_across_clients(&ma, &mb);
    step("(c)", t);
    let t = Instant::now();
    hung_client(&ma, &mb);
    step("(d)", t);
    let t = Instant::now();
    cap_revoke_eviction(&ceph, &ma, &mb, 5);
    ma.umount_hard();
    let ma = ceph.mount("hosta");
    step("(e)", t);
    let t = Instant::now();
    explicit_eviction(&ceph, &ma, &mb);
    ma.umount_hard();
    let ma = ceph.mount("hosta");
    step("(f)", t);
    let t = Instant::now();
    crashed_client(&ceph, &ma, &mb);
    step("(g)", t);
    ma.umount();

    // The per-file-system session timers.
    ceph.set_session_timeouts(30, 30);
    let fs_get = ceph.ceph(&["fs", "get", "cephfs"]);
    for key in ["session_timeout", "session_autoclose"] {
        assert!(
            fs_get
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [key, "30"]),
            "{key} not set to 30:\n{fs_get}"
        );
    }

    let t = Instant::now();
    mb.umount();
    let umount = t.elapsed();
    let down = ceph.down();
    eprintln!(
        "clean unmount {:.2} s; cluster down in {:.1} s; the whole test {:.1} s",
        umount.as_secs_f64(),
        down.as_secs_f64(),
        t_all.elapsed().as_secs_f64()
    );
}

// ------------------------------------------------- a real storage link cut

/// The Ceph daemons in a "switch" namespace on a bridge at 192.0.2.62/26;
/// hosts A and B in their own namespaces, each with a veth "storage" link
/// to the bridge (192.0.2.1 and .2). Nothing is routed anywhere else.
/// The namespaces are deleted when the first value drops: declare it
/// before the cluster and mounts that use them.
fn storage_network() -> (netns::Namespaces, String, String, String) {
    let n = netns::switched(
        "vlceph",
        &["a", "b"],
        &[netns::Net {
            link: "storage",
            net: "192.0.2",
            len: 26,
            switch: 62,
        }],
    );
    let (ha, hb) = (n.hosts[0].clone(), n.hosts[1].clone());
    (n.guard, n.switch, ha, hb)
}

/// Host A loses its storage link for real (its veth goes down): its
/// renewal hangs in uninterruptible sleep (D), not killable, until the
/// link is back; B's renewal waits for the MDS to evict A (cap-revoke
/// timeout); when A's link returns, A learns it was blocklisted and its
/// hung renewal fails.
#[test]
fn storage_link_cut() {
    let t_all = Instant::now();
    let (_ns, sw, ha, hb) = storage_network();
    let ceph = CephCluster::up_with(CephOptions {
        netns: Some(sw),
        addr: Some("192.0.2.62".parse().unwrap()),
        name: "linkcut".into(),
        ..CephOptions::default()
    });
    let mount_in = |client: &str, ns: &str| {
        ceph.mount_with(
            client,
            MountOptions {
                netns: Some(ns.into()),
                ..MountOptions::default()
            },
        )
    };
    let ma = mount_in("hosta", &ha);
    let mb = mount_in("hostb", &hb);
    let revoke = 5;
    ceph.set_mds_option("mds_cap_revoke_eviction_timeout", &revoke.to_string());

    let p = Pair::new(&ma, &mb, "link");
    new_table(&p.a);
    protocol_ticks(&p, "hosts", 3);

    netns::set_link(&ha, "storage", "down");
    let cut = Instant::now();
    let ta = p.a.join("hosts");
    let a_renew = spawn_op("A renew (cut)", move || {
        write_slot(&ta, 1, &slot_bytes("A", 9)).map_err(|e| errno_name(&e))
    });
    let wchan = a_renew.expect_hanging();
    eprintln!("link cut: A's renewal hangs (asleep in {wchan})");
    // A process whose request ceph-fuse has taken cannot be killed: after
    // SIGKILL it waits in D until ceph-fuse answers. (A request the kernel
    // has not handed to ceph-fuse yet is abandoned on SIGKILL instead, and
    // the process exits: that is a race, so up to three writers are tried.)
    let mut stuck = None;
    for attempt in 1..=3 {
        let mut victim = std::process::Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", p.a.join("hosts").display()))
            .args([
                "bs=512",
                "count=1",
                &format!("seek={}", 4 + attempt),
                "conv=notrunc,fsync",
                "status=none",
            ])
            .spawn()
            .expect("spawn dd");
        let vpid = victim.id() as i32;
        let vstate = move || {
            fs::read_to_string(format!("/proc/{vpid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").and_then(|r| r.1.chars().next()))
        };
        poll_until("dd to wait for ceph-fuse", BOUND, || {
            let w = fs::read_to_string(format!("/proc/{vpid}/wchan")).unwrap_or_default();
            Ok(vstate() == Some('S') && w.contains("request_wait_answer"))
        });
        victim.kill().expect("SIGKILL dd");
        let t = Instant::now();
        let mut exited = false;
        poll_until("the killed dd to be in D or gone", BOUND, || {
            exited = victim.try_wait().unwrap().is_some();
            Ok(exited || vstate() == Some('D'))
        });
        if exited {
            eprintln!(
                "link cut: dd #{attempt} exited on SIGKILL (its request had not reached \
                 ceph-fuse yet); trying another"
            );
            continue;
        }
        assert!(
            victim.try_wait().unwrap().is_none() && {
                thread::sleep(HANG_PROOF);
                victim.try_wait().unwrap().is_none()
            },
            "dd exited after SIGKILL while A's storage link was down"
        );
        eprintln!(
            "link cut: a dd writing to A's mount, SIGKILLed, still waits in state {:?} after {:.1} s",
            vstate(),
            t.elapsed().as_secs_f64()
        );
        stuck = Some(victim);
        break;
    }
    let mut victim = stuck.expect(
        "no SIGKILLed writer stayed in D: three times ceph-fuse had not taken the request yet",
    );
    let tb = p.b.join("hosts");
    let b_renew = spawn_op("B renew (cut)", move || {
        write_slot(&tb, 2, &slot_bytes("B", 9)).map_err(|e| errno_name(&e))
    });
    let (r, b_took) = b_renew.expect_done(Duration::from_secs(revoke) + BOUND);
    r.unwrap_or_else(|e| panic!("B's renewal while A is cut off: {e}"));
    let sessions = ceph.sessions();
    eprintln!(
        "link cut: B's renewal in the shared table waited {:.1} s (cap-revoke eviction after \
         {revoke} s); sessions: {sessions:?}",
        b_took.as_secs_f64()
    );
    assert!(
        !sessions.iter().any(|(c, _)| c == "hosta"),
        "A was not evicted: {sessions:?}"
    );
    assert!(
        a_renew.wait(Duration::ZERO).is_none(),
        "A's renewal completed while its link was down"
    );

    netns::set_link(&ha, "storage", "up");
    let back = Instant::now();
    let (r, _) = a_renew.expect_done(BOUND);
    let e = r.expect_err("A renewed after it was evicted");
    poll_until("the killed dd to exit", BOUND, || {
        Ok(victim.try_wait().unwrap().is_some())
    });
    let killed = back.elapsed();
    eprintln!(
        "link back after {:.1} s: A's hung renewal failed with {e} {:.1} s later; the killed dd \
         exited {:.1} s after the link came back",
        cut.elapsed().as_secs_f64() - back.elapsed().as_secs_f64(),
        back.elapsed().as_secs_f64(),
        killed.as_secs_f64()
    );
    drop(ma);
    drop(mb);
    let down = ceph.down();
    eprintln!(
        "link-cut test: cluster down in {:.1} s, {:.1} s in all",
        down.as_secs_f64(),
        t_all.elapsed().as_secs_f64()
    );
}
