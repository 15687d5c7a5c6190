//! `vmlease-ha`, the per-host recovery agent and controller candidate.
#![forbid(unsafe_code)]
fn main() {
    std::process::exit(vmlease::ha::run::main(std::env::args().collect()));
}
