//! Logging to syslog/journald (`/dev/log`) and, for the binaries, stderr.
//!
//! The logger takes no lock and keeps no shared buffer: each record is one
//! datagram sent on a socket opened for it. That makes it safe in libvirt's
//! forked pre-exec child, where a mutex held by another libvirtd thread at
//! fork time would never be released. It never calls `openlog`, so
//! libvirtd's own syslog identity is left alone.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};

use log::{Level, LevelFilter, Log, Metadata, Record};

static STDERR: AtomicBool = AtomicBool::new(false);
static LOGGER: Logger = Logger;

struct Logger;

/// Installs the logger (idempotent). `stderr`: also print to stderr (the
/// binaries); the plugin inside libvirtd logs to syslog only.
pub fn init(stderr: bool, level: LevelFilter) {
    STDERR.store(stderr, Ordering::Relaxed);
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// "vmlease" in the plugin and the CLI, the program name in the daemon.
fn ident() -> &'static str {
    if IDENT_DAEMON.load(Ordering::Relaxed) {
        "vmlease-watchdog"
    } else {
        "vmlease"
    }
}

static IDENT_DAEMON: AtomicBool = AtomicBool::new(false);

/// Marks this process as the watchdog daemon (log identity).
pub fn set_daemon_ident() {
    IDENT_DAEMON.store(true, Ordering::Relaxed);
}

fn severity(l: Level) -> u8 {
    match l {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Sends one message to syslog; errors are ignored (no syslog daemon).
pub fn syslog(level: Level, msg: &str) {
    const LOG_DAEMON: u8 = 3 << 3;
    let line = format!(
        "<{}>{}[{}]: {}",
        LOG_DAEMON | severity(level),
        ident(),
        std::process::id(),
        msg
    );
    if let Ok(sock) = UnixDatagram::unbound() {
        let _ = sock.set_nonblocking(true);
        let _ = sock.send_to(line.as_bytes(), "/dev/log");
    }
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let msg = r.args().to_string();
        syslog(r.level(), &msg);
        if STDERR.load(Ordering::Relaxed) {
            let line = format!(
                "{}: {}: {msg}\n",
                ident(),
                r.level().as_str().to_lowercase()
            );
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}
