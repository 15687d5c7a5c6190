//! The takeover rules (SPEC section 2, src/takeover.rs) as the engine
//! applies them to the records it reads: rule 1 fenced-clean or leaving,
//! rule 2 reboot, rule 3 local process gone, rule 4 observed dead, rule 5
//! storage-fenced.

use super::*;

#[test]
fn rule2_reboot_frees_at_once() {
    let w = World::new("reboot");
    let disk = Resource::disk("/images/a", false);
    w.engine(1, Some(w.view(1, &[0], 0)))
        .acquire(&disk, &holder(1, 10, "web"), None)
        .unwrap();
    w.ls.write_host(&record(1, "boot-1-new", 1, HostState::Live))
        .unwrap();
    let b = w.engine(2, Some(w.view(2, &[0], 0)));
    let got = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap();
    assert_eq!(got.took_over.len(), 1);
    assert!(
        got.took_over[0].1.contains("rebooted"),
        "{:?}",
        got.took_over
    );
}

/// Issue 14, item 2: a claim that has not finished (counter 0) is no
/// reboot: it may be a second machine with the same host id that is about
/// to find the id in use.
#[test]
fn rule2_ignores_a_claim_record() {
    let w = World::new("claim");
    let disk = Resource::disk("/images/a", false);
    w.engine(1, Some(w.view(1, &[0], 0)))
        .acquire(&disk, &holder(1, 10, "web"), None)
        .unwrap();
    w.ls.write_host(&record(1, "boot-clone", 0, HostState::Live))
        .unwrap();
    let b = w.engine(2, Some(w.view(2, &[0], 0)));
    let e = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap_err();
    assert!(e.to_string().contains("still claiming host id 1"), "{e}");
    // Once the claim is confirmed (first renewal), it is a reboot.
    w.ls.write_host(&record(1, "boot-clone", 1, HostState::Live))
        .unwrap();
    let got = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap();
    assert!(
        got.took_over[0].1.contains("rebooted"),
        "{:?}",
        got.took_over
    );
}

/// Issue 14, item 2: two machines taking turns on one slot, as this host's
/// daemon observed them: rule 2 is off for that slot until one writer has
/// been alone on it for D.
#[test]
fn rule2_is_off_for_a_slot_two_machines_take_turns_on() {
    let w = World::new("turns");
    let disk = Resource::disk("/images/a", false);
    w.engine(1, Some(w.view(1, &[0], 0)))
        .acquire(&disk, &holder(1, 10, "web"), None)
        .unwrap();
    let mut clone = record(1, "boot-clone", 1, HostState::Live);
    clone.host_name = "clone.test".into();
    let mut obs = Observer::new(0);
    let feed = |t: u64, rec: &HostRecord, obs: &mut Observer| {
        w.ls.write_host(rec).unwrap();
        let raw = std::fs::read(w.ls.hosts_path()).unwrap();
        obs.update(t, &raw, &crate::hosts::decode_table(&raw));
    };
    let mut counter = 1;
    let own = |c: &mut u64| {
        *c += 1;
        record(1, "boot-1", *c, HostState::Live)
    };
    feed(0, &own(&mut counter), &mut obs);
    feed(200, &clone, &mut obs);
    feed(400, &own(&mut counter), &mut obs);
    clone.counter += 1;
    feed(600, &clone, &mut obs);
    let view = |obs: &Observer, now: u64| {
        let mut st = w.view(2, &[0], now);
        st.peers = obs.peers();
        st.observing_since_ms = 0;
        st
    };
    let peer = obs.get(1).unwrap().clone();
    assert!(peer.collision.contains("take turns"), "{peer:?}");
    let b = w.engine(2, Some(view(&obs, 600)));
    let e = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap_err();
    assert!(e.to_string().contains("host id 1 collision"), "{e}");
    // The clone alone for D: the first machine has been silent that long.
    for t in (800..=600 + D).step_by(200) {
        clone.counter += 1;
        feed(t, &clone, &mut obs);
    }
    assert_eq!(obs.get(1).unwrap().collision, "");
    let b = w.engine(2, Some(view(&obs, 600 + D)));
    let got = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap();
    assert!(
        got.took_over[0].1.contains("rebooted"),
        "{:?}",
        got.took_over
    );
}

/// Issue 14, item 2: a claim that is never confirmed (its daemon died
/// right after the claim write, and was not restarted) proves no reboot -
/// but a slot left unchanged for D is silence like any other: rule 4
/// frees the holder. Found by the simulator (seed 1778): the leases of
/// the host's previous boot were held forever.
#[test]
fn a_claim_record_left_unchanged_for_d_frees_by_rule_4() {
    let w = World::new("claim-silent");
    let disk = Resource::disk("/images/a", false);
    w.engine(1, Some(w.view(1, &[0], 0)))
        .acquire(&disk, &holder(1, 10, "web"), None)
        .unwrap();
    w.ls.write_host(&record(1, "boot-next", 0, HostState::Live))
        .unwrap();
    let b = w.engine(2, Some(w.view(2, &[0, D - 1], D - 1)));
    let e = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap_err();
    assert!(e.to_string().contains("still claiming host id 1"), "{e}");
    let b = w.engine(2, Some(w.view(2, &[0, D], D)));
    let got = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap();
    assert!(
        got.took_over[0].1.contains("observed unchanged"),
        "{:?}",
        got.took_over
    );
}

#[test]
fn rule1_fenced_clean_frees_at_once_but_fencing_does_not() {
    let w = World::new("fenced");
    let disk = Resource::disk("/images/a", false);
    w.engine(1, Some(w.view(1, &[0], 0)))
        .acquire(&disk, &holder(1, 10, "web"), None)
        .unwrap();
    w.ls.write_host(&record(1, "boot-1", 2, HostState::Fencing))
        .unwrap();
    let b = w.engine(2, Some(w.view(2, &[0], 0)));
    assert!(b
        .acquire(&disk, &holder(2, 20, "web"), None)
        .unwrap_err()
        .is_busy());
    w.ls.write_host(&record(1, "boot-1", 3, HostState::FencedClean))
        .unwrap();
    let got = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap();
    assert!(got.took_over[0].1.contains("fenced-clean"));
}

/// KB5: a fenced-clean record written before the holder's QEMU started
/// (the host cleared its fence and started a VM before its next renewal
/// landed, or a read still shows the previous record) does not free it.
#[test]
fn rule1_fenced_clean_frees_only_qemus_started_before_the_record() {
    let w = World::new("fenced-old");
    let disk = Resource::disk("/images/a", false);
    w.engine(1, Some(w.view(1, &[0], 0)))
        .acquire(&disk, &holder(1, 10, "web"), None)
        .unwrap();
    // The holder started at tick 100 (1.0 s); the record is from 0.99 s.
    let mut old = record(1, "boot-1", 3, HostState::FencedClean);
    old.mono_ms = 990;
    w.ls.write_host(&old).unwrap();
    let b = w.engine(2, Some(w.view(2, &[0], 0)));
    let err = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap_err();
    assert!(err.is_busy(), "{err}");
    // Within the tick the holder started in: still not certain.
    old.mono_ms = 1_005;
    w.ls.write_host(&old).unwrap();
    assert!(b
        .acquire(&disk, &holder(2, 20, "web"), None)
        .unwrap_err()
        .is_busy());
    old.mono_ms = 1_010;
    w.ls.write_host(&old).unwrap();
    let got = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap();
    assert!(got.took_over[0].1.contains("fenced-clean"));
}

/// KB5 for `leaving`: a host that left cleanly vouches only for the QEMUs
/// that started before its leaving record, not for one started after it
/// (a record read before the host rejoined and started a VM).
#[test]
fn rule1_leaving_frees_only_qemus_started_before_the_record() {
    let w = World::new("leaving-old");
    let disk = Resource::disk("/images/a", false);
    w.engine(1, Some(w.view(1, &[0], 0)))
        .acquire(&disk, &holder(1, 10, "web"), None)
        .unwrap();
    // The holder started at tick 100 (1.0 s); the record is from 0.99 s.
    let mut old = record(1, "boot-1", 3, HostState::Leaving);
    old.mono_ms = 990;
    w.ls.write_host(&old).unwrap();
    let b = w.engine(2, Some(w.view(2, &[0], 0)));
    let err = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap_err();
    assert!(
        err.is_busy(),
        "a leaving record older than the QEMU freed it: {err}"
    );
    old.mono_ms = 1_010;
    w.ls.write_host(&old).unwrap();
    let got = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap();
    assert!(got.took_over[0].1.contains("left the lockspace"), "{got:?}");
}

#[test]
fn rule3_local_process_gone() {
    let w = World::new("local");
    let disk = Resource::disk("/images/a", false);
    let a = w.engine(1, Some(w.view(1, &[0], 0)));
    w.alive.lock().unwrap().insert(10);
    a.acquire(&disk, &holder(1, 10, "web"), None).unwrap();
    // Another QEMU on the same host while the first is alive: busy.
    let e = a.acquire(&disk, &holder(1, 11, "web"), None).unwrap_err();
    assert!(e.to_string().contains("alive on this host"), "{e}");
    // The first one died: free by rule 3.
    w.alive.lock().unwrap().remove(&10);
    let got = a.acquire(&disk, &holder(1, 11, "web"), None).unwrap();
    assert!(got.took_over[0].1.contains("gone"));
    // Rule 3 is only for this host: host 2 cannot judge host 1's pids.
    let b = w.engine(2, Some(w.view(2, &[0], 0)));
    assert!(b
        .acquire(&disk, &holder(2, 20, "web"), None)
        .unwrap_err()
        .is_busy());
}

/// Rule 3 is for this host's own QEMUs: a holder with this host's id but
/// another boot (a previous boot, or another machine that uses the same
/// id) is not judged by the local process table, where its pid means
/// nothing. Here rule 2 cannot free it either: the slot shows a claim.
#[test]
fn rule3_needs_this_boot_not_only_this_host_id() {
    let w = World::new("other-boot");
    let disk = Resource::disk("/images/a", false);
    let mut prev = holder(2, 20, "web");
    prev.boot_id = "boot-prev".into();
    w.engine(1, Some(w.view(1, &[0], 0)))
        .acquire(&disk, &prev, None)
        .unwrap();
    w.ls.write_host(&record(
        2,
        "boot-2",
        crate::collision::CLAIM_COUNTER,
        HostState::Live,
    ))
    .unwrap();
    // pid 20 is not alive here: rule 3 would free it.
    let b = w.engine(2, Some(w.view(2, &[0], 0)));
    let e = b.acquire(&disk, &holder(2, 21, "web"), None).unwrap_err();
    assert!(
        e.is_busy(),
        "a holder of another boot was judged by local pids: {e}"
    );
    assert!(e.to_string().contains("still claiming host id 2"), "{e}");
}

#[test]
fn rule4_observed_dead_only_after_d_on_own_clock() {
    let w = World::new("dead");
    let disk = Resource::disk("/images/a", false);
    w.engine(1, Some(w.view(1, &[0], 0)))
        .acquire(&disk, &holder(1, 10, "web"), None)
        .unwrap();
    // Host 2 starts observing at t=1000 and host 1 never renews again.
    let b_early = w.engine(2, Some(w.view(2, &[1000, 3000], 1000 + D - 1)));
    let e = b_early
        .acquire(&disk, &holder(2, 20, "web"), None)
        .unwrap_err();
    assert!(e.to_string().contains("may be taken over after 4s"), "{e}");
    let b = w.engine(2, Some(w.view(2, &[1000, 3000], 1000 + D)));
    let got = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap();
    assert!(
        got.took_over[0].1.contains("observed unchanged"),
        "{:?}",
        got.took_over
    );
}

#[test]
fn rule4_never_frees_a_holder_without_a_watchdog() {
    let w = World::new("nowd");
    let disk = Resource::disk("/images/a", false);
    let mut unsafe_rec = record(1, "boot-1", 1, HostState::Live);
    unsafe_rec.unsafe_no_watchdog = true;
    w.ls.write_host(&unsafe_rec).unwrap();
    w.engine(1, Some(w.view(1, &[0], 0)))
        .acquire(&disk, &holder(1, 10, "web"), None)
        .unwrap();
    // Silent for 10 x D: nothing resets a host without a watchdog whose
    // daemon hangs, so its silence proves nothing.
    let b = w.engine(2, Some(w.view(2, &[1000, 3000], 1000 + 10 * D)));
    let e = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap_err();
    assert!(e.is_busy(), "{e}");
    assert!(e.to_string().contains("unsafe_no_watchdog"), "{e}");
    // Published fenced-clean (it killed its QEMUs) still frees at once.
    unsafe_rec.state = HostState::FencedClean;
    unsafe_rec.counter = 2;
    w.ls.write_host(&unsafe_rec).unwrap();
    let got = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap();
    assert!(got.took_over[0].1.contains("fenced-clean"), "{got:?}");
}

#[test]
fn rule4_renewal_after_the_view_keeps_the_holder() {
    let w = World::new("renewed");
    let disk = Resource::disk("/images/a", false);
    w.engine(1, Some(w.view(1, &[0], 0)))
        .acquire(&disk, &holder(1, 10, "web"), None)
        .unwrap();
    let view = w.view(2, &[0, 1000], 10 * D);
    // Host 1 renews after host 2's daemon wrote its view: the fresh slot
    // read under the record lock differs from the view, so it is alive.
    w.ls.write_host(&record(1, "boot-1", 2, HostState::Live))
        .unwrap();
    let b = w.engine(2, Some(view));
    let e = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap_err();
    assert!(e.to_string().contains("alive"), "{e}");
}

#[test]
fn rule4_needs_an_observation() {
    let w = World::new("noview");
    let disk = Resource::disk("/images/a", false);
    w.engine(1, Some(w.view(1, &[0], 0)))
        .acquire(&disk, &holder(1, 10, "web"), None)
        .unwrap();
    let b = w.engine(2, None);
    assert!(b
        .acquire(&disk, &holder(2, 20, "web"), None)
        .unwrap_err()
        .is_busy());
}

#[test]
fn rule5_a_storage_fence_verdict_frees_at_once_a_damaged_or_stale_one_does_not() {
    use crate::storage_fence::{self, Verdict as Fenced};
    let w = World::new("stfence");
    let disk = Resource::disk("/images/a", false);
    w.engine(1, Some(w.view(1, &[0], 0)))
        .acquire(&disk, &holder(1, 10, "web"), None)
        .unwrap();
    let b = w.engine(2, Some(w.view(2, &[0, 100], 100)));
    // Host 1 renews; host 2 has seen it silent only 100 ms: held.
    assert!(b
        .acquire(&disk, &holder(2, 20, "web"), None)
        .unwrap_err()
        .is_busy());
    let r = record(1, "boot-1", 1, HostState::Live);
    let v = Fenced {
        host_id: 1,
        host_name: r.host_name.clone(),
        boot_id: "boot-1".into(),
        incarnation: r.incarnation,
        counter: r.counter,
        slot_mono_ms: r.mono_ms,
        addrs: vec!["192.0.2.1:0/0".into()],
        osdmap_epoch: 9,
        expire_s: 3600,
        wall: 0,
        writer_host: 2,
        writer_name: "host-2.test".into(),
    };
    // Damaged: frees nothing, says so.
    let path = storage_fence::verdict_path(&w.dir, 1);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut bad = v.encode();
    bad.truncate(bad.len() - 3);
    std::fs::write(&path, &bad).unwrap();
    let e = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap_err();
    assert!(e.to_string().contains("damaged"), "{e}");
    // Stale: the host renewed after the verdict.
    let mut old = v.clone();
    old.counter = 0;
    storage_fence::write_verdict(&w.dir, &old).unwrap();
    let e = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap_err();
    assert!(e.to_string().contains("stale"), "{e}");
    // Valid: free at once.
    storage_fence::write_verdict(&w.dir, &v).unwrap();
    let got = b.acquire(&disk, &holder(2, 20, "web"), None).unwrap();
    assert!(
        got.took_over[0].1.contains("storage-fenced by host 2"),
        "{:?}",
        got.took_over
    );
}
