//! The reaper's bookkeeping, driven with a fake clock.

use super::*;
use crate::error::Error;

fn p(pid: u32) -> ProcId {
    ProcId { pid, start: 7 }
}

fn entry(pid: u32, keys: &[&str]) -> Entry {
    let mut e = Entry::new(p(pid), "uuid", "dom");
    e.keys = keys
        .iter()
        .map(|k| (k.to_string(), k.to_string()))
        .collect();
    e
}

#[test]
fn scans_are_cheap_unless_changed_forced_or_a_second_old() {
    let mut t = Tracker::new();
    assert!(t.scan_due(0, Some(1), false), "the first scan reads");
    assert!(!t.scan_due(999, Some(1), false));
    assert!(t.scan_due(999, Some(2), false), "the directory changed");
    assert!(t.scan_due(1000, Some(2), true), "forced");
    assert!(!t.scan_due(1999, Some(2), false));
    assert!(
        t.scan_due(2000, Some(2), false),
        "a full reread every second"
    );
}

#[test]
fn a_process_dead_at_first_sight_is_released_then_forgotten() {
    let mut t = Tracker::new();
    let watch = t.scanned(
        vec![
            (p(1), Some(entry(1, &["a"]))),
            (p(2), Some(entry(2, &["b"]))),
        ],
        |q| q == p(1),
    );
    assert_eq!(watch, vec![p(1)]);
    assert_eq!(t.alive_count(), 1);
    assert_eq!(t.alive_lease_count(), 1);
    let due = t.due(0);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].0, p(2));
    assert!(t.due(0).is_empty(), "handed over once");
    // Gone from the registry while being released: still tracked.
    t.scanned(vec![(p(1), None)], |_| true);
    let pass = Pass {
        released: Ok(vec!["b".into()]),
        in_flight: vec![],
    };
    assert_eq!(t.finished(10, p(2), pass), Finished::Released);
    assert_eq!(t.released_total, 1);
    assert!(t.due(10_000).is_empty());
    // An unreadable entry keeps the one read before.
    assert_eq!(t.alive_lease_count(), 1);
}

#[test]
fn a_failed_release_is_retried_after_a_second() {
    let mut t = Tracker::new();
    t.scanned(vec![(p(1), Some(entry(1, &["a"])))], |_| true);
    assert!(t.mark_dead(p(1)));
    assert!(!t.mark_dead(p(1)), "once");
    assert_eq!(t.due(100).len(), 1);
    let failed = Pass {
        released: Err(Error::Config("EIO".into())),
        in_flight: vec![],
    };
    assert_eq!(t.finished(100, p(1), failed), Finished::Kept);
    assert!(t.due(100 + RETRY_MS - 1).is_empty());
    assert_eq!(t.due(100 + RETRY_MS).len(), 1);
}

#[test]
fn an_acquire_in_flight_keeps_the_entry_and_sweeps_it() {
    let mut t = Tracker::new();
    t.scanned(vec![(p(1), Some(entry(1, &["a"])))], |_| true);
    assert_eq!(t.alive(|_| false).len(), 0, "/proc says it exited");
    t.due(0);
    let caller = Intent {
        id: 3,
        caller: p(99),
    };
    let pass = Pass {
        released: Ok(vec![]),
        in_flight: vec![caller],
    };
    assert_eq!(t.finished(0, p(1), pass), Finished::Kept);
    assert!(t.is_sweeping(p(1)));
    assert!(t.due(SWEEP_MS - 1).is_empty());
    assert_eq!(t.due(SWEEP_MS).len(), 1);
    let pass = Pass {
        released: Ok(vec!["a".into()]),
        in_flight: vec![],
    };
    assert_eq!(t.finished(SWEEP_MS, p(1), pass), Finished::Released);
    assert_eq!(t.released_total, 0, "a sweep is not a QEMU's release");
}

#[test]
fn a_pass_releases_each_key_of_this_qemu_only() {
    let mut e = entry(1, &["a", "b"]);
    e.acquiring = vec![Intent {
        id: 1,
        caller: p(50),
    }];
    let mut pass = ReleasePass::new(p(1), entry(1, &["x"]), Some(e), &|c| c == p(50));
    let me = Holder {
        host_id: 2,
        boot_id: "b".into(),
        pid: 1,
        pid_start: 7,
        domain_uuid: String::new(),
        domain_name: String::new(),
    };
    let owns = |h: &Holder| ReleasePass::owns(pass.proc_id(), 2, "b", h);
    assert!(owns(&me));
    assert!(!ReleasePass::owns(p(1), 3, "b", &me));
    assert!(!ReleasePass::owns(p(1), 2, "c", &me));
    let other = Holder {
        pid_start: 8,
        ..me.clone()
    };
    assert!(!owns(&other));
    let other = Holder {
        pid: 2,
        ..me.clone()
    };
    assert!(!owns(&other));
    assert_eq!(pass.next_key(), Some("a"));
    pass.released(std::slice::from_ref(&me));
    assert_eq!(pass.next_key(), Some("b"));
    pass.released(&[]);
    assert_eq!(pass.next_key(), None);
    let end = pass.end(None);
    assert_eq!(end.released.unwrap(), vec!["a".to_string()]);
    assert_eq!(end.in_flight.len(), 1);
}
