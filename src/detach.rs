//! Work that may hang on storage runs in a worker: a re-executed copy of
//! this program, marked by an environment variable. The caller relays its
//! answer as soon as it is printed and gives up at a deadline, leaving the
//! worker behind.
//!
//! A deadline on a thread is not enough: a read or write that waits on
//! hung storage (a frozen CephFS peer, a queued multipath device) leaves
//! its thread in uninterruptible sleep, and a process with such a thread
//! cannot exit, even after `exit()` (measured: `vmlease status` took 64 s
//! to return while a peer's ceph-fuse was frozen). So the caller never
//! touches the storage itself. The worker ends its output on stdout and on
//! stderr with an end mark ([`Worker::finish`], on stdout followed by its exit
//! code), which comes before the exit a stuck thread may hold up; the
//! caller takes the answer at the marks, whether or not the worker can
//! exit yet. A worker with no answer by the deadline is left behind (it
//! ends when the storage answers). Its stdin, stdout and stderr are pipes
//! to the caller, so it holds none of the caller's own open.
//!
//! Users: the qemu hook (`hook`, [`crate::hook`]'s lockspace work, with
//! `VMLEASE_HOOK_WORKER`) and the commands that read the lockspace
//! (`cli`: `status`, `hosts`, `leases`, `can-evacuate`, with
//! `VMLEASE_CLI_WORKER`).
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Ends a worker's output on stdout and stderr; on stdout followed by the
/// exit code and a newline. NUL never appears in the programs' output.
const MARK: &[u8] = b"\n\0vmlease-worker-done ";

/// One kind of worker.
#[derive(Debug, Clone, Copy)]
pub struct Worker {
    /// Set to "1" in the worker's environment.
    pub env: &'static str,
    /// Kill the worker once it has answered or at the deadline (it dies
    /// when its I/O returns; it is not waited for); otherwise it is left
    /// to exit on its own.
    pub kill: bool,
}

/// What became of a worker.
#[derive(Debug)]
pub enum Outcome {
    /// It answered: its exit code (None if unreadable) and its output
    /// before the end marks, to relay.
    Answered {
        code: Option<i32>,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
    /// It exited without an answer (a panic, a signal).
    Exited {
        status: ExitStatus,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
    /// No answer within the deadline: the worker (this pid) is left
    /// behind; `stderr` is what it had written by then.
    NoAnswer {
        pid: u32,
        after_ms: u64,
        stderr: Vec<u8>,
    },
    /// It could not be started or waited for.
    Failed(String),
}

impl Worker {
    /// This process is such a worker.
    pub fn is_this_process(&self) -> bool {
        std::env::var_os(self.env).is_some_and(|v| v == "1")
    }

    /// In a worker: marks the end of its answer (`code` is its exit code).
    /// May be called again (a backstop and the work itself): the caller
    /// takes the first. Does nothing outside a worker.
    pub fn finish(&self, code: i32) {
        if !self.is_this_process() {
            return;
        }
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

    /// Runs this program with `args` (the command line after the program
    /// name) as a worker, with `stdin` on its stdin (none: /dev/null), and
    /// waits at most `deadline_ms` for its answer.
    pub fn run<A: AsRef<OsStr>>(
        &self,
        args: &[A],
        stdin: Option<&[u8]>,
        deadline_ms: u64,
    ) -> Outcome {
        let start = Instant::now();
        let limit = Duration::from_millis(deadline_ms);
        let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
        let mut child = match Command::new(&exe)
            .args(args)
            .env(self.env, "1")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => return Outcome::Failed(format!("cannot start {}: {e}", exe.display())),
        };
        // Every pipe on a thread: a stuck worker reads and writes nothing,
        // and none may hold the caller up.
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            let data = data.to_vec();
            let _ = std::thread::Builder::new()
                .name("vmlease-worker-stdin".into())
                .spawn(move || {
                    let _ = pipe.write_all(&data);
                });
        }
        let (tx, rx) = mpsc::channel();
        if let Some(p) = child.stdout.take() {
            forward(p, 0, tx.clone());
        }
        if let Some(p) = child.stderr.take() {
            forward(p, 1, tx);
        }
        let mut out = [Pipe::new(true), Pipe::new(false)];
        while !out.iter().all(Pipe::done) {
            match rx.recv_timeout(limit.saturating_sub(start.elapsed())) {
                Ok((i, Some(bytes))) => out[i].push(&bytes),
                Ok((i, None)) => out[i].closed = true,
                Err(_) => return self.no_answer(child, start, out),
            }
        }
        let [stdout, stderr] = out;
        if stdout.mark.is_some() {
            // Answered; its process may be stuck on its way out.
            if self.kill {
                let _ = child.kill();
            }
            let (stdout, code) = stdout.answer();
            return Outcome::Answered {
                code,
                stdout,
                stderr: stderr.answer().0,
            };
        }
        // Both pipes closed without an answer: the worker is ending.
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return Outcome::Exited {
                        status,
                        stdout: stdout.answer().0,
                        stderr: stderr.answer().0,
                    }
                }
                Ok(None) if start.elapsed() >= limit => {
                    return self.no_answer(child, start, [stdout, stderr])
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Outcome::Failed(format!("cannot wait for the worker: {e}")),
            }
        }
    }

    fn no_answer(&self, mut child: Child, start: Instant, out: [Pipe; 2]) -> Outcome {
        if self.kill {
            // Dies as soon as its I/O returns; not waited for.
            let _ = child.kill();
        }
        let [_, stderr] = out;
        Outcome::NoAnswer {
            pid: child.id(),
            after_ms: start.elapsed().as_millis() as u64,
            stderr: stderr.answer().0,
        }
    }
}

/// Sends what a pipe gives, chunk by chunk (`which`, Some(bytes)), then
/// (`which`, None) at its end, from a thread of its own.
fn forward(
    mut p: impl Read + Send + 'static,
    which: usize,
    tx: mpsc::Sender<(usize, Option<Vec<u8>>)>,
) {
    let spawned = std::thread::Builder::new()
        .name("vmlease-worker-output".into())
        .spawn({
            let tx = tx.clone();
            move || {
                let mut buf = [0u8; 8192];
                loop {
                    match p.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tx.send((which, Some(buf[..n].to_vec()))).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = tx.send((which, None));
            }
        });
    if spawned.is_err() {
        // Nothing will come from this pipe.
        let _ = tx.send((which, None));
    }
}

/// One output pipe of a worker, as read so far.
struct Pipe {
    bytes: Vec<u8>,
    /// The end mark is followed by the exit code and a newline (stdout).
    with_code: bool,
    /// Where the complete end mark starts.
    mark: Option<usize>,
    /// How far `bytes` has been searched for the mark.
    searched: usize,
    closed: bool,
}

impl Pipe {
    fn new(with_code: bool) -> Pipe {
        Pipe {
            bytes: Vec::new(),
            with_code,
            mark: None,
            searched: 0,
            closed: false,
        }
    }

    /// Nothing more to wait for: marked or at its end.
    fn done(&self) -> bool {
        self.mark.is_some() || self.closed
    }

    fn push(&mut self, chunk: &[u8]) {
        if self.mark.is_some() {
            return;
        }
        self.bytes.extend_from_slice(chunk);
        let from = self.searched.saturating_sub(MARK.len());
        if let Some(i) = find(&self.bytes[from..], MARK).map(|i| from + i) {
            if !self.with_code || self.bytes[i + MARK.len()..].contains(&b'\n') {
                self.mark = Some(i);
            }
            // Not yet complete: search from the mark again.
            self.searched = i;
        } else {
            self.searched = self.bytes.len();
        }
    }

    /// The output before the mark, and the exit code after it.
    fn answer(mut self) -> (Vec<u8>, Option<i32>) {
        let Some(i) = self.mark else {
            return (self.bytes, None);
        };
        let code = std::str::from_utf8(&self.bytes[i + MARK.len()..])
            .ok()
            .and_then(|s| s.lines().next())
            .and_then(|s| s.trim().parse().ok());
        self.bytes.truncate(i);
        (self.bytes, code)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests;
