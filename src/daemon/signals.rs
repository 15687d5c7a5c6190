//! SIGTERM/SIGINT request a clean stop; the handler only sets a flag.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_sig: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn install() {
    // on_stop only stores to an atomic, which is async-signal-safe.
    crate::sys::signal::on_stop(on_stop);
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}
