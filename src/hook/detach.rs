//! The hook's lockspace work runs in a child process (this same program,
//! marked by [`WORKER_ENV`]), and the hook waits for it with a deadline.
//!
//! libvirtd waits, under the domain's lock, for the hook process to exit.
//! A thread stuck in uninterruptible sleep on hung storage (a frozen
//! CephFS, a queued multipath device) keeps its process from exiting, even
//! after `exit()`: a deadline on a thread is not enough. The parent never
//! touches the lockspace; it answers libvirt as soon as the worker has
//! answered (one line on the worker's stdout, which comes before the exit a
//! stuck thread may hold up) or at the deadline, and a stuck child is left
//! behind (it ends when the storage answers). The child's stdout and stderr
//! are pipes to the parent, so it holds none of libvirtd's pipes open.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::say;

/// Set in the worker's environment: do the work here, in this process.
pub const WORKER_ENV: &str = "VMLEASE_HOOK_WORKER";

/// In the worker: hands the exit status to the parent (one line on
/// stdout) before exiting, which a thread stuck in D may delay forever.
pub fn report(code: i32) {
    if is_worker() {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{EXIT_PREFIX}{code}");
        let _ = out.flush();
    }
}

const EXIT_PREFIX: &str = "vmlease-hook-exit ";

/// True in the worker process.
pub fn is_worker() -> bool {
    std::env::var_os(WORKER_ENV).is_some()
}

/// Runs `vmlease --config CONFIG hook ARGS` as a worker with `xml` on its
/// stdin, relays its stderr and returns its exit status; after `budget_ms`
/// returns `safe` instead, with a line saying so (`what` names the
/// operation).
pub fn run(
    config: &Path,
    args: &[String],
    xml: &[u8],
    budget_ms: u64,
    safe: i32,
    what: &str,
) -> i32 {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            say(&format!("{what}: cannot find the vmlease program: {e}"));
            return safe;
        }
    };
    let child = Command::new(&exe)
        .arg("--config")
        .arg(config)
        .arg("hook")
        .args(args)
        .env(WORKER_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            say(&format!("{what}: cannot start {}: {e}", exe.display()));
            return safe;
        }
    };
    // Both pipes on threads: a stuck child reads and writes nothing, and
    // neither may hold the parent up.
    if let Some(mut stdin) = child.stdin.take() {
        let data = xml.to_vec();
        let _ = std::thread::Builder::new()
            .name("vmlease-hook-stdin".into())
            .spawn(move || {
                let _ = stdin.write_all(&data);
            });
    }
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = std::thread::Builder::new()
            .name("vmlease-hook-stderr".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match stderr.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if tx.send(buf[..n].to_vec()).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
    }
    // The worker's answer, possibly long before its process can exit.
    let (code_tx, code_rx) = mpsc::channel::<i32>();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = std::thread::Builder::new()
            .name("vmlease-hook-stdout".into())
            .spawn(move || {
                let mut text = String::new();
                let mut buf = [0u8; 256];
                while let Ok(n) = stdout.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    text.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if let Some(code) = text
                        .lines()
                        .find_map(|l| l.strip_prefix(EXIT_PREFIX))
                        .and_then(|c| c.trim().parse().ok())
                    {
                        let _ = code_tx.send(code);
                        return;
                    }
                }
            });
    }
    let relay = |wait: Duration| {
        let until = Instant::now() + wait;
        let mut err = std::io::stderr().lock();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(chunk) => {
                    let _ = err.write_all(&chunk);
                }
                Err(_) => return,
            }
        }
    };
    let start = Instant::now();
    let budget = Duration::from_millis(budget_ms);
    loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                // The child is gone: its stderr ends at once.
                relay(Duration::from_millis(500));
                return st.code().unwrap_or(safe);
            }
            Ok(None) => {
                if let Ok(code) = code_rx.try_recv() {
                    // Answered; its process may be stuck on its way out.
                    relay(Duration::from_millis(200));
                    return code;
                }
            }
            Err(e) => {
                say(&format!("{what}: cannot wait for the worker: {e}"));
                return safe;
            }
        }
        if start.elapsed() >= budget {
            relay(Duration::ZERO);
            say(&format!(
                "{what}: no answer within {budget_ms} ms (storage hung?); giving up ({}); \
                 worker pid {} is left to finish when the storage answers",
                if safe == 0 { "going on" } else { "refusing" },
                child.id()
            ));
            return safe;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
