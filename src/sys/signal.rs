//! Signal dispositions of the daemon.
#![allow(unsafe_code)]

use nix::sys::signal::{signal, SigHandler, Signal};

/// `handler` for SIGTERM and SIGINT; SIGPIPE and SIGHUP ignored.
/// `handler` must be async-signal-safe (store to an atomic, nothing else).
pub fn on_stop(handler: extern "C" fn(libc::c_int)) {
    for (sig, h) in [
        (Signal::SIGTERM, SigHandler::Handler(handler)),
        (Signal::SIGINT, SigHandler::Handler(handler)),
        (Signal::SIGPIPE, SigHandler::SigIgn),
        (Signal::SIGHUP, SigHandler::SigIgn),
    ] {
        // SAFETY: SIG_IGN is always valid; the handler is async-signal-safe
        // by this function's contract (its one caller only sets a flag).
        // signal() fails only for an invalid signal number, and these are
        // valid.
        let _ = unsafe { signal(sig, h) };
    }
}
