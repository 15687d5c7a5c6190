//! What lives in etcd (as JSON), and where: the records the agents publish
//! and the controller's recovery decisions.
//!
//! | key | written by | bound to | value |
//! |---|---|---|---|
//! | `P/hosts/NAME` | NAME's agent | NAME's etcd lease (presence) | [`HostRecord`] |
//! | `P/vms/UUID` | the agent of the host that runs it | nothing (survives its host) | [`VmRecord`] |
//! | `P/recovery/UUID` | the leader (decisions), the target's agent (results) | nothing | [`Recovery`] |
//! | `P/leader` | the leader | the leader's etcd lease | its host name |
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

use super::policy::Restart;

pub fn host_key(prefix: &str, name: &str) -> String {
    format!("{prefix}hosts/{name}")
}
pub fn vm_key(prefix: &str, uuid: &str) -> String {
    format!("{prefix}vms/{uuid}")
}
pub fn recovery_key(prefix: &str, uuid: &str) -> String {
    format!("{prefix}recovery/{uuid}")
}
pub fn leader_key(prefix: &str) -> String {
    format!("{prefix}leader")
}

/// A host as its agent publishes it (present while its agent lives).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    pub host_id: u16,
    /// The watchdog daemon's state (live, fencing, fenced-clean, ...), or
    /// "no-watchdog" when its status is missing.
    pub state: String,
    /// May this host take leases now (the plugin's own check)?
    pub protected: bool,
    /// Why not protected ("" when protected).
    pub reason: String,
    pub mem_total_kib: u64,
    /// Memory of the domains running on it.
    pub mem_used_kib: u64,
    pub vcpus: u32,
    pub vcpus_used: u32,
}

impl HostRecord {
    /// May the controller place VMs here?
    pub fn is_target(&self) -> bool {
        self.protected && self.state == "live"
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Runs on `host` (as far as that host's agent knew while protected).
    Running,
    /// Stopped on purpose on a protected host: not recovered.
    Stopped,
    /// Its QEMU died on `host` while that host was protected (libvirt's
    /// `shut off (crashed)`) and the restart there failed: the controller
    /// recovers it elsewhere (src/ha/vmwatch.rs).
    Crashed,
}

/// An HA-managed domain, as the agent of the host running it publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub uuid: String,
    pub name: String,
    pub host: String,
    pub restart: Restart,
    pub priority: i32,
    pub memory_kib: u64,
    pub vcpus: u32,
    pub state: VmState,
    /// The persistent definition (`virsh dumpxml --inactive`), to define it
    /// on the new host.
    pub xml: String,
}

/// Where a recovery stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum RecState {
    /// Needs a home; none has room now.
    Pending,
    /// `target` is to start it (written before the target acts).
    Assigned,
    /// The target reports that it started.
    Started,
    /// The target reports that the start failed (`last_error`).
    StartFailed,
    /// The attempt failed; the next one not before `retry_at_ms`.
    Failed { retry_at_ms: u64 },
    /// Out of attempts: left to the operator.
    RecoveryFailed,
}

/// The controller's decision for one VM of a failed host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovery {
    pub uuid: String,
    pub name: String,
    /// The failed host it ran on.
    pub from: String,
    #[serde(flatten)]
    pub state: RecState,
    /// Assignments made so far (the current one included).
    pub attempt: u32,
    pub target: Option<String>,
    /// Hosts tried, in order.
    pub tried: Vec<String>,
    /// Wall-clock ms of the last change (liveness timers only: a late or
    /// early clock delays or hurries a retry, never a takeover).
    pub since_ms: u64,
    pub last_error: String,
}
