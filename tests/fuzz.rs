//! Property-based fuzzing of every decoder of data that vmlease did not
//! write itself in this process: lease records and host slots (other
//! hosts, shared storage), the lock state string (libvirt, the migration
//! source), registry entries and the daemon status (local files), the
//! hook's domain XML (libvirt), the config (the operator), whatever
//! `vmlease dump FILE` is pointed at, and the plugin's C ABI (libvirtd).
//!
//! Inputs are random bytes and structured mutations of valid encodings
//! (tests/fuzz/mutate.rs). Every target checks: no panic, bounded time
//! and memory per case, damage decodes to exactly the original or is an
//! error, valid values round-trip. docs/fuzzing.md has the list.
//!
//! `cargo test --test fuzz` runs a CI-sized number of cases per target;
//! `PROPTEST_CASES=N` sets the number for every target (bench/fuzz-long).
//! A failure is shrunk and saved in tests/fuzz/regressions/TARGET.txt,
//! which every later run replays first.

mod support;

#[path = "fuzz/abi.rs"]
mod abi;
#[path = "fuzz/alloc.rs"]
mod alloc;
#[path = "fuzz/codec.rs"]
mod codec;
#[path = "fuzz/config.rs"]
mod config;
#[path = "fuzz/dump.rs"]
mod dump;
#[path = "fuzz/engine.rs"]
mod engine;
#[path = "fuzz/hook_xml.rs"]
mod hook_xml;
#[path = "fuzz/hosts.rs"]
mod hosts;
#[path = "fuzz/lease.rs"]
mod lease;
#[path = "fuzz/mutate.rs"]
mod mutate;
#[path = "fuzz/registry.rs"]
mod registry;
#[path = "fuzz/regressions.rs"]
mod regressions;
#[path = "fuzz/runner.rs"]
mod runner;
#[path = "fuzz/state_string.rs"]
mod state_string;
#[path = "fuzz/status.rs"]
mod status;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;
