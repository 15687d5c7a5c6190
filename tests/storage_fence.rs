//! Storage-level fencing on a real Ceph cluster (docs/design.md, takeover
//! rule 5): the split-brain rig's three hosts (each in its own network
//! namespace with its own ceph-fuse client, watchdog daemon, watchdog
//! stand-in and copy of vmlease.so), a stand-in VM writing its disk on
//! CephFS, and a host cut off completely (storage and management links).
//!
//! - the cut-off host's VM runs on another host once `vmlease
//!   storage-fence` (run in that host's namespace) has blocklisted it:
//!   well before host_dead_timeout;
//! - once its links are back, none of its writes lands (blocklisted), its
//!   daemon fences as soon as Ceph refuses a renewal (EBLOCKLISTED), long
//!   before renew_fail_timeout, says so in `vmlease status` with the
//!   fencing host, and stays fenced;
//! - a host that renews is refused (never blocklisted);
//! - all of it on Ceph's default MDS settings, where the cut-off host's
//!   client keeps its capabilities for the 60 s session timeout: the
//!   fence reads that host's records around the MDS (RADOS).

// The rig's modules are shared with tests/splitbrain.rs, which uses more
// of them than this test does.
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

use std::process::Command;
use std::time::Duration;

use rig::{ceph_dom, disk, set_links, start, storage_fence};
use support::daemons;
use vmlease::clock::boottime_ms;
use vmlease::hosts::HostState;
use world::{World, K, R, W};

/// renew_fail_timeout here: long (the rig's is 6 s), so that a fence of
/// the blocklisted host soon after its links are back cannot be the one
/// at F after its last renewal.
const F: u64 = 20_000;
/// host_dead_timeout here: above max(F + K, F + W) + 2R (23 s), so that a
/// takeover before it cannot come from rule 4 (which frees after D from
/// the last renewal).
const D: u64 = 25_000;

#[test]
fn a_cut_off_host_is_storage_fenced_and_its_vm_runs_elsewhere_before_d() {
    let _g = daemons::serial();
    // On Ceph's default MDS settings (no cap-revoke eviction, 60 s session
    // timeout): the cut-off host's client keeps its capabilities on the
    // records it wrote (its storage target, its leases) until the MDS
    // times its session out, so a fence that read them through CephFS
    // waited about 62 s and vm0 moved after 74 s, past D; read around the
    // MDS (through RADOS) the fence takes about a second.
    let mut w = World::up_on(support::util::c_helper("sb_writer"), [R, F, K, W, D], true);
    rig::setup(&mut w, "disks-stfence", 30_000);
    // Host 1's management policy is "fence" (it would fence at once on
    // the cut): the cut-off host is host 2, which reports.
    let a = 1; // host 2: the one cut off
    let b = 0; // host 1: the one that fences and takes over
    let c = 2; // host 3: cut off too, with a lease on a local disk
    let dom0 = ceph_dom(&w, 0);
    let pa = start(&w, &dom0, 0, a, 1).expect("vm0 on host 2");
    // vm1's disk lease names a local path (/var/lib/...): host 3 is not
    // storage-fenceable while it holds it.
    let dom1 = abi::Dom {
        uuid: w.sh.doms[1].uuid,
        name: w.sh.doms[1].name.clone(),
        disk: std::ffi::CString::new("/var/lib/vmlease-sb/vm1.img").unwrap(),
    };
    start(&w, &dom1, 1, c, 3).expect("vm1 on host 3");
    daemons::wait_until("vm0 writing on host 2", 10_000, || {
        let (recs, _, _) = checker::records(&disk(&w, 0));
        (recs.len() >= 5)
            .then_some(())
            .ok_or(format!("{} records", recs.len()))
    });

    // A host that renews is never blocklisted.
    let (code, out) = storage_fence(&w, b, 2, &[]);
    assert_eq!(code, 1, "storage-fence of a live host: {out}");
    assert!(out.contains("a slow host is never blocklisted"), "{out}");
    let bl = w.ceph.ceph(&["osd", "blocklist", "ls"]);
    assert!(
        !bl.contains("192.0.2.1:0/0"),
        "a live host was blocklisted: {bl}"
    );

    // The cut: storage and management links of hosts 2 and 3.
    let t_fault = boottime_ms();
    set_links(&w, a, "down");
    set_links(&w, c, "down");
    eprintln!("[{t_fault}] hosts 2 and 3 cut off");
    // Host 1 fences as soon as the silence allows (the CLI refuses before).
    let mut refusals = 0;
    let t_fenced = loop {
        let (code, out) = storage_fence(&w, b, 2, &[]);
        if code != 0 {
            refusals += 1;
            if refusals % 5 == 1 {
                eprintln!(
                    "[+{} ms] storage-fence: {}",
                    boottime_ms() - t_fault,
                    out.trim()
                );
            }
        }
        if code == 0 {
            eprintln!("storage-fence: {}", out.trim());
            break boottime_ms();
        }
        assert!(
            boottime_ms() - t_fault < D,
            "host 1 could not storage-fence host 2 within D ({D} ms); last answer: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let bl = w.ceph.ceph(&["osd", "blocklist", "ls"]);
    assert!(bl.contains("192.0.2.2:0/0"), "no blocklist entry: {bl}");
    // Host 3 is as silent, but holds a lease on a local disk.
    let (code, out) = storage_fence(&w, b, 3, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not Ceph"), "{out}");
    assert!(
        !w.ceph
            .ceph(&["osd", "blocklist", "ls"])
            .contains("192.0.2.3:0/0"),
        "host 3 was blocklisted"
    );
    // Links back right away: host 2's addresses are blocklisted now, so
    // none of its writes may land.
    set_links(&w, a, "up");
    let t_back = boottime_ms();
    // Host 1 starts vm0: rule 5 frees host 2's leases at once.
    let pb = loop {
        match start(&w, &dom0, 0, b, 2) {
            Ok(p) => break p,
            Err(why) => {
                assert!(
                    boottime_ms() - t_fault < D,
                    "vm0 not started on host 1 within D ({D} ms) of the fault: {why}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    let t_started = boottime_ms();
    eprintln!(
        "fault -> verdict {} ms, -> vm0 started on host 1 {} ms (D {D} ms, F {F} ms)",
        t_fenced - t_fault,
        t_started - t_fault
    );
    // Rule 4 frees no earlier than D after host 2's last renewal (at most
    // R before the cut): the takeover came from the verdict (rule 5).
    assert!(
        t_started - t_fault < D - R,
        "vm0 restarted {} ms after the cut: not before rule 4 could (D {D} ms)",
        t_started - t_fault
    );
    daemons::wait_until("vm0 writing on host 1", 15_000, || {
        let (recs, _, _) = checker::records(&disk(&w, 0));
        let n = recs.iter().filter(|r| r.inc == 2).count();
        (n >= 20)
            .then_some(())
            .ok_or(format!("{n} records from host 1"))
    });
    // Host 2: its daemon fences as soon as a renewal is refused with
    // EBLOCKLISTED (not only at F after its last renewal, about the cut)
    // and its VM dies - killed, or, when the kill cannot finish within K
    // (its writer hangs in a write on the cut mount), by the (stand-in)
    // reset.
    let budget = t_back + F / 2;
    let mut t_self = None;
    daemons::wait_until(
        "host 2 fenced for the blocklist (storage-fenced) and its VM dead",
        budget.saturating_sub(boottime_ms()),
        || {
            let st = w.status(a);
            let fencing = st.as_ref().is_some_and(|s| {
                matches!(s.state, HostState::FencedClean | HostState::Fencing)
                    && s.reason.starts_with("storage-fenced")
            });
            if fencing && t_self.is_none() {
                t_self = Some(boottime_ms());
            }
            let dead =
                w.sh.instances
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|i| i.pid == pa && i.exited_ms.is_some());
            (fencing && dead).then_some(()).ok_or(format!(
                "{} ms after its links came back (F {F} ms): host 2 state {:?}, reason {:?}, its \
                 writer exited: {dead}",
                boottime_ms() - t_back,
                st.as_ref().map(|s| s.state),
                st.as_ref().map(|s| s.reason.clone())
            ))
        },
    );
    let t_self = t_self.unwrap_or_else(boottime_ms);
    eprintln!(
        "host 2 fenced itself (storage-fenced) {} ms after its links came back, {} ms after the \
         verdict, {} ms after the cut (F {F} ms)",
        t_self - t_back,
        t_self - t_fenced,
        t_self - t_fault
    );
    // `vmlease status` on host 2 names the fence and the fencing host.
    let (_, status) = rig::vmlease(&w, a, &["status"]);
    assert!(
        status.contains("storage-fenced by host 1"),
        "vmlease status on host 2 does not say who storage-fenced it:\n{status}"
    );
    let resets = w.sh.hosts[a].lock().unwrap().resets.clone();
    // Its address stays blocklisted: a new Ceph client from host 2's
    // namespace is refused by the OSD (host 1's, the control, is not).
    let put = |h: usize| {
        let net = format!("--net=/run/netns/{}", w.netns[h]);
        Command::new("nsenter")
            .arg(&net)
            .args(["timeout", "30", "rados", "-c"])
            .arg(w.ceph.conf())
            .args([
                "-p",
                "cephfs_data",
                "put",
                &format!("stfence-probe-{h}"),
                "/etc/hostname",
            ])
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .expect("run rados")
    };
    let refused = put(a);
    assert!(
        !refused.status.success(),
        "a write from the blocklisted host 2 was accepted: {refused:?}"
    );
    eprintln!(
        "rados put from host 2 after the verdict: {} {}",
        refused.status,
        String::from_utf8_lossy(&refused.stderr).trim()
    );
    let ok = put(b);
    assert!(
        ok.status.success(),
        "the control write from host 1 failed: {ok:?}"
    );
    let t_check = boottime_ms();
    while boottime_ms() - t_check < 3000 {
        let st = w.status(a).map(|s| s.state);
        assert!(
            matches!(st, Some(HostState::FencedClean | HostState::Fencing)),
            "host 2 left the fence by itself: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // vm1 (host 3, local disk lease) may move only after D: rule 4.
    let t_vm1 = loop {
        match start(&w, &dom1, 1, b, 4) {
            Ok(_) => break boottime_ms(),
            Err(why) => {
                assert!(
                    boottime_ms() - t_fault < 3 * D,
                    "vm1 not started on host 1 within 3 D: {why}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    eprintln!(
        "fault -> vm1 (not storage-fenceable) started on host 1 {} ms",
        t_vm1 - t_fault
    );
    assert!(
        t_vm1 - t_fault >= D - R,
        "vm1 of the host with a local-disk lease moved before D: {} ms",
        t_vm1 - t_fault
    );
    let data = disk(&w, 0);
    let (recs, _, _) = checker::records(&data);
    let late: Vec<_> = recs
        .iter()
        .filter(|r| r.inc == 1 && r.t_ms >= t_fenced)
        .collect();
    assert!(
        late.is_empty(),
        "host 2 wrote after the verdict ({} records, first {:?}); links back at {t_back}",
        late.len(),
        late.first()
    );
    let (n, violations) = checker::check(&data);
    assert!(violations.is_empty(), "split brain on vm0: {violations:?}");
    eprintln!(
        "vm0: {n} records, host 2 records after the verdict: 0, host 2 resets: {resets:?}, host 1 writer {pb}"
    );
    w.sh.kill_all("end");
    w.stop_daemons();
    let _ = w
        .ceph
        .try_ceph(&["osd", "blocklist", "rm", "192.0.2.1:0/0"]);
}
