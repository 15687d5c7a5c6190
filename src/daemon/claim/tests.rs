//! The claim's unit tests.

use super::*;
use crate::config::Timing;
use crate::hosts::HostRecord;

fn rec(name: &str, boot: &str, state: HostState) -> Slot {
    Slot::Record(HostRecord {
        host_id: 1,
        host_name: name.into(),
        boot_id: boot.into(),
        incarnation: 1,
        counter: 1,
        state,
        timing: Timing {
            renew_interval: 2000,
            renew_fail_timeout: 20000,
            kill_timeout: 10000,
            watchdog_timeout: 15000,
            host_dead_timeout: 41000,
            host_dead_derived: false,
        },
        unsafe_no_watchdog: false,
        mono_ms: 0,
        wall: 0,
    })
}

#[test]
fn watch_rules() {
    assert_eq!(watch_time(&Slot::Empty, "a", "b1", 4000, 100), None);
    assert_eq!(
        watch_time(&rec("a", "b1", HostState::Live), "a", "b1", 4000, 100),
        None
    );
    assert_eq!(
        watch_time(&rec("a", "b0", HostState::Leaving), "a", "b1", 4000, 100),
        None
    );
    // Our name from another boot: a reboot, or a clone that may be
    // alive with stalled renewals: its D, as for any other record.
    assert_eq!(
        watch_time(&rec("a", "b0", HostState::Live), "a", "b1", 4000, 100)
            .unwrap()
            .0,
        41000
    );
    assert_eq!(
        watch_time(&rec("x", "b0", HostState::Live), "a", "b1", 4000, 100)
            .unwrap()
            .0,
        41000
    );
    assert_eq!(
        watch_time(&rec("x", "b0", HostState::Leaving), "a", "b1", 50000, 100)
            .unwrap()
            .0,
        50000
    );
    assert_eq!(
        watch_time(&Slot::Corrupt("x".into()), "a", "b1", 4000, 100)
            .unwrap()
            .0,
        4000
    );
}

fn raw(s: &Slot) -> Vec<u8> {
    match s {
        Slot::Record(r) => r.encode(),
        _ => vec![0u8; hosts::SLOT_SIZE],
    }
}

fn mine(counter: u64) -> Vec<u8> {
    let mut r = rec("a", "b1", HostState::Live).record().unwrap().clone();
    r.counter = counter;
    r.encode()
}

fn new(careful: bool) -> Claim {
    Claim::new(1, "a", "b1", 4000, 500, 200, careful)
}

#[test]
fn an_empty_slot_is_written_then_read_back_after_the_claim_wait() {
    let empty = vec![0u8; hosts::SLOT_SIZE];
    let mut c = new(false);
    assert_eq!(
        c.step(0, &empty),
        ClaimStep::Write {
            expect: empty.clone()
        }
    );
    assert_eq!(c.pending_write(), Some(empty));
    let wait = crate::collision::claim_wait_ms(500, 200, None);
    assert_eq!(c.wrote(10, mine(0)), ClaimStep::ReadAt(210));
    assert_eq!(c.step(210, &mine(0)), ClaimStep::ReadAt(410));
    assert_eq!(c.step(10 + wait, &mine(0)), ClaimStep::Joined);
}

#[test]
fn a_racing_claimer_refuses_the_one_that_wrote_first() {
    let empty = vec![0u8; hosts::SLOT_SIZE];
    let mut c = new(false);
    c.step(0, &empty);
    c.wrote(10, mine(0));
    // The other machine's claim landed after ours.
    let other = raw(&rec("x", "b9", HostState::Live));
    match c.step(500, &other) {
        ClaimStep::Refused(why) => {
            assert!(why.contains("host id 1 collision"), "{why}");
            assert!(
                why.contains("this host ('a', boot b1)") && why.contains("host 'x'"),
                "{why}"
            );
        }
        s => panic!("{s:?}"),
    }
}

#[test]
fn a_record_that_changes_while_watched_refuses_the_claim() {
    let r0 = rec("a", "b0", HostState::Live);
    let mut c = new(false);
    assert_eq!(c.step(0, &raw(&r0)), ClaimStep::ReadAt(200));
    assert_eq!(c.step(200, &raw(&r0)), ClaimStep::ReadAt(400));
    let mut r1 = r0.record().unwrap().clone();
    r1.counter += 1;
    match c.step(400, &r1.encode()) {
        ClaimStep::Refused(why) => assert!(why.contains("in use by live host 'a'"), "{why}"),
        s => panic!("{s:?}"),
    }
    // Unchanged for its D: claimed, over exactly what was watched.
    let mut c = new(false);
    c.step(0, &raw(&r0));
    assert_eq!(
        c.step(41000, &raw(&r0)),
        ClaimStep::Write { expect: raw(&r0) }
    );
    // The conditional write found it changed after all.
    assert!(matches!(c.step(41010, &r1.encode()), ClaimStep::Refused(_)));
}

#[test]
fn a_restart_on_this_boot_joins_at_once_unless_after_a_collision() {
    let own = mine(7);
    let mut c = new(false);
    assert_eq!(c.step(0, &own), ClaimStep::Rejoined);
    let mut c = new(true);
    assert_eq!(
        c.step(0, &own),
        ClaimStep::Write {
            expect: own.clone()
        }
    );
    let mut c = new(true);
    c.step(0, &own);
    assert_eq!(c.wrote(5, mine(0)), ClaimStep::ReadAt(205));
}
