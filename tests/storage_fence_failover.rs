//! bench/failover's storage-fence rows (run by it with `--ignored`; too
//! slow for CI, where tests/storage_fence.rs covers the same steps): on
//! the split-brain rig (three hosts in network namespaces, one ceph-fuse
//! client each, a real Ceph cluster), with the shipped default timing
//! unless VMLEASE_FAILOVER_TIMING=rig, two hosts are cut off at once
//! (storage and management links), each running one stand-in VM with its
//! disk on CephFS. Host 1 storage-fences host 2 (`vmlease storage-fence`,
//! retried from the cut on) and starts host 2's VM (takeover rule 5), and
//! it starts host 3's VM without storage fencing, as soon as the default
//! rule allows (rule 4: host_dead_timeout after the last renewal). One
//! line per sample, parsed by bench/failover:
//!
//! `storage-fence failover: with W ms (verdict V ms, blocklist committed C
//! ms, delivered E ms), without O ms (D ms), violations N`
//!
//! VMLEASE_FAILOVER_SAMPLES (default 1) samples, each on a fresh rig.

#![allow(dead_code)]

mod support;

#[path = "splitbrain/abi.rs"]
mod abi;
#[path = "splitbrain/checker.rs"]
mod checker;
#[path = "storage_fence/rig.rs"]
mod rig;
#[path = "splitbrain/world.rs"]
mod world;

use std::time::Duration;

use rig::{ceph_dom, disk, set_links, start, storage_fence};
use support::daemons;
use vmlease::clock::boottime_ms;
use world::World;

/// [R, F, K, W, D] (ms): the shipped defaults (what a config that sets
/// no timing gets), or the rig's own small timing.
fn timing() -> [u64; 5] {
    if std::env::var("VMLEASE_FAILOVER_TIMING").as_deref() == Ok("rig") {
        return [world::R, world::F, world::K, world::W, world::D];
    }
    let c = vmlease::config::parse("host_id = 1\n", "defaults").expect("an empty config");
    let t = c.timing;
    [
        t.renew_interval,
        t.renew_fail_timeout,
        t.kill_timeout,
        t.watchdog_timeout,
        t.host_dead_timeout,
    ]
}

/// A number from the fence's JSON answer.
fn json_num(out: &str, key: &str) -> u64 {
    let pat = format!("\"{key}\":");
    out.find(&pat)
        .and_then(|i| {
            out[i + pat.len()..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no {key} in the fence's answer: {out}"))
}

fn sample(t: [u64; 5]) {
    let d = t[4];
    let mut w = World::up_with_timing(support::util::c_helper("sb_writer"), t);
    // Joining takes two I/O timeouts (F / 3 each) plus a renewal.
    rig::setup(&mut w, "disks-failover", 2 * t[1] + 30_000);
    let (b, fenced, waited) = (0, 1, 2); // hosts 1, 2, 3
    let dom0 = ceph_dom(&w, 0);
    let dom2 = ceph_dom(&w, 2);
    start(&w, &dom0, 0, fenced, 1).expect("vm0 on host 2");
    start(&w, &dom2, 2, waited, 1).expect("vm2 on host 3");
    for v in [0, 2] {
        daemons::wait_until(&format!("vm{v} writing"), 10_000, || {
            let (recs, _, _) = checker::records(&disk(&w, v));
            (recs.len() >= 5)
                .then_some(())
                .ok_or(format!("{} records", recs.len()))
        });
    }
    // Rule 5 frees only a VM started before its host's last renewal: a
    // renewal of each host after its VM started.
    let started = boottime_ms();
    for h in [fenced, waited] {
        daemons::wait_until(&format!("a renewal of host {}", h + 1), 3 * t[0], || {
            let l = w.status(h).map(|s| s.last_renewal_ms).unwrap_or(0);
            (l > started).then_some(()).ok_or(format!(
                "last renewal at {l} ms, VMs started by {started} ms"
            ))
        });
    }
    let t_fault = boottime_ms();
    set_links(&w, fenced, "down");
    set_links(&w, waited, "down");
    let mut verdict: Option<(u64, u64, u64)> = None; // (at, commit, delivered)
    let mut with: Option<u64> = None;
    let mut without: Option<u64> = None;
    let mut last = String::new();
    let mut refused = 0;
    while with.is_none() || without.is_none() {
        let now = boottime_ms() - t_fault;
        assert!(
            now < d + 30_000,
            "after {now} ms (D {d} ms): verdict {verdict:?}, vm0 started {with:?}, vm2 started {without:?}; last answer: {last}"
        );
        if verdict.is_none() {
            let (code, out) = storage_fence(&w, b, 2, &[]);
            if code == 0 {
                verdict = Some((
                    boottime_ms() - t_fault,
                    json_num(&out, "commit_ms"),
                    json_num(&out, "delivered_ms"),
                ));
            } else {
                last = out;
            }
        } else if with.is_none() {
            match start(&w, &dom0, 0, b, 2) {
                Ok(_) => with = Some(boottime_ms() - t_fault),
                Err(why) => {
                    if refused == 0 {
                        let (_, out) = rig::vmlease(&w, b, &["can-evacuate", "2"]);
                        eprintln!(
                            "[+{} ms] vm0 on host 1: {why}; can-evacuate 2: {}",
                            boottime_ms() - t_fault,
                            out.trim()
                        );
                    }
                    refused += 1;
                    last = why
                }
            }
        }
        if without.is_none() {
            match start(&w, &dom2, 2, b, 2) {
                Ok(_) => without = Some(boottime_ms() - t_fault),
                Err(why) => last = why,
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (v_at, commit, delivered) = verdict.unwrap();
    // Both new instances write; then no two writers, on either disk.
    for v in [0, 2] {
        daemons::wait_until(&format!("vm{v} writing on host 1"), 15_000, || {
            let (recs, _, _) = checker::records(&disk(&w, v));
            let n = recs.iter().filter(|r| r.inc == 2).count();
            (n >= 10)
                .then_some(())
                .ok_or(format!("{n} records from host 1"))
        });
    }
    let mut violations = 0;
    for v in [0, 2] {
        let (_, found) = checker::check(&disk(&w, v));
        for x in &found {
            eprintln!("vm{v}: {x}");
        }
        violations += found.len();
    }
    println!(
        "storage-fence failover: with {} ms (verdict {v_at} ms, blocklist committed {commit} ms, delivered {delivered} ms), without {} ms (D {d} ms), violations {violations}",
        with.unwrap(),
        without.unwrap()
    );
    assert_eq!(violations, 0, "split brain (see above)");
    assert!(
        with.unwrap() < without.unwrap(),
        "storage fencing was not faster"
    );
    w.sh.kill_all("end");
    w.stop_daemons();
}

#[test]
#[ignore = "a benchmark (bench/failover): about a minute per sample with the default timing"]
fn failover_with_and_without_storage_fencing() {
    let _g = daemons::serial();
    let t = timing();
    let n: usize = std::env::var("VMLEASE_FAILOVER_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    eprintln!("timing [R, F, K, W, D] = {t:?} ms, {n} sample(s)");
    for _ in 0..n {
        sample(t);
    }
}
