//! `vmlease-watchdog`, the per-host daemon.
fn main() {
    std::process::exit(vmlease::daemon::main(std::env::args().collect()));
}
