//! The qemu hook: every operation driven as libvirt drives it (arguments,
//! the domain XML on stdin, exit status, stderr), against real watchdog
//! daemons and stand-in QEMUs on a temporary lockspace; the installed
//! script itself; and a real libvirtd that refuses to start a domain on an
//! unprotected host with vmlease's message, releases at destroy and kills
//! a QEMU whose lease was taken over when it reconnects.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::daemons::{
    bin, holders, lease, lockspace, serial, sh, standin_qemu, wait_until, Host, Scratch, D,
};
use vmlease::clock::boottime_ms;
use vmlease::hosts::HostState;
use vmlease::process;
use vmlease::registry::Registry;
use vmlease::resource::{format_uuid, Resource};
use vmlease::status::Status;

const UUID_A: [u8; 16] = [0xaa; 16];

/// The domain XML as libvirt writes it to the hook (live, no secrets).
fn domain_xml(name: &str, uuid: &str) -> String {
    format!(
        "<domain type='kvm' id='3'>\n  <name>{name}</name>\n  <uuid>{}</uuid>\n  \
         <metadata>\n    <nova:instance xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.1'>\
         <nova:uuid>00000000-0000-0000-0000-000000000000</nova:uuid></nova:instance>\n  </metadata>\n  \
         <memory unit='KiB'>65536</memory>\n  <vcpu placement='static'>1</vcpu>\n  \
         <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type></os>\n  <devices>\n    \
         <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='/images/{name}.qcow2' index='1'/><target dev='vda' bus='virtio'/></disk>\n    \
         <!-- a comment with <uuid>11111111-1111-1111-1111-111111111111</uuid> -->\n  </devices>\n  \
         <seclabel type='none' model='none'/>\n</domain>\n",
        uuid.to_uppercase()
    )
}

/// How the tests call the hook: either `vmlease hook qemu` directly or the
/// installed script, with `VMLEASE_QEMU_CONF` pointing at a qemu.conf.
struct Hooker {
    conf: PathBuf,
    qemu_conf: PathBuf,
}

impl Hooker {
    fn new(s: &Scratch, conf: &Path, lock_manager: Option<&str>) -> Hooker {
        let qemu_conf =
            s.0.join(format!("qemu-{}.conf", lock_manager.unwrap_or("none")));
        let mut text = String::from("user = \"root\"\n#lock_manager = \"vmlease\"\n");
        if let Some(m) = lock_manager {
            text.push_str(&format!("lock_manager = \"{m}\"\n"));
        }
        fs::write(&qemu_conf, text).unwrap();
        Hooker {
            conf: conf.into(),
            qemu_conf,
        }
    }

    fn run(&self, args: &[&str], stdin: &str) -> Output {
        let mut c = Command::new(bin("vmlease"));
        c.arg("--config")
            .arg(&self.conf)
            .arg("hook")
            .arg("qemu")
            .args(args)
            .env("VMLEASE_QEMU_CONF", &self.qemu_conf);
        feed(c, stdin, 15_000)
    }
}

/// Runs a command with `stdin` written as libvirt does, bounded in time.
fn feed(mut c: Command, stdin: &str, limit_ms: u64) -> Output {
    let start = boottime_ms();
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_string();
    // A writer thread, as libvirt's event loop: the hook must read it all.
    let writer = std::thread::spawn(move || input.write_all(data.as_bytes()));
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if boottime_ms() - start > limit_ms {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the hook still ran after {limit_ms} ms");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let wrote = writer.join().unwrap();
    assert!(
        wrote.is_ok(),
        "the hook exited without reading its stdin: {wrote:?}"
    );
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    Output {
        status,
        stdout,
        stderr,
    }
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed")
}

/// A daemon status as the watchdog writes it, for states that are hard to
/// reach for real in a test (fenced, a lockspace that hangs).
fn fake_status(h: &Host, state: HostState, reason: &str) {
    let now = boottime_ms();
    fs::create_dir_all(&h.cfg.state_dir).unwrap();
    Status {
        daemon_pid: std::process::id(),
        host_id: h.id,
        boot_id: process::boot_id().unwrap(),
        incarnation: 1,
        written_ms: now,
        last_renewal_ms: now,
        state,
        reason: reason.into(),
        unsafe_no_watchdog: true,
        lockspace_dir: h.cfg.lockspace_dir.display().to_string(),
        lockspace_uuid: vmlease::lockspace::Lockspace::open(&h.cfg.lockspace_dir)
            .ok()
            .and_then(|l| l.uuid)
            .unwrap_or_default(),
        allow_local_lockspace: false,
        local_lockspace: String::new(),
        observing_since_ms: now,
        renew_interval_ms: h.cfg.timing.renew_interval,
        renew_fail_timeout_ms: h.cfg.timing.renew_fail_timeout,
        host_dead_timeout_ms: h.cfg.timing.host_dead_timeout,
        networks: Vec::new(),
        peers: Vec::new(),
    }
    .write(&h.cfg.state_dir)
    .unwrap();
}

#[test]
fn prepare_and_migrate_refuse_an_unprotected_host_with_one_line() {
    let _g = serial();
    let s = Scratch::new("hook-protect");
    let ls = lockspace(&s);
    let mut a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    let h = Hooker::new(&s, &a.conf, Some("vmlease"));
    let uuid = format_uuid(&UUID_A);
    let xml = domain_xml("web", &uuid);

    // No watchdog daemon.
    for (op, what) in [
        ("prepare", "start"),
        ("migrate", "accept an incoming migration of"),
    ] {
        let o = h.run(&["web", op, "begin", "-"], &xml);
        assert_eq!(code(&o), 1, "{op}: {}", err(&o));
        assert_eq!(
            err(&o).trim_end(),
            format!(
                "vmlease: refusing to {what} 'web': host not protected: the vmlease-watchdog daemon is not running \
                 (no status in {}); a host that cannot fence itself must not run protected VMs",
                a.cfg.state_dir.display()
            )
        );
        assert!(o.stdout.is_empty());
    }
    // Where vmlease is not libvirt's lock manager the hook has nothing to
    // protect: the package installs it before the plugin is enabled.
    for m in [None, Some("lockd")] {
        let off = Hooker::new(&s, &a.conf, m);
        let o = off.run(&["web", "prepare", "begin", "-"], &xml);
        assert_eq!(code(&o), 0, "lock_manager {m:?}: {}", err(&o));
        assert!(err(&o).is_empty() && o.stdout.is_empty());
    }

    // A fenced host.
    fake_status(&a, HostState::FencedClean, "management network lost");
    let o = h.run(&["web", "prepare", "begin", "-"], &xml);
    assert_eq!(code(&o), 1);
    assert!(
        err(&o).contains("host not protected: this host is fenced-clean: management network lost"),
        "{}",
        err(&o)
    );
    // Protected as far as the daemon says, but the lockspace is gone.
    fake_status(&a, HostState::Live, "");
    let mut moved = a.cfg.clone();
    moved.lockspace_dir = s.0.join("unmounted/lockspace");
    let conf2 = s.0.join("moved.conf");
    fs::write(
        &conf2,
        fs::read_to_string(&a.conf).unwrap().replace(
            &ls.display().to_string(),
            &moved.lockspace_dir.display().to_string(),
        ),
    )
    .unwrap();
    let o = Hooker::new(&s, &conf2, Some("vmlease")).run(&["web", "prepare", "begin", "-"], &xml);
    assert_eq!(code(&o), 1);
    assert!(
        err(&o).contains("directory missing (is the shared filesystem mounted?)"),
        "{}",
        err(&o)
    );
    // A lockspace that never answers: refused within io_timeout.
    let hung = s.0.join("hung");
    fs::create_dir_all(&hung).unwrap();
    sh(&format!("mkfifo '{}/VMLEASE'", hung.display()));
    fs::write(
        &conf2,
        fs::read_to_string(&a.conf)
            .unwrap()
            .replace(&ls.display().to_string(), &hung.display().to_string()),
    )
    .unwrap();
    let t = boottime_ms();
    let o = Hooker::new(&s, &conf2, Some("vmlease")).run(&["web", "prepare", "begin", "-"], &xml);
    let took = boottime_ms() - t;
    assert_eq!(code(&o), 1);
    assert!(
        err(&o).contains("no answer from storage after 500 ms"),
        "{}",
        err(&o)
    );
    assert!(took < 2500, "took {took} ms");
    // A daemon status that cannot even be read (here a FIFO): the
    // backstop ends the hook with a refusal.
    let st = a.cfg.state_dir.join("status");
    fs::remove_file(&st).unwrap();
    sh(&format!("mkfifo '{}'", st.display()));
    let t = boottime_ms();
    let o = h.run(&["web", "prepare", "begin", "-"], &xml);
    let took = boottime_ms() - t;
    assert_eq!(code(&o), 1, "{}", err(&o));
    assert!(err(&o).contains("giving up (refusing)"), "{}", err(&o));
    let budget = a.cfg.io_timeout + a.cfg.lock_timeout + 2000;
    assert!(took >= budget && took < budget + 2000, "took {took} ms");
    fs::remove_file(&st).unwrap();

    // Protected for real.
    a.start(&[]);
    let o = h.run(&["web", "prepare", "begin", "-"], &xml);
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert!(err(&o).is_empty() && o.stdout.is_empty());
    let o = h.run(&["web", "migrate", "begin", "-"], &xml);
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert!(
        o.stdout.is_empty(),
        "migrate must leave libvirt's XML unchanged"
    );
}

#[test]
fn other_operations_succeed_at_once() {
    let _g = serial();
    let s = Scratch::new("hook-other");
    let ls = lockspace(&s);
    // No daemon: an operation that checked protection would fail.
    let a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    let h = Hooker::new(&s, &a.conf, Some("vmlease"));
    let xml = domain_xml("web", &format_uuid(&UUID_A));
    for (op, sub, extra) in [
        ("start", "begin", "-"),
        ("started", "begin", "-"),
        ("stopped", "end", "-"),
        ("restore", "begin", "-"),
        ("attach", "begin", "-"),
        ("prepare", "end", "-"),
        ("release", "begin", "-"),
    ] {
        let t = boottime_ms();
        let o = h.run(&["web", op, sub, extra], &xml);
        assert_eq!(code(&o), 0, "{op} {sub}: {}", err(&o));
        assert!(o.stdout.is_empty() && err(&o).is_empty(), "{op} {sub}");
        assert!(boottime_ms() - t < 2000, "{op} {sub} was slow");
    }
    let o = h.run(&["web", "teleport", "begin", "-"], &xml);
    assert_eq!(code(&o), 0);
    assert!(
        err(&o).contains("unknown hook operation 'teleport begin' for domain 'web'"),
        "{}",
        err(&o)
    );
    // A domain called like an option is a domain.
    let o = h.run(&["--json", "start", "begin", "-"], &xml);
    assert_eq!(code(&o), 0, "{}", err(&o));
    let o = h.run(&["web"], "");
    assert_eq!(code(&o), 2);
    assert!(err(&o).contains("usage: vmlease hook qemu"), "{}", err(&o));
}

#[test]
fn release_end_frees_a_stopped_domains_leases_at_once() {
    let _g = serial();
    let s = Scratch::new("hook-release");
    let ls = lockspace(&s);
    let mut a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    a.start(&[]);
    let h = Hooker::new(&s, &a.conf, Some("vmlease"));
    let uuid = format_uuid(&UUID_A);
    let xml = domain_xml("web", &uuid);
    let dom = Resource::domain(&uuid);
    let disk = Resource::disk("/images/web.qcow2", false);
    let q = standin_qemu();
    lease(&a, UUID_A, "web", &q, Some("/images/web.qcow2")).unwrap();
    // The daemon is frozen so that only the hook can release.
    a.daemon.as_ref().unwrap().signal(libc::SIGSTOP);

    // QEMU still running (libvirt stopped it as far as it knows): kept.
    let o = h.run(&["web", "release", "end", "-"], &xml);
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert_eq!(holders(&ls, &dom), vec![q.pid()]);
    // Malformed XML: a clear message, exit 0, nothing released.
    for (bad, want) in [
        ("", "no domain XML on stdin"),
        (
            "<domain><name>web</name></domain>",
            "the domain XML has no <uuid>",
        ),
        ("<domain><uuid>c7a5", "unterminated <uuid> element"),
    ] {
        let o = h.run(&["web", "release", "end", "-"], bad);
        assert_eq!(code(&o), 0);
        assert!(err(&o).contains(want), "{bad:?}: {}", err(&o));
        assert!(
            err(&o).starts_with("vmlease: domain 'web' (release end): "),
            "{}",
            err(&o)
        );
    }
    let pid = q.pid();
    drop(q);
    let t = boottime_ms();
    // libvirt 10.5+ passes the shut-off reason as EXTRA.
    let o = h.run(&["web", "release", "end", "destroyed"], &xml);
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert!(err(&o).is_empty(), "{}", err(&o));
    assert!(
        holders(&ls, &dom).is_empty() && holders(&ls, &disk).is_empty(),
        "release end did not free the leases of dead QEMU {pid}"
    );
    let reg = Registry::new(&a.cfg.state_dir);
    assert!(reg.list().unwrap().is_empty(), "the registry entry stayed");
    eprintln!("release end freed 2 leases in {} ms", boottime_ms() - t);

    // The registry lost track of the QEMU: the domain lease still goes.
    a.daemon.as_ref().unwrap().signal(libc::SIGCONT);
    wait_until("A to be protected again", 3000, || {
        vmlease::status::protected_status(&a.cfg)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let q2 = standin_qemu();
    lease(&a, UUID_A, "web", &q2, None).unwrap();
    a.daemon.as_ref().unwrap().signal(libc::SIGSTOP);
    drop(q2);
    fs::remove_dir_all(a.cfg.state_dir.join("procs")).unwrap();
    let o = h.run(&["web", "release", "end", "-"], &xml);
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert!(
        holders(&ls, &dom).is_empty(),
        "the domain lease outlived its QEMU"
    );
    a.daemon.as_ref().unwrap().signal(libc::SIGCONT);
}

#[test]
fn release_end_on_a_hung_lockspace_leaves_it_to_the_daemon() {
    let _g = serial();
    let s = Scratch::new("hook-release-hung");
    let ls = lockspace(&s);
    let mut a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    a.start(&[]);
    let h = Hooker::new(&s, &a.conf, Some("vmlease"));
    let uuid = format_uuid(&UUID_A);
    let q = standin_qemu();
    lease(&a, UUID_A, "web", &q, None).unwrap();
    a.daemon.as_ref().unwrap().signal(libc::SIGSTOP);
    drop(q);
    let record = ls.join("leases").join(Resource::domain(&uuid).key());
    let saved = fs::read(&record).unwrap();
    fs::remove_file(&record).unwrap();
    sh(&format!("mkfifo '{}'", record.display()));
    let t = boottime_ms();
    let o = h.run(&["web", "release", "end", "-"], &domain_xml("web", &uuid));
    let took = boottime_ms() - t;
    assert_eq!(code(&o), 0);
    assert!(
        err(&o).contains("leases not released yet") && err(&o).contains("the watchdog daemon will"),
        "{}",
        err(&o)
    );
    assert!(
        took < a.cfg.io_timeout + a.cfg.lock_timeout + 1500,
        "took {took} ms"
    );
    let reg = Registry::new(&a.cfg.state_dir);
    assert_eq!(
        reg.list().unwrap().len(),
        1,
        "the daemon still needs the entry"
    );
    fs::remove_file(&record).unwrap();
    fs::write(&record, &saved).unwrap();
    a.daemon.as_ref().unwrap().signal(libc::SIGCONT);
    wait_until("the daemon to release the dead QEMU's lease", 3000, || {
        if holders(&ls, &Resource::domain(&uuid)).is_empty() {
            Ok(())
        } else {
            Err("held".into())
        }
    });
}

#[test]
fn reconnect_fails_only_when_the_leases_belong_to_another_host() {
    let _g = serial();
    let s = Scratch::new("hook-reconnect");
    let ls = lockspace(&s);
    let mut a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    let mut b = Host::new(
        &s,
        2,
        &ls,
        "unsafe_no_watchdog = true\ntrust_unsafe_peers = true\n",
    );
    a.start(&[]);
    b.start(&[]);
    let h = Hooker::new(&s, &a.conf, Some("vmlease"));
    let uuid = format_uuid(&UUID_A);
    let xml = domain_xml("web", &uuid);

    // Still ours: keep it.
    let q = standin_qemu();
    lease(&a, UUID_A, "web", &q, Some("/images/web.qcow2")).unwrap();
    let o = h.run(&["web", "reconnect", "begin", "-"], &xml);
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert!(err(&o).is_empty(), "{}", err(&o));
    // Malformed XML: never kill a VM over that.
    let o = h.run(&["web", "reconnect", "begin", "-"], "<notxml");
    assert_eq!(code(&o), 0);
    assert!(err(&o).contains("unterminated <notxml> tag"), "{}", err(&o));
    // A paused domain holds no lease (libvirt released them with a
    // state): keep it.
    let mut m = support::daemons::manager(UUID_A, "web", q.pid());
    m.add_resource(&a.cfg, 0, "/images/web.qcow2", &[], 0)
        .unwrap();
    let st = vmlease::plugin::release(&a.cfg, &m, true).unwrap().unwrap();
    assert!(holders(&ls, &Resource::domain(&uuid)).is_empty());
    let o = h.run(&["web", "reconnect", "begin", "-"], &xml);
    assert_eq!(code(&o), 0, "{}", err(&o));
    vmlease::plugin::acquire(&a.cfg, &m, Some(&st)).unwrap();

    // A hung lockspace: keep the VM (the daemon fences if it is gone).
    let record = ls.join("leases").join(Resource::domain(&uuid).key());
    let saved = fs::read(&record).unwrap();
    a.daemon.as_ref().unwrap().signal(libc::SIGSTOP);
    b.daemon.as_ref().unwrap().signal(libc::SIGSTOP);
    fs::remove_file(&record).unwrap();
    sh(&format!("mkfifo '{}'", record.display()));
    let o = h.run(&["web", "reconnect", "begin", "-"], &xml);
    assert_eq!(code(&o), 0);
    assert!(
        err(&o).contains("could not check its leases") && err(&o).contains("keeping it"),
        "{}",
        err(&o)
    );
    fs::remove_file(&record).unwrap();
    fs::write(&record, &saved).unwrap();
    b.daemon.as_ref().unwrap().signal(libc::SIGCONT);

    // A stays frozen (libvirtd "away", the daemon hung): B takes the
    // domain over after D, legitimately.
    let qb = standin_qemu();
    wait_until("B to take the lease over after D", D + 5000, || {
        lease(&b, UUID_A, "web", &qb, Some("/images/web.qcow2"))
    });
    let o = h.run(&["web", "reconnect", "begin", "-"], &xml);
    assert_eq!(code(&o), 1, "{}", err(&o));
    assert!(
        err(&o).contains("vmlease: domain 'web' lost its leases while libvirtd was away")
            && err(&o).contains(&format!(
                "now belongs to host 2 (domain 'web', QEMU pid {})",
                qb.pid()
            )),
        "{}",
        err(&o)
    );
    assert_eq!(err(&o).lines().count(), 1, "{}", err(&o));
    // Even with the registry gone, the domain lease tells.
    fs::remove_dir_all(a.cfg.state_dir.join("procs")).unwrap();
    let o = h.run(&["web", "reconnect", "begin", "-"], &xml);
    assert_eq!(code(&o), 1, "{}", err(&o));
    a.daemon.as_ref().unwrap().signal(libc::SIGCONT);
    drop(q);
}

/// The installed script: settings from its env file, refusals passed on,
/// and nothing blocked once vmlease itself is gone.
#[test]
fn the_hook_script_runs_vmlease_as_installed() {
    let _g = serial();
    let s = Scratch::new("hook-script");
    let ls = lockspace(&s);
    let a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    let h = Hooker::new(&s, &a.conf, Some("vmlease"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks/qemu");
    let env = s.0.join("vmlease.env");
    let xml = domain_xml("web", &format_uuid(&UUID_A));
    let run = |args: &[&str], input: &str| {
        let mut c = Command::new(&script);
        // As under libvirt: a bare environment.
        c.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LC_ALL", "C")
            .env("VMLEASE_HOOK_ENV", &env)
            .args(args);
        feed(c, input, 15_000)
    };
    fs::write(
        &env,
        format!(
            "VMLEASE_BIN={}\nVMLEASE_CONFIG={}\nVMLEASE_QEMU_CONF={}\n",
            bin("vmlease").display(),
            a.conf.display(),
            h.qemu_conf.display()
        ),
    )
    .unwrap();
    let o = run(&["web", "prepare", "begin", "-"], &xml);
    assert_eq!(code(&o), 1, "{}", err(&o));
    assert!(
        err(&o).starts_with("vmlease: refusing to start 'web': host not protected"),
        "{}",
        err(&o)
    );
    let o = run(&["web", "started", "begin", "-"], &xml);
    assert_eq!(code(&o), 0, "{}", err(&o));
    // vmlease removed, its hook (a conffile) left behind: go on, and read
    // all of libvirt's XML first (here more than a pipe holds).
    fs::write(&env, "VMLEASE_BIN=/nonexistent/vmlease\n").unwrap();
    let big = xml.repeat(2000);
    let o = run(&["web", "prepare", "begin", "-"], &big);
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert!(err(&o).is_empty());
    let o = Command::new("shellcheck").arg(&script).output();
    match o {
        Ok(o) => assert!(
            o.status.success(),
            "shellcheck: {}",
            String::from_utf8_lossy(&o.stdout)
        ),
        Err(e) => panic!("shellcheck: {e} (scripts/setup-test-env.sh installs it)"),
    }
}

/// A real libvirtd (tests/support/libvirt) with the plugin and the hook
/// installed as the package installs them.
mod real_libvirt {
    use super::*;
    use support::libvirt::{Cluster, Disk, Domain, Format, HostSpec};
    use support::util::text;

    const R: f64 = 0.5;

    fn conf(shared: &Path) -> String {
        format!(
            "host_id = 1\nhost_name = \"host-a.test\"\nlockspace_dir = \"{}\"\nstate_dir = \"/run/vmlease\"\n\
             renew_interval = {R}\nrenew_fail_timeout = 3\nkill_timeout = 1\nwatchdog_timeout = 2\n\
             host_dead_timeout = 7\nio_timeout = 1\nlock_timeout = 1\nunsafe_no_watchdog = true\n\
             allow_local_lockspace = true\n\
             reset_action = \"record\"\nreset_record_file = \"/run/vmlease/reset\"\n",
            shared.display()
        )
    }

    #[test]
    fn libvirtd_refuses_an_unprotected_start_releases_at_destroy_and_kills_on_a_lost_lease() {
        let _g = serial();
        let script =
            fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks/qemu")).unwrap();
        let mut c = Cluster::new("hook-libvirt");
        let shared = c.shared_dir();
        let ls = shared.join("lockspace");
        vmlease::lockspace::Lockspace::init(&ls, 16).unwrap();
        let spec = HostSpec::new("a")
            .vmlease(&conf(&ls))
            .qemu_hook("vmlease", &script)
            .etc_file(
                "hooks/vmlease.env",
                &format!("VMLEASE_BIN={}\n", bin("vmlease").display()),
            );
        c.add_host(spec);
        eprintln!("{}", c.describe());
        let a = c.host("a");
        let image = a.create_image("web.qcow2", Format::Qcow2, 16);
        let dom = Domain::new("web").tcg().disk(Disk::new(&image));
        let uuid = dom.uuid.clone();

        // 1. No watchdog daemon: libvirt refuses with the hook's line.
        let o = a.create(&dom);
        assert!(!o.status.success(), "started on an unprotected host");
        let t = text(&o);
        assert!(
            t.contains("Hook script execution failed")
                && t.contains("vmlease: refusing to start 'web': host not protected: the vmlease-watchdog daemon is not running"),
            "{t}"
        );

        // 2. Protected: it starts; destroy releases at once (the daemon is
        // frozen, so only the hook can have done it).
        let state = a.vmlease_state_dir();
        let mut cfg = vmlease::config::parse(&conf(&ls), "a.conf").unwrap();
        cfg.state_dir = state.clone();
        let daemon = a.spawn_in_host(
            &[
                bin("vmlease-watchdog").to_str().unwrap(),
                "--config",
                "/etc/libvirt/qemu-vmlease.conf",
            ],
            &[],
        );
        wait_until("host a to be protected", 10_000, || {
            vmlease::status::protected_status(&cfg)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        a.create_ok(&dom);
        let pid = a.qemu_pid("web").expect("QEMU pid") as u32;
        let domr = Resource::domain(&uuid);
        assert_eq!(holders(&ls, &domr), vec![pid]);
        let dpid = daemon.pid();
        sh(&format!("kill -STOP {dpid}"));
        a.destroy_ok("web");
        let left = holders(&ls, &domr);
        sh(&format!("kill -CONT {dpid}"));
        assert!(
            left.is_empty(),
            "the lease outlived destroy: holders {left:?}"
        );

        // 3. A lease taken over while libvirtd was away: on reconnect the
        // hook fails and libvirt kills the stale QEMU.
        wait_until("host a to be protected", 10_000, || {
            vmlease::status::protected_status(&cfg)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        a.create_ok(&dom);
        let pid = a.qemu_pid("web").expect("QEMU pid");
        a.stop_libvirtd();
        let s2 = Scratch::new("hook-libvirt-b");
        let mut b = Host::new(
            &s2,
            2,
            &ls,
            "unsafe_no_watchdog = true\ntrust_unsafe_peers = true\n",
        );
        b.start(&[]);
        sh(&format!("kill -STOP {dpid}"));
        let qb = standin_qemu();
        let u: Vec<u8> = (0..16)
            .map(|i| u8::from_str_radix(&uuid.replace('-', "")[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let u: [u8; 16] = u.try_into().unwrap();
        wait_until("B to take the domain over after D", 7_000 + 5_000, || {
            lease(&b, u, "web", &qb, Some(&image))
        });
        a.start_libvirtd();
        wait_until(
            "libvirt to kill the stale QEMU on reconnect",
            15_000,
            || {
                if Path::new(&format!("/proc/{pid}")).exists() {
                    Err(format!(
                        "QEMU {pid} still runs; domstate {:?}",
                        a.domstate("web")
                    ))
                } else {
                    Ok(())
                }
            },
        );
        let log = fs::read_to_string(a.dir().join("log/libvirtd.log")).unwrap_or_default();
        assert!(
            log.contains("lost its leases while libvirtd was away") || a.domstate("web").is_none(),
            "{}",
            a.logs_tail(30)
        );
        sh(&format!("kill -CONT {dpid}"));
        drop(daemon);
        drop(c);
    }
}

/// libvirtd waits for the hook process to exit. A lockspace call stuck in
/// D (a frozen filesystem here, hung CephFS in production) keeps the
/// process that made it from exiting, even after its deadline: the hook
/// must answer libvirt at its deadline all the same.
#[test]
fn a_hook_on_hung_storage_answers_libvirt_at_its_deadline() {
    let _g = serial();
    let s = Scratch::new("hook-frozen");
    let mut fz = support::frozen::Frozen::new(&s);
    let ls = fz.mnt.join("ls");
    vmlease::lockspace::Lockspace::init(&ls, 16).unwrap();
    let h = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    let hk = Hooker::new(&s, &h.conf, Some("vmlease"));
    let uuid = format_uuid(&UUID_A);
    let xml = domain_xml("web", &uuid);
    // The hook's own budget: io_timeout + lock_timeout + 2 s.
    let budget = h.cfg.io_timeout + h.cfg.lock_timeout + 2_000;
    let limit = budget + 3_000;
    fz.freeze();
    let start = boottime_ms();
    let mut child = Command::new(bin("vmlease"))
        .arg("--config")
        .arg(&hk.conf)
        .args(["hook", "qemu", "web", "release", "end", "-"])
        .env("VMLEASE_QEMU_CONF", &hk.qemu_conf)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(xml.as_bytes())
        .unwrap();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if boottime_ms() - start > limit {
            // Thaw first: a process stuck in D cannot even be killed.
            fz.thaw();
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!(
                "the release hook still ran {limit} ms after it started on a frozen lockspace \
                 (its budget is {budget} ms); stderr: {err}"
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = boottime_ms() - start;
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    println!("release hook on a frozen lockspace answered after {took} ms: {err}");
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        err.contains("the watchdog daemon will") || err.contains("no answer within"),
        "{err}"
    );
    fz.thaw();
}
