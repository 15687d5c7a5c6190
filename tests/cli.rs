//! The `vmlease` command and the qemu hook against a live multi-host
//! lockspace: real watchdog daemons, stand-in QEMUs leased through the
//! plugin's code, and real faults (a fence) for `can-evacuate`.

mod support;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::daemons::*;
use vmlease::clock::boottime_ms;
use vmlease::resource::{format_uuid, Resource};

const UUID_A: [u8; 16] = [0xaa; 16];

fn vmlease(conf: &Path, args: &[&str]) -> Output {
    Command::new(bin("vmlease"))
        .arg("--config")
        .arg(conf)
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn hook(conf: &Path, args: &[&str], stdin: &str) -> Output {
    let mut c = Command::new(bin("vmlease"))
        .arg("--config")
        .arg(conf)
        .arg("hook")
        .arg("qemu")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // As libvirt: a hook that exits without reading is not an error.
    if let Err(e) = c.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    c.wait_with_output().unwrap()
}

fn domain_xml(uuid: &str) -> String {
    format!(
        "<domain type='kvm' id='3'>\n  <name>web</name>\n  <uuid>{uuid}</uuid>\n  <memory unit='KiB'>65536</memory>\n  \
         <devices>\n    <disk type='file' device='disk'><source file='/images/web.qcow2'/><target dev='vda'/></disk>\n  \
         </devices>\n</domain>\n"
    )
}

#[test]
fn check_config_reports_timeline_and_errors() {
    let _g = serial();
    let s = Scratch::new("cli-cc");
    let ls = lockspace(&s);
    let a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    let o = vmlease(&a.conf, &["check-config"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("latest possible write by this host"),
        "{}",
        text(&o)
    );
    let bad = s.0.join("bad.conf");
    fs::write(&bad, "host_id = 1\nkill_timeout = \"soon\"\n").unwrap();
    let o = vmlease(&bad, &["check-config"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("bad.conf:2"), "{}", text(&o));
    fs::write(&bad, "renew_interval = 1\n").unwrap();
    let o = vmlease(&bad, &["check-config"]);
    assert_eq!(o.status.code(), Some(1), "no host_id: {}", text(&o));
    let o = vmlease(&s.0.join("missing.conf"), &["check-config"]);
    assert_eq!(o.status.code(), Some(2));
    let o = vmlease(&a.conf, &["--json", "check-config"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"host_dead_timeout_ms\":4000"));
}

#[test]
fn status_hosts_and_leases_on_a_live_cluster() {
    let _g = serial();
    let s = Scratch::new("cli-live");
    let ls = lockspace(&s);
    let mut a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    let mut b = Host::new(&s, 2, &ls, "unsafe_no_watchdog = true\n");
    let o = vmlease(&a.conf, &["status"]);
    assert_eq!(o.status.code(), Some(1), "no daemon yet: {}", text(&o));
    assert!(text(&o).contains("protected:   NO"), "{}", text(&o));
    a.start(&[]);
    b.start(&[]);
    let q = standin_qemu();
    lease(&a, UUID_A, "web", &q, Some("/images/web.qcow2")).unwrap();

    let o = vmlease(&a.conf, &["status"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("protected:   yes") && text(&o).contains("web"),
        "{}",
        text(&o)
    );
    let o = vmlease(&a.conf, &["--json", "status"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"protected\":true"));

    let o = vmlease(&b.conf, &["hosts"]);
    assert_eq!(o.status.code(), Some(0));
    let t = text(&o);
    assert!(
        t.contains("host-1.test") && t.contains("live: renewing; do not evacuate"),
        "{t}"
    );
    assert!(t.contains("host-2.test") && t.contains("this host"), "{t}");
    let o = vmlease(&b.conf, &["--json", "hosts"]);
    let j = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        j.starts_with('[') && j.contains("\"verdict\":\"alive\""),
        "{j}"
    );

    let o = vmlease(&b.conf, &["leases", "--host", "1"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(
        t.contains("/images/web.qcow2") && t.contains(&format!("host 1 pid {}", q.pid())),
        "{t}"
    );
    let uuid = format_uuid(&UUID_A);
    let o = vmlease(&b.conf, &["leases", "--domain", &uuid]);
    assert_eq!(text(&o).lines().count(), 3, "{}", text(&o));
    let o = vmlease(&b.conf, &["leases", "--host", "2"]);
    assert!(text(&o).contains("no lease records"), "{}", text(&o));

    // A damaged record is listed as such and fails the command.
    let disk = Resource::disk("/images/web.qcow2", false);
    let path = ls.join("leases").join(disk.key());
    let good = fs::read(&path).unwrap();
    fs::write(&path, &good[..good.len() - 5]).unwrap();
    let o = vmlease(&b.conf, &["leases"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("DAMAGED") && text(&o).contains("never treated as free"),
        "{}",
        text(&o)
    );
    let o = vmlease(&b.conf, &["dump", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("DAMAGED"), "{}", text(&o));
    fs::write(&path, &good).unwrap();
    let o = vmlease(&b.conf, &["dump", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("valid"));
}

#[test]
fn can_evacuate_answers_not_yet_then_yes_across_a_fence() {
    let _g = serial();
    let s = Scratch::new("cli-evac");
    let ls = lockspace(&s);
    let a_view = s.0.join("a-view");
    fs::create_dir_all(&a_view).unwrap();
    let mut a = Host::new(&s, 1, &a_view, "unsafe_no_watchdog = true\n");
    let mut b = Host::new(&s, 2, &ls, "unsafe_no_watchdog = true\n");
    let inner = format!(
        "mount --bind '{}' '{}' && exec \"$0\" \"$@\"",
        ls.display(),
        a_view.display()
    );
    a.start(&[
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &inner,
    ]);
    b.start(&[]);
    let mut a_plugin = Host::new(&s, 1, &a_view, "unsafe_no_watchdog = true\n");
    a_plugin.cfg.lockspace_dir = ls.clone();
    let mut q = standin_qemu();
    lease(&a_plugin, UUID_A, "web", &q, None).unwrap();

    let o = vmlease(&b.conf, &["can-evacuate", "host-1.test"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("not yet: 1 of 1 lease(s) still held"),
        "{}",
        text(&o)
    );
    assert_eq!(
        vmlease(&b.conf, &["can-evacuate", "nosuchhost"])
            .status
            .code(),
        Some(2)
    );

    let apid = a.daemon.as_ref().unwrap().pid();
    sh(&format!(
        "nsenter -t {apid} -m umount -l '{}'",
        a_view.display()
    ));
    let a_last = wait_until("A's renewals to stop", 3000, || {
        let st = a.status();
        if boottime_ms() - st.last_renewal_ms > 3 * R {
            Ok(st.last_renewal_ms)
        } else {
            Err("renewing".into())
        }
    });
    let mut said_safe_in = false;
    let yes = wait_until("can-evacuate to say yes", D + 5000, || {
        let o = vmlease(&b.conf, &["can-evacuate", "1"]);
        match o.status.code() {
            Some(0) => Ok((boottime_ms(), text(&o))),
            _ => {
                said_safe_in |= text(&o).contains("safe in");
                Err(text(&o))
            }
        }
    });
    assert!(
        yes.0 >= a_last + D,
        "yes {} ms after A's last renewal, before D",
        yes.0 - a_last
    );
    assert!(
        said_safe_in,
        "the 'not yet' answers never said when it would be safe"
    );
    assert!(
        yes.1
            .contains("yes: all 1 lease(s) of host 1 may be taken over now"),
        "{}",
        yes.1
    );
    assert!(q.exited(), "A fenced its QEMU long before");
    let o = vmlease(&b.conf, &["--json", "can-evacuate", "1"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"safe\":true"));
}

#[test]
fn admin_release_refuses_a_running_qemu_and_frees_a_dead_one() {
    let _g = serial();
    let s = Scratch::new("cli-release");
    let ls = lockspace(&s);
    let mut a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    a.start(&[]);
    let q = standin_qemu();
    lease(&a, UUID_A, "web", &q, None).unwrap();
    let uuid = format_uuid(&UUID_A);
    let o = vmlease(&a.conf, &["release", "--domain", &uuid]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("is running on this host"), "{}", text(&o));
    // With the daemon frozen nothing releases on its own.
    a.daemon.as_ref().unwrap().signal(libc::SIGSTOP);
    drop(q);
    let dom = Resource::domain(&uuid);
    assert_eq!(holders(&ls, &dom).len(), 1);
    let o = vmlease(&a.conf, &["release", "--domain", &uuid]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(holders(&ls, &dom).is_empty());
    a.daemon.as_ref().unwrap().signal(libc::SIGCONT);
    assert_eq!(vmlease(&a.conf, &["release"]).status.code(), Some(2));
}

#[test]
fn hook_operations_with_real_domain_xml() {
    let _g = serial();
    let s = Scratch::new("cli-hook");
    let ls = lockspace(&s);
    let mut a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    let mut b = Host::new(&s, 2, &ls, "unsafe_no_watchdog = true\n");
    let uuid = format_uuid(&UUID_A);
    let xml = domain_xml(&uuid);

    // Unprotected: prepare and migrate refuse with one clear line.
    let o = hook(&a.conf, &["web", "prepare", "begin", "-"], &xml);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("vmlease: refusing to start 'web': host not protected"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let o = hook(&a.conf, &["web", "migrate", "begin", "-"], &xml);
    assert_eq!(o.status.code(), Some(1));

    a.start(&[]);
    b.start(&[]);
    let o = hook(&a.conf, &["web", "prepare", "begin", "-"], &xml);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = hook(&a.conf, &["web", "migrate", "begin", "-"], &xml);
    assert_eq!(o.status.code(), Some(0));
    assert!(o.stdout.is_empty(), "migrate must keep libvirt's XML");
    let o = hook(&a.conf, &["web", "started", "begin", "-"], &xml);
    assert_eq!(o.status.code(), Some(0));
    let o = hook(&a.conf, &["web", "no-such-op", "-", "-"], "");
    assert_eq!(o.status.code(), Some(0));

    // reconnect: fine while the leases are ours.
    let q = standin_qemu();
    lease(&a, UUID_A, "web", &q, None).unwrap();
    let o = hook(&a.conf, &["web", "reconnect", "begin", "-"], &xml);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // Malformed XML: clear message, safe exit (keep the VM).
    let o = hook(&a.conf, &["web", "reconnect", "begin", "-"], "<notxml");
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no <domain> element"));

    // release end: QEMU gone -> the leases go at once (the daemon is
    // frozen so that only the hook can do it).
    a.daemon.as_ref().unwrap().signal(libc::SIGSTOP);
    drop(q);
    let dom = Resource::domain(&uuid);
    assert_eq!(holders(&ls, &dom).len(), 1);
    let o = hook(&a.conf, &["web", "release", "end", "-"], &xml);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        holders(&ls, &dom).is_empty(),
        "release end did not free the lease"
    );
    a.daemon.as_ref().unwrap().signal(libc::SIGCONT);

    // reconnect after a takeover: the lease names host B now -> exit 1.
    let q2 = standin_qemu();
    lease(&a, UUID_A, "web", &q2, None).unwrap();
    a.daemon.as_ref().unwrap().signal(libc::SIGSTOP);
    let qb = standin_qemu();
    wait_until("B to take the lease over after D", D + 5000, || {
        lease(&b, UUID_A, "web", &qb, None)
    });
    let o = hook(&a.conf, &["web", "reconnect", "begin", "-"], &xml);
    a.daemon.as_ref().unwrap().signal(libc::SIGCONT);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("now belongs to host 2"),
        "{}",
        text(&o)
    );
}
