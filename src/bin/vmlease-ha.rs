//! `vmlease-ha`, the per-host recovery agent and controller candidate.
fn main() {
    std::process::exit(vmlease::ha::run::main(std::env::args().collect()));
}
