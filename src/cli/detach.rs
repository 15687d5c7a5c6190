//! The commands that read the lockspace (`status`, `hosts`, `leases`,
//! `can-evacuate`) answer within a deadline even when the lockspace hangs.
//!
//! Deadlines on I/O threads are not enough: a read that a healthy CephFS
//! client has handed to the cluster, and that waits there for a hung
//! peer, leaves its thread in uninterruptible sleep, and a process with
//! such a thread cannot exit (measured: `vmlease status` took 64 s to
//! return while a peer's ceph-fuse was frozen). So the command runs in a
//! worker: this same binary, re-executed with [`WORKER_ENV`] set, whose
//! output comes back through pipes. When the worker has printed its
//! answer it marks the end of its output with its exit code; the caller
//! relays both and exits, whether or not the worker can exit yet. A
//! worker that gives no answer within the command's deadline is killed
//! (it dies when its I/O returns) and left behind; the caller answers
//! "cannot tell" (exit 3) - or, for `status`, what the local files say.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::config::Config;

/// Set (to "1") in a worker's environment.
pub const WORKER_ENV: &str = "VMLEASE_CLI_WORKER";

/// Ends a worker's output on stdout and stderr; on stdout followed by the
/// exit code and a newline. NUL never appears in the commands' output.
const MARK: &[u8] = b"\n\0vmlease-worker-done ";

/// Time for the worker to start and load its config, beyond the I/O
/// deadlines it runs with.
const START_MS: u64 = 1000;

/// Commands run in a worker.
pub fn applies(command: &str) -> bool {
    matches!(command, "status" | "hosts" | "leases" | "can-evacuate")
}

/// This process is a worker.
pub fn is_worker() -> bool {
    std::env::var_os(WORKER_ENV).is_some_and(|v| v == "1")
}

/// The deadline of `command`, in ms, from the I/O deadline `io_timeout`
/// (docs/cli.md, "Deadlines"): the sum of the lockspace reads the answer
/// needs, each bounded by `io_timeout` (the listing of the lease records
/// by 4 of them), plus the worker's start.
pub fn deadline_ms(cfg: &Config, command: &str) -> u64 {
    let io = cfg.io_timeout;
    START_MS
        + match command {
            // This host's slot and the tracked processes' leases, in one
            // bounded read (plus 10 ms a lease record).
            "status" => io + 1000,
            // Open (the lockspace's header) and the host table.
            "hosts" => 2 * io,
            // Open, the host table, the listing (4 io), the records.
            _ => 7 * io,
        }
}

/// In a worker: marks the end of the answer (`code` is the exit code).
pub fn finish(code: i32) {
    let mut out = std::io::stdout().lock();
    let _ = out.flush();
    let _ = out.write_all(MARK);
    let _ = writeln!(out, "{code}");
    let _ = out.flush();
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(MARK);
    let _ = err.write_all(b"\n");
    let _ = err.flush();
}

/// What became of a worker.
pub enum Outcome {
    /// It answered: its output and exit code, to relay.
    Answered {
        code: i32,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
    /// No answer within the deadline; the worker (this pid) was killed
    /// and is left behind.
    NoAnswer { pid: u32, after_ms: u64 },
    /// It could not be started, or ended without an answer.
    Failed(String),
}

/// Runs this binary with `args` (the command line after the program
/// name) as a worker and waits at most `deadline_ms` for its answer.
pub fn run(args: &[String], deadline_ms: u64) -> Outcome {
    let start = Instant::now();
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let mut child = match Command::new(&exe)
        .args(args)
        .env(WORKER_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("cannot start {}: {e}", exe.display())),
    };
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().map(|p| collect(p, 0, tx.clone()));
    let err = child.stderr.take().map(|p| collect(p, 1, tx));
    let mut got: [Option<(Vec<u8>, bool)>; 2] = [None, None];
    let limit = Duration::from_millis(deadline_ms);
    while got.iter().any(Option::is_none) {
        let left = limit.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok((i, data, marked)) => got[i] = Some((data, marked)),
            Err(_) => {
                // Dies as soon as its I/O returns; not waited for.
                let _ = child.kill();
                return Outcome::NoAnswer {
                    pid: child.id(),
                    after_ms: start.elapsed().as_millis() as u64,
                };
            }
        }
    }
    drop((out, err));
    let [Some((mut stdout, marked)), Some((stderr, _))] = got else {
        unreachable!("both pipes reported")
    };
    // The worker may stay in the kernel a while: not waited for.
    let _ = child.kill();
    if !marked {
        return Outcome::Failed(format!(
            "the worker ended without an answer ({})",
            match child.try_wait() {
                Ok(Some(s)) => s.to_string(),
                _ => "still running".into(),
            }
        ));
    }
    let code = split_code(&mut stdout).unwrap_or(super::exit::UNKNOWN);
    Outcome::Answered {
        code,
        stdout,
        stderr,
    }
}

/// Reads a pipe until the end mark or EOF on a thread; sends (which
/// pipe, the bytes before the mark plus anything after it, marked?).
fn collect(
    mut p: impl Read + Send + 'static,
    which: usize,
    tx: mpsc::Sender<(usize, Vec<u8>, bool)>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match p.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    v.extend_from_slice(&buf[..n]);
                    // The mark and, on stdout, the code after it.
                    if let Some(i) = find(&v, MARK) {
                        if which == 1 || v[i + MARK.len()..].contains(&b'\n') {
                            if which == 1 {
                                v.truncate(i);
                            }
                            let _ = tx.send((which, v, true));
                            return;
                        }
                    }
                }
            }
        }
        let _ = tx.send((which, v, false));
    })
}

/// Cuts the mark and the code off a worker's stdout; the code.
fn split_code(stdout: &mut Vec<u8>) -> Option<i32> {
    let i = find(stdout, MARK)?;
    let code = std::str::from_utf8(&stdout[i + MARK.len()..])
        .ok()?
        .trim()
        .parse()
        .ok();
    stdout.truncate(i);
    code
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_is_cut_off_stdout() {
        let mut v = b"ID  NAME\n1   a\n".to_vec();
        v.extend_from_slice(MARK);
        v.extend_from_slice(b"3\n");
        assert_eq!(split_code(&mut v), Some(3));
        assert_eq!(v, b"ID  NAME\n1   a\n");
        let mut v = b"no mark".to_vec();
        assert_eq!(split_code(&mut v), None);
    }

    #[test]
    fn a_pipe_is_read_to_the_mark_even_if_the_writer_stays() {
        // The writer keeps its end open after the mark (as a worker stuck
        // in the kernel would): the reader must not wait for EOF.
        let (r, mut w) = std::os::unix::net::UnixStream::pair().unwrap();
        let (tx, rx) = mpsc::channel();
        collect(r, 0, tx);
        w.write_all(b"answer").unwrap();
        w.write_all(MARK).unwrap();
        w.write_all(b"0\n").unwrap();
        let (i, mut v, marked) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(marked && i == 0);
        assert_eq!(split_code(&mut v), Some(0));
        assert_eq!(v, b"answer");
        drop(w);
    }
}
