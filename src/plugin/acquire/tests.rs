//! The acquire's decisions on a real lockspace and registry in a temp
//! directory, with a scripted host (status, processes).
use std::cell::Cell;

use super::*;
use crate::hosts::HostState;
use crate::lockspace::Lockspace;
use crate::registry::Registry;
use crate::status::StatusSource;
use std::sync::Arc;

struct Fake {
    dir: std::path::PathBuf,
    cfg: Config,
    ls: Lockspace,
    registry: Registry,
    status: Status,
    qemu: ProcId,
    ids: Cell<u64>,
}

impl Fake {
    fn new(name: &str) -> Fake {
        let dir = std::env::temp_dir().join(format!(
            "vmlease-plugin-{name}-{}",
            crate::process::random_u64()
        ));
        let lsdir = dir.join("ls");
        Lockspace::init(&lsdir, 4).unwrap();
        let ls = Lockspace::open(&lsdir).unwrap();
        let cfg = crate::config::parse(
            &format!(
                "host_id = 1\nlockspace_dir = \"{}\"\nstate_dir = \"{}\"\n",
                lsdir.display(),
                dir.join("state").display()
            ),
            "t",
        )
        .unwrap();
        let status = Status {
            daemon_pid: 7,
            host_id: 1,
            boot_id: "boot-1".into(),
            incarnation: 1,
            written_ms: 50_000,
            last_renewal_ms: 50_000,
            state: HostState::Live,
            reason: String::new(),
            unsafe_no_watchdog: false,
            lockspace_dir: lsdir.display().to_string(),
            lockspace_uuid: ls.uuid.clone().unwrap(),
            allow_local_lockspace: false,
            local_lockspace: String::new(),
            observing_since_ms: 0,
            renew_interval_ms: 200,
            renew_fail_timeout_ms: 1500,
            host_dead_timeout_ms: 4000,
            networks: vec![],
            peers: vec![],
        };
        Fake {
            registry: Registry::new(&cfg.state_dir),
            dir,
            cfg,
            ls,
            status,
            qemu: ProcId {
                pid: 4242,
                start: 9,
            },
            ids: Cell::new(1),
        }
    }

    fn manager(&self) -> Manager {
        let mut m = Manager {
            uuid: "c7a5fdbd-edaf-9455-926a-d65c16db1809".into(),
            name: "web".into(),
            pid: self.qemu.pid,
            ..Manager::default()
        };
        m.add_resource(&self.cfg, 0, "/images/a.qcow2", &[], 0)
            .unwrap();
        m.add_resource(&self.cfg, 0, "/images/b.qcow2", &[], 0)
            .unwrap();
        m
    }

    fn engine(&self, view: &Status) -> Engine {
        Engine {
            ls: self.ls.clone(),
            host_id: 1,
            boot_id: "boot-1".into(),
            dead_ms: 4000,
            trust_unsafe_peers: false,
            lock_timeout_ms: 500,
            view: Some(Arc::new(view.clone())),
            process_alive: Arc::new(|_| true),
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl StatusSource for Fake {
    fn boot_id(&self) -> Result<String> {
        Ok("boot-1".into())
    }
    fn read_status(&self, _: &std::path::Path) -> Result<Option<Status>> {
        Ok(Some(self.status.clone()))
    }
    fn daemon_alive(&self, pid: u32) -> bool {
        pid == 7
    }
    fn now_ms(&self) -> u64 {
        50_100
    }
}

impl Host for Fake {
    type Registry = Registry;
    fn registry(&self) -> &Registry {
        &self.registry
    }
    fn proc_id(&self, pid: u32) -> std::io::Result<ProcId> {
        if pid == self.qemu.pid {
            Ok(self.qemu)
        } else {
            Err(std::io::ErrorKind::NotFound.into())
        }
    }
    fn caller(&self) -> Result<ProcId> {
        Ok(ProcId { pid: 1, start: 1 })
    }
    fn intent_id(&self) -> u64 {
        self.ids.replace(self.ids.get() + 1)
    }
}

/// Runs every record's call as the I/O threads would, in key order.
fn run_calls(f: &Fake, op: &mut Acquire) {
    let eng = f.engine(&op.view);
    for (i, c) in op.calls.clone().iter().enumerate() {
        let r = run_record(&eng, &f.registry, &op.ends, c, &op.me, &Cancel::new());
        op.record_done(i, r);
    }
}

#[test]
fn a_part_failure_rolls_back_what_the_call_took_and_reports_the_first_error() {
    let f = Fake::new("rollback");
    let m = f.manager();
    // b's record is damaged: never free.
    let b = Resource::disk("/images/b.qcow2", false);
    std::fs::write(f.ls.lease_path(&b.key()), b"damaged").unwrap();
    let mut op = Acquire::begin(&f, &f.cfg, &m, None).unwrap();
    // The domain lease and both disks, sorted by key.
    assert_eq!(op.calls.len(), 3);
    let keys: Vec<String> = op.calls.iter().map(|c| c.resource.key()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    op.opened(&f, &f.ls).unwrap();
    let e = f.registry.read(f.qemu).unwrap().unwrap();
    assert_eq!(e.acquiring.len(), 3, "{e:?}");
    run_calls(&f, &mut op);
    assert_eq!(op.waiting(), 0);
    let rb = op.finish(&f).unwrap_err();
    assert!(matches!(rb.error, Error::Corrupt { .. }), "{}", rb.error);
    let mut newly: Vec<String> = rb.newly.iter().map(|r| r.key()).collect();
    newly.sort();
    let mut want: Vec<String> = keys.into_iter().filter(|k| *k != b.key()).collect();
    want.sort();
    assert_eq!(newly, want);
    // Every intent ended; the two records taken are noted.
    let e = f.registry.read(f.qemu).unwrap().unwrap();
    assert!(e.acquiring.is_empty(), "{e:?}");
    assert_eq!(e.acquired.len(), 2, "{e:?}");
}

#[test]
fn every_record_taken_clears_the_release_state() {
    let f = Fake::new("ok");
    let m = f.manager();
    let mut op = Acquire::begin(&f, &f.cfg, &m, None).unwrap();
    op.opened(&f, &f.ls).unwrap();
    f.registry.set_released(f.qemu, &[("x".into(), 3)]).unwrap();
    run_calls(&f, &mut op);
    op.finish(&f).unwrap();
    let e = f.registry.read(f.qemu).unwrap().unwrap();
    assert!(e.released.is_empty() && e.acquiring.is_empty(), "{e:?}");
    assert_eq!(e.acquired.len(), 3, "{e:?}");
    assert!(e.acquired.iter().all(|(_, v)| *v == 1), "{e:?}");
}

#[test]
fn another_lockspace_than_the_daemons_is_refused_before_any_intent() {
    let mut f = Fake::new("otherls");
    f.status.lockspace_uuid = "0b7c5a9e-7f6e-4b1a-9d2c-3e4f5a6b7c8d".into();
    let m = f.manager();
    let mut op = Acquire::begin(&f, &f.cfg, &m, None).unwrap();
    let e = op.opened(&f, &f.ls).unwrap_err();
    assert!(matches!(e, Error::Unprotected(_)), "{e}");
    assert!(e.to_string().contains("not the same lockspace"), "{e}");
    let entry = f.registry.read(f.qemu).unwrap();
    assert!(entry.is_none(), "{entry:?}");
}

#[test]
fn a_handover_state_sets_the_version_each_record_requires() {
    let f = Fake::new("state");
    let m = f.manager();
    let a = Resource::disk("/images/a.qcow2", false);
    let mut st = LockState::default();
    st.versions.insert(a.key(), 5);
    let op = Acquire::begin(&f, &f.cfg, &m, Some(&st.encode())).unwrap();
    for c in &op.calls {
        let want = (c.resource.key() == a.key()).then_some(5);
        assert_eq!(c.want, want, "{}", c.resource);
    }
    assert!(Acquire::begin(&f, &f.cfg, &m, Some("garbage")).is_err());
}

#[test]
fn intents_end_in_one_write_and_a_call_still_running_ends_its_own() {
    let f = Fake::new("ends");
    let m = f.manager();
    let mut op = Acquire::begin(&f, &f.cfg, &m, None).unwrap();
    op.opened(&f, &f.ls).unwrap();
    let eng = f.engine(&op.view);
    let calls = op.calls.clone();
    let (last, first) = calls.split_last().unwrap();
    for (i, c) in first.iter().enumerate() {
        let r = run_record(&eng, &f.registry, &op.ends, c, &op.me, &Cancel::new());
        op.record_done(i, r);
    }
    // Handed to the waiting caller, not written yet.
    let e = f.registry.read(f.qemu).unwrap().unwrap();
    assert_eq!(e.acquiring.len(), calls.len(), "{e:?}");
    // The caller gives up on the last call at its deadline.
    let timeout = Error::Timeout {
        op: "acquire lease",
        path: "/x".into(),
        after_ms: 1,
    };
    op.record_done(calls.len() - 1, Err(timeout));
    let me = op.me.clone();
    let ends = op.ends.clone();
    let rb = op.finish(&f).unwrap_err();
    assert_eq!(rb.newly.len(), calls.len() - 1);
    // One write ended the others; the call still running keeps its intent.
    let e = f.registry.read(f.qemu).unwrap().unwrap();
    assert_eq!(
        e.acquiring.iter().map(|i| i.id).collect::<Vec<_>>(),
        vec![last.intent],
        "{e:?}"
    );
    assert_eq!(e.acquired.len(), calls.len() - 1, "{e:?}");
    // It runs late, abandoned: writes nothing, then ends its own intent.
    let cancel = Cancel::new();
    cancel.abandon();
    let r = run_record(&eng, &f.registry, &ends, last, &me, &cancel);
    assert!(r.is_err());
    let e = f.registry.read(f.qemu).unwrap().unwrap();
    assert!(e.acquiring.is_empty(), "{e:?}");
    assert_eq!(e.acquired.len(), calls.len() - 1, "{e:?}");
}
