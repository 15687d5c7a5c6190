//! The split-brain checker under random faults, on a real Ceph cluster.
//!
//! Three hosts, each with its own ceph-fuse client (in its own network
//! namespace, so its storage link can be cut), its own vmlease-watchdog
//! with a FIFO watchdog stand-in, and its own copy of vmlease.so. Stand-in
//! VMs are started through the plugin ABI exactly as libvirt does and
//! append sequence records to their disk file on CephFS through their
//! host's mount. An HA controller keeps every VM running (restarting dead
//! ones, evacuating hosts `vmlease can-evacuate` calls safe, and sometimes
//! starting one VM on two hosts at once); a seeded fault scheduler hangs
//! ceph-fuse, cuts storage and management links, SIGKILLs and SIGSTOPs daemons and kills
//! QEMUs. Afterwards every disk is checked for two live writers.
//!
//! - `cargo test --test splitbrain splitbrain_ci`: a run with fencing
//!   disabled (must report violations), then the CI-sized fenced run
//!   (must report none). `VMLEASE_SPLITBRAIN_SCHEDULES` and
//!   `VMLEASE_SPLITBRAIN_SECS` size it.
//! - `VMLEASE_SPLITBRAIN_SEED=N` replays one schedule's fault choices
//!   (`VMLEASE_SPLITBRAIN_FENCING=off` for a disabled-fencing one); the
//!   timing of a replay differs, the faults and their order do not.
//! - `bench/splitbrain-long` runs `splitbrain_long` (ignored) for many
//!   schedules.

mod support;

#[path = "splitbrain/abi.rs"]
mod abi;
#[path = "splitbrain/checker.rs"]
mod checker;
#[path = "splitbrain/needless.rs"]
mod needless;
#[path = "splitbrain/peer_fence.rs"]
mod peer_fence;
#[allow(dead_code)]
#[path = "storage_fence/rig.rs"]
mod rig;
#[path = "splitbrain/schedule.rs"]
mod schedule;
#[path = "splitbrain/world.rs"]
mod world;

use schedule::Stats;
use support::daemons;
use world::World;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
        })
        .unwrap_or(default)
}

fn world() -> World {
    let writer = support::util::c_helper("sb_writer");
    let w = World::up(writer);
    eprintln!(
        "splitbrain: R {} F {} K {} W {} D {} ms; ceph-fuse {}; host table through {}; MDS settings: {}",
        world::R,
        world::F,
        world::K,
        world::W,
        world::D,
        if w.no_page_cache {
            "with --fuse_disable_pagecache=true"
        } else {
            "with its default mount options (kernel page cache on)"
        },
        if w.liveness_file {
            "the shared file (VMLEASE_SPLITBRAIN_LIVENESS=file)"
        } else {
            "RADOS (liveness_rados)"
        },
        if w.ceph_defaults {
            "Ceph defaults (cap-revoke eviction off, session timeout 60 s, autoclose 300 s)"
        } else {
            "tuned (cap-revoke eviction 1 s, MDS tick 1 s, session timeout/autoclose 30 s)"
        }
    );
    w
}

/// Runs `n` schedules from `base` (or the one replayed seed); the totals.
fn run(w: &mut World, n: u64, secs: u64, disabled: bool) -> Stats {
    let base = match std::env::var("VMLEASE_SPLITBRAIN_SEED") {
        Ok(s) => Some(s.parse::<u64>().expect("VMLEASE_SPLITBRAIN_SEED")),
        Err(_) => None,
    };
    let n = if base.is_some() { 1 } else { n };
    let base = base.unwrap_or_else(|| vmlease::process::random_u64() >> 16);
    eprintln!("splitbrain: {n} schedule(s) of {secs} s from seed {base}");
    let mut total = Stats::default();
    let t = std::time::Instant::now();
    // A long run stops cleanly (its worlds torn down) after the schedule
    // in progress once this file exists (bench/splitbrain-long sets it).
    let stop_file = std::env::var_os("VMLEASE_SPLITBRAIN_STOP_FILE").map(std::path::PathBuf::from);
    let mut n = n;
    for i in 0..n {
        if let Some(f) = stop_file.as_ref().filter(|f| f.exists()) {
            eprintln!(
                "splitbrain: {} exists: stopping after {i} schedule(s)",
                f.display()
            );
            n = i;
            break;
        }
        let st = schedule::run(w, i as usize, base + i, secs, disabled);
        total.add(&st);
    }
    eprintln!(
        "=== {} {n} schedule(s) in {:.0} s: {}",
        if disabled {
            "FENCING DISABLED"
        } else {
            "fencing on"
        },
        t.elapsed().as_secs_f64(),
        total.line()
    );
    let q = |f: &[(u64, Option<u64>)]| {
        let mut killed: Vec<u64> = f.iter().map(|f| f.0).collect();
        let mut moved: Vec<u64> = f.iter().filter_map(|f| f.1).collect();
        killed.sort();
        moved.sort();
        let q = |v: &[u64]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                format!(
                    "n={} min {} median {} p90 {} max {} ms",
                    v.len(),
                    v[0],
                    v[v.len() / 2],
                    v[(v.len() * 9 / 10).min(v.len() - 1)],
                    v[v.len() - 1]
                )
            }
        };
        format!(
            "VM killed: {}; -> VM running on another host: {}",
            q(&killed),
            q(&moved)
        )
    };
    eprintln!(
        "=== needless fences (a host fenced with its own storage, networks and daemon healthy): \
         {} of {} fences, by the fault elsewhere that caused them: {:?}",
        total.needless_total(),
        total.fences,
        total.needless
    );
    for m in &total.needless_list {
        eprintln!("===   {m}");
    }
    eprintln!(
        "=== failover on CephFS: storage fault -> {}",
        q(&total.failovers)
    );
    eprintln!(
        "=== failover on CephFS: management link down (policy fence) -> {}",
        q(&total.mgmt_failovers)
    );
    total
}

#[test]
fn splitbrain_ci() {
    let _g = daemons::serial();
    let t = std::time::Instant::now();
    let mut w = world();
    let replay = std::env::var_os("VMLEASE_SPLITBRAIN_SEED").is_some();
    let off = std::env::var("VMLEASE_SPLITBRAIN_FENCING").as_deref() == Ok("off");
    // VMLEASE_SPLITBRAIN_ONLY=noop: only the no-op blocklist self-test;
    // =rados: only the fenced schedule with RADOS disks (both replayable
    // with VMLEASE_SPLITBRAIN_SEED).
    let only = std::env::var("VMLEASE_SPLITBRAIN_ONLY").unwrap_or_default();
    assert!(
        ["", "noop", "rados"].contains(&only.as_str()),
        "VMLEASE_SPLITBRAIN_ONLY={only}: noop or rados"
    );
    if !only.is_empty() {
        let noop = only == "noop";
        w.blocklist_noop = noop;
        w.rados_disks = true;
        let st = run(&mut w, 1, 15, false);
        if noop {
            assert_noop_caught(&st);
        } else {
            assert_rados_fenced(&st);
        }
        return;
    }
    if !replay || off {
        // Two live writers do not always overlap on the disk: CephFS can
        // keep the second writer's open/append waiting until the first is
        // gone (seen: 1 disabled schedule in about 6). Up to three
        // schedules; one must show the violations.
        let tries = if replay { 1 } else { 3 };
        let mut st = run(&mut w, 1, 15, true);
        for attempt in 2..=tries {
            if !st.violations.is_empty() {
                break;
            }
            eprintln!(
                "fencing disabled: no overlapping writes in schedule {} of {tries} (CephFS held \
                 the second writer back until the first was gone); another schedule",
                attempt - 1
            );
            st = run(&mut w, 1, 15, true);
        }
        assert!(
            !st.violations.is_empty(),
            "with fencing disabled the checker found no violation in {tries} schedule(s): it \
             cannot be trusted ({})",
            st.line()
        );
        eprintln!(
            "fencing disabled: the checker reported {} violation(s), as it must",
            st.violations.len()
        );
    }
    if !replay {
        // The blocklist fault's self-test: the stand-ins also write RADOS
        // disks (librados, no MDS session, as QEMU's librbd), which only
        // the blocklist can stop (splitbrain/peer_fence.rs).
        w.blocklist_noop = true;
        w.rados_disks = true;
        let st = run(&mut w, 1, 15, false);
        w.blocklist_noop = false;
        w.rados_disks = false;
        assert_noop_caught(&st);
    }
    if !replay || !off {
        let n = env_u64("VMLEASE_SPLITBRAIN_SCHEDULES", 20);
        let secs = env_u64("VMLEASE_SPLITBRAIN_SECS", 15);
        // The first one with RADOS disks and the real blocklist: the
        // fenced host's RADOS writes must all be refused.
        let mut st = Stats::default();
        if !replay && n > 0 {
            w.rados_disks = true;
            let first = run(&mut w, 1, secs, false);
            w.rados_disks = false;
            assert_rados_fenced(&first);
            st.add(&first);
        }
        let rest = if replay { 1 } else { n.saturating_sub(1) };
        st.add(&run(&mut w, rest, secs, false));
        assert!(
            st.violations.is_empty(),
            "split brain with fencing on ({} violations; the first ones):\n{}",
            st.violations.len(),
            st.violations[..st.violations.len().min(20)].join("\n")
        );
        // The management cuts must have reached the daemons (each lasts
        // longer than the management timeout; one may fall on a host
        // already fenced for its storage or being reset).
        let cuts = st.faults.get("mgmt-link-down").copied().unwrap_or(0);
        assert!(
            cuts < 3 || st.mgmt_noticed > 0,
            "{cuts} management link cuts and no daemon reported one: {}",
            st.line()
        );
    }
    eprintln!("splitbrain_ci took {:.0} s", t.elapsed().as_secs_f64());
}

/// The no-op blocklist schedule: the cut host's RADOS writes landed
/// after the verdict, and the checker saw two writers.
fn assert_noop_caught(st: &Stats) {
    assert!(
        st.peer_fences > 0,
        "the no-op blocklist schedule fenced no host ({})",
        st.line()
    );
    assert!(
        st.rados_violations > 0,
        "with a no-op blocklist the checker found no two writers on the RADOS disks: the \
         self-test proves nothing ({})",
        st.line()
    );
    eprintln!(
        "no-op blocklist: {} violation(s) ({} on RADOS disks; {} RADOS records from the fenced \
         host after its verdict); {} of {} fenced hosts' CephFS clients blocklisted by the MDS's \
         own eviction before the verdict",
        st.violations.len(),
        st.rados_violations,
        st.rados_after_verdict,
        st.mds_blocklisted,
        st.peer_fences
    );
}

/// The real blocklist with RADOS disks: a host was fenced, no RADOS
/// record of its instances was issued after the verdict, no violation.
fn assert_rados_fenced(st: &Stats) {
    assert!(
        st.peer_fences > 0 && st.rados_records > 0,
        "the RADOS schedule storage-fenced no host or wrote no RADOS record ({})",
        st.line()
    );
    assert!(
        st.rados_after_verdict == 0 && st.violations.is_empty(),
        "with the real blocklist a storage-fenced host wrote its RADOS disk after the verdict \
         ({} records) or there were two writers ({:?})",
        st.rados_after_verdict,
        st.violations
    );
    eprintln!(
        "real blocklist, RADOS disks: {} peer fence(s), {} RADOS records, none from a fenced \
         host after its verdict, 0 violations",
        st.peer_fences, st.rados_records
    );
}

#[test]
#[ignore = "long: bench/splitbrain-long runs it"]
fn splitbrain_long() {
    let _g = daemons::serial();
    let mut w = world();
    let n = env_u64("VMLEASE_SPLITBRAIN_SCHEDULES", 500);
    let secs = env_u64("VMLEASE_SPLITBRAIN_SECS", 20);
    let st = run(&mut w, n, secs, false);
    assert!(
        st.violations.is_empty(),
        "split brain with fencing on:\n{}",
        st.violations.join("\n")
    );
}
