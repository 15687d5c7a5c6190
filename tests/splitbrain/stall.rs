//! What a host's daemon was doing when it stopped petting: a snapshot of
//! each of its threads (comm, state, wchan, `/proc/PID/task/TID/syscall`
//! and the kernel stack) and the last lines of its log, printed in the
//! schedule's output. The monitor asks for one when a pet gap passes W/2
//! and when the watchdog stand-in fires; it never waits for it: a reader
//! thread reads /proc (a read there can block behind the very thing the
//! daemon waits for), a printer thread prints what came within
//! [`DEADLINE_MS`] and says which reads did not.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vmlease::clock::boottime_ms;

/// How long the printer waits for the reader.
pub const DEADLINE_MS: u64 = 1500;
/// Log lines of the daemon printed with a snapshot.
const LOG_LINES: usize = 12;

/// Starts a snapshot of `pid`'s threads (host `h`, 0-based) and returns
/// at once.
pub fn snapshot(h: usize, pid: i32, why: String, log: PathBuf) {
    let at = boottime_ms();
    let _ = std::thread::Builder::new()
        .name(format!("stall-print-{}", h + 1))
        .spawn(move || print(h, pid, at, &why, &log));
}

/// One /proc file of one thread, or the reason it could not be read.
fn read(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).trim_end().to_string(),
        Err(e) => format!("({e})"),
    }
}

/// The reader: every thread of `pid`, one message per thread as soon as
/// it is read (so that one read that blocks loses only its thread).
fn read_threads(pid: i32, tx: mpsc::Sender<(String, String)>) {
    let dir = PathBuf::from(format!("/proc/{pid}/task"));
    let tids: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) => {
            let _ = tx.send((String::new(), format!("{}: {e}", dir.display())));
            return;
        }
    };
    let _ = tx.send((String::new(), format!("{} thread(s)", tids.len())));
    for tid in tids {
        let t = dir.join(&tid);
        let stat = read(&t.join("stat"));
        // "TID (comm) S ...": the state follows the comm's ')'.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').next())
            .unwrap_or("?")
            .to_string();
        let mut text = format!(
            "tid {tid} '{}' state {state} wchan {} syscall [{}]",
            read(&t.join("comm")),
            read(&t.join("wchan")),
            read(&t.join("syscall"))
        );
        for l in read(&t.join("stack")).lines() {
            text.push_str("\n        ");
            text.push_str(l.trim());
        }
        if tx.send((tid, text)).is_err() {
            return;
        }
    }
    let _ = tx.send((String::new(), "done".into()));
}

fn print(h: usize, pid: i32, at: u64, why: &str, log: &Path) {
    let (tx, rx) = mpsc::channel();
    let _ = std::thread::Builder::new()
        .name(format!("stall-read-{}", h + 1))
        .spawn(move || read_threads(pid, tx));
    let end = Instant::now() + Duration::from_millis(DEADLINE_MS);
    let mut out = format!(
        "  [{at}] STALL host {}: {why}; daemon pid {pid}'s threads:",
        h + 1
    );
    let mut done = false;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((_, l)) if l == "done" => {
                done = true;
                break;
            }
            Ok((_, l)) => {
                out.push_str("\n      ");
                out.push_str(&l);
            }
            Err(_) => break,
        }
    }
    if !done {
        out.push_str(&format!(
            "\n      (the reader gave no more within {DEADLINE_MS} ms: a /proc read blocked, or \
             the daemon is gone)"
        ));
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    out.push_str(&format!(
        "\n    last {} line(s) of its log:",
        LOG_LINES.min(lines.len())
    ));
    for l in &lines[lines.len().saturating_sub(LOG_LINES)..] {
        out.push_str("\n      ");
        out.push_str(l);
    }
    eprintln!("{out}");
}
