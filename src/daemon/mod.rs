//! The per-host watchdog daemon (`vmlease-watchdog`).

/// Entry point of the `vmlease-watchdog` binary; returns the exit code.
pub fn main(_args: Vec<String>) -> i32 {
    eprintln!("vmlease-watchdog: not implemented yet");
    2
}
