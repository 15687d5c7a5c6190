//! Storage calls with a deadline. A hung CephFS leaves a thread stuck in
//! the kernel; the caller gets `Error::Timeout` and goes on. The stuck
//! thread is abandoned: it finishes when the storage answers, or dies with
//! the process.
//!
//! Two rules keep an abandoned call harmless:
//!
//! - its [`Cancel`] token says it was abandoned, and a call that writes
//!   (the acquire) checks it under the record lock: it writes nothing, or
//!   undoes its write, once its caller gave up ([`Cancel::complete`]);
//! - while an abandoned call of this process is still stuck, no new I/O
//!   thread is started: the call is refused with `Error::Stuck`, naming the
//!   stuck one. A process never piles up threads on hung storage.
//!
//! Never use this in the pre-exec child of libvirtd, which must not start
//! threads; nothing there touches the lockspace.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

const RUNNING: u8 = 0;
const ABANDONED: u8 = 1;
const DONE: u8 = 2;

/// The fate of one call run with a deadline: either its caller gives up on
/// it ([`Cancel::abandon`]) or the call commits its result
/// ([`Cancel::complete`]), never both.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicU8>);

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// The caller gave up on this call.
    pub fn is_abandoned(&self) -> bool {
        self.0.load(Ordering::SeqCst) == ABANDONED
    }

    /// The call commits its result: true unless the caller gave up first
    /// (then the call must undo what it did).
    pub fn complete(&self) -> bool {
        match self
            .0
            .compare_exchange(RUNNING, DONE, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => true,
            Err(now) => now == DONE,
        }
    }

    /// The caller gives up: true unless the call committed first (then
    /// its result is on its way and must be used).
    pub fn abandon(&self) -> bool {
        match self
            .0
            .compare_exchange(RUNNING, ABANDONED, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => true,
            Err(now) => now == ABANDONED,
        }
    }
}

/// An abandoned call that has not ended yet.
#[derive(Debug, Clone)]
struct Stuck {
    op: &'static str,
    path: PathBuf,
    since_ms: u64,
}

static STUCK: Mutex<BTreeMap<u64, Stuck>> = Mutex::new(BTreeMap::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn stuck_map() -> std::sync::MutexGuard<'static, BTreeMap<u64, Stuck>> {
    STUCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Tests that leave a call stuck hold this, so that no other test of the
/// same process is refused meanwhile.
#[cfg(test)]
pub static TEST_SERIAL: Mutex<()> = Mutex::new(());

/// How many abandoned calls of this process are still running.
/// The stack of a deadline thread. In the daemon, which locks its memory,
/// every page of a thread's stack is resident (and glibc keeps an exited
/// thread's stack for the next): Rust's default of 2 MiB is a quarter of
/// its memory. A lockspace operation uses a small part of this.
const IO_STACK: usize = 512 * 1024;

pub fn stuck_calls() -> usize {
    stuck_map().len()
}

/// Refuses when an abandoned call of this process is still stuck.
fn refuse_if_stuck(op: &'static str, path: &Path) -> Result<()> {
    let map = stuck_map();
    if let Some(s) = map.values().next() {
        return Err(Error::Stuck {
            op,
            path: path.to_path_buf(),
            earlier: format!("{} {}", s.op, s.path.display()),
            for_ms: crate::clock::boottime_ms().saturating_sub(s.since_ms),
        });
    }
    Ok(())
}

/// Runs `f` on an I/O thread and waits at most `timeout_ms` for it.
pub fn run<T, F>(timeout_ms: u64, op: &'static str, path: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    run_cancellable(timeout_ms, op, path, move |_| f())
}

/// As [`run`], and `f` gets the call's [`Cancel`] token: a call that
/// writes checks it before writing and commits with `complete()`.
pub fn run_cancellable<T, F>(timeout_ms: u64, op: &'static str, path: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&Cancel) -> Result<T> + Send + 'static,
{
    start_cancellable(timeout_ms, op, path, f)?.wait()
}

/// A call running on its I/O thread, started by [`start_cancellable`]:
/// [`Pending::wait`] gives its result, or a timeout once `timeout_ms`
/// have passed since it started.
#[must_use = "a pending call must be waited for (its deadline abandons it)"]
pub struct Pending<T> {
    id: u64,
    op: &'static str,
    path: PathBuf,
    timeout_ms: u64,
    started: Instant,
    cancel: Cancel,
    finished: Arc<AtomicBool>,
    rx: mpsc::Receiver<Result<T>>,
}

/// As [`run_cancellable`], without waiting: the call runs at once on its
/// own I/O thread, so that several calls (one per record) overlap their
/// storage round trips. Each keeps its own deadline, counted from its
/// start, and its own [`Cancel`] token. Refused (`Error::Stuck`) while an
/// abandoned call of this process is still stuck.
pub fn start_cancellable<T, F>(
    timeout_ms: u64,
    op: &'static str,
    path: &Path,
    f: F,
) -> Result<Pending<T>>
where
    T: Send + 'static,
    F: FnOnce(&Cancel) -> Result<T> + Send + 'static,
{
    refuse_if_stuck(op, path)?;
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let cancel = Cancel::new();
    let finished = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::sync_channel(1);
    let (c2, f2) = (cancel.clone(), finished.clone());
    let started = Instant::now();
    let spawned = std::thread::Builder::new()
        .name("vmlease-io".into())
        .stack_size(IO_STACK)
        .spawn(move || {
            let r = f(&c2);
            {
                let mut map = stuck_map();
                f2.store(true, Ordering::SeqCst);
                map.remove(&id);
            }
            let _ = tx.send(r);
        });
    if let Err(e) = spawned {
        return Err(Error::io(op, path, e));
    }
    Ok(Pending {
        id,
        op,
        path: path.to_path_buf(),
        timeout_ms,
        started,
        cancel,
        finished,
        rx,
    })
}

impl<T> Pending<T> {
    /// Waits for the call until its deadline; past it, the call is
    /// abandoned (its token says so) and this returns `Error::Timeout`.
    pub fn wait(self) -> Result<T> {
        let Pending {
            id,
            op,
            path,
            timeout_ms,
            started,
            cancel,
            finished,
            rx,
        } = self;
        let left = Duration::from_millis(timeout_ms).saturating_sub(started.elapsed());
        let timeout = Error::Timeout {
            op,
            path: path.clone(),
            after_ms: timeout_ms,
        };
        match rx.recv_timeout(left) {
            Ok(r) => return r,
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(timeout),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        {
            let mut map = stuck_map();
            if !finished.load(Ordering::SeqCst) {
                map.insert(
                    id,
                    Stuck {
                        op,
                        path,
                        since_ms: crate::clock::boottime_ms(),
                    },
                );
            }
        }
        if cancel.abandon() {
            return Err(timeout);
        }
        // The call committed just as the deadline passed: its result is on
        // its way (only the unlock is left), and it must not be lost.
        rx.recv_timeout(Duration::from_millis(timeout_ms))
            .unwrap_or(Err(timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test: the stuck-call table is global to the process.
    #[test]
    fn returns_value_times_out_and_refuses_while_stuck() {
        let _serial = TEST_SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let p = Path::new("/x");
        assert_eq!(run(1000, "op", p, || Ok(5)).unwrap(), 5);
        let (release, wait) = mpsc::channel::<()>();
        let seen = Arc::new(Mutex::new(None));
        let s2 = seen.clone();
        let e = run_cancellable(50, "read lease", p, move |c| {
            let _ = wait.recv();
            *s2.lock().unwrap() = Some((c.is_abandoned(), c.complete()));
            Ok(())
        })
        .unwrap_err();
        assert!(e
            .to_string()
            .contains("read lease /x: no answer from storage after 50 ms"));
        assert_eq!(stuck_calls(), 1);
        let e = run(1000, "acquire lease", Path::new("/y"), || Ok(1)).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("acquire lease /y: not started")
                && msg.contains("an earlier call (read lease /x) has been stuck"),
            "{msg}"
        );
        release.send(()).unwrap();
        let t0 = std::time::Instant::now();
        while stuck_calls() > 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "stuck call never ended"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // The abandoned call saw it was abandoned and could not commit.
        assert_eq!(*seen.lock().unwrap(), Some((true, false)));
        assert_eq!(run(1000, "op", p, || Ok(6)).unwrap(), 6);
    }

    /// Calls started together run at once, each with its own deadline:
    /// a slow one is abandoned at its deadline while the others' results
    /// are kept.
    #[test]
    fn started_calls_overlap_and_time_out_one_by_one() {
        let _serial = TEST_SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let p = Path::new("/z");
        let gate = Arc::new(std::sync::Barrier::new(3));
        let (release, wait) = mpsc::channel::<()>();
        let g1 = gate.clone();
        let a = start_cancellable(5000, "op a", p, move |_| {
            g1.wait();
            Ok(1)
        })
        .unwrap();
        let g2 = gate.clone();
        let b = start_cancellable(5000, "op b", p, move |_| {
            g2.wait();
            Ok(2)
        })
        .unwrap();
        let slow = start_cancellable(100, "op slow", p, move |c| {
            let _ = wait.recv();
            Ok(c.complete())
        })
        .unwrap();
        // a and b meet at the barrier: they run at the same time.
        gate.wait();
        assert_eq!((a.wait().unwrap(), b.wait().unwrap()), (1, 2));
        let e = slow.wait().unwrap_err().to_string();
        assert!(
            e.contains("op slow /z: no answer from storage after 100 ms"),
            "{e}"
        );
        let e = start_cancellable(1000, "op c", p, |_| Ok(3)).err().unwrap();
        assert!(
            e.to_string().contains("an earlier call (op slow /z)"),
            "{e}"
        );
        release.send(()).unwrap();
        let t0 = std::time::Instant::now();
        while stuck_calls() > 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "stuck call never ended"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(run(1000, "op", p, || Ok(4)).unwrap(), 4);
    }

    #[test]
    fn cancel_is_either_abandoned_or_completed() {
        let c = Cancel::new();
        assert!(c.complete());
        assert!(!c.abandon());
        let c = Cancel::new();
        assert!(c.abandon());
        assert!(!c.complete());
        assert!(c.is_abandoned());
    }
}
