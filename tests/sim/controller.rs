//! The HA controller and the operator around the cluster.
//!
//! The controller is deliberately aggressive: whenever it cannot see a VM
//! running on a host it can reach, it starts it on another reachable host,
//! including while the VM runs on a host it cannot reach, or is paused.
//! It relies on vmlease alone to refuse what is unsafe. After the faults
//! heal it also resumes paused VMs (or destroys those whose resume
//! failed). The operator clears fences now and then, as
//! `vmlease clear-fence` does (the fence itself decides whether it may).

use vmlease::hosts::HostState;

use crate::libvirt::{Kind, QState};
use crate::params::MS;
use crate::world::{Ev, World};

impl World {
    pub fn controller(&mut self) {
        let healing = self.now >= self.heal;
        for vm in 0..self.vms.len() {
            if self.vms[vm].busy.is_some() {
                continue;
            }
            let in_progress = self
                .ops
                .values()
                .any(|o| o.vm == vm && !matches!(o.kind, Kind::Pause { .. }));
            if in_progress {
                continue;
            }
            let mut running = false;
            let mut paused = None;
            for q in self.qemus.iter().filter(|q| q.vm == vm && q.alive()) {
                if !self.reachable(q.host) {
                    continue;
                }
                match q.state {
                    QState::Running => running = true,
                    QState::Paused => paused = Some(q.id),
                    _ => {}
                }
            }
            if running {
                continue;
            }
            let pausing = self
                .ops
                .values()
                .any(|o| o.vm == vm && matches!(o.kind, Kind::Pause { .. }));
            if healing && !pausing {
                if let Some(q) = paused {
                    if self.qemus[q].resume_failed {
                        let h = self.qemus[q].host;
                        self.log(
                            &format!("h{h}"),
                            format!("virsh destroy vm{vm} (cannot resume)"),
                        );
                        self.kill_qemu(q);
                    } else {
                        self.resume_vm(q);
                    }
                    continue;
                }
            }
            let cands: Vec<u16> = (1..=self.p.hosts)
                .filter(|&h| self.reachable(h) && !self.host(h).domains.contains_key(&vm))
                .collect();
            if cands.is_empty() {
                continue;
            }
            let h = *self.rng.pick(&cands);
            self.start_vm(vm, h, true);
        }
        let d = self
            .rng
            .range(self.p.controller_ms / 2, self.p.controller_ms * 3 / 2)
            * MS;
        self.after(d, Ev::Controller);
    }

    pub fn operator(&mut self) {
        for h in 1..=self.p.hosts {
            if !self.reachable(h) {
                continue;
            }
            let fenced = matches!(
                self.host(h).status.as_ref().map(|s| s.state),
                Some(HostState::FencedClean)
            );
            if fenced && self.rng.chance(0.5) {
                self.log(&format!("h{h}"), "operator: vmlease clear-fence".into());
                self.host_mut(h).clear_request = true;
            }
        }
        let d = self.p.operator_ms * MS;
        self.after(d, Ev::Operator);
    }
}
