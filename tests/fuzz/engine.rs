//! Damaged records through the engine (src/engine.rs, src/takeover.rs) on
//! a real lockspace directory: a lease record that does not decode is
//! never treated as free (every operation on it fails, naming the file,
//! and leaves it as it was), and a holder whose host slot is damaged keeps
//! its lease until the daemon has seen that slot unchanged for D.

use std::path::PathBuf;
use std::sync::Arc;

use proptest::prelude::*;
use vmlease::checksum::crc32c;
use vmlease::config::Timing;
use vmlease::engine::Engine;
use vmlease::hosts::{HostRecord, HostState, SLOT_SIZE};
use vmlease::lease::{Holder, LeaseRecord, Mode};
use vmlease::lockspace::Lockspace;
use vmlease::resource::Resource;
use vmlease::status::{PeerKind, PeerView, Status};
use vmlease::Error;

use crate::lease::record;
use crate::mutate::{self, Input};
use crate::runner::fuzz;

const D: u64 = 4000;
const NOW: u64 = 1_000_000;

pub struct TempLs(PathBuf);

impl Drop for TempLs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn lockspace(name: &str) -> (TempLs, Lockspace) {
    let dir = std::env::temp_dir().join(format!(
        "vmlease-fuzz-{name}-{}-{}",
        std::process::id(),
        vmlease::process::random_u64()
    ));
    Lockspace::init(&dir, 16).unwrap();
    let ls = Lockspace::open(&dir).unwrap();
    (TempLs(dir), ls)
}

fn host(id: u16, counter: u64) -> HostRecord {
    HostRecord {
        host_id: id,
        host_name: format!("host-{id}.test"),
        boot_id: format!("boot-{id}"),
        incarnation: 1,
        counter,
        state: HostState::Live,
        timing: Timing {
            renew_interval: 200,
            renew_fail_timeout: 1500,
            kill_timeout: 500,
            watchdog_timeout: 1000,
            host_dead_timeout: D,
            host_dead_derived: false,
        },
        unsafe_no_watchdog: true,
        mono_ms: NOW,
        wall: 0,
    }
}

pub fn holder(id: u16, pid: u32) -> Holder {
    Holder {
        host_id: id,
        boot_id: format!("boot-{id}"),
        pid,
        pid_start: 1,
        domain_uuid: "c7a5fdbd-edaf-9455-926a-d65c16db1809".into(),
        domain_name: "web".into(),
    }
}

/// Host 1's daemon view at NOW: it saw host 2's slot (`slot`) change just
/// now, so host 2 is alive.
fn view(slot: &[u8]) -> Status {
    Status {
        daemon_pid: 1,
        host_id: 1,
        boot_id: "boot-1".into(),
        incarnation: 1,
        written_ms: NOW,
        last_renewal_ms: NOW,
        state: HostState::Live,
        reason: String::new(),
        unsafe_no_watchdog: true,
        lockspace_dir: String::new(),
        lockspace_uuid: String::new(),
        allow_local_lockspace: false,
        local_lockspace: String::new(),
        observing_since_ms: 0,
        renew_interval_ms: 200,
        renew_fail_timeout_ms: 1500,
        host_dead_timeout_ms: D,
        networks: vec![],
        peers: vec![PeerView {
            host_id: 2,
            fingerprint: crc32c(slot),
            last_change_ms: NOW,
            kind: PeerKind::Record,
            host_name: "host-2.test".into(),
            boot_id: "boot-2".into(),
            counter: 1,
            state: Some(HostState::Live),
            dead_timeout_ms: D,
            collision: String::new(),
        }],
    }
}

pub fn engine(ls: &Lockspace, view: Option<Status>) -> Engine {
    Engine {
        ls: ls.clone(),
        host_id: 1,
        boot_id: "boot-1".into(),
        dead_ms: D,
        trust_unsafe_peers: false,
        lock_timeout_ms: 2000,
        view: view.map(Arc::new),
        process_alive: Arc::new(|_| true),
    }
}

/// A damaged lease record file: if it does not decode, acquire, release,
/// held_version and release_matching all fail with Corrupt naming the
/// file, and the file is left as it was. Raw damage of a record held by a
/// live host never lets host 1 acquire.
#[test]
fn engine_damaged_lease_record_is_never_free() {
    let (_t, ls) = lockspace("lease");
    let slot2 = host(2, 1).encode();
    ls.write_host(&host(1, 1)).unwrap();
    ls.write_host(&host(2, 1)).unwrap();
    let eng = engine(&ls, Some(view(&slot2)));
    let me = holder(1, 4242);
    let strategy = (
        record(),
        record(),
        mutate::input(),
        any::<bool>(),
        prop::collection::vec(crate::lease::holder(), 1..3),
    );
    fuzz(
        "engine_damaged_lease_record",
        1000,
        strategy,
        |(mut good, mut other, input, shared, holders)| {
            let res = Resource::disk("/images/a.qcow2", shared);
            let key = res.key();
            // The record as another live host wrote it: held by host 2.
            for r in [&mut good, &mut other] {
                r.key = key.clone();
                r.resource = res.name.clone();
                r.mode = Some(if shared {
                    Mode::Shared
                } else {
                    Mode::Exclusive
                });
                r.holders = vec![holder(2, 77)];
                if shared {
                    // Other processes of the same live host and boot.
                    r.holders.extend(holders.iter().cloned().map(|mut h| {
                        h.host_id = 2;
                        h.boot_id = "boot-2".into();
                        h
                    }));
                }
            }
            let bad = mutate::make(&good.encode(), &other.encode(), &input);
            let path = ls.lease_path(&key);
            std::fs::write(&path, &bad).unwrap();
            let decoded = LeaseRecord::decode(&bad);
            let corrupt = |r: Result<(), Error>, op: &str| -> Result<(), TestCaseError> {
                match r {
                    Err(Error::Corrupt { path: p, .. }) if p == path => Ok(()),
                    other => Err(TestCaseError::fail(format!(
                        "{op} on an undecodable record ({:?}): {other:?}",
                        decoded
                    ))),
                }
            };
            let acq = eng.acquire(&res, &me, None);
            if decoded.is_err() {
                corrupt(acq.map(|_| ()), "acquire")?;
                corrupt(eng.release(&key, &res.name, &me).map(|_| ()), "release")?;
                corrupt(
                    eng.held_version(&key, &res.name, &me).map(|_| ()),
                    "held_version",
                )?;
                corrupt(
                    eng.release_matching(&key, &|_| true).map(|_| ()),
                    "release_matching",
                )?;
                prop_assert_eq!(
                    std::fs::read(&path).unwrap(),
                    bad,
                    "the damaged file was changed"
                );
            } else if matches!(input, Input::Raw(_)) && !shared {
                // Decodes, so it is the record as written: held by a live host.
                prop_assert!(
                    matches!(acq, Err(Error::Busy { .. })),
                    "host 1 acquired a lease host 2 holds: {:?}",
                    acq
                );
            } else if let (Input::Raw(_), Ok(held)) = (&input, &decoded) {
                // Shared: host 1 joins, host 2's holders all stay.
                prop_assert!(acq.is_ok(), "{:?}", acq);
                let now = ls.read_lease(&key, "").unwrap();
                for h in &held.holders {
                    prop_assert!(now.holders.contains(h), "holder {:?} was dropped", h);
                }
            }
            let _ = std::fs::remove_file(&path);
            Ok(())
        },
    );
}

/// A damaged host slot of the holder (raw damage, or a torn renewal of the
/// next counter over the last): the lease stays held, since host 1's daemon
/// saw that slot change just now.
#[test]
fn engine_damaged_holder_slot_keeps_the_lease() {
    let (_t, ls) = lockspace("slot");
    ls.write_host(&host(1, 1)).unwrap();
    let res = Resource::domain("c7a5fdbd-edaf-9455-926a-d65c16db1809");
    let mut rec = LeaseRecord::free(&res.key(), &res.name);
    rec.mode = Some(Mode::Exclusive);
    rec.version = 1;
    rec.holders = vec![holder(2, 77)];
    let me = holder(1, 4242);
    let hosts = ls.hosts_path();
    fuzz(
        "engine_damaged_holder_slot",
        1000,
        (
            1u64..1000,
            prop::collection::vec(mutate::damage(), 1..4),
            any::<bool>(),
        ),
        |(counter, ds, with_view)| {
            let good = host(2, counter).encode();
            let next = host(2, counter + 1).encode();
            let mut bad = ds
                .iter()
                .fold(good.clone(), |acc, d| mutate::apply_damage(&acc, &next, d));
            bad.resize(SLOT_SIZE, 0);
            let mut table = std::fs::read(&hosts).unwrap();
            table[SLOT_SIZE..2 * SLOT_SIZE].copy_from_slice(&bad);
            std::fs::write(&hosts, &table).unwrap();
            ls.write_lease(&rec, 2).unwrap();
            let eng = engine(&ls, with_view.then(|| view(&good)));
            let r = eng.acquire(&res, &me, None);
            prop_assert!(
                matches!(r, Err(Error::Busy { .. })),
                "a lease whose holder's slot is damaged was taken: {:?}",
                r
            );
            Ok(())
        },
    );
}
