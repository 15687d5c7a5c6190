//! Shared support for the integration tests: real processes tracked by pid,
//! bounded polling, and the multi-host libvirt and Ceph harnesses.
#![allow(dead_code)]

pub mod ceph;
pub mod libvirt;
pub mod util;
