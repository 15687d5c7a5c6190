//! The guest heartbeat: `guest-ping` through `virsh qemu-agent-command`,
//! armed at the agent's first answer, `virsh reset` after the VM's timeout.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Ping, VmMonitor, PING_EVERY, SCAN_MS};
use crate::clock::boottime_ms;
use crate::ha::definitions;
use crate::ha::events::kind;
use crate::ha::virsh;
use crate::ha::vmwatch::{self, Heartbeat};

impl VmMonitor {
    /// `d` (re)boots or pauses: its heartbeat waits for the agent's next
    /// answer to a ping sent from now on.
    pub(super) fn disarm(&mut self, d: &str) {
        self.hb.restart(d, boottime_ms());
        if let Some(mut p) = self.pings.remove(d) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        self.answering.remove(d);
    }

    /// The guest heartbeats: which VMs, their pings, and the resets due.
    pub(super) fn heartbeats(&mut self) {
        let now = Instant::now();
        if self
            .scanned
            .is_none_or(|t| now.duration_since(t).as_millis() >= SCAN_MS)
        {
            self.scanned = Some(now);
            let mut watch = BTreeMap::new();
            if let Ok(reading) = self.libvirt.latest() {
                let due = self.defs.due(&reading.running);
                for d in reading.running {
                    if due.contains(&d.name) {
                        self.defs.insert(&d.name, definitions::read(&d.name));
                    }
                    let Some(Ok((info, xml))) = self.defs.get(&d.name).cloned() else {
                        continue;
                    };
                    if !super::restarts_always(&info) {
                        continue;
                    }
                    match vmwatch::heartbeat(&xml) {
                        Ok(Some(hb)) => {
                            self.uuids.insert(d.name.clone(), info.uuid);
                            watch.insert(d.name, hb);
                        }
                        Ok(None) => {}
                        Err(e) => log::error!("vmlease-ha: '{}': {e}; no heartbeat", d.name),
                    }
                }
            }
            self.hb.watch(&watch, boottime_ms());
            self.pings.retain(|n, _| watch.contains_key(n));
            self.silent.retain(|n| watch.contains_key(n));
            self.uuids.retain(|n, _| watch.contains_key(n));
            self.answering.retain(|n| watch.contains_key(n));
        }
        // Answers (or not) of the pings under way.
        let mut done = Vec::new();
        for (name, p) in &mut self.pings {
            let took = p.sent.elapsed().as_millis();
            match p.child.try_wait() {
                Ok(Some(st)) if st.success() => done.push((name.clone(), Ok(took))),
                Ok(Some(st)) => {
                    let mut why = String::new();
                    if let Some(mut e) = p.child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut why);
                    }
                    let why = why.trim().trim_start_matches("error: ").replace('\n', "; ");
                    done.push((name.clone(), Err(format!("{st}, after {took} ms: {why}"))));
                }
                Ok(None) if p.sent.elapsed() > p.limit => {
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                    done.push((name.clone(), Err(format!("no answer in {took} ms"))));
                }
                Ok(None) => {}
                Err(e) => done.push((name.clone(), Err(e.to_string()))),
            }
        }
        for (name, r) in done {
            self.pings.remove(&name);
            let was_silent = self.silent.contains(&name);
            match r {
                Ok(took) => {
                    self.hb.answered(&name, boottime_ms());
                    if self.silent.remove(&name) || !self.answering.contains(&name) {
                        log::info!(
                            "vmlease-ha: the guest agent of '{name}' answers (in {took} ms)"
                        );
                    }
                    self.answering.insert(name);
                }
                Err(why) if !was_silent => {
                    log::info!(
                        "vmlease-ha: the guest agent of '{name}' does not answer guest-ping: {why}"
                    );
                    self.silent.insert(name);
                }
                Err(_) => {}
            }
        }
        if self.hb.watched().next().is_none() || self.protected().is_err() {
            return;
        }
        let watched: Vec<(String, Heartbeat)> =
            self.hb.watched().map(|(n, h)| (n.clone(), h)).collect();
        for (name, hb) in watched {
            let recent = self
                .last_ping
                .get(&name)
                .is_some_and(|t| t.elapsed() < PING_EVERY);
            if self.pings.contains_key(&name) || recent {
                continue;
            }
            let secs = vmwatch::ping_timeout_s(hb);
            match virsh::spawn_guest_ping(&name, secs) {
                Ok(child) => {
                    self.last_ping.insert(name.clone(), Instant::now());
                    self.pings.insert(
                        name,
                        Ping {
                            child,
                            sent: Instant::now(),
                            limit: Duration::from_secs(secs + 2),
                        },
                    );
                }
                Err(e) => log::error!("vmlease-ha: {e}"),
            }
        }
        for (name, up) in self.hb.slow_boots(boottime_ms()) {
            log::info!(
                "vmlease-ha: the guest agent of '{name}' has not answered since its (re)start \
                 {up} ms ago; its heartbeat is armed at its first answer"
            );
        }
        for (name, silent) in self.hb.due(boottime_ms()) {
            let timeout = self
                .hb
                .watched()
                .find(|(n, _)| **n == name)
                .map(|(_, h)| h.timeout_ms)
                .unwrap_or(0);
            if let Some(mut p) = self.pings.remove(&name) {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
            self.answering.remove(&name);
            match virsh::reset(&name) {
                Ok(()) => {
                    let u = self.uuids.get(&name).cloned().unwrap_or_default();
                    self.event(
                        kind::VM_RESET,
                        &name,
                        &u,
                        format!(
                            "its guest agent has not answered guest-ping for {silent} ms \
                             (heartbeat timeout {timeout} ms): reset (same QEMU)"
                        ),
                    )
                }
                Err(e) => log::error!(
                    "vmlease-ha: the reset of '{name}' on {} after {silent} ms without \
                     heartbeat failed: {e}",
                    self.host
                ),
            }
        }
    }
}
