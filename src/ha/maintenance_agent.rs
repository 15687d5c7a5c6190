//! The agent's part of maintenance (every host, every step):
//!
//! - publishes `P/reach/NAME` (bound to the host's etcd lease): the libvirt
//!   URI and migration address other hosts migrate to;
//! - while `P/maintenance/NAME` exists, keeps `STATE_DIR/maintenance`, the
//!   file that makes the local watchdog daemon disarm its network-policy
//!   fences, and marks the record `disarmed` once the daemon's status
//!   shows it (or no network has policy "fence"); removes the file when
//!   the record goes;
//! - carries out the drain migrations the leader assigned from this host:
//!   `virsh migrate --live --persistent` as a child process (the loop never
//!   waits for it), its progress from `virsh domjobinfo`, the result in
//!   the record (a transaction on its revision).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use super::agent::to_json;
use super::error::Result;
use super::etcd::{Cmp, Etcd, Op};
use super::maintenance::{maintenance_key, migration_key, reach_key, MigState, Migration, Reach};
use crate::config::{Config, HaConfig, Policy};
use crate::daemon::{DISARMED_NOTE, MAINTENANCE_MARKER};
use crate::status::Status;

struct Running {
    child: Child,
    out: std::path::PathBuf,
    started: Instant,
}

pub struct MaintenanceAgent {
    cfg: Config,
    ha: HaConfig,
    name: String,
    reach_lease: i64,
    running: BTreeMap<String, Running>,
    /// In maintenance, and the watchdog daemon has not disarmed yet (its
    /// status file is watched at every step meanwhile).
    disarming: bool,
}

impl MaintenanceAgent {
    pub fn new(cfg: Config, ha: HaConfig, name: String) -> MaintenanceAgent {
        MaintenanceAgent {
            cfg,
            ha,
            name,
            reach_lease: 0,
            running: BTreeMap::new(),
            disarming: false,
        }
    }

    /// Must it step every `interval` (not only when etcd changes)? While
    /// a migration runs here or the daemon has yet to disarm.
    pub fn busy(&self) -> bool {
        !self.running.is_empty() || self.disarming
    }

    /// One step. `poll`: also look at the migrations running here (their
    /// `virsh` child, `virsh domjobinfo`): the loop asks for it every
    /// `interval`, not at a step woken early by a change in etcd (a
    /// progress report is one, and must not make the next).
    pub fn step(&mut self, etcd: &Etcd, lease: i64, protected: bool, poll: bool) -> Result<()> {
        if lease != self.reach_lease {
            let r = Reach {
                host: self.name.clone(),
                uri: self
                    .ha
                    .migration_uri
                    .clone()
                    .unwrap_or_else(|| format!("qemu+ssh://{}/system", self.name)),
                address: self.ha.migration_address.clone().unwrap_or_default(),
            };
            etcd.put(&reach_key(&self.ha.prefix, &self.name), &to_json(&r), lease)?;
            self.reach_lease = lease;
        }
        self.marker(etcd)?;
        self.migrations(etcd, protected, poll)
    }

    fn marker(&mut self, etcd: &Etcd) -> Result<()> {
        self.disarming = false;
        let key = maintenance_key(&self.ha.prefix, &self.name);
        let path = self.cfg.state_dir.join(MAINTENANCE_MARKER);
        let Some(kv) = etcd.get(&key)? else {
            if path.exists() {
                match std::fs::remove_file(&path) {
                    Ok(()) => log::warn!(
                        "vmlease-ha: {} left maintenance: network-policy fences armed again",
                        self.name
                    ),
                    Err(e) => log::error!("vmlease-ha: remove {}: {e}", path.display()),
                }
            }
            return Ok(());
        };
        if !path.exists() {
            if let Err(e) = std::fs::write(&path, b"vmlease-ha: this host is in maintenance\n") {
                log::error!("vmlease-ha: write {}: {e}", path.display());
                return Ok(());
            }
            log::warn!(
                "vmlease-ha: {} is in maintenance: asked the watchdog daemon to disarm its network-policy fences",
                self.name
            );
        }
        let Ok(mut m) = serde_json::from_slice::<super::maintenance::Maintenance>(&kv.value) else {
            return Ok(()); // the controller reports corrupt records
        };
        if m.disarmed {
            return Ok(());
        }
        if !self.disarmed() {
            self.disarming = true;
            return Ok(());
        }
        m.disarmed = true;
        etcd.txn(
            &format!("mark {key} disarmed"),
            &[Cmp::ModRevision(&key, kv.mod_revision)],
            &[Op::Put {
                key: &key,
                value: &to_json(&m),
                lease: 0,
            }],
        )?;
        Ok(())
    }

    /// Does the daemon's status show every fencing network disarmed?
    fn disarmed(&self) -> bool {
        let need: Vec<&str> = [
            ("management", self.cfg.management.policy),
            ("service", self.cfg.service.policy),
        ]
        .into_iter()
        .filter(|(_, p)| *p == Policy::Fence)
        .map(|(n, _)| n)
        .collect();
        if need.is_empty() {
            return true;
        }
        let Ok(Some(st)) = Status::read(&self.cfg.state_dir) else {
            return false;
        };
        need.iter().all(|n| {
            st.networks
                .iter()
                .any(|v| v.name == *n && v.detail.ends_with(DISARMED_NOTE))
        })
    }

    fn migrations(&mut self, etcd: &Etcd, protected: bool, poll: bool) -> Result<()> {
        let prefix = format!("{}migration/", self.ha.prefix);
        let kvs = etcd.list(&prefix)?;
        let reaches: BTreeMap<String, Reach> = etcd
            .list(&format!("{}reach/", self.ha.prefix))?
            .iter()
            .filter_map(|kv| serde_json::from_slice::<Reach>(&kv.value).ok())
            .map(|r| (r.host.clone(), r))
            .collect();
        for kv in kvs {
            let Ok(m) = serde_json::from_slice::<Migration>(&kv.value) else {
                continue;
            };
            if m.from != self.name {
                continue;
            }
            let write = |n: &Migration| {
                etcd.txn(
                    &format!("report {}", kv.key),
                    &[Cmp::ModRevision(&kv.key, kv.mod_revision)],
                    &[Op::Put {
                        key: &kv.key,
                        value: &to_json(n),
                        lease: 0,
                    }],
                )
            };
            let mut n = m.clone();
            match (&m.state, self.running.get_mut(&m.uuid)) {
                (MigState::Assigned, None) if protected => {
                    let Some(reach) = reaches.get(&m.target) else {
                        n.state = MigState::MigrateFailed;
                        n.last_error = format!("{} publishes no migration URI", m.target);
                        write(&n)?;
                        continue;
                    };
                    n.state = MigState::Migrating;
                    if !write(&n)? {
                        continue; // changed meanwhile (cancelled)
                    }
                    match self.spawn(&m, reach) {
                        Ok(r) => {
                            log::warn!(
                                "vmlease-ha: live-migrating '{}' to {} ({}), attempt {}",
                                m.name,
                                m.target,
                                reach.uri,
                                m.attempt
                            );
                            self.running.insert(m.uuid.clone(), r);
                        }
                        Err(e) => {
                            let mut f = n.clone();
                            f.state = MigState::MigrateFailed;
                            f.last_error = format!("cannot run virsh migrate: {e}");
                            let key = migration_key(&self.ha.prefix, &m.uuid);
                            if let Some(cur) = etcd.get(&key)? {
                                etcd.txn(
                                    "report",
                                    &[Cmp::ModRevision(&key, cur.mod_revision)],
                                    &[Op::Put {
                                        key: &key,
                                        value: &to_json(&f),
                                        lease: 0,
                                    }],
                                )?;
                            }
                        }
                    }
                }
                (MigState::Migrating, Some(_)) if !poll => {}
                (MigState::Migrating, Some(r)) => match r.child.try_wait() {
                    Ok(None) => {
                        let p = super::virsh::job_progress(&m.name);
                        if !p.is_empty() && p != m.progress {
                            n.progress = p;
                            write(&n)?;
                        }
                    }
                    done => {
                        let ok = matches!(done, Ok(Some(s)) if s.success());
                        let text = std::fs::read_to_string(&r.out).unwrap_or_default();
                        let _ = std::fs::remove_file(&r.out);
                        let took = r.started.elapsed().as_millis();
                        self.running.remove(&m.uuid);
                        if ok {
                            n.state = MigState::Migrated;
                            n.progress = format!("done in {took} ms");
                            log::warn!(
                                "vmlease-ha: migrated '{}' to {} in {took} ms",
                                m.name,
                                m.target
                            );
                        } else {
                            n.state = MigState::MigrateFailed;
                            n.last_error = text
                                .lines()
                                .filter(|l| !l.trim().is_empty() && !l.starts_with("Migration:"))
                                .collect::<Vec<_>>()
                                .join(" ");
                            log::error!(
                                "vmlease-ha: migration of '{}' to {} failed: {}",
                                m.name,
                                m.target,
                                n.last_error
                            );
                        }
                        write(&n)?;
                    }
                },
                (MigState::Migrating, None) => {
                    // Not ours any more (vmlease-ha restarted mid-way).
                    let here = super::virsh::domstate(&m.name).as_deref() == Some("running");
                    if here {
                        n.state = MigState::MigrateFailed;
                        n.last_error = "vmlease-ha restarted during the migration".into();
                    } else {
                        n.state = MigState::Migrated;
                    }
                    write(&n)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn spawn(&self, m: &Migration, reach: &Reach) -> std::io::Result<Running> {
        let out = std::env::temp_dir().join(format!(
            "vmlease-ha-migrate-{}-{}.out",
            std::process::id(),
            m.uuid
        ));
        let f = std::fs::File::create(&out)?;
        let mut c = Command::new("virsh");
        c.args(["-q", "migrate", "--live", "--persistent"])
            .args(&self.ha.migration_options)
            .args(["--", &m.name, &reach.uri]);
        if !reach.address.is_empty() {
            c.arg(format!("tcp://{}", reach.address));
        }
        c.stdin(Stdio::null()).stdout(f.try_clone()?).stderr(f);
        Ok(Running {
            child: c.spawn()?,
            out,
            started: Instant::now(),
        })
    }
}
