//! `vmlease-watchdog`, the per-host daemon.
#![forbid(unsafe_code)]
fn main() {
    std::process::exit(vmlease::daemon::main(std::env::args().collect()));
}
