//! vmlease: split-brain protection and self-fencing for libvirt/KVM hosts
//! on shared storage.
//!
//! The crate is one library with three faces: the lock-driver plugin that
//! libvirtd `dlopen`s (`ffi`, a thin shell over `plugin`), the per-host
//! watchdog daemon (`daemon`) and the command-line tool (`cli`, `hook`).
//! Everything that decides - the lease protocol, the takeover rules, the
//! timing inequality, the fence policy - lives in safe Rust modules that
//! tests drive with a fake clock and a temporary lockspace.
//!
//! `unsafe` lives in three places: the C ABI boundary (`ffi`), the system
//! calls (`sys`), and librados's dlopen'ed functions (`rados::sys`); the
//! lint below refuses it anywhere else.
#![deny(unsafe_code)]

pub mod checksum;
pub mod clock;
pub mod codec;
pub mod collision;
pub mod config;
pub mod deadline;
pub mod detach;
pub mod error;
pub mod ha;
pub mod hosts;
pub mod journal;
pub mod lease;
pub mod lockspace;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod rados;
pub mod registry;
pub mod resource;
pub mod sha256;
pub mod sharedfs;
pub mod state_string;
pub mod status;
pub mod storage_fence;
pub mod store;
pub mod takeover;

pub mod cli;
pub mod daemon;
pub mod engine;
pub mod hook;
pub mod plugin;

mod ffi;
mod sys;

pub use error::{Error, Result};
