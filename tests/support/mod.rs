//! Shared support for the integration tests.
#![allow(dead_code)]

pub mod ceph;
pub mod daemons;
pub mod etcd;
pub mod frozen;
pub mod libvirt;
pub mod lockabi;
pub mod netns;
pub mod rng;
pub mod util;
