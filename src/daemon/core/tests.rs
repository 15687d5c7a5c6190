//! The core driven by a fake clock: each test feeds events at chosen
//! times and checks the commands.

use super::*;
use crate::daemon::renew::RenewIo;
use crate::error::Error;
use crate::hosts::{decode_table, SLOT_SIZE};

const R: u64 = 1000;
const F: u64 = 8000;
const K: u64 = 2000;

fn setup() -> Setup {
    let cfg = crate::config::parse(
        "lockspace_dir = \"/ls\"\nstate_dir = \"/st\"\nrenew_interval = 1\n\
         renew_fail_timeout = 8\nkill_timeout = 2\nwatchdog_timeout = 5\n",
        "core-test.conf",
    )
    .unwrap();
    assert_eq!(cfg.timing.renew_interval, R);
    assert_eq!(cfg.timing.renew_fail_timeout, F);
    Setup::new(&cfg, 1, "h1", "boot-a", 7)
}

fn core_at(now: u64) -> Core {
    let mut c = Core::new(setup(), None, vec![0; SLOT_SIZE], now, None);
    c.begin(now, None);
    c
}

fn tick(c: &mut Core, now: u64, alive: usize) -> Vec<Command> {
    c.tick(
        TickIn {
            now,
            wall_secs: 1,
            alive_leased: alive,
            ..TickIn::default()
        },
        || alive,
    )
}

fn renew_of(cmds: &[Command]) -> Option<RenewReq> {
    cmds.iter().find_map(|c| match c {
        Command::Renew(r) => Some(r.clone()),
        _ => None,
    })
}

/// The table after `req` landed (one slot).
fn landed(req: &RenewReq) -> Renewed {
    let table = req.rec.as_ref().map(HostRecord::encode).unwrap_or_default();
    Renewed {
        slots: decode_table(&table),
        result: Ok(RenewIo {
            table,
            wrote: req.rec.is_some(),
            collision: None,
        }),
        took_ms: 1,
    }
}

fn failed() -> Renewed {
    Renewed {
        result: Err(Error::Config("write failed".into())),
        slots: Vec::new(),
        took_ms: 1,
    }
}

#[test]
fn renews_every_interval_and_reports_it() {
    let mut c = core_at(600);
    let cmds = tick(&mut c, 600, 0);
    assert_eq!(cmds.first(), Some(&Command::Pet), "{cmds:?}");
    let req = renew_of(&cmds).expect("a renewal at the first tick");
    assert!(cmds.contains(&Command::WriteStatus));
    // Nothing more while it is in flight.
    assert_eq!(renew_of(&tick(&mut c, 1500, 0)), None);
    c.renewed(1600, landed(&req));
    assert_eq!(c.last_renewal_ms(), 600);
    let next = renew_of(&tick(&mut c, 1700, 0)).expect("renewed again");
    // The slot may hold only what the last renewal wrote.
    assert_eq!(next.expect, vec![req.rec.unwrap().encode()]);
}

#[test]
fn a_failed_write_may_have_landed() {
    let mut c = core_at(0);
    let first = renew_of(&tick(&mut c, 0, 0)).unwrap();
    c.renewed(10, failed());
    c.check_late(10);
    let second = renew_of(&tick(&mut c, R, 0)).unwrap();
    let w = first.rec.unwrap().encode();
    assert!(
        second.expect.contains(&w),
        "the failed write is expected too"
    );
    assert_eq!(c.status(R, 1).reason, "write failed");
}

#[test]
fn storage_loss_kills_then_resets_and_never_pets_meanwhile() {
    let mut c = core_at(0);
    let req = renew_of(&tick(&mut c, 0, 1)).unwrap();
    c.renewed(5, landed(&req));
    // Renewals hang from now on.
    let _ = tick(&mut c, R, 1);
    let cmds = tick(&mut c, F, 1);
    assert!(cmds.contains(&Command::Pet), "still within F: {cmds:?}");
    let cmds = tick(&mut c, F + 1, 1);
    let kill = cmds.iter().position(|c| *c == Command::KillAll);
    assert!(kill.is_some(), "F ran out: {cmds:?}");
    assert!(
        !cmds.contains(&Command::Pet),
        "no pet while fencing: {cmds:?}"
    );
    assert!(matches!(cmds[0], Command::FenceLog { fence: true, .. }));
    let cmds = tick(&mut c, F + K + 1, 1);
    assert!(
        matches!(cmds.last(), Some(Command::Reset { .. })),
        "a QEMU survived K: reset last: {cmds:?}"
    );
    assert!(!cmds
        .iter()
        .any(|c| matches!(c, Command::Pet | Command::Renew(_))));
    assert!(c.reset_done());
    assert!(
        tick(&mut c, F + K + 2, 1).is_empty(),
        "a reset host does nothing"
    );
}

#[test]
fn a_restart_on_the_same_boot_continues_the_fence_clock() {
    let now = 100_000;
    let mut old = core_at(0);
    let mut rec = old.record(HostState::Live, now - F - 1, 1);
    rec.boot_id = "boot-a".into();
    let own = crate::hosts::decode_slot(1, &rec.encode());
    let mut c = Core::new(setup(), Some(&own), rec.encode(), now, None);
    c.begin(now, None);
    assert_eq!(c.fence_clock(), now - F - 1);
    let cmds = tick(&mut c, now, 1);
    assert!(cmds.contains(&Command::KillAll), "{cmds:?}");
    // Another boot's record starts the clock now.
    let _ = tick(&mut old, 0, 0);
    rec.boot_id = "boot-b".into();
    let other = crate::hosts::decode_slot(1, &rec.encode());
    let c = Core::new(setup(), Some(&other), rec.encode(), now, None);
    assert_eq!(c.fence_clock(), now);
}

#[test]
fn stop_waits_for_the_renewal_then_leaves() {
    let mut c = core_at(0);
    let req = renew_of(&tick(&mut c, 0, 0)).unwrap();
    c.renewed(5, landed(&req));
    let req = renew_of(&tick(&mut c, R, 0)).unwrap();
    assert_eq!(c.stop(R + 1, 1, None), StopNext::Withdraw);
    assert_eq!(c.stop(R + 2, 1, Some(0)), StopNext::WaitRenewal);
    c.renewed(R + 3, landed(&req));
    assert_eq!(c.stop(R + 4, 1, None), StopNext::Count);
    match c.stop(R + 5, 1, Some(0)) {
        StopNext::Leave(l) => {
            let rec = l.rec.unwrap();
            assert_eq!(rec.state, HostState::Leaving);
            assert_eq!(l.expect, vec![req.rec.unwrap().encode()]);
        }
        other => panic!("expected Leave, got {other:?}"),
    }
}

#[test]
fn stop_with_leased_qemus_stays_armed_and_writes_nothing() {
    let mut c = core_at(0);
    let req = renew_of(&tick(&mut c, 0, 1)).unwrap();
    c.renewed(5, landed(&req));
    assert_eq!(c.stop(10, 1, None), StopNext::Withdraw);
    assert_eq!(c.stop(11, 1, Some(1)), StopNext::StayArmed(1));
    // A QEMU registered while the status was withdrawn.
    let mut c = core_at(0);
    let req = renew_of(&tick(&mut c, 0, 0)).unwrap();
    c.renewed(5, landed(&req));
    assert_eq!(c.stop(10, 1, None), StopNext::Withdraw);
    assert_eq!(c.stop(11, 1, Some(0)), StopNext::Count);
    assert_eq!(c.stop(12, 1, Some(2)), StopNext::StayArmed(2));
}

#[test]
fn after_a_collision_the_slot_is_only_read_and_never_left() {
    let mut c = core_at(0);
    let req = renew_of(&tick(&mut c, 0, 0)).unwrap();
    c.renewed(5, landed(&req));
    let req = renew_of(&tick(&mut c, R, 0)).unwrap();
    let mut r = landed(&req);
    if let Ok(io) = &mut r.result {
        io.wrote = false;
        io.collision = Some(crate::collision::Collision {
            host_id: 1,
            found: "another machine's record".into(),
        });
    }
    c.renewed(R + 5, r);
    assert!(c.collision());
    let cmds = tick(&mut c, 2 * R, 1);
    assert!(cmds.contains(&Command::KillAll), "{cmds:?}");
    assert!(!cmds.contains(&Command::Pet), "{cmds:?}");
    let read = renew_of(&cmds).expect("the table is still read");
    assert!(read.rec.is_none(), "nothing is written after a collision");
    assert!(c
        .status(2 * R, 1)
        .reason
        .contains("another machine's record"));
    c.renewed(2 * R + 5, landed(&read));
    assert_eq!(c.stop(3 * R, 1, None), StopNext::Withdraw);
    assert_eq!(c.stop(3 * R, 1, Some(0)), StopNext::Count);
    assert_eq!(c.stop(3 * R, 1, Some(0)), StopNext::Disarm);
}

/// The fence destroys the killed QEMUs' TCP sockets once every leased
/// QEMU is dead, in the step that publishes `fenced-clean` and before
/// it: a write left in a send queue must not reach the storage after
/// another host took the lease over. Once per fence, and again for a
/// QEMU killed later by the fenced host.
#[test]
fn the_sockets_are_aborted_after_the_kills_and_before_fenced_clean() {
    let mut c = core_at(0);
    let req = renew_of(&tick(&mut c, 0, 1)).unwrap();
    c.renewed(5, landed(&req));
    let cmds = tick(&mut c, F + 1, 1);
    assert!(cmds.contains(&Command::KillAll), "{cmds:?}");
    assert!(
        !cmds.contains(&Command::AbortSockets),
        "not while a killed QEMU may still be exiting: {cmds:?}"
    );
    // Still alive a tick later: killed again, nothing aborted yet.
    let cmds = tick(&mut c, F + 100, 1);
    assert!(cmds.contains(&Command::KillAll), "{cmds:?}");
    assert!(!cmds.contains(&Command::AbortSockets), "{cmds:?}");
    // Dead: the abort, then the state change, the status, the renewal.
    let cmds = tick(&mut c, F + 200, 0);
    let abort = cmds
        .iter()
        .position(|c| *c == Command::AbortSockets)
        .unwrap_or_else(|| panic!("no abort when the fence completed: {cmds:?}"));
    let clean = cmds
        .iter()
        .position(|c| {
            matches!(
                c,
                Command::State {
                    to: HostState::FencedClean,
                    ..
                }
            )
        })
        .unwrap_or_else(|| panic!("no fenced-clean: {cmds:?}"));
    assert!(abort < clean, "abort before fenced-clean: {cmds:?}");
    for (i, cmd) in cmds.iter().enumerate() {
        if matches!(cmd, Command::WriteStatus | Command::Renew(_)) {
            assert!(i > abort, "published before the abort: {cmds:?}");
        }
    }
    assert_eq!(c.last_state(), HostState::FencedClean);
    // Once per fence.
    let cmds = tick(&mut c, F + 300, 0);
    assert!(!cmds.contains(&Command::AbortSockets), "{cmds:?}");
    // A leased QEMU appears on the fenced host: killed, then aborted.
    let cmds = tick(&mut c, F + 400, 1);
    assert!(cmds.contains(&Command::KillAll), "{cmds:?}");
    let cmds = tick(&mut c, F + 500, 0);
    assert!(cmds.contains(&Command::AbortSockets), "{cmds:?}");
}
