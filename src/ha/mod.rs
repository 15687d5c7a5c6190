//! Recovery (`vmlease-ha`): each host's agent publishes its state, capacity
//! and HA-managed domains to etcd and carries out the starts assigned to
//! it; one elected controller restarts a failed host's HA VMs elsewhere,
//! once the lockspace says their leases may be taken (the verdict of
//! `vmlease can-evacuate`, from the same code). See docs/ha.md.
//!
//! The decisions (`decide`), the records (`model`) and the domain policy
//! (`policy`) are pure and always built. The I/O - etcd's JSON gateway,
//! virsh, the loops - needs the `ha` cargo feature; the fence path
//! (vmlease-watchdog, vmlease.so) never calls into it.
#![forbid(unsafe_code)]

pub mod decide;
pub mod events;
pub mod maintenance;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod schedule;
pub mod storage_fence;
pub mod vmwatch;

#[cfg(feature = "ha")]
pub mod agent;
#[cfg(feature = "ha")]
pub mod controller;
#[cfg(feature = "ha")]
pub mod definitions;
#[cfg(feature = "ha")]
pub mod error;
#[cfg(feature = "ha")]
pub mod etcd;
#[cfg(feature = "ha")]
pub mod event_store;
#[cfg(feature = "ha")]
pub mod hooks;
#[cfg(feature = "ha")]
pub mod libvirt_reader;
#[cfg(feature = "ha")]
pub mod maintenance_agent;
#[cfg(feature = "ha")]
pub mod metrics_http;
#[cfg(feature = "ha")]
pub mod run;
#[cfg(feature = "ha")]
pub mod starts;
#[cfg(feature = "ha")]
pub mod virsh;
#[cfg(feature = "ha")]
pub mod vmmon;
#[cfg(feature = "ha")]
pub mod watch;

/// Locks `m` even if a thread panicked while holding it: what the ha
/// threads share (the finished starts, libvirt's latest reading) is
/// replaced or appended whole, never left half-written.
#[cfg(feature = "ha")]
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
