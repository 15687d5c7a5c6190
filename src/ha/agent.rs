//! The local agent (every host): presence through an etcd lease kept
//! alive, the host record (state from the watchdog's status file, read as
//! the plugin reads it; capacity from libvirt), the HA-managed domains it
//! runs, and the starts the controller assigned to this host.
//!
//! VM records are written only while this host is protected: a host that
//! is fencing or cut off knows nothing its peers can trust, and the VMs
//! its fence killed must stay "running here" in etcd so that the
//! controller recovers them.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use super::definitions::{self, Definitions};
use super::error::{Error, Result};
use super::etcd::{Cmp, Etcd, Op};
use super::libvirt_reader::LibvirtReader;
use super::model::{self, HostRecord, RecState, Recovery, VmRecord, VmState};
use super::starts::{Finished, Report, Starts};
use super::virsh;
use crate::config::{Config, HaConfig};
use crate::status::Status;

/// How often at most the agent reads its host record back (when etcd
/// changed since), to write it again if something else changed it (a
/// corrupt value, a put without its lease).
const HOST_CHECK_MS: u128 = 5_000;

/// A step that reads and publishes the local state for this long or more
/// is logged (libvirt slow to answer: its steps, and a leader's decisions,
/// wait for it).
const SLOW_PUBLISH_MS: u128 = 300;

pub struct Agent {
    cfg: Config,
    ha: HaConfig,
    pub name: String,
    host_id: u16,
    /// The etcd lease of this host (0: none yet), and when it was last
    /// granted or kept alive.
    pub lease: i64,
    kept: Option<Instant>,
    last_host: Option<HostRecord>,
    /// When the host record was last read back, and whether etcd changed
    /// since.
    host_checked: Option<Instant>,
    etcd_changed: bool,
    published: BTreeMap<String, VmRecord>,
    /// Parsed definitions of running domains.
    defs: Definitions,
    /// Is this host protected now (from the last tick)?
    pub protected: bool,
    /// The starts assigned to this host under way or not reported yet, by
    /// UUID: the recovery record's key, its revision when read, the record.
    starting: BTreeMap<String, (String, i64, Recovery)>,
    starts: Starts,
    /// Finished starts not reported yet (etcd): reported next step.
    unreported: Vec<Finished>,
    /// Domain definitions read since start (the slow-step log line).
    defs_read: u64,
    /// Reads libvirt's running domains on a thread of its own.
    libvirt: Arc<LibvirtReader>,
}

impl Agent {
    pub fn new(cfg: Config, ha: HaConfig, libvirt: Arc<LibvirtReader>) -> Result<Agent> {
        let host_id = cfg
            .require_host_id()
            .map_err(|e| Error::Setup(e.to_string()))?;
        let name = cfg
            .host_name
            .clone()
            .unwrap_or_else(crate::process::hostname);
        Ok(Agent {
            cfg,
            ha,
            name,
            host_id,
            lease: 0,
            kept: None,
            last_host: None,
            host_checked: None,
            etcd_changed: false,
            published: BTreeMap::new(),
            defs: Definitions::default(),
            protected: false,
            starting: BTreeMap::new(),
            starts: Starts::default(),
            unreported: Vec::new(),
            defs_read: 0,
            libvirt,
        })
    }

    fn p(&self) -> &str {
        &self.ha.prefix
    }

    /// Keeps this host's etcd lease alive (a new one if it expired).
    pub fn presence(&mut self, etcd: &Etcd) -> Result<()> {
        if self.lease != 0 && etcd.keepalive(self.lease)? > 0 {
            self.kept = Some(Instant::now());
            return Ok(());
        }
        let ttl = self.ha.host_ttl.div_ceil(1000);
        self.lease = etcd.grant(ttl)?;
        self.kept = Some(Instant::now());
        log::info!(
            "vmlease-ha: etcd lease {:x} ({ttl} s) for host {}",
            self.lease,
            self.name
        );
        // Everything bound to the old lease is gone: publish again.
        self.last_host = None;
        Ok(())
    }

    /// Keeps the lease alive within a long step (many domains' definitions
    /// to read), when a quarter of its TTL passed since the last keepalive.
    fn keep_alive(&mut self, etcd: &Etcd) -> Result<()> {
        let due = self
            .kept
            .is_some_and(|t| t.elapsed().as_millis() >= u128::from(self.ha.host_ttl / 4));
        if self.lease != 0 && due {
            self.presence(etcd)?;
        }
        Ok(())
    }

    /// etcd changed (seen by a step that did not publish).
    pub fn saw_change(&mut self) {
        self.etcd_changed = true;
    }

    /// Publishes the host record and the HA domains, each only when it
    /// differs from what this agent last wrote. When etcd changed
    /// (`etcd_changed`, now or at an earlier call), reads the host record
    /// back, at most every 5 s, and writes it again if it is not this
    /// host's (a corrupt value, a put without its lease).
    pub fn publish(&mut self, etcd: &Etcd, etcd_changed: bool) -> Result<()> {
        let t0 = Instant::now();
        let defs = self.defs_read;
        let r = self.publish_now(etcd, etcd_changed);
        let ms = t0.elapsed().as_millis();
        if ms >= SLOW_PUBLISH_MS {
            log::info!(
                "vmlease-ha: the local state took {ms} ms to read and publish ({} definition(s) read)",
                self.defs_read - defs
            );
        }
        r
    }

    fn publish_now(&mut self, etcd: &Etcd, etcd_changed: bool) -> Result<()> {
        self.etcd_changed |= etcd_changed;
        let check = self.etcd_changed
            && self
                .host_checked
                .is_none_or(|t| t.elapsed().as_millis() >= HOST_CHECK_MS);
        let (protected, reason) = match crate::status::protected_status(&self.cfg) {
            Ok(_) => (true, String::new()),
            Err(e) => (false, e.to_string()),
        };
        let state = match Status::read(&self.cfg.state_dir) {
            Ok(Some(s)) => s.state.as_str().to_string(),
            _ => "no-watchdog".to_string(),
        };
        if protected != self.protected {
            log::warn!(
                "vmlease-ha: host {} is {}",
                self.name,
                if protected {
                    "protected".to_string()
                } else {
                    format!("not protected: {reason}")
                }
            );
        }
        self.protected = protected;
        // libvirt as its reader thread last saw it (libvirt_reader.rs).
        let reading = match self.libvirt.latest() {
            Ok(r) => r,
            Err(e) => {
                // Whether this host is protected is published all the
                // same, with the last size known: a host whose libvirt
                // does not answer (a storage cut can hang it) must not
                // stay "protected" in etcd while its lease is kept alive.
                if let Some(mut h) = self.last_host.clone() {
                    (h.state, h.protected, h.reason) = (state, protected, reason);
                    if self.last_host.as_ref() != Some(&h) {
                        etcd.put(
                            &model::host_key(self.p(), &self.name),
                            &to_json(&h),
                            self.lease,
                        )?;
                        self.last_host = Some(h);
                    }
                }
                return Err(e);
            }
        };
        let (running, (cpus, mem)) = (reading.running, reading.node);
        let host = HostRecord {
            name: self.name.clone(),
            host_id: self.host_id,
            state,
            protected,
            reason,
            mem_total_kib: mem,
            mem_used_kib: running.iter().map(|d| d.memory_kib).sum(),
            vcpus: cpus,
            vcpus_used: running.iter().map(|d| d.vcpus).sum(),
        };
        if let (true, Some(last)) = (check, &self.last_host) {
            self.host_checked = Some(Instant::now());
            self.etcd_changed = false;
            let key = model::host_key(self.p(), &self.name);
            let kv = etcd.get(&key)?;
            if !kv.is_some_and(|kv| kv.value == to_json(last) && kv.lease == self.lease) {
                log::warn!("vmlease-ha: {key} does not hold this host's record: writing it again");
                self.last_host = None;
            }
        }
        if self.last_host.as_ref() != Some(&host) {
            let key = model::host_key(self.p(), &self.name);
            etcd.put(&key, &to_json(&host), self.lease)?;
            self.last_host = Some(host);
        }
        if !protected {
            return Ok(());
        }

        let mut now_running = BTreeSet::new();
        // New domains' definitions, and the stalest few, are read now.
        let due = self.defs.due(&running);
        for d in &running {
            if due.contains(&d.name) {
                self.keep_alive(etcd)?;
                self.defs_read += 1;
                let def = definitions::read(&d.name);
                if let Err(e) = &def {
                    if !matches!(self.defs.get(&d.name), Some(Err(old)) if old == e) {
                        log::error!(
                            "vmlease-ha: domain '{}' is treated as unmanaged: {e}",
                            d.name
                        );
                    }
                }
                self.defs.insert(&d.name, def);
            }
            let Some(Ok((info, xml))) = self.defs.get(&d.name) else {
                continue;
            };
            let Some(pol) = info.policy else { continue };
            let rec = VmRecord {
                uuid: info.uuid.clone(),
                name: info.name.clone(),
                host: self.name.clone(),
                restart: pol.restart,
                priority: pol.priority,
                memory_kib: info.memory_kib,
                vcpus: info.vcpus,
                state: VmState::Running,
                xml: xml.clone(),
            };
            now_running.insert(rec.uuid.clone());
            if self.published.get(&rec.uuid) != Some(&rec) {
                etcd.put(&model::vm_key(self.p(), &rec.uuid), &to_json(&rec), 0)?;
                self.published.insert(rec.uuid.clone(), rec);
            }
        }
        // Stopped here while protected: an operator's (or the guest's)
        // stop, not a failure. Only if the record still names this host.
        let gone: Vec<String> = self
            .published
            .keys()
            .filter(|u| !now_running.contains(*u))
            .cloned()
            .collect();
        for uuid in gone {
            let mut rec = self.published.remove(&uuid).expect("listed");
            let key = model::vm_key(self.p(), &uuid);
            // A dead QEMU (libvirt: `shut off (crashed)`) is not a stop on
            // purpose: the VM monitor restarts it or marks it crashed. Nor
            // is a domain that runs again since the reading (restarted).
            if virsh::domstate_reason(&rec.name).is_some_and(|r| {
                super::vmwatch::reason_is_crash(&r)
                    || r.starts_with("running")
                    || r.starts_with("paused")
            }) {
                continue;
            }
            if let Some(kv) = etcd.get(&key)? {
                let cur: std::result::Result<VmRecord, _> = serde_json::from_slice(&kv.value);
                if cur.is_ok_and(|c| c.host == self.name && c.state == VmState::Running) {
                    rec.state = VmState::Stopped;
                    etcd.txn(
                        &format!("mark {key} stopped"),
                        &[Cmp::ModRevision(&key, kv.mod_revision)],
                        &[Op::Put {
                            key: &key,
                            value: &to_json(&rec),
                            lease: 0,
                        }],
                    )?;
                    log::info!(
                        "vmlease-ha: '{}' stopped on {}: not recovered",
                        rec.name,
                        self.name
                    );
                }
            }
        }
        Ok(())
    }

    /// Carries out the starts assigned to this host, each on a thread of
    /// its own (starts.rs: several at once, and the loop goes on
    /// meanwhile), at most `max_starts_per_host` at a time, and reports
    /// each one that finished since the last call.
    pub fn execute(&mut self, etcd: &Etcd) -> Result<()> {
        self.report(etcd)?;
        if !self.protected {
            return Ok(());
        }
        let prefix = format!("{}recovery/", self.p());
        for kv in etcd.list(&prefix)? {
            let Ok(r) = serde_json::from_slice::<Recovery>(&kv.value) else {
                continue; // the controller reports corrupt records
            };
            if r.state != RecState::Assigned
                || r.target.as_deref() != Some(&self.name)
                || self.starting.contains_key(&r.uuid)
            {
                continue;
            }
            if self.starting.len() >= self.ha.max_starts_per_host as usize {
                break;
            }
            log::info!(
                "vmlease-ha: starting '{}' (from {}), attempt {}",
                r.name,
                r.from,
                r.attempt
            );
            let key = model::vm_key(self.p(), &r.uuid);
            let report = reporter(etcd, &kv.key, kv.mod_revision, &r);
            match vm_record(etcd, &key) {
                Ok(vm) => self.starts.spawn(&r.uuid, &vm.name, &vm.xml, report),
                // Idempotent: a start carried out before a crash is not
                // repeated, even without the record.
                Err(_) if virsh::domstate(&r.name).as_deref() == Some("running") => {
                    self.starts.spawn(&r.uuid, &r.name, "", report)
                }
                Err(e) => {
                    let e = Err(e.to_string());
                    log_outcome(&r, &e);
                    self.unreported.push((r.uuid.clone(), e, false));
                }
            }
            self.starting
                .insert(r.uuid.clone(), (kv.key, kv.mod_revision, r));
        }
        self.report(etcd)
    }

    /// Starts under way here (or finished and not reported yet).
    pub fn starting(&self) -> bool {
        !self.starting.is_empty()
    }

    /// Has a start finished since the last step?
    pub fn start_finished(&self) -> bool {
        self.starts.finished()
    }

    /// Writes the reports of the finished starts that their threads could
    /// not write, and forgets the starts reported.
    fn report(&mut self, etcd: &Etcd) -> Result<()> {
        let mut todo = std::mem::take(&mut self.unreported);
        todo.extend(self.starts.collect());
        while let Some((uuid, res, reported)) = todo.pop() {
            let Some((key, rev, r)) = self.starting.get(&uuid).cloned() else {
                continue;
            };
            if !reported {
                if let Err(e) = send_report(etcd, &key, rev, &r, &res) {
                    // Reported at the next step.
                    todo.push((uuid, res, false));
                    self.unreported = todo;
                    return Err(e);
                }
            }
            self.starting.remove(&uuid);
        }
        Ok(())
    }
}

/// What a start's thread calls when its `virsh start` returned: logs the
/// outcome and reports it at once, through a clone of the loop's etcd
/// client (the loop's own may be in use); false when it could not (the
/// loop reports it then).
fn reporter(etcd: &Etcd, key: &str, rev: i64, r: &Recovery) -> Report {
    let (etcd, key, r) = (etcd.clone(), key.to_string(), r.clone());
    Box::new(move |res: &std::result::Result<(), String>| {
        log_outcome(&r, res);
        send_report(&etcd, &key, rev, &r, res).is_ok()
    })
}

/// The log line of a finished start (one per start: the bench and the
/// tests count them).
fn log_outcome(r: &Recovery, res: &std::result::Result<(), String>) {
    match res {
        Ok(()) => log::warn!(
            "vmlease-ha: started '{}' (from {}), attempt {}",
            r.name,
            r.from,
            r.attempt
        ),
        Err(e) => log::error!("vmlease-ha: could not start '{}': {e}", r.name),
    }
}

/// Reports a finished start: `started` or `start-failed`, in a
/// transaction on the revision of the record it was assigned with (a
/// record the controller changed meanwhile is left alone: a later
/// assignment finds the VM running and reports it started).
fn send_report(
    etcd: &Etcd,
    key: &str,
    rev: i64,
    r: &Recovery,
    res: &std::result::Result<(), String>,
) -> Result<bool> {
    let mut done = r.clone();
    match res {
        Ok(()) => done.state = RecState::Started,
        Err(e) => {
            done.state = RecState::StartFailed;
            done.last_error = e.clone();
        }
    }
    etcd.txn(
        &format!("report {key}"),
        &[Cmp::ModRevision(key, rev)],
        &[Op::Put {
            key,
            value: &to_json(&done),
            lease: 0,
        }],
    )
}

/// A VM's record, to take its definition from.
fn vm_record(etcd: &Etcd, key: &str) -> Result<VmRecord> {
    let kv = etcd.get(key)?.ok_or_else(|| Error::Corrupt {
        key: key.to_string(),
        reason: "no VM record to take the definition from".into(),
    })?;
    serde_json::from_slice(&kv.value).map_err(|e| Error::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

pub fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records always serialise")
}
