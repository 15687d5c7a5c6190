use super::*;
use crate::config::Timing;
use crate::hosts::{HostRecord, HostState};
use crate::lease::Mode;
use crate::status::Observer;
use std::collections::HashSet;
use std::sync::Mutex;

mod takeover_rules;

const D: u64 = 4000;

fn timing() -> Timing {
    Timing::TEST
}

fn record(id: u16, boot: &str, counter: u64, state: HostState) -> HostRecord {
    HostRecord {
        host_id: id,
        host_name: format!("host-{id}.test"),
        boot_id: boot.into(),
        incarnation: 1,
        counter,
        state,
        timing: timing(),
        unsafe_no_watchdog: false,
        // Written long after the test holders started (pid_start 100
        // ticks = 1 s): fenced-clean and leaving vouch for them.
        mono_ms: 1_000_000,
        wall: 0,
    }
}

struct World {
    dir: std::path::PathBuf,
    ls: Lockspace,
    /// Local processes considered alive (pid).
    alive: Arc<Mutex<HashSet<u32>>>,
}

impl World {
    fn new(name: &str) -> World {
        let dir = std::env::temp_dir().join(format!(
            "vmlease-engine-{name}-{}",
            crate::process::random_u64()
        ));
        Lockspace::init(&dir, 8).unwrap();
        let ls = Lockspace::open(&dir).unwrap();
        ls.write_host(&record(1, "boot-1", 1, HostState::Live))
            .unwrap();
        ls.write_host(&record(2, "boot-2", 1, HostState::Live))
            .unwrap();
        World {
            dir,
            ls,
            alive: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// A status as host `id`'s daemon would publish it at `now`, having
    /// observed the table at `seen` (list of (time, table read)).
    fn view(&self, id: u16, reads: &[u64], now: u64) -> Status {
        let mut obs = Observer::new(reads[0]);
        for &t in reads {
            let raw = std::fs::read(self.ls.hosts_path()).unwrap();
            let slots = crate::hosts::decode_table(&raw);
            obs.update(t, &raw, &slots);
        }
        Status {
            daemon_pid: 1,
            host_id: id,
            boot_id: format!("boot-{id}"),
            incarnation: 1,
            written_ms: now,
            last_renewal_ms: now,
            state: HostState::Live,
            reason: String::new(),
            unsafe_no_watchdog: true,
            lockspace_dir: String::new(),
            lockspace_uuid: String::new(),
            allow_local_lockspace: false,
            local_lockspace: String::new(),
            observing_since_ms: obs.since_ms,
            renew_interval_ms: 200,
            renew_fail_timeout_ms: 1500,
            host_dead_timeout_ms: D,
            networks: vec![],
            peers: obs.peers(),
        }
    }

    fn engine(&self, id: u16, view: Option<Status>) -> Engine {
        let alive = self.alive.clone();
        Engine {
            ls: self.ls.clone(),
            host_id: id,
            boot_id: format!("boot-{id}"),
            dead_ms: D,
            trust_unsafe_peers: false,
            lock_timeout_ms: 500,
            view: view.map(Arc::new),
            process_alive: Arc::new(move |p: ProcId| alive.lock().unwrap().contains(&p.pid)),
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn holder(host: u16, pid: u32, dom: &str) -> Holder {
    Holder {
        host_id: host,
        boot_id: format!("boot-{host}"),
        pid,
        pid_start: 100,
        domain_uuid: format!("uuid-{dom}"),
        domain_name: dom.into(),
    }
}

#[test]
fn exclusive_conflict_names_the_holder() {
    let w = World::new("excl");
    let disk = Resource::disk("/images/a.qcow2", false);
    let a = w.engine(1, Some(w.view(1, &[0], 0)));
    let got = a.acquire(&disk, &holder(1, 10, "web"), None).unwrap();
    assert!(got.changed);
    assert_eq!(got.version, 1);
    let b = w.engine(2, Some(w.view(2, &[0, 100], 100)));
    let e = b
        .acquire(&disk, &holder(2, 20, "web-copy"), None)
        .unwrap_err();
    let msg = e.to_string();
    assert!(e.is_busy(), "{msg}");
    assert!(
        msg.contains("host 1 (host-1.test)") && msg.contains("'web'"),
        "{msg}"
    );
    assert!(msg.contains("QEMU pid 10"), "{msg}");
}

#[test]
fn reacquire_by_same_process_is_idempotent() {
    let w = World::new("idem");
    let dom = Resource::domain("c7a5fdbd-edaf-9455-926a-d65c16db1809");
    let a = w.engine(1, Some(w.view(1, &[0], 0)));
    let me = holder(1, 10, "web");
    let v1 = a.acquire(&dom, &me, None).unwrap();
    let v2 = a.acquire(&dom, &me, None).unwrap();
    assert!(!v2.changed);
    assert_eq!(v1.version, v2.version);
}

#[test]
fn shared_disks_coexist_but_exclude_writers() {
    let w = World::new("shared");
    let sh = Resource::disk("/images/shared.img", true);
    let a = w.engine(1, Some(w.view(1, &[0], 0)));
    let b = w.engine(2, Some(w.view(2, &[0], 0)));
    a.acquire(&sh, &holder(1, 10, "a"), None).unwrap();
    b.acquire(&sh, &holder(2, 20, "b"), None).unwrap();
    let rec = w.ls.read_lease(&sh.key(), &sh.name).unwrap();
    assert_eq!(rec.holders.len(), 2);
    assert_eq!(rec.mode, Some(Mode::Shared));
    let excl = Resource::disk("/images/shared.img", false);
    assert!(b
        .acquire(&excl, &holder(2, 21, "c"), None)
        .unwrap_err()
        .is_busy());
}

#[test]
fn handover_requires_matching_version() {
    let w = World::new("version");
    let disk = Resource::disk("/images/a", false);
    let a = w.engine(1, Some(w.view(1, &[0], 0)));
    let b = w.engine(2, Some(w.view(2, &[0], 0)));
    let me = holder(1, 10, "web");
    let v = a.acquire(&disk, &me, None).unwrap().version;
    // Pause: release keeps the version, which goes into the state.
    assert_eq!(a.release(&disk.key(), &disk.name, &me).unwrap(), Some(v));
    assert_eq!(a.release(&disk.key(), &disk.name, &me).unwrap(), None);
    // Someone else takes it and gives it back in between.
    let other = holder(2, 20, "web");
    b.acquire(&disk, &other, None).unwrap();
    b.release(&disk.key(), &disk.name, &other).unwrap();
    // Resume with the old state must fail: the disk may have changed.
    let e = a.acquire(&disk, &me, Some(v)).unwrap_err();
    assert!(matches!(e, Error::VersionMismatch { .. }), "{e}");
    // With the current version it works (migration destination case).
    let cur = w.ls.read_lease(&disk.key(), &disk.name).unwrap().version;
    b.acquire(&disk, &holder(2, 22, "web"), Some(cur)).unwrap();
}

#[test]
fn corrupt_record_is_never_free() {
    let w = World::new("corrupt");
    let disk = Resource::disk("/images/a", false);
    let b = w.engine(2, Some(w.view(2, &[0], 0)));
    std::fs::write(
        w.ls.lease_path(&disk.key()),
        b"vmlease-lease v1\nkey=x\ncrc=00000000\n",
    )
    .unwrap();
    let e = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains(&disk.key()), "{e}");
    // Truncated to nothing: still corrupt, not free.
    std::fs::write(w.ls.lease_path(&disk.key()), b"").unwrap();
    assert!(matches!(
        b.acquire(&disk, &holder(2, 20, "web"), None),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn concurrent_acquires_from_threads_have_one_winner() {
    let w = World::new("race");
    let disk = Resource::disk("/images/race", false);
    let mut handles = Vec::new();
    for i in 0..8u32 {
        let e = w.engine(
            1 + (i % 2) as u16,
            Some(w.view(1 + (i % 2) as u16, &[0], 0)),
        );
        let d = disk.clone();
        w.alive.lock().unwrap().insert(100 + i);
        handles.push(std::thread::spawn(move || {
            e.acquire(&d, &holder(1 + (i % 2) as u16, 100 + i, "race"), None)
                .is_ok()
        }));
    }
    let winners = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|&ok| ok)
        .count();
    assert_eq!(winners, 1);
}

/// An acquire whose caller gave up at its deadline (the record lock was
/// held elsewhere: a storage stall) and whose QEMU then exited must not
/// leave that dead QEMU as the holder when the stall ends.
#[test]
fn abandoned_acquire_never_leaves_a_holder() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let _serial = crate::deadline::TEST_SERIAL
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let w = World::new("abandoned");
    let disk = Resource::disk("/images/stall.qcow2", false);
    let mut eng = w.engine(1, Some(w.view(1, &[0], 0)));
    eng.lock_timeout_ms = 5000;
    let me = holder(1, 10, "web");
    w.alive.lock().unwrap().insert(10);
    let stall = w.ls.lock_record(&disk.key(), 100).unwrap();
    let finished = Arc::new(AtomicBool::new(false));
    let (e2, d2, me2, f2) = (eng.clone(), disk.clone(), me.clone(), finished.clone());
    let path = w.ls.lease_path(&disk.key());
    let r = crate::deadline::run_cancellable(100, "acquire lease", &path, move |c| {
        let r = e2.acquire_for(&d2, &me2, None, c);
        f2.store(true, Ordering::SeqCst);
        r
    });
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    // libvirt kills the QEMU after the failed start; the stall ends.
    w.alive.lock().unwrap().remove(&10);
    drop(stall);
    let t0 = std::time::Instant::now();
    while !finished.load(Ordering::SeqCst) {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "waited 10 s for the abandoned acquire to end"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let rec = w.ls.read_lease(&disk.key(), &disk.name).unwrap();
    assert!(
        rec.holders.is_empty(),
        "the abandoned acquire left holders {:?} (version {})",
        rec.holders,
        rec.version
    );
}

/// The checks `acquire_for` makes under the record lock, one by one.
#[test]
fn acquire_for_writes_nothing_when_abandoned_or_for_a_dead_process() {
    let w = World::new("acqfor");
    let disk = Resource::disk("/images/b.qcow2", false);
    let eng = w.engine(1, Some(w.view(1, &[0], 0)));
    let me = holder(1, 11, "web");
    // QEMU 11 is not alive.
    let e = eng
        .acquire_for(&disk, &me, None, &crate::deadline::Cancel::new())
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("QEMU pid 11 exited while the acquire waited"),
        "{e}"
    );
    w.alive.lock().unwrap().insert(11);
    let gave_up = crate::deadline::Cancel::new();
    assert!(gave_up.abandon());
    let e = eng.acquire_for(&disk, &me, None, &gave_up).unwrap_err();
    assert!(e.to_string().contains("its caller gave up"), "{e}");
    let rec = w.ls.read_lease(&disk.key(), &disk.name).unwrap();
    assert!(rec.holders.is_empty() && rec.version == 0, "{rec:?}");
    let ok = crate::deadline::Cancel::new();
    assert_eq!(eng.acquire_for(&disk, &me, None, &ok).unwrap().version, 1);
    // The call committed: the caller can no longer give up on it.
    assert!(!ok.abandon());
}

#[test]
fn a_version_at_its_largest_is_refused_not_wrapped() {
    let w = World::new("maxver");
    let disk = Resource::disk("/images/a.qcow2", false);
    let mut rec = LeaseRecord::free(&disk.key(), &disk.name);
    rec.version = u64::MAX;
    w.ls.write_lease(&rec, 2).unwrap();
    let a = w.engine(1, Some(w.view(1, &[0], 0)));
    let e = a.acquire(&disk, &holder(1, 10, "web"), None).unwrap_err();
    assert!(e.to_string().contains("cannot grow"), "{e}");
    assert_eq!(w.ls.read_lease(&disk.key(), "").unwrap(), rec);
}

/// The last slot of the lockspace is a host like any other; only a host
/// id beyond it is "outside this lockspace" (held, never judged).
#[test]
fn the_last_slot_is_judged_and_an_id_beyond_it_is_held() {
    let w = World::new("lastslot");
    let last = w.ls.max_hosts;
    let disk = Resource::disk("/images/last", false);
    w.ls.write_host(&record(last, &format!("boot-{last}"), 1, HostState::Live))
        .unwrap();
    w.engine(last, Some(w.view(last, &[0], 0)))
        .acquire(&disk, &holder(last, 10, "web"), None)
        .unwrap();
    // The last host rebooted: rule 2 frees its holder at once.
    w.ls.write_host(&record(last, "boot-new", 1, HostState::Live))
        .unwrap();
    let b = w.engine(2, Some(w.view(2, &[0], 0)));
    let got = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap();
    assert_eq!(got.took_over.len(), 1, "{:?}", got.took_over);
    // A record naming a host id beyond the table holds.
    let other = Resource::disk("/images/beyond", false);
    let mut rec = crate::lease::LeaseRecord::free(&other.key(), &other.name);
    rec.holders.push(holder(last + 1, 30, "ghost"));
    rec.mode = Some(Mode::Exclusive);
    rec.version = 1;
    w.ls.write_lease(&rec, last + 1).unwrap();
    let e = b
        .acquire(&other, &holder(2, 21, "ghost"), None)
        .unwrap_err();
    assert!(e.to_string().contains("outside this lockspace"), "{e}");
}

/// A re-acquire by the process that already holds the lease (a resume)
/// through `acquire_for`: done unchanged while its caller waits, refused
/// once the caller gave up (the caller must not count on it).
#[test]
fn acquire_for_a_holder_already_named_honours_its_caller() {
    let w = World::new("reacqfor");
    let disk = Resource::disk("/images/re.qcow2", false);
    let eng = w.engine(1, Some(w.view(1, &[0], 0)));
    let me = holder(1, 12, "web");
    w.alive.lock().unwrap().insert(12);
    let first = crate::deadline::Cancel::new();
    assert_eq!(
        eng.acquire_for(&disk, &me, None, &first).unwrap().version,
        1
    );
    let again = crate::deadline::Cancel::new();
    let got = eng.acquire_for(&disk, &me, None, &again).unwrap();
    assert!(!got.changed && got.version == 1, "{got:?}");
    assert!(!again.abandon(), "the re-acquire committed");
    let gave_up = crate::deadline::Cancel::new();
    assert!(gave_up.abandon());
    let e = eng.acquire_for(&disk, &me, None, &gave_up).unwrap_err();
    assert!(e.to_string().contains("its caller gave up"), "{e}");
}
