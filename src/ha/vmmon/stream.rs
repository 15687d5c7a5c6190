//! The `virsh event --loop --all` child: started (and restarted when
//! libvirtd drops the connection) and what each domain event means here.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use super::{Msg, VmMonitor, RECONNECT};
use crate::ha::etcd::Etcd;
use crate::ha::events::kind;
use crate::ha::virsh;
use crate::ha::vmwatch::{self, DomainEvent, EventKind, Meaning};

impl VmMonitor {
    /// Starts the `virsh event` child when there is none.
    pub(super) fn connect(&mut self) {
        if self.stream.is_some() || Instant::now() < self.next_connect {
            return;
        }
        self.next_connect = Instant::now() + RECONNECT;
        let child = Command::new("virsh")
            .args(["-q", "event", "--loop", "--all"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                log::error!("vmlease-ha: cannot run virsh event: {e}");
                return;
            }
        };
        self.generation += 1;
        let gen = self.generation;
        let out = child.stdout.take().expect("piped");
        let tx = self.tx.clone();
        let spawned = std::thread::Builder::new()
            .name("virsh-event".into())
            .spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(Msg::Line(line)).is_err() {
                        return;
                    }
                }
                let _ = tx.send(Msg::Eof(gen));
            });
        if let Err(e) = spawned {
            log::error!("vmlease-ha: cannot start the event reader: {e}");
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        if !self.quiet {
            log::info!("vmlease-ha: watching libvirt's domain events");
        }
        self.connected_at = Instant::now();
        self.stream = Some((child, gen));
    }

    pub(super) fn handle(&mut self, etcd: &Etcd, ev: DomainEvent) {
        let d = ev.domain.as_str();
        let (event, detail) = match &ev.kind {
            EventKind::Watchdog { action } => {
                let u = self.uuid_of(d);
                self.event(
                    kind::GUEST_FAILED,
                    d,
                    &u,
                    format!("its <watchdog> device fired; QEMU's action: {action}"),
                );
                return;
            }
            EventKind::Other { name, .. } => {
                if name == "reboot" {
                    // The guest reboots (by itself, or our reset): its
                    // agent is silent until it is up again.
                    self.disarm(d);
                }
                return;
            }
            EventKind::Lifecycle { event, detail } => (event.as_str(), detail.as_str()),
        };
        if event == "Suspended" || event == "Resumed" {
            // A paused guest cannot answer; after a resume it is armed
            // again at its first answer.
            self.disarm(d);
        }
        match vmwatch::meaning(event, detail) {
            Meaning::Nothing => {}
            Meaning::Started => {
                self.scanned = None;
                // Its definition may have changed while it was stopped.
                self.defs.forget(d);
                self.disarm(d);
                // A crash loop given up on ends when the VM is started
                // again. Its definition is read only when there is one:
                // a recovery starts many VMs, and a `virsh` call per start
                // on this loop delays the host's steps (issue 16).
                if !self.gave_up.is_empty() {
                    if let Some((info, _)) = self.managed(d) {
                        if self.gave_up.remove(&info.uuid) {
                            self.crashes.forget(&info.uuid);
                        }
                    }
                }
            }
            Meaning::GuestCrashed(why) => {
                if let Some((info, _)) = self.managed(d) {
                    self.event(
                        kind::GUEST_FAILED,
                        d,
                        &info.uuid,
                        format!("the guest crashed ({why}); its <on_crash> action follows"),
                    );
                }
            }
            Meaning::StoppedOnPurpose(why) => {
                self.scanned = None;
                if self.managed(d).is_some() {
                    log::warn!(
                        "vmlease-ha: '{d}' stopped on {} on purpose (libvirt: Stopped {why}): \
                         not restarted",
                        self.host
                    );
                }
            }
            Meaning::Crash | Meaning::CrashIfReasonSaysSo => {
                self.scanned = None;
                let reason = virsh::domstate_reason(d).unwrap_or_default();
                if matches!(
                    vmwatch::meaning(event, detail),
                    Meaning::CrashIfReasonSaysSo
                ) && !vmwatch::reason_is_crash(&reason)
                {
                    log::info!("vmlease-ha: '{d}' stopped ({reason}): not a crash");
                    return;
                }
                if let Some((info, xml)) = self.managed(d) {
                    self.crashed(etcd, &info, &xml, &format!("{event} {detail}, {reason}"));
                }
            }
        }
    }
}
