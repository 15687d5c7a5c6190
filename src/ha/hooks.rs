//! Notification hooks (as Pacemaker's alert agents): every executable in
//! `[ha] hooks_dir` runs on each event the leader emits, with the event in
//! `VMLEASE_EVENT_*` environment variables and as one JSON object on
//! stdin. Hooks run on their own thread, never on the controller's loop:
//! the loop only queues the event (a bounded queue; when it is full the
//! event is logged as not notified and dropped - it is in etcd anyway).
//! All hooks of one event run at once, each in its own process group;
//! one still running after `hook_timeout` is killed with its children.
//! Events reach the hooks in order.
#![forbid(unsafe_code)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use super::events::Event;

/// Events waiting for their hooks at most.
const QUEUE: usize = 256;

pub struct Hooks {
    tx: Option<SyncSender<Event>>,
}

/// How one hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub hook: PathBuf,
    /// Exit code; None when killed at the deadline or by a signal.
    pub code: Option<i32>,
    pub timed_out: bool,
    /// The first lines of its stdout and stderr.
    pub output: String,
}

impl Hooks {
    /// No hooks: `notify` does nothing.
    pub fn none() -> Hooks {
        Hooks { tx: None }
    }

    /// Starts the hook thread for `dir`.
    pub fn start(dir: PathBuf, timeout: Duration) -> Hooks {
        let (tx, rx) = sync_channel::<Event>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("vmlease-hooks".into())
            .spawn(move || {
                for e in rx {
                    for o in run_all(&dir, &e, timeout) {
                        let what = match (o.timed_out, o.code) {
                            (true, _) => format!("killed after {} ms", timeout.as_millis()),
                            (false, Some(0)) => continue,
                            (false, Some(c)) => format!("exit status {c}"),
                            (false, None) => "killed by a signal".into(),
                        };
                        log::error!(
                            "vmlease-ha: hook {} on {} ({}): {what}; output: {}",
                            o.hook.display(),
                            e.kind,
                            e.host,
                            o.output
                        );
                    }
                }
            });
        match spawned {
            Ok(_) => Hooks { tx: Some(tx) },
            Err(e) => {
                log::error!("vmlease-ha: cannot start the hook thread: {e}; no hooks run");
                Hooks::none()
            }
        }
    }

    /// Queues the event for the hooks; never blocks.
    pub fn notify(&self, e: &Event) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(e.clone()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => log::error!(
                "vmlease-ha: {QUEUE} events wait for slow hooks; not notified: {}",
                e.line()
            ),
            Err(TrySendError::Disconnected(_)) => {
                log::error!(
                    "vmlease-ha: the hook thread is gone; not notified: {}",
                    e.line()
                )
            }
        }
    }
}

/// The hooks of `dir`: executable regular files, by name, skipping hidden
/// files and package managers' leftovers.
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            !n.starts_with('.')
                && !n.ends_with('~')
                && !n.contains(".dpkg-")
                && !n.ends_with(".rpmnew")
                && !n.ends_with(".rpmsave")
        })
        .filter(|e| {
            std::fs::metadata(e.path())
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// Runs every hook of `dir` on `e` at once and waits for them, at most
/// `timeout`.
pub fn run_all(dir: &Path, e: &Event, timeout: Duration) -> Vec<Outcome> {
    let json = serde_json::to_vec(e).expect("events serialise");
    let mut running: Vec<(PathBuf, Option<Child>, PathBuf, String)> = Vec::new();
    for (i, hook) in list(dir).into_iter().enumerate() {
        let out = std::env::temp_dir().join(format!(
            "vmlease-hook-{}-{i}-{}.out",
            std::process::id(),
            e.time_ms
        ));
        let spawned = std::fs::File::create(&out).and_then(|f| {
            let f2 = f.try_clone()?;
            let mut c = Command::new(&hook);
            c.envs(e.env())
                .stdin(Stdio::piped())
                .stdout(f)
                .stderr(f2)
                .process_group(0);
            let mut child = c.spawn()?;
            if let Some(mut w) = child.stdin.take() {
                // A hook that does not read stdin must not stall us.
                let _ = w.write_all(&json);
            }
            Ok(child)
        });
        match spawned {
            Ok(c) => running.push((hook, Some(c), out, String::new())),
            Err(err) => running.push((hook, None, out, format!("cannot run: {err}"))),
        }
    }
    let deadline = Instant::now() + timeout;
    let mut done: Vec<Outcome> = Vec::new();
    while !running.is_empty() {
        let mut i = 0;
        while i < running.len() {
            let (hook, child, out, err) = &mut running[i];
            let status = match child {
                None => Some(None),
                Some(c) => match c.try_wait() {
                    Ok(Some(s)) => Some(s.code()),
                    Ok(None) => None,
                    Err(_) => Some(None),
                },
            };
            let timed_out = status.is_none() && Instant::now() >= deadline;
            if timed_out {
                if let Some(c) = child.as_mut() {
                    // The whole group: a hook's own children (curl) too.
                    let _ = Command::new("kill")
                        .args(["-KILL", "--", &format!("-{}", c.id())])
                        .stderr(Stdio::null())
                        .status();
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
            if status.is_some() || timed_out {
                let text = std::fs::read_to_string(&*out).unwrap_or_default();
                let _ = std::fs::remove_file(&*out);
                let mut output: String = text.lines().take(5).collect::<Vec<_>>().join(" | ");
                if !err.is_empty() {
                    output = err.clone();
                }
                done.push(Outcome {
                    hook: hook.clone(),
                    code: status.flatten(),
                    timed_out,
                    output,
                });
                running.remove(i);
            } else {
                i += 1;
            }
        }
        if !running.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    done.sort_by(|a, b| a.hook.cmp(&b.hook));
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::events::kind;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vmlease-hooks-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn hook(d: &Path, name: &str, body: &str, mode: u32) {
        let p = d.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn every_executable_gets_the_event_in_env_and_stdin_and_a_slow_one_is_killed() {
        let d = dir("run");
        let rec = d.join("rec");
        hook(
            &d,
            "10-env",
            &format!(
                "echo \"$VMLEASE_EVENT_KIND $VMLEASE_EVENT_HOST $VMLEASE_EVENT_DOMAIN_NAME $VMLEASE_EVENT_TIME\" >{}; cat >{}.json",
                rec.display(),
                rec.display()
            ),
            0o755,
        );
        hook(&d, "20-fails", "echo oops >&2; exit 3", 0o755);
        hook(&d, "30-slow", "sleep 30 & sleep 30", 0o755);
        hook(&d, "40-not-executable", "exit 9", 0o644);
        hook(&d, ".hidden", "exit 9", 0o755);
        let e = Event::vm(kind::VM_RECOVERED, 1_000, "b", "u", "web", "runs on b");
        let t0 = Instant::now();
        let o = run_all(&d, &e, Duration::from_millis(500));
        let took = t0.elapsed();
        assert!(took < Duration::from_secs(5), "took {took:?}");
        let names: Vec<_> = o
            .iter()
            .map(|o| o.hook.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["10-env", "20-fails", "30-slow"]);
        assert_eq!((o[0].code, o[0].timed_out), (Some(0), false));
        assert_eq!(
            std::fs::read_to_string(&rec).unwrap().trim(),
            "vm-recovered b web 1970-01-01T00:00:01.000Z"
        );
        let j: Event = serde_json::from_slice(&std::fs::read(d.join("rec.json")).unwrap()).unwrap();
        assert_eq!(j, e);
        assert_eq!((o[1].code, o[1].output.as_str()), (Some(3), "oops"));
        assert!(o[2].timed_out && o[2].code.is_none(), "{:?}", o[2]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn notify_never_blocks_the_caller() {
        let d = dir("queue");
        hook(&d, "slow", "sleep 2", 0o755);
        let h = Hooks::start(d.clone(), Duration::from_millis(100));
        let e = Event::host(kind::HOST_FAILED, 1, "a", "gone");
        let t0 = Instant::now();
        for _ in 0..(QUEUE + 50) {
            h.notify(&e);
        }
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        assert!(Hooks::none().tx.is_none());
    }
}
