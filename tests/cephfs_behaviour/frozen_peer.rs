//! What one frozen client (ceph-fuse SIGSTOP, host A) can block on a
//! healthy client (host B), with Ceph's DEFAULT MDS settings
//! (`mds_cap_revoke_eviction_timeout` 0 = off, `mds_tick_interval` 5 s,
//! session timeout 60 s, autoclose 300 s): the facts that decide the
//! lockspace layout (docs/cephfs.md, "Renewal independent of other hosts").
//!
//! Each case prepares its files with both clients, freezes A, starts one
//! operation on B on its own thread and gives it [`DECIDE`] to complete.
//! One that does not is "blocked": A is resumed and the time from the
//! resume to its completion is recorded. The expected outcome of every
//! case is asserted, so that a Ceph that behaves differently fails the
//! test (and the layout built on these facts is re-examined).
//!
//! `frozen_peer_stall_length` (ignored: it waits for the MDS, a minute or
//! more) measures how long the shared-table renewal stays blocked when A
//! is never resumed.

use super::*;
use std::os::unix::fs::MetadataExt;

/// How long an operation on B may take before it counts as blocked
/// (healthy ones take milliseconds; how long a blocked one would wait is
/// `frozen_peer_stall_length`'s question).
const DECIDE: Duration = Duration::from_secs(3);

/// Writes of B: 4 KiB at offset 0 (O_DIRECT needs aligned buffers).
const BLOCK: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Done,
    Blocked,
    /// Seen both ways on this machine; measured and printed, not asserted.
    /// No design decision rests on such a row.
    Either,
}

/// One measured case.
struct Row {
    case: &'static str,
    what: String,
    expect: Expect,
    /// Some(latency) when B's operation completed within DECIDE.
    done: Option<Duration>,
    /// For a blocked one: how long after A's resume it completed.
    after_resume: Option<Duration>,
    wchan: String,
}

impl Row {
    fn line(&self) -> String {
        match (self.done, self.after_resume) {
            (Some(d), _) => format!("{} {}: not blocked, {:.1} ms", self.case, self.what, ms(d)),
            (None, r) => format!(
                "{} {}: BLOCKED > {} s (waiting in {:?}); completed {:.1} ms after A resumed",
                self.case,
                self.what,
                DECIDE.as_secs(),
                self.wchan,
                r.map_or(f64::NAN, ms)
            ),
        }
    }
}

/// A 4 KiB-aligned buffer of BLOCK bytes starting with `tag`.
fn aligned(tag: &str) -> (Vec<u8>, usize) {
    let mut raw = vec![0u8; 2 * BLOCK];
    let skip = raw.as_ptr().align_offset(BLOCK);
    raw[skip..skip + tag.len()].copy_from_slice(tag.as_bytes());
    (raw, skip)
}

/// B's renewal with O_DIRECT: open O_RDWR|O_DIRECT, pwrite 4 KiB, fsync.
fn write_direct(path: &Path, tag: &str) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let (raw, skip) = aligned(tag);
    f.write_all_at(&raw[skip..skip + BLOCK], 0)?;
    f.sync_data()
}

/// B's renewal through the page cache: open O_RDWR, pwrite, fsync (as
/// `Lockspace::write_host` does).
fn write_buffered(path: &Path, tag: &str) -> io::Result<()> {
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    let mut v = tag.as_bytes().to_vec();
    v.resize(BLOCK, 0);
    f.write_all_at(&v, 0)?;
    f.sync_data()
}

fn create(path: &Path, tag: &str) {
    write_atomic(path, tag.as_bytes()).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
}

/// How B writes in a case.
#[derive(Clone, Copy)]
enum W {
    Direct,
    Buffered,
}

impl W {
    fn name(self) -> &'static str {
        match self {
            W::Direct => "O_DIRECT",
            W::Buffered => "buffered",
        }
    }

    fn write(self, path: &Path, tag: &str) -> io::Result<()> {
        match self {
            W::Direct => write_direct(path, tag),
            W::Buffered => write_buffered(path, tag),
        }
    }
}

struct Rig<'a> {
    conf: PathBuf,
    ma: &'a CephMount,
    mb: &'a CephMount,
    rows: Vec<Row>,
    n: u32,
}

impl Rig<'_> {
    /// A fresh directory for one case, created by B (A has looked nothing
    /// up in it yet): (A's view, B's view).
    fn dir(&mut self) -> (PathBuf, PathBuf) {
        self.n += 1;
        let rel = format!("frozen/{}", self.n);
        let b = self.mb.path().join(&rel);
        fs::create_dir_all(&b).unwrap_or_else(|e| panic!("mkdir {}: {e}", b.display()));
        (self.ma.path().join(&rel), b)
    }

    /// Freezes A, runs `op` on B, records the outcome; A runs again after.
    fn measure(
        &mut self,
        case: &'static str,
        what: String,
        expect: Expect,
        op: impl FnOnce() -> io::Result<()> + Send + 'static,
    ) {
        self.ma.hang();
        let p = spawn_op(case, op);
        let row = match p.wait(DECIDE) {
            Some((r, took)) => {
                self.ma.resume();
                r.unwrap_or_else(|e| panic!("{case} {what}: {e}"));
                Row {
                    case,
                    what,
                    expect,
                    done: Some(took),
                    after_resume: None,
                    wchan: String::new(),
                }
            }
            None => {
                let wchan = p.wchan();
                self.ma.resume();
                let t = Instant::now();
                let (r, _) = p.expect_done(BOUND);
                let after = t.elapsed();
                r.unwrap_or_else(|e| panic!("{case} {what} (after A resumed): {e}"));
                Row {
                    case,
                    what,
                    expect,
                    done: None,
                    after_resume: Some(after),
                    wchan,
                }
            }
        };
        eprintln!("(frozen) {}", row.line());
        self.rows.push(row);
    }
}

/// What A did with B's file before it froze.
#[derive(Clone, Copy)]
enum Touch {
    ReadDirect,
    ReadBuffered,
    /// stat(2) only: a lookup and its attributes, no open.
    Stat,
    /// Read it, and keeps an O_RDONLY fd open while frozen.
    HoldOpen,
}

impl Touch {
    fn name(self) -> &'static str {
        match self {
            Touch::ReadDirect => "A read it with O_DIRECT",
            Touch::ReadBuffered => "A read it through the page cache",
            Touch::Stat => "A only stat()ed it",
            Touch::HoldOpen => "A holds it open read-only",
        }
    }

    /// Does it; the fd A keeps open, if any.
    fn apply(self, path: &Path) -> Option<File> {
        match self {
            Touch::ReadDirect => assert_eq!(read_direct(path).unwrap(), b"B 0"),
            Touch::ReadBuffered => assert_eq!(fs::read(path).unwrap(), b"B 0"),
            Touch::Stat => assert_eq!(fs::metadata(path).unwrap().len(), 3),
            Touch::HoldOpen => {
                let f = File::open(path).unwrap();
                assert_eq!(read_direct(path).unwrap(), b"B 0");
                return Some(f);
            }
        }
        None
    }
}

/// (a) B writes a file only B writes, which A had touched before it froze;
/// (b) the same for a file A never opened.
fn own_file_writes(r: &mut Rig) {
    for touch in [
        Touch::ReadDirect,
        Touch::ReadBuffered,
        Touch::Stat,
        Touch::HoldOpen,
    ] {
        for w in [W::Direct, W::Buffered] {
            let (a, b) = r.dir();
            create(&b.join("own"), "B 0");
            let held = touch.apply(&a.join("own"));
            let f = b.join("own");
            r.measure(
                "(a)",
                format!(
                    "B {} write+fsync of its own file, {}",
                    w.name(),
                    touch.name()
                ),
                Expect::Blocked,
                move || w.write(&f, "B 1"),
            );
            drop(held);
        }
    }
    for w in [W::Direct, W::Buffered] {
        let (a, b) = r.dir();
        create(&b.join("own"), "B 0");
        create(&b.join("other"), "B 0");
        // A looked at the directory's other file only.
        assert_eq!(read_direct(&a.join("other")).unwrap(), b"B 0");
        let f = b.join("own");
        r.measure(
            "(b)",
            format!("B {} write+fsync of a file A never opened", w.name()),
            Expect::Done,
            move || w.write(&f, "B 1"),
        );
    }
}

/// (c) B reads a file A writes (A's renewals and B's reads alternate, as
/// peers' liveness reads would).
fn reads_of_peer_file(r: &mut Rig) {
    for (keep_open, how) in [
        (false, "A closed it"),
        (true, "A keeps it open for writing"),
    ] {
        for direct in [true, false] {
            let (a, b) = r.dir();
            create(&a.join("peer"), "A 0");
            let mut fa = None;
            for i in 1..=3 {
                write_buffered(&a.join("peer"), &format!("A {i}")).unwrap();
                let got = read_direct(&b.join("peer")).unwrap();
                assert!(got.starts_with(format!("A {i}").as_bytes()), "B's read {i}");
            }
            if keep_open {
                let f = OpenOptions::new().write(true).open(a.join("peer")).unwrap();
                f.write_all_at(b"A 4", 0).unwrap();
                f.sync_data().unwrap();
                fa = Some(f);
            } else {
                write_buffered(&a.join("peer"), "A 4").unwrap();
            }
            let f = b.join("peer");
            r.measure(
                "(c)",
                format!(
                    "B {} read of the file A writes ({how})",
                    if direct { "O_DIRECT" } else { "buffered" }
                ),
                Expect::Blocked,
                move || {
                    let got = if direct {
                        read_direct(&f)?
                    } else {
                        fs::read(&f)?
                    };
                    assert!(got.starts_with(b"A 4"), "B read {:?}", &got[..8]);
                    Ok(())
                },
            );
            drop(fa);
        }
    }
}

/// (d) B replaces, creates and lists in a directory A has listed and has
/// a file open in.
fn rename_in_listed_dir(r: &mut Rig) {
    type Op = fn(&Path) -> io::Result<()>;
    let ops: [(&str, Expect, Op); 5] = [
        (
            "B rename-over of a file A never opened",
            Expect::Blocked,
            |d| write_atomic(&d.join("x"), b"B 1"),
        ),
        ("B rename-over of a file A had read", Expect::Blocked, |d| {
            write_atomic(&d.join("read"), b"B 1")
        }),
        (
            "B rename-over of the file A holds open",
            Expect::Blocked,
            |d| write_atomic(&d.join("open"), b"B 1"),
        ),
        ("B create+write+fsync of a new file", Expect::Blocked, |d| {
            let f = File::create(d.join("new"))?;
            f.write_all_at(b"B", 0)?;
            f.sync_all()
        }),
        ("B readdir", Expect::Done, |d| {
            fs::read_dir(d)?.count();
            Ok(())
        }),
    ];
    for (what, expect, op) in ops {
        let (a, b) = r.dir();
        for n in ["x", "read", "open"] {
            create(&b.join(n), "B 0");
        }
        assert_eq!(fs::read_dir(&a).unwrap().count(), 3, "A's listing");
        assert_eq!(fs::read(a.join("read")).unwrap(), b"B 0");
        let fa = File::open(a.join("open")).unwrap();
        r.measure(
            "(d)",
            format!("{what} in a directory A listed and has a file open in"),
            expect,
            move || op(&b),
        );
        drop(fa);
    }
}

/// Today's layout and the proposed one, as the renewal path uses them.
fn layouts(r: &mut Rig) {
    // Today: one shared table; A renews its slot and reads the table.
    let (a, b) = r.dir();
    let p = Pair { a, b };
    new_table(&p.b);
    protocol_ticks(&p, "hosts", 3);
    let t = p.b.join("hosts");
    r.measure(
        "(layout)",
        "today's layout: B's renewal (pwrite 512 B + fsync) in the shared table A reads and writes"
            .into(),
        Expect::Blocked,
        move || write_slot(&t, 2, &slot_bytes("B", 9)),
    );
    // One file per host, written only by its owner, which peers read
    // (O_DIRECT, opened anew): A's last tick read B's file.
    let (a, b) = r.dir();
    create(&a.join("host-1"), "A 0");
    create(&b.join("host-2"), "B 0");
    for i in 1..=3 {
        write_buffered(&a.join("host-1"), &format!("A {i}")).unwrap();
        write_buffered(&b.join("host-2"), &format!("B {i}")).unwrap();
        assert!(read_direct(&b.join("host-1"))
            .unwrap()
            .starts_with(format!("A {i}").as_bytes()));
        assert!(read_direct(&a.join("host-2"))
            .unwrap()
            .starts_with(format!("B {i}").as_bytes()));
    }
    let f = b.join("host-2");
    r.measure(
        "(layout)",
        "per-host files read by peers through CephFS: B's renewal (buffered pwrite + fsync) \
         of its own file"
            .into(),
        Expect::Blocked,
        move || write_buffered(&f, "B 4"),
    );
    // A frozen again, without having read the file since it resumed. Most
    // runs find B's next renewal free (the MDS took A's capabilities when A
    // answered after its resume); one CI run found it blocked again (A's
    // client had not given everything back, or was granted capabilities
    // again, in the moment between its resume and the next freeze). The
    // per-host layout through CephFS is rejected by the row above either
    // way, so this row is printed, not asserted.
    let f = b.join("host-2");
    r.measure(
        "(layout)",
        "per-host files: B's next renewal, A not having read the file since".into(),
        Expect::Either,
        move || write_buffered(&f, "B 5"),
    );
    // Peers read B's file around CephFS: the file's first RADOS object
    // (`<inode hex>.00000000` in the data pool), which no MDS capability
    // guards. A's ceph-fuse stays frozen for all of it.
    let (a, b) = r.dir();
    create(&b.join("host-2"), "B 0");
    // A has only listed the directory (the inode number B publishes).
    assert_eq!(fs::read_dir(&a).unwrap().count(), 1);
    let ino = fs::metadata(b.join("host-2")).unwrap().ino();
    let conf = r.conf.clone();
    let f = b.join("host-2");
    r.measure(
        "(rados)",
        "per-host files read by peers through RADOS: B's renewals and A's RADOS reads \
         (3 rounds)"
            .into(),
        Expect::Done,
        move || {
            for i in 1..=3 {
                write_buffered(&f, &format!("B {i}"))?;
                let got = rados_get(&conf, &format!("{ino:x}.00000000"))?;
                assert!(
                    got.starts_with(format!("B {i}").as_bytes()),
                    "the RADOS read of B's renewal {i} saw {:?}",
                    String::from_utf8_lossy(&got[..got.len().min(8)])
                );
            }
            Ok(())
        },
    );
}

/// A RADOS object of the file system's data pool, read with the `rados`
/// CLI (its own librados client; no MDS involved).
fn rados_get(conf: &Path, obj: &str) -> io::Result<Vec<u8>> {
    let out = std::process::Command::new("timeout")
        .args(["20", "rados", "-c"])
        .arg(conf)
        .args(["-p", "cephfs_data", "get", obj, "-"])
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "rados get {obj}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out.stdout)
}

#[test]
fn frozen_peer() {
    let t_all = Instant::now();
    let ceph = CephCluster::up("frozen");
    for (k, v) in [
        ("mds_cap_revoke_eviction_timeout", 0.0),
        ("mds_tick_interval", 5.0),
    ] {
        let got = ceph.ceph(&["config", "get", "mds", k]);
        assert_eq!(
            got.trim().parse::<f64>().ok(),
            Some(v),
            "{k} is not Ceph's default: {got}"
        );
    }
    let (ma, mb) = (ceph.mount("hosta"), ceph.mount("hostb"));
    let mut r = Rig {
        conf: ceph.conf(),
        ma: &ma,
        mb: &mb,
        rows: Vec::new(),
        n: 0,
    };
    own_file_writes(&mut r);
    reads_of_peer_file(&mut r);
    rename_in_listed_dir(&mut r);
    layouts(&mut r);
    let kernel = fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().last() == Some("ceph"));
    eprintln!(
        "(frozen) kernel CephFS client: {}",
        if kernel {
            "available, not measured by this test"
        } else {
            "not available here (no `ceph` in /proc/filesystems, no loadable modules)"
        }
    );
    let wrong: Vec<String> = r
        .rows
        .iter()
        .filter(|row| match row.expect {
            Expect::Done => row.done.is_none(),
            Expect::Blocked => row.done.is_some(),
            Expect::Either => false,
        })
        .map(|row| format!("expected {:?}: {}", row.expect, row.line()))
        .collect();
    drop(r);
    drop(ma);
    drop(mb);
    let down = ceph.down();
    eprintln!(
        "(frozen) cluster down in {:.1} s; {:.1} s in all",
        down.as_secs_f64(),
        t_all.elapsed().as_secs_f64()
    );
    assert!(
        wrong.is_empty(),
        "a frozen client blocked differently than docs/cephfs.md says:\n{}",
        wrong.join("\n")
    );
}

/// How long B's renewal in today's shared table stays blocked when the
/// frozen A is never resumed (Ceph defaults): until the MDS gives up on
/// A's session. Slow (a minute or more): run by hand with `--ignored`.
#[test]
#[ignore]
fn frozen_peer_stall_length() {
    let ceph = CephCluster::up("stall");
    let (ma, mb) = (ceph.mount("hosta"), ceph.mount("hostb"));
    let p = Pair::new(&ma, &mb, "stall");
    new_table(&p.a);
    protocol_ticks(&p, "hosts", 3);
    let own = p.b.join("own");
    create(&own, "B 0");
    ma.hang();
    let hung = Instant::now();
    let t = p.b.join("hosts");
    let renew = spawn_op("B renew (long)", move || {
        write_slot(&t, 2, &slot_bytes("B", 9))
    });
    let mut own_lat = Lat::new("B's own-file renewals while A is frozen");
    let limit = Duration::from_secs(400);
    let done = loop {
        if let Some((r, took)) = renew.wait(Duration::from_secs(1)) {
            break Some((r, took));
        }
        if hung.elapsed() > limit {
            break None;
        }
        let f = own.clone();
        let w = spawn_op("B own renewal", move || write_buffered(&f, "B x"));
        let (r, took) = w.expect_done(BOUND);
        r.unwrap_or_else(|e| panic!("B's own renewal while A is frozen: {e}"));
        own_lat.v.push(took);
    };
    let sessions = ceph.sessions();
    eprintln!("(stall) {}", own_lat.report());
    match done {
        Some((r, took)) => eprintln!(
            "(stall) B's renewal in the shared table completed after {:.1} s ({:?}); \
             sessions now {sessions:?}",
            took.as_secs_f64(),
            r.map_err(|e| errno_name(&e))
        ),
        None => eprintln!(
            "(stall) B's renewal in the shared table still blocked after {} s; sessions \
             {sessions:?}",
            limit.as_secs()
        ),
    }
    ma.kill();
    drop(ma);
    drop(mb);
    ceph.down();
}
