//! Logging to journald (its native socket, with structured fields; see
//! [`crate::journal`]) or syslog (`/dev/log`) and, for the binaries, stderr.
//!
//! In the plugin the logger takes no lock and keeps no shared buffer: each
//! record is one datagram sent on a non-blocking socket opened for it.
//! That makes it safe in libvirt's forked pre-exec child, where a mutex
//! held by another libvirtd thread at fork time would never be released.
//! It never calls `openlog`, so libvirtd's own syslog identity is left
//! alone.
//!
//! The daemon's stderr is usually a pipe to journald: when journald
//! stalls, a blocking write would stop the main loop, its renewals and its
//! watchdog pets, and reset a healthy host. So the daemon ([`init_daemon`])
//! never writes stderr from the logging thread: lines go to a bounded
//! queue drained by a writer thread; when the queue is full a line is
//! dropped and counted, and the writer reports the count once it can
//! write again. Only the daemon starts that thread and uses that queue
//! (never the plugin: no thread may exist in libvirtd's pre-exec child).
//! The CLI writes stderr directly.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use log::{Level, LevelFilter, Log, Metadata, Record};

static STDERR: AtomicBool = AtomicBool::new(false);
/// Each stderr line starts with CLOCK_BOOTTIME in ms (`--log-boottime`).
static BOOTTIME: AtomicBool = AtomicBool::new(false);
static LOGGER: Logger = Logger;

struct Logger;

/// Installs the logger (idempotent). `stderr`: also print to stderr (the
/// binaries); the plugin inside libvirtd logs to syslog only.
pub fn init(stderr: bool, level: LevelFilter) {
    STDERR.store(stderr, Ordering::Relaxed);
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// At most this many bytes of log lines wait for stderr; more are dropped.
pub const QUEUE_BYTES: usize = 256 * 1024;

/// Lines waiting for the writer thread, and how many were dropped since
/// the writer last reported.
struct Queue {
    lines: VecDeque<String>,
    bytes: usize,
    dropped: u64,
    /// The writer holds a batch it has not finished writing.
    writing: bool,
}

impl Queue {
    const fn new() -> Queue {
        Queue {
            lines: VecDeque::new(),
            bytes: 0,
            dropped: 0,
            writing: false,
        }
    }

    /// Queues a line, or counts it as dropped when `QUEUE_BYTES` are
    /// already waiting. True when queued.
    fn push(&mut self, line: String) -> bool {
        if self.bytes + line.len() > QUEUE_BYTES {
            self.dropped += 1;
            return false;
        }
        self.bytes += line.len();
        self.lines.push_back(line);
        true
    }
}

static QUEUE: Mutex<Queue> = Mutex::new(Queue::new());
static QUEUED: Condvar = Condvar::new();
/// stderr goes through the queue (set once the writer thread runs).
static ASYNC: AtomicBool = AtomicBool::new(false);
static DROPPED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// The daemon's logger: as [`init`] with stderr, but stderr is written by
/// a writer thread so that logging never blocks the caller. If the thread
/// cannot be started, stderr is left out (syslog still gets every line).
pub fn init_daemon(level: LevelFilter) {
    init(true, level);
    if ASYNC.load(Ordering::SeqCst) {
        return;
    }
    match std::thread::Builder::new()
        .name("vmlease-log".into())
        .stack_size(crate::daemon::THREAD_STACK)
        .spawn(|| writer(std::io::stderr()))
    {
        Ok(_) => ASYNC.store(true, Ordering::SeqCst),
        Err(e) => {
            STDERR.store(false, Ordering::SeqCst);
            syslog(
                Level::Warn,
                &format!("cannot start the log writer thread ({e}): logging to syslog only"),
            );
        }
    }
}

/// Starts each stderr line with `[MS] `, CLOCK_BOOTTIME in ms: the clock
/// of the split-brain rig's event lines and of the liveness records, so
/// that a daemon's log lines up with them (journald dates its own lines).
pub fn set_boottime_prefix() {
    BOOTTIME.store(true, Ordering::Relaxed);
}

/// Log lines dropped because stderr did not keep up, since start.
pub fn dropped_total() -> u64 {
    DROPPED_TOTAL.load(Ordering::Relaxed)
}

/// Queues one line for stderr; never blocks on the output.
fn enqueue(line: String) {
    let queued = QUEUE.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    if queued {
        QUEUED.notify_one();
    } else {
        DROPPED_TOTAL.fetch_add(1, Ordering::Relaxed);
    }
}

/// The writer thread: takes everything queued, writes it (blocking, on
/// this thread only), then reports what was dropped meanwhile.
fn writer(mut out: impl Write) {
    loop {
        let (lines, dropped) = {
            let mut q = QUEUE.lock().unwrap_or_else(|e| e.into_inner());
            while q.lines.is_empty() && q.dropped == 0 {
                q = QUEUED.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            q.bytes = 0;
            q.writing = true;
            (std::mem::take(&mut q.lines), std::mem::take(&mut q.dropped))
        };
        for l in &lines {
            let _ = out.write_all(l.as_bytes());
        }
        if dropped > 0 {
            let msg = format!(
                "{dropped} log line(s) were dropped from stderr because it did not keep up \
                 (journald stalled?), {} since start; they were sent to syslog only",
                dropped_total()
            );
            syslog(Level::Warn, &msg);
            let _ = out.write_all(format!("{}: warn: {msg}\n", ident()).as_bytes());
        }
        QUEUE.lock().unwrap_or_else(|e| e.into_inner()).writing = false;
    }
}

/// Waits up to `timeout` for the queued lines to reach stderr (before
/// the daemon exits); gives up silently on a stalled stderr.
pub fn drain(timeout: std::time::Duration) {
    let end = std::time::Instant::now() + timeout;
    while ASYNC.load(Ordering::SeqCst) && std::time::Instant::now() < end {
        let q = QUEUE.lock().unwrap_or_else(|e| e.into_inner());
        if q.lines.is_empty() && q.dropped == 0 && !q.writing {
            return;
        }
        drop(q);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
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

/// Sends one message to journald or syslog; errors are ignored (neither
/// runs).
pub fn syslog(level: Level, msg: &str) {
    crate::journal::send(level, ident(), msg, &[]);
}

/// The key-values of a record, as text.
struct Fields(Vec<(String, String)>);

impl<'kvs> log::kv::VisitSource<'kvs> for Fields {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        self.0.push((key.as_str().to_string(), value.to_string()));
        Ok(())
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
        let mut fields = Fields(Vec::new());
        let _ = r.key_values().visit(&mut fields);
        crate::journal::send(r.level(), ident(), &msg, &fields.0);
        if STDERR.load(Ordering::Relaxed) {
            let at = if BOOTTIME.load(Ordering::Relaxed) {
                format!("[{}] ", crate::clock::boottime_ms())
            } else {
                String::new()
            };
            let line = format!(
                "{at}{}: {}: {msg}\n",
                ident(),
                r.level().as_str().to_lowercase()
            );
            if ASYNC.load(Ordering::Relaxed) {
                enqueue(line);
            } else {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts() {
        let mut q = Queue::new();
        let line = "x".repeat(1000);
        let fit = QUEUE_BYTES / 1000;
        for _ in 0..fit {
            assert!(q.push(line.clone()));
        }
        assert!(!q.push(line.clone()));
        assert!(!q.push(line.clone()));
        assert_eq!((q.lines.len(), q.dropped), (fit, 2));
        // A short line still fits in what is left.
        assert!(q.push("y".repeat(QUEUE_BYTES - fit * 1000)));
    }
}
