//! Before it joins, the daemon waits until its lockspace_dir is a lockspace
//! it may use: mounted, on a shared filesystem (the rule of
//! [`crate::sharedfs`], unless allow_local_lockspace), initialised. At boot
//! the daemon may start before the mount, whatever path the config names;
//! a missing mount, a local directory or NFS with local locks are the same
//! to it: it waits.
//!
//! Meanwhile it publishes "waiting for lockspace mount: WHY" in its status
//! (the plugin, the hook and `vmlease status` show it and refuse to lease)
//! and to systemd (`STATUS=`), and logs it. It opens no watchdog and writes
//! nothing to the lockspace while it waits. A lockspace made by a vmlease
//! without lockspace UUIDs gets one (under the header lock, logged), so
//! that an upgrade never leaves a host unprotected.
#![forbid(unsafe_code)]

use std::sync::mpsc;
use std::time::Duration;

use log::{error, info, warn};

use super::{exit, notify_systemd, signals, StartError};
use crate::clock::boottime_ms;
use crate::config::{secs, Config};
use crate::error::Error;
use crate::hosts::HostState;
use crate::lockspace::Lockspace;
use crate::sharedfs::{self, Placement};
use crate::status::Status;

/// How often a waiting reason is logged again while it stays the same.
const RELOG_MS: u64 = 60_000;

/// One look at the lockspace directory.
enum Look {
    Ready(Lockspace, Placement),
    /// Not usable yet: the reason, for status and log.
    Waiting(String),
    /// Not usable, and waiting does not help (a damaged header).
    Fatal(Error),
}

fn look(cfg: &Config) -> Look {
    let dir = &cfg.lockspace_dir;
    let placement = match sharedfs::check(dir, cfg.allow_local_lockspace) {
        Ok(p) => p,
        Err(why) => return Look::Waiting(format!("waiting for lockspace mount: {why}")),
    };
    match Lockspace::open(dir) {
        Ok(ls) if ls.uuid.is_some() => Look::Ready(ls, placement),
        Ok(ls) => match ls.add_uuid() {
            Ok(uuid) => {
                warn!(
                    "lockspace {} had no UUID (initialised by an older vmlease): added UUID {uuid}",
                    dir.display()
                );
                Look::Ready(
                    Lockspace {
                        uuid: Some(uuid),
                        ..ls
                    },
                    placement,
                )
            }
            Err(e) => Look::Waiting(format!("waiting for lockspace: cannot add its UUID: {e}")),
        },
        Err(Error::Lockspace { reason, .. }) if !dir.is_dir() => Look::Waiting(format!(
            "waiting for lockspace mount: {}: {reason}",
            dir.display()
        )),
        Err(Error::Lockspace { reason, .. }) => Look::Waiting(format!(
            "waiting for lockspace: {}: {reason}",
            dir.display()
        )),
        Err(e @ Error::Corrupt { .. }) => Look::Fatal(e),
        Err(e) => Look::Waiting(format!("waiting for lockspace: {e}")),
    }
}

/// Waits until the lockspace can be joined. `Err` carries the exit code:
/// `exit::OK` when a stop was requested while waiting.
pub fn wait(
    cfg: &Config,
    host_id: u16,
    boot_id: &str,
) -> std::result::Result<(Lockspace, Placement), StartError> {
    // The checks run on their own thread: resolving a path on a hung
    // filesystem blocks, and the status must stay fresh meanwhile.
    let (tx, rx) = mpsc::channel::<Look>();
    let c = cfg.clone();
    let every = cfg.timing.renew_interval.clamp(100, 1000);
    std::thread::Builder::new()
        .name("vmlease-lockspace-wait".into())
        .stack_size(super::THREAD_STACK)
        .spawn(move || loop {
            let l = look(&c);
            let done = !matches!(l, Look::Waiting(_));
            if tx.send(l).is_err() || done {
                return;
            }
            std::thread::sleep(Duration::from_millis(every));
        })
        .map_err(|e| StartError::new(exit::CONFIG, Error::io("start lockspace check", "-", e)))?;

    let tick = (cfg.timing.renew_interval / 2).clamp(50, 1000);
    let since = boottime_ms();
    let mut last_answer = since;
    let mut reason = String::new();
    let mut logged: Option<(String, u64)> = None;
    let mut told_systemd = false;
    loop {
        if signals::stop_requested() {
            let _ = std::fs::remove_file(Status::path(&cfg.state_dir));
            return Err(StartError::new(
                exit::OK,
                Error::Unprotected("stopped while waiting for the lockspace".into()),
            ));
        }
        let now = boottime_ms();
        match rx.recv_timeout(Duration::from_millis(tick)) {
            Ok(Look::Ready(ls, placement)) => {
                if logged.is_some() {
                    info!(
                        "lockspace {} is there after {}",
                        cfg.lockspace_dir.display(),
                        secs(boottime_ms() - since)
                    );
                }
                return Ok((ls, placement));
            }
            Ok(Look::Fatal(e)) => return Err(StartError::new(exit::LOCKSPACE, e)),
            Ok(Look::Waiting(why)) => {
                last_answer = now;
                reason = why;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let quiet = now.saturating_sub(last_answer);
                if quiet > cfg.io_timeout {
                    reason = format!(
                        "waiting for lockspace mount: looking at {} does not complete within {} (storage hung?)",
                        cfg.lockspace_dir.display(),
                        secs(cfg.io_timeout)
                    );
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(StartError::new(
                    exit::LOCKSPACE,
                    Error::Unprotected("the lockspace check stopped".into()),
                ))
            }
        }
        // Once READY=1 went out (below), systemd's watchdog runs.
        super::sd_watchdog::keepalive(now);
        if reason.is_empty() {
            continue;
        }
        let again = match &logged {
            Some((r, at)) => *r != reason || now.saturating_sub(*at) >= RELOG_MS,
            None => true,
        };
        if again {
            if logged.as_ref().map(|(r, _)| r != &reason).unwrap_or(true) || !told_systemd {
                notify_systemd(&format!("READY=1\nSTATUS={reason}"));
                told_systemd = true;
            }
            error!("{reason}; this host is not protected and leases nothing until then");
            logged = Some((reason.clone(), now));
        }
        write_waiting(cfg, host_id, boot_id, since, &reason);
    }
}

/// The status while waiting (here, and while the claim waits for slow
/// storage): fresh, never renewed, no lockspace UUID, so that the plugin
/// refuses with the reason.
pub(super) fn write_waiting(cfg: &Config, host_id: u16, boot_id: &str, since: u64, reason: &str) {
    let t = cfg.timing;
    let st = Status {
        daemon_pid: std::process::id(),
        host_id,
        boot_id: boot_id.to_string(),
        incarnation: 0,
        written_ms: boottime_ms(),
        last_renewal_ms: 0,
        state: HostState::Live,
        reason: reason.to_string(),
        unsafe_no_watchdog: cfg.unsafe_no_watchdog,
        lockspace_dir: cfg.lockspace_dir.display().to_string(),
        lockspace_uuid: String::new(),
        allow_local_lockspace: cfg.allow_local_lockspace,
        local_lockspace: String::new(),
        observing_since_ms: since,
        renew_interval_ms: t.renew_interval,
        renew_fail_timeout_ms: t.renew_fail_timeout,
        host_dead_timeout_ms: t.host_dead_timeout,
        networks: Vec::new(),
        peers: Vec::new(),
    };
    if let Err(e) = st.write(&cfg.state_dir) {
        warn!("cannot write status: {e}");
    }
}
