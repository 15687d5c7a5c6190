//! A crashed HA VM: restarted here at once, or its record marked
//! `crashed` for the controller; a crash loop gives up (vmwatch.rs decides).

use std::time::Instant;

use super::VmMonitor;
use crate::clock::boottime_ms;
use crate::ha::agent::to_json;
use crate::ha::controller::wall_ms;
use crate::ha::error::Result;
use crate::ha::etcd::{Cmp, Etcd, Op};
use crate::ha::events::kind;
use crate::ha::model::{self, RecState, Recovery, VmRecord, VmState};
use crate::ha::policy::{DomainInfo, Restart};
use crate::ha::virsh;
use crate::ha::vmwatch::{CrashLimits, CrashStep};

impl VmMonitor {
    /// An HA VM's QEMU died on this host.
    pub(super) fn crashed(&mut self, etcd: &Etcd, info: &DomainInfo, xml: &str, how: &str) {
        let (name, host) = (info.name.as_str(), self.host.clone());
        if let Err(why) = self.protected() {
            log::warn!(
                "vmlease-ha: '{name}' died on {host} ({how}) while the host is not \
                 protected ({why}): left to the host recovery"
            );
            return;
        }
        let lim = CrashLimits {
            max_restarts: self.ha.crash_restarts,
            window_ms: self.ha.crash_window,
        };
        let window = crate::config::secs(lim.window_ms);
        match self.crashes.on_crash(&info.uuid, boottime_ms(), lim) {
            CrashStep::Restart { n } => {
                self.event(
                    kind::VM_CRASHED,
                    name,
                    &info.uuid,
                    format!(
                        "its QEMU died (libvirt: {how}): restarting it here, restart {n} of at \
                         most {} in {window}",
                        lim.max_restarts
                    ),
                );
                let t0 = Instant::now();
                match virsh::start(name) {
                    Ok(()) => self.event(
                        kind::VM_RESTARTED,
                        name,
                        &info.uuid,
                        format!(
                            "running again here {} ms after its QEMU died",
                            t0.elapsed().as_millis()
                        ),
                    ),
                    Err(e) => {
                        // The controller's attempt-failed event follows.
                        log::error!(
                            "vmlease-ha: the restart of '{name}' on {host} failed: {e}; \
                             recovering it elsewhere"
                        );
                        if let Err(e) = self.mark_crashed(etcd, info, xml) {
                            log::error!("vmlease-ha: {e}");
                        }
                    }
                }
            }
            CrashStep::GiveUp { n } => {
                self.gave_up.insert(info.uuid.clone());
                let why = format!(
                    "crash loop: its QEMU died again on {host} after {n} restart(s) within {window}"
                );
                self.event(
                    kind::RECOVERY_FAILED,
                    name,
                    &info.uuid,
                    format!("{why}; left to the operator"),
                );
                let r = Recovery {
                    uuid: info.uuid.clone(),
                    name: name.to_string(),
                    from: host.clone(),
                    state: RecState::RecoveryFailed,
                    attempt: n,
                    target: None,
                    tried: vec![host],
                    since_ms: wall_ms(),
                    last_error: why,
                };
                let key = model::recovery_key(&self.ha.prefix, &info.uuid);
                let written = etcd
                    .txn(
                        &format!("write {key}"),
                        &[Cmp::Absent(&key)],
                        &[Op::Put {
                            key: &key,
                            value: &to_json(&r),
                            lease: 0,
                        }],
                    )
                    .and_then(|_| self.mark_crashed(etcd, info, xml));
                if let Err(e) = written {
                    log::error!("vmlease-ha: {e}");
                }
            }
        }
    }

    /// Its record says `crashed` on this host: the controller takes over.
    fn mark_crashed(&self, etcd: &Etcd, info: &DomainInfo, xml: &str) -> Result<()> {
        let key = model::vm_key(&self.ha.prefix, &info.uuid);
        let cur = etcd.get(&key)?;
        let rev = cur.as_ref().map(|kv| kv.mod_revision);
        let mut rec = cur
            .and_then(|kv| serde_json::from_slice::<VmRecord>(&kv.value).ok())
            .unwrap_or_else(|| VmRecord {
                uuid: info.uuid.clone(),
                name: info.name.clone(),
                host: self.host.clone(),
                restart: Restart::Always,
                priority: info.policy.map(|p| p.priority).unwrap_or(0),
                memory_kib: info.memory_kib,
                vcpus: info.vcpus,
                state: VmState::Running,
                xml: xml.to_string(),
            });
        if rec.host != self.host {
            return Ok(()); // it runs elsewhere by now
        }
        rec.state = VmState::Crashed;
        let cmp = match rev {
            Some(r) => Cmp::ModRevision(&key, r),
            None => Cmp::Absent(&key),
        };
        etcd.txn(
            &format!("mark {key} crashed"),
            &[cmp],
            &[Op::Put {
                key: &key,
                value: &to_json(&rec),
                lease: 0,
            }],
        )?;
        Ok(())
    }
}
