//! Everybody on a host must use the same shared lockspace, and prove it at
//! run time: the plugin leases only in the lockspace the daemon renews in
//! (same directory, same UUID), the daemon and `vmlease init` refuse a
//! lockspace that is not on a shared filesystem unless the config allows
//! it, and the daemon waits for a lockspace that is not mounted yet.
//!
//! Real daemons, real mounts (tmpfs in the daemon's own mount namespace),
//! the plugin's own code. Timings: see tests/support/daemons.rs.

mod support;

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use support::daemons::*;
use vmlease::config;
use vmlease::hosts::Slot;
use vmlease::lockspace::Lockspace;
use vmlease::plugin;
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

/// Registers and acquires `q` through the plugin with the config `cfg`
/// (what libvirtd's plugin holds), as libvirt calls it.
fn lease_with(cfg: &config::Config, q: &Proc) -> Result<(), String> {
    let m = manager(UUID_A, "web", q.pid());
    plugin::register(cfg, &m).map_err(|e| e.to_string())?;
    plugin::acquire(cfg, &m, None).map_err(|e| e.to_string())
}

fn domain() -> Resource {
    Resource::domain(&format_uuid(&UUID_A))
}

#[test]
fn plugin_refuses_when_the_daemon_moved_to_another_lockspace_dir() {
    let _g = serial();
    let s = Scratch::new("lsid-moved");
    let old = lockspace(&s);
    let new = s.0.join("ls-new");
    Lockspace::init(&new, 16).unwrap();
    let mut a = Host::new(&s, 1, &old, "unsafe_no_watchdog = true\n");
    a.start(&[]);
    // libvirtd read the config at its start and keeps it.
    let plugin_cfg = a.cfg.clone();
    // The operator moves the lockspace and restarts only the daemon.
    a.stop();
    let text = fs::read_to_string(&a.conf).unwrap();
    fs::write(
        &a.conf,
        text.replace(&old.display().to_string(), &new.display().to_string()),
    )
    .unwrap();
    a.cfg = config::load(&a.conf).unwrap();
    a.start(&[]);

    let q = standin_qemu();
    let r = lease_with(&plugin_cfg, &q);
    let e = r.expect_err(
        "the plugin leased in the old lockspace while the daemon renews in the new one",
    );
    for want in [
        &old.display().to_string(),
        &new.display().to_string(),
        "restart libvirtd",
    ] {
        assert!(e.contains(want), "refusal should name '{want}': {e}");
    }
    assert!(holders(&old, &domain()).is_empty());
    assert!(holders(&new, &domain()).is_empty());
    // With the current config (libvirtd restarted) it leases.
    lease_with(&a.cfg, &q).unwrap();
    assert_eq!(holders(&new, &domain()), vec![q.pid()]);
}

#[test]
fn plugin_refuses_when_the_same_path_holds_another_lockspace_for_the_daemon() {
    let _g = serial();
    let s = Scratch::new("lsid-uuid");
    let ls = lockspace(&s);
    let mut a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    // The daemon sees another filesystem at the same path (a mount made in
    // its namespace only), initialised there as another lockspace.
    let script = format!(
        "mount -t tmpfs vmlease-other '{ls}' && '{cli}' --config '{conf}' init >/dev/null && exec \"$@\"",
        ls = ls.display(),
        cli = bin("vmlease").display(),
        conf = a.conf.display()
    );
    a.start_in_own_mount_ns(&script, &["sh"]);
    let q = standin_qemu();
    let e = lease_with(&a.cfg, &q)
        .expect_err("the plugin leased in a lockspace the daemon does not renew in");
    assert!(
        e.contains("not the same lockspace") && e.contains(&ls.display().to_string()),
        "{e}; daemon log:\n{}",
        a.log_text()
    );
    assert!(holders(&ls, &domain()).is_empty());
}

#[test]
fn init_refuses_a_local_directory_unless_the_config_allows_it() {
    let _g = serial();
    let s = Scratch::new("lsid-init");
    let shm = Path::new("/dev/shm").join(format!("vmlease-lsid-{}", std::process::id()));
    struct Rm<'a>(&'a Path);
    impl Drop for Rm<'_> {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(self.0);
        }
    }
    let _rm = Rm(&shm);
    for (dir, fs_name) in [(s.0.join("ls"), "ext4"), (shm.join("ls"), "tmpfs")] {
        fs::create_dir_all(dir.parent().unwrap()).unwrap();
        let conf = s.0.join("init.conf");
        fs::write(&conf, format!("lockspace_dir = \"{}\"\n", dir.display())).unwrap();
        let o = vmlease(&conf, &["init"]);
        assert_eq!(o.status.code(), Some(1), "init on {fs_name}: {}", text(&o));
        assert!(
            text(&o).contains("not on a shared filesystem")
                && text(&o).contains(fs_name)
                && text(&o).contains("allow_local_lockspace = true"),
            "{}",
            text(&o)
        );
        assert!(
            !dir.join("VMLEASE").exists(),
            "init created {}",
            dir.display()
        );

        fs::write(
            &conf,
            format!(
                "lockspace_dir = \"{}\"\nallow_local_lockspace = true\n",
                dir.display()
            ),
        )
        .unwrap();
        let o = vmlease(&conf, &["init"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(
            text(&o).contains("initialised lockspace")
                && text(&o).contains("allow_local_lockspace = true"),
            "{}",
            text(&o)
        );
        let o = vmlease(&conf, &["check-config"]);
        assert!(
            text(&o).contains("warning: allow_local_lockspace = true"),
            "{}",
            text(&o)
        );
    }
}

#[test]
fn daemon_refuses_a_local_lockspace_unless_allowed_and_says_so_loudly() {
    let _g = serial();
    let s = Scratch::new("lsid-local");
    let ls = lockspace(&s);
    let mut a = Host::new(
        &s,
        1,
        &ls,
        "unsafe_no_watchdog = true\nallow_local_lockspace = false\n",
    );
    a.spawn(&[]);
    let cfg = a.cfg.clone();
    let e = wait_until("the daemon to refuse the local lockspace", 10_000, || {
        match vmlease::status::protected_status(&cfg) {
            Err(e) if e.to_string().contains("not on a shared filesystem") => Ok(e.to_string()),
            other => Err(format!(
                "{:?}; log: {}",
                other.map(|_| "protected"),
                a.log_text()
            )),
        }
    });
    assert!(e.contains("waiting for lockspace mount"), "{e}");
    assert!(e.contains("allow_local_lockspace"), "{e}");
    // It keeps waiting: never joins, never protects. Two renew intervals
    // of more status rewrites prove it still waits.
    let first = a.status().written_ms;
    wait_until("two more status writes", 5_000, || {
        let st = a.status();
        if st.written_ms > first + 2 * R {
            Ok(())
        } else {
            Err(format!("written at {}", st.written_ms))
        }
    });
    assert!(!a.daemon.as_mut().unwrap().exited(), "{}", a.log_text());
    assert_eq!(a.status().last_renewal_ms, 0);
    assert!(matches!(
        Lockspace::open(&ls).unwrap().read_host(1).unwrap(),
        Slot::Empty
    ));
    let o = vmlease(&a.conf, &["status"]);
    assert!(
        text(&o).contains("waiting for lockspace mount"),
        "{}",
        text(&o)
    );
    assert!(
        a.log_text().contains("not on a shared filesystem"),
        "{}",
        a.log_text()
    );
    a.stop();

    // Allowed: it joins, and says loudly that the lockspace is local.
    let text0 = fs::read_to_string(&a.conf).unwrap();
    fs::write(
        &a.conf,
        text0.replace(
            "allow_local_lockspace = false",
            "allow_local_lockspace = true",
        ),
    )
    .unwrap();
    a.cfg = config::load(&a.conf).unwrap();
    a.start(&[]);
    let o = vmlease(&a.conf, &["status"]);
    assert!(
        text(&o).contains("WARNING:     local lockspace (allow_local_lockspace = true)"),
        "{}",
        text(&o)
    );
    let o = vmlease(&a.conf, &["--json", "status"]);
    let header = fs::read_to_string(ls.join("VMLEASE")).unwrap();
    let uuid = header
        .lines()
        .find_map(|l| l.strip_prefix("uuid="))
        .expect("a UUID in the header");
    for want in [
        "\"allow_local_lockspace\":true".to_string(),
        format!("\"lockspace_uuid\":\"{uuid}\""),
        "is on ext4".to_string(),
    ] {
        assert!(text(&o).contains(&want), "want {want}: {}", text(&o));
    }
    assert!(a.log_text().contains("LOCAL LOCKSPACE"), "{}", a.log_text());
}

#[test]
fn daemon_waits_for_the_lockspace_mount_then_protects() {
    let _g = serial();
    let s = Scratch::new("lsid-mount");
    let mnt = s.0.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let ls = mnt.join("vmlease");
    let mut a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    // systemd's notification socket, to see what the daemon tells it.
    let sock_path = s.0.join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let env = format!("NOTIFY_SOCKET={}", sock_path.display());
    a.spawn(&["env", &env, "unshare", "-m", "--propagation", "private"]);
    let cfg = a.cfg.clone();
    let mut said = Vec::new();
    let drain = |said: &mut Vec<String>| {
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            said.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    };
    let e = wait_until("the daemon to wait for the mount", 10_000, || {
        match vmlease::status::protected_status(&cfg) {
            Err(e) if e.to_string().contains("waiting for lockspace mount") => Ok(e.to_string()),
            other => Err(format!(
                "{:?}; log: {}",
                other.map(|_| "protected"),
                a.log_text()
            )),
        }
    });
    assert!(e.contains(&ls.display().to_string()), "{e}");
    let o = vmlease(&a.conf, &["status"]);
    assert!(
        text(&o).contains("waiting for lockspace mount"),
        "{}",
        text(&o)
    );
    drain(&mut said);
    assert!(
        said.iter()
            .any(|m| m.contains("STATUS=waiting for lockspace mount")),
        "{said:?}"
    );
    assert!(!a.daemon.as_mut().unwrap().exited(), "{}", a.log_text());

    // The mount appears (in the daemon's namespace), with a lockspace.
    let pid = a.daemon.as_ref().unwrap().pid().to_string();
    let mount = format!(
        "mount -t tmpfs vmlease-mnt '{}' && '{}' --config '{}' init",
        mnt.display(),
        bin("vmlease").display(),
        a.conf.display()
    );
    let o = Command::new("nsenter")
        .args(["-t", &pid, "-m", "sh", "-c", &mount])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let log = a.log.clone();
    wait_until("the daemon to protect once mounted", 10_000, || {
        vmlease::status::protected_status(&cfg)
            .map(|_| ())
            .map_err(|e| format!("{e}; log: {}", fs::read_to_string(&log).unwrap_or_default()))
    });
    // The test's own namespace never saw the mount: nothing was written
    // into the directory underneath.
    assert!(!ls.exists());
    drain(&mut said);
    assert!(
        said.iter().any(|m| m.contains("STATUS=joined lockspace")),
        "{said:?}"
    );
}
