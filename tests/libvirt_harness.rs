//! The multi-host libvirt harness (tests/support/libvirt.rs) against
//! libvirt's own lock managers: nop (none) and lockd with virtlockd.
//! These prove the hosts behave as separate machines before any vmlease
//! test relies on them: start and destroy on each host, private state and
//! images, links that can be cut, QEMU killed behind libvirt's back, a
//! libvirtd restart under a running domain, live migration, and a real
//! cross-host lock conflict.
//!
//! Run as root (scripts/setup-test-env.sh installs what they need). Each
//! test prints its cluster first: the output shown on failure says which
//! hosts (namespaces, addresses, directories) and domains were involved.

mod support;

use std::time::{Duration, Instant};

use support::libvirt::{Cluster, Disk, Domain, Format, HostSpec};
use support::util::{text, wait_until};

const STATE: Duration = Duration::from_secs(10);

/// A domain with one qcow2 disk at `path`.
fn domain(name: &str, path: &str) -> Domain {
    Domain::new(name).tcg().disk(Disk::new(path))
}

#[test]
fn each_host_is_its_own_machine() {
    let c = Cluster::start("own-machine", vec![HostSpec::new("a"), HostSpec::new("b")]);
    eprintln!("{}", c.describe());
    let (a, b) = (c.host("a"), c.host("b"));

    for h in [a, b] {
        let inside = h.exec_in_host_ok(&["hostname"]);
        assert_eq!(
            inside.trim(),
            h.hostname(),
            "hostname inside {}",
            h.describe()
        );
        assert_eq!(h.virsh_ok(&["hostname"]).trim(), h.hostname());
        // The machine's /run/netns mounts are not pinned by the host.
        let m = h.exec_in_host(&["sh", "-c", "grep -c ' /run/netns' /proc/self/mountinfo"]);
        assert_eq!(text(&m).trim(), "0", "host {}: /run/netns mounts", h.name());
    }
    // Private /run/vmlease.
    std::fs::write(a.vmlease_state_dir().join("mark"), "a").unwrap();
    let seen = b.exec_in_host(&["test", "-e", "/run/vmlease/mark"]);
    assert!(!seen.status.success(), "host b sees host a's /run/vmlease");
    let seen = a.exec_in_host(&["test", "-e", "/run/vmlease/mark"]);
    assert!(
        seen.status.success(),
        "host a does not see its /run/vmlease"
    );

    // The same image path on both hosts is two different files: the same
    // disk starts on both (QEMU's own image locking would refuse a second
    // opener of one file).
    let path = a.create_image("vm.qcow2", Format::Qcow2, 16);
    assert_eq!(b.create_image("vm.qcow2", Format::Qcow2, 16), path);
    let vm_a = domain("vm-a", &path);
    let vm_b = domain("vm-b", &path);
    let t = Instant::now();
    a.create_ok(&vm_a);
    eprintln!("vm-a started on host a in {:?}", t.elapsed());
    b.create_ok(&vm_b);
    assert_eq!(a.domains(), vec!["vm-a".to_string()], "host a's domains");
    assert_eq!(b.domains(), vec!["vm-b".to_string()], "host b's domains");
    for (h, vm) in [(a, "vm-a"), (b, "vm-b")] {
        let pid = h.qemu_pid(vm).expect("a QEMU pid");
        let net = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
        let anchor = std::fs::read_link(format!("/proc/{}/ns/net", h.anchor_pid())).unwrap();
        assert_eq!(
            net,
            anchor,
            "QEMU of {vm} runs in host {}'s netns",
            h.name()
        );
    }

    // Destroy is quick: the host's subreaper reaps QEMU at once.
    for (h, vm) in [(a, "vm-a"), (b, "vm-b")] {
        let pid = h.qemu_pid(vm).unwrap();
        let t = Instant::now();
        h.destroy_ok(vm);
        let took = t.elapsed();
        eprintln!("destroy {vm} on host {} took {took:?}", h.name());
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "QEMU pid {pid} of {vm} on host {} still exists after destroy",
            h.name()
        );
        assert_eq!(h.domstate(vm), None, "{vm} on host {}", h.name());
    }
}

#[test]
fn links_can_be_cut_and_restored() {
    let c = Cluster::start(
        "links",
        vec![
            HostSpec::new("a").without_libvirtd(),
            HostSpec::new("b").without_libvirtd(),
        ],
    );
    eprintln!("{}", c.describe());
    let (a, b) = (c.host("a"), c.host("b"));
    let poll = Duration::from_millis(50);
    for link in ["storage", "mgmt"] {
        assert!(a.ping(b.addr(link)), "a -> b on {link}");
        assert!(a.ping(c.gateway(link)), "a -> switch on {link}");
    }

    // Cut b's storage link at the switch: its carrier goes, mgmt stays.
    b.cut_link("storage");
    let carrier = format!("/sys/class/net/{}/carrier", b.iface("storage"));
    wait_until("b's storage carrier to drop", STATE, poll, || {
        let o = b.exec_in_host(&["cat", &carrier]);
        match text(&o).trim() {
            "0" => Ok(()),
            s => Err(format!("carrier {s:?}")),
        }
    });
    assert!(!a.ping(b.addr("storage")), "a reaches b on a cut link");
    assert!(
        a.ping(b.addr("mgmt")),
        "a -> b on mgmt while storage is cut"
    );

    b.restore_link("storage");
    wait_until("a to reach b on the restored link", STATE, poll, || {
        a.ping(b.addr("storage"))
            .then_some(())
            .ok_or_else(|| "no reply".to_string())
    });

    // The host side of a link, too.
    a.set_iface("mgmt", false);
    assert!(!b.ping(a.addr("mgmt")), "b reaches a's downed mgmt link");
    a.set_iface("mgmt", true);
    wait_until("b to reach a on mgmt again", STATE, poll, || {
        b.ping(a.addr("mgmt"))
            .then_some(())
            .ok_or_else(|| "no reply".to_string())
    });
}

#[test]
fn libvirt_notices_a_killed_qemu() {
    let c = Cluster::start("killed-qemu", vec![HostSpec::new("a")]);
    eprintln!("{}", c.describe());
    let a = c.host("a");
    let path = a.create_image("k.qcow2", Format::Qcow2, 16);
    a.define_ok(&domain("k", &path));
    a.virsh_ok(&["start", "k"]);
    let pid = a.kill_qemu("k");
    let t = Instant::now();
    a.wait_domstate("k", Some("shut off"), STATE);
    eprintln!("libvirt saw QEMU pid {pid} die after {:?}", t.elapsed());
    let reason = a.virsh_ok(&["domstate", "--reason", "k"]);
    assert!(reason.contains("crashed"), "domain k on host a: {reason}");
    // And it starts again.
    a.virsh_ok(&["start", "k"]);
    a.destroy_ok("k");
}

#[test]
fn libvirtd_restart_keeps_a_running_domain() {
    let c = Cluster::start("restart", vec![HostSpec::new("a")]);
    eprintln!("{}", c.describe());
    let a = c.host("a");
    let path = a.create_image("r.qcow2", Format::Qcow2, 16);
    a.create_ok(&domain("r", &path));
    let pid = a.qemu_pid("r").expect("QEMU of r");
    let old = a.libvirtd_pid().expect("libvirtd runs");
    let t = Instant::now();
    a.restart_libvirtd();
    eprintln!("libvirtd restarted in {:?}", t.elapsed());
    assert_ne!(a.libvirtd_pid(), Some(old), "a new libvirtd");
    assert_eq!(
        a.domstate("r").as_deref(),
        Some("running"),
        "r after restart"
    );
    assert_eq!(a.qemu_pid("r"), Some(pid), "the same QEMU after restart");
    // The old QEMU is still reaped at once (it stays below the anchor).
    let t = Instant::now();
    a.destroy_ok("r");
    eprintln!("destroy after restart took {:?}", t.elapsed());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn live_migration_there_and_back() {
    let c = Cluster::start("migrate", vec![HostSpec::new("a"), HostSpec::new("b")]);
    eprintln!("{}", c.describe());
    let (a, b) = (c.host("a"), c.host("b"));
    let path = a.create_image("m.qcow2", Format::Qcow2, 16);
    b.create_image("m.qcow2", Format::Qcow2, 16);
    a.create_ok(&domain("m", &path));

    // Driven by the client (virsh talks to both libvirtds).
    let t = Instant::now();
    let o = a.migrate("m", b, "mgmt", false);
    assert!(
        o.status.success(),
        "migrate m from a to b: {}\n{}\n{}",
        text(&o),
        a.logs_tail(20),
        b.logs_tail(20)
    );
    eprintln!("a -> b took {:?}", t.elapsed());
    assert_eq!(b.domstate("m").as_deref(), Some("running"), "m on b");
    assert_eq!(a.domstate("m"), None, "m on a after migrating away");
    let pid = b.qemu_pid("m").expect("m's QEMU on b");
    let net = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let b_net = std::fs::read_link(format!("/proc/{}/ns/net", b.anchor_pid())).unwrap();
    assert_eq!(net, b_net, "m's QEMU runs in b's network namespace");

    // Peer to peer: b's libvirtd connects to a's socket itself.
    let t = Instant::now();
    let o = b.migrate("m", a, "storage", true);
    assert!(
        o.status.success(),
        "migrate --p2p m from b to a: {}\n{}\n{}",
        text(&o),
        b.logs_tail(20),
        a.logs_tail(20)
    );
    eprintln!("b -> a (p2p) took {:?}", t.elapsed());
    assert_eq!(a.domstate("m").as_deref(), Some("running"), "m back on a");
    assert_eq!(b.domstate("m"), None, "m on b after migrating back");
    a.destroy_ok("m");
}

#[test]
fn lockd_with_a_shared_lockspace_refuses_a_second_host() {
    let mut c = Cluster::new("lockd");
    let ls = c.shared_dir().join("lockd");
    std::fs::create_dir_all(&ls).unwrap();
    let ls = ls.display().to_string();
    c.add_hosts(vec![
        HostSpec::new("a").lockd(Some(&ls)),
        HostSpec::new("b").lockd(Some(&ls)),
    ]);
    eprintln!("{}", c.describe());
    let (a, b) = (c.host("a"), c.host("b"));
    // Same path, same UUID, each host its own file (as with shared storage
    // on separate machines, the path is the lock's key).
    let path = a.create_image("l.qcow2", Format::Qcow2, 16);
    b.create_image("l.qcow2", Format::Qcow2, 16);
    let vm = domain("l", &path);

    a.create_ok(&vm);
    let o = b.create(&vm);
    assert!(!o.status.success(), "l started on b while a runs it");
    let err = text(&o);
    assert!(
        err.contains("is locked") || err.contains("resource busy"),
        "the refusal on host b: {err}"
    );
    assert_eq!(b.domstate("l"), None, "l on b after the refusal");

    // QEMU killed on a: virtlockd releases its locks and b may start it.
    a.kill_qemu("l");
    wait_until(
        "host b to start l after a's QEMU was killed",
        STATE,
        Duration::from_millis(100),
        || {
            let o = b.create(&vm);
            if o.status.success() {
                Ok(())
            } else {
                Err(text(&o))
            }
        },
    );
    b.destroy_ok("l");
    // And destroy releases too: a can start it again.
    a.create_ok(&vm);
    a.destroy_ok("l");
}

#[test]
fn a_lock_plugin_that_cannot_load_stops_libvirtd() {
    let c = Cluster::start(
        "bad-plugin",
        vec![HostSpec::new("a")
            .lock_manager("no-such-plugin")
            .plugin_dir(std::path::Path::new("/nonexistent"))
            .without_libvirtd()],
    );
    eprintln!("{}", c.describe());
    let a = c.host("a");
    let err = a
        .try_start_libvirtd()
        .expect_err("libvirtd started with a missing lock plugin");
    eprintln!("as expected: {err}");
    assert!(
        err.contains("no-such-plugin"),
        "the failure names the plugin: {err}"
    );
    assert_eq!(a.libvirtd_pid(), None);
}

#[test]
fn a_panicking_test_leaves_nothing_behind() {
    struct Seen {
        scratch: std::path::PathBuf,
        netns: Vec<String>,
        pids: Vec<i32>,
    }
    let seen = std::sync::Mutex::new(None);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let c = Cluster::start("panic", vec![HostSpec::new("a").lockd(None)]);
        let a = c.host("a");
        let path = a.create_image("p.qcow2", Format::Qcow2, 16);
        a.create_ok(&domain("p", &path));
        let sleeper = a.spawn_in_host(&["sleep", "1000"], &[]);
        let mut pids = vec![
            a.anchor_pid(),
            a.libvirtd_pid().unwrap(),
            a.qemu_pid("p").unwrap(),
        ];
        pids.push(sleeper.pid());
        *seen.lock().unwrap() = Some(Seen {
            scratch: c.scratch().to_path_buf(),
            netns: vec![a.netns().to_string(), a.switch_netns().to_string()],
            pids,
        });
        std::mem::forget(sleeper); // only the host's teardown stops it
        panic!("a deliberate panic with a domain running");
    }));
    assert!(r.is_err());
    let seen = seen.lock().unwrap().take().expect("the cluster came up");
    for pid in &seen.pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} survived the panic"
        );
    }
    let list = support::util::run_ok(&["ip", "netns", "list"]);
    for ns in &seen.netns {
        assert!(
            !list
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns)),
            "netns {ns} survived the panic"
        );
    }
    assert!(
        !seen.scratch.exists(),
        "{} survived",
        seen.scratch.display()
    );
}
