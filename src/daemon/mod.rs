//! The per-host watchdog daemon (`vmlease-watchdog`): renews this host's
//! liveness record, observes the other hosts, releases the leases of QEMU
//! processes that died, watches the networks, and fences by policy.
//!
//! One main loop that never touches shared storage itself: renewals (one
//! write + one table read per tick) run on a storage thread, lease releases
//! on another, probes on a third. The loop only looks at their results, so
//! a hung CephFS cannot stall fencing. What the loop decides is decided by
//! the pure [`core::Core`]; this file is its driver (threads, the reaper's
//! pidfds, the watchdog device, the lockspace I/O, the state files).
#![forbid(unsafe_code)]

pub mod actions;
pub mod claim;
pub mod core;
pub mod fence;
pub mod lockspace_wait;
pub mod metrics;
pub mod probes;
pub mod reaper;
pub mod renew;
pub mod sd_watchdog;
pub mod signals;
pub mod softdog;
mod start;
pub use start::StartError;
pub mod status_writer;
pub mod tcp_abort;
pub mod watchdog;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use log::{error, info, warn, LevelFilter};

use crate::clock::boottime_ms;
use crate::collision::CLAIM_COUNTER;
use crate::config::{self, secs, Config, ResetAction};
use crate::error::{Error, Result};
use crate::hosts::{self, HostRecord, HostState};
use crate::lockspace::Lockspace;
use crate::process;

use self::core::{Command, Core, RenewReq, Renewed, StopNext, TickIn};
use actions::{HostActions, RealHost};
use probes::Round;
use reaper::Reaper;
use watchdog::Watchdog;

/// The stack of each daemon thread. The daemon locks its memory
/// (`mlockall`, current and future), which makes every page of a thread's
/// stack resident: Rust's default of 2 MiB per thread was half of its
/// resident memory. Their deepest use is far below this (no recursion;
/// tables and records live on the heap).
pub const THREAD_STACK: usize = 256 * 1024;

/// Exit codes of `vmlease-watchdog`.
pub mod exit {
    pub const OK: i32 = 0;
    pub const CONFIG: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const LOCKSPACE: i32 = 3;
    pub const WATCHDOG: i32 = 4;
    pub const RUNNING: i32 = 5;
    /// Stopped (SIGTERM) while leased QEMU processes run: the hardware
    /// watchdog stays armed. Non-zero so that systemd shows the unit
    /// failed and `Restart=on-failure` restarts a daemon that was not
    /// stopped through systemd.
    pub const STOPPED_LEASED: i32 = 6;
}

const USAGE: &str = "usage: vmlease-watchdog [--config FILE] [--verbose] [--log-boottime]

Renews this host's liveness lease in the vmlease lockspace, watches the
networks and the other hosts, releases the leases of QEMU processes that
exit, and fences this host (kills its leased VMs, then resets it through
the hardware watchdog) when its storage or, by policy, its networks fail.
Runs in the foreground; SIGTERM stops it.

  --config FILE   configuration (default /etc/libvirt/qemu-vmlease.conf)
  --verbose       log debug messages
  --log-boottime  start each line on stderr with CLOCK_BOOTTIME in ms

Exit codes: 0 clean stop, 1 bad configuration, 2 usage, 3 lockspace or
host id problem, 4 watchdog device problem, 5 already running, 6 stopped
while leased VMs run (the hardware watchdog stays armed).";

/// Entry point of the `vmlease-watchdog` binary; returns the exit code.
pub fn main(args: Vec<String>) -> i32 {
    if let Some(code) = crate::rados::worker::run_if_asked(&args) {
        return code;
    }
    let mut path = PathBuf::from(config::DEFAULT_PATH);
    let mut level = LevelFilter::Info;
    let mut it = args.into_iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" => match it.next() {
                Some(p) => path = PathBuf::from(p),
                None => {
                    eprintln!("{USAGE}");
                    return exit::USAGE;
                }
            },
            "--verbose" | "-v" => level = LevelFilter::Debug,
            "--log-boottime" => crate::logging::set_boottime_prefix(),
            "--help" | "-h" => {
                println!("{USAGE}");
                return exit::OK;
            }
            other => {
                eprintln!("vmlease-watchdog: unknown argument '{other}'\n{USAGE}");
                return exit::USAGE;
            }
        }
    }
    crate::logging::set_daemon_ident();
    crate::logging::init_daemon(level);
    let code = load_and_run(&path);
    // Lines still queued for stderr get a moment to reach it.
    crate::logging::drain(std::time::Duration::from_secs(1));
    code
}

fn load_and_run(path: &Path) -> i32 {
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return exit::CONFIG;
        }
    };
    if !path.exists() {
        error!("{}: no such file", path.display());
        return exit::CONFIG;
    }
    match Daemon::start(cfg) {
        Ok(mut d) => d.run(),
        Err(e) if e.exit_code() == exit::OK => {
            info!("{}", e.error());
            exit::OK
        }
        Err(e) => {
            error!("{}", e.error());
            e.exit_code()
        }
    }
}

/// The file in the state directory that puts the daemon in maintenance.
pub const MAINTENANCE_MARKER: &str = "maintenance";
pub use core::status::DISARMED_NOTE;

/// The driver of [`Core`]: owns the threads, the pidfds (through the
/// reaper), the watchdog device and the lockspace I/O.
pub struct Daemon {
    cfg: Config,
    ls: Lockspace,
    core: Core,
    renew_tx: Sender<RenewReq>,
    renew_rx: Receiver<Renewed>,
    reaper: Reaper,
    watchdog: Box<dyn Watchdog>,
    host: Box<dyn HostActions>,
    /// The TCP sockets noted before the fence's kills, for the abort.
    sockets: tcp_abort::Sockets,
    probe_out: Arc<Mutex<Vec<(&'static str, Round)>>>,
    /// The thread that writes the status file.
    status: status_writer::StatusWriter,
    /// The thread that writes the metrics (`metrics_dir`), and when the
    /// next snapshot is due.
    metrics: Option<metrics::MetricsWriter>,
    metrics_due_ms: u64,
    _instance_lock: std::fs::File,
}

impl Daemon {
    /// The main loop; returns the exit code.
    pub fn run(&mut self) -> i32 {
        notify_systemd(&format!(
            "READY=1\nSTATUS=joined lockspace {} (UUID {}) as host {}",
            self.cfg.lockspace_dir.display(),
            self.ls.uuid.as_deref().unwrap_or("-"),
            self.core.setup.host_id
        ));
        let tick = self.cfg.timing.renew_interval.clamp(20, 100);
        loop {
            if signals::stop_requested() {
                return self.stop();
            }
            let now = boottime_ms();
            self.collect_renewal(now);
            if self.core.reset_done() {
                // A recorded reset (tests): behave like a dead host.
                self.reaper.wait(tick);
                continue;
            }
            self.collect_probes();
            self.reaper.scan();
            let input = TickIn {
                now,
                wall_secs: crate::clock::SystemClock.wall_secs(),
                alive_leased: self.reaper.alive_count(),
                clear_asked: self.take_clear_request(),
                maintenance: self.cfg.state_dir.join(MAINTENANCE_MARKER).exists(),
            };
            let reaper = &mut self.reaper;
            let cmds = self.core.tick(input, || {
                reaper.scan_now();
                reaper.alive_count()
            });
            for c in cmds {
                if let Some(code) = self.execute(now, c) {
                    return code;
                }
            }
            if self.core.reset_done() {
                continue;
            }
            self.reaper.release_dead();
            self.offer_metrics(now);
            // The loop went round: tell systemd (WatchdogSec=).
            sd_watchdog::keepalive(now);
            self.reaper.wait(tick);
        }
    }

    /// Does one command of the core; `Some(exit code)` ends the loop.
    fn execute(&mut self, now: u64, c: Command) -> Option<i32> {
        let host_id = self.core.setup.host_id;
        match c {
            Command::FenceLog { line, fence: true } => {
                error!(event = "fence", host_id = host_id; "{line}")
            }
            Command::FenceLog { line, fence: false } => warn!("{line}"),
            Command::KillAll => {
                let procs = self.reaper.alive_processes();
                // The sockets first (a few ms): once killed, a process's
                // sockets can no longer be told from others'.
                let ids: Vec<process::ProcId> = procs.iter().map(|(p, _)| *p).collect();
                match self.sockets.before_kill(&ids) {
                    Ok(()) => {}
                    Err(e) => error!(
                        "fence: cannot list the TCP sockets of the leased QEMU processes ({e}); \
                         killing them anyway, only orphans to endpoints noted before are aborted"
                    ),
                }
                for (p, what) in procs {
                    match self.host.kill(p) {
                        Ok(true) => {
                            self.core.counters.fence_kills += 1;
                            warn!("fence: killed QEMU pid {} ({what})", p.pid)
                        }
                        Ok(false) => {}
                        Err(e) => error!("fence: cannot kill QEMU pid {} ({what}): {e}", p.pid),
                    }
                }
            }
            Command::AbortSockets => self.abort_sockets(host_id),
            Command::Reset { why } => {
                error!(event = "fence", host_id = host_id; "resetting the host: {why}");
                if let Err(e) = self.host.reset(why) {
                    error!("reset failed: {e}; the hardware watchdog fires when it expires");
                }
            }
            Command::Pet => {
                let pet = self.watchdog.pet();
                let counters = &mut self.core.counters;
                match (&pet, self.cfg.unsafe_no_watchdog) {
                    (_, true) => {}
                    (Ok(()), false) => counters.watchdog_pets += 1,
                    (Err(_), false) => counters.watchdog_pet_failures += 1,
                }
                if let Err(e) = pet {
                    error!("cannot pet the watchdog {}: {e}", self.watchdog.describe());
                    if !self.watchdog.is_open() {
                        // A deferred open failed: without a watchdog this
                        // host must not run protected VMs; stopping makes
                        // the plugin refuse.
                        error!("no hardware watchdog: stopping");
                        return Some(exit::WATCHDOG);
                    }
                }
            }
            Command::State { from, to } => {
                info!("host state {from} -> {to}");
                fence::store_marker(&self.cfg.state_dir, &self.core.fence.phase);
            }
            Command::Renew(req) => {
                if self.renew_tx.send(req).is_err() {
                    self.core.renewal_not_sent();
                }
            }
            Command::WriteStatus => {
                // Written by the status thread: this loop pets the
                // watchdog and must never wait for a file system.
                self.status.offer(self.core.status(now, std::process::id()));
            }
        }
        None
    }

    /// Destroys the TCP sockets noted before the kills (and the orphans
    /// to their endpoints), and says so in the journal.
    fn abort_sockets(&mut self, host_id: u16) {
        let snap_ms = self.sockets.last_snapshot_ms;
        let t0 = boottime_ms();
        match self.sockets.abort() {
            None => info!("fence: no TCP socket of a killed QEMU process to abort"),
            Some(Ok(a)) => {
                let line = format!(
                    "{} (snapshot {snap_ms} ms before the kill, abort {} ms)",
                    a.describe(),
                    boottime_ms().saturating_sub(t0)
                );
                if a.errors.is_empty() {
                    warn!(event = "fence-tcp-abort", host_id = host_id; "{line}")
                } else {
                    error!(event = "fence-tcp-abort", host_id = host_id; "{line}")
                }
            }
            Some(Err(e)) => error!(
                event = "fence-tcp-abort", host_id = host_id;
                "fence: cannot abort the killed QEMU processes' TCP sockets: {e}; \
                 their unsent writes may still reach the storage"
            ),
        }
    }

    fn collect_renewal(&mut self, now: u64) {
        while let Ok(r) = self.renew_rx.try_recv() {
            self.core.renewed(now, r);
        }
        self.core.check_late(now);
    }

    fn collect_probes(&mut self) {
        let rounds = self
            .probe_out
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        for (name, r) in rounds {
            if let Some(n) = self.core.probe_round(name, r) {
                let (s, d) = n.describe(boottime_ms());
                warn!("{} network is {s}: {d}", n.name);
            }
        }
    }

    fn take_clear_request(&self) -> bool {
        let p = self.cfg.state_dir.join("clear-fence");
        if p.exists() {
            let _ = std::fs::remove_file(&p);
            info!(event = "clear-fence", host_id = self.core.setup.host_id; "operator asked to clear the fence");
            true
        } else {
            false
        }
    }

    /// Every R (at least 1 s, at most 5 s apart): a snapshot for the
    /// metrics thread. Building it copies a few fields; the rendering and
    /// the file I/O happen on that thread.
    fn offer_metrics(&mut self, now: u64) {
        let Some(w) = &self.metrics else {
            return;
        };
        if now < self.metrics_due_ms {
            return;
        }
        self.metrics_due_ms = now + self.cfg.timing.renew_interval.clamp(1000, 5000);
        self.core.counters.dead_qemu_released = self.reaper.released_total();
        w.offer(self.core.snapshot(
            now,
            self.reaper.alive_count(),
            self.reaper.alive_lease_count(),
        ));
    }

    /// The number of leased QEMU processes that run, from a fresh registry
    /// scan; with a warning when there are any.
    fn leased_running_at_stop(&mut self) -> usize {
        self.reaper.scan_now();
        let alive = self.reaper.alive_processes().len();
        if alive > 0 {
            let w = secs(self.cfg.timing.watchdog_timeout);
            error!(
                event = "stopped-with-leases", host_id = self.core.setup.host_id;
                "stopping with {alive} leased QEMU process(es) running: the hardware watchdog stays armed; \
                 restart vmlease-watchdog within {w} or the host resets"
            );
            notify_systemd(&format!(
                "STOPPING=1\nSTATUS=STOPPED WITH {alive} LEASED VM(S) RUNNING: the host resets within {w} unless vmlease-watchdog is started again"
            ));
        }
        alive
    }

    /// Clean stop on SIGTERM: the core's stop path, step by step.
    fn stop(&mut self) -> i32 {
        let mut leased = None;
        loop {
            let now = boottime_ms();
            let wall = crate::clock::SystemClock.wall_secs();
            match self.core.stop(now, wall, leased.take()) {
                StopNext::Withdraw => {
                    let wait = std::time::Duration::from_millis(self.cfg.io_timeout);
                    if !self.status.withdraw(wait) {
                        warn!(
                            "the status file could not be removed within {} (its write hangs): \
                             it may stay behind, stale, which readers take for 'not protected'",
                            secs(self.cfg.io_timeout)
                        );
                    }
                    leased = Some(self.leased_running_at_stop());
                }
                StopNext::Count => leased = Some(self.leased_running_at_stop()),
                StopNext::WaitRenewal => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    self.collect_renewal(boottime_ms());
                }
                StopNext::StayArmed(_) => return exit::STOPPED_LEASED,
                StopNext::Leave(req) => {
                    let ls = self.ls.clone();
                    let id = self.core.setup.host_id;
                    match crate::deadline::run(
                        2 * self.cfg.io_timeout,
                        "write leaving record",
                        &ls.hosts_path(),
                        move || renew::renew_io(&ls, id, &req.expect, req.rec.as_ref()),
                    ) {
                        Ok(io) => match io.collision {
                            None => info!("left the lockspace cleanly"),
                            Some(c) => error!("{c}; not publishing 'leaving'"),
                        },
                        Err(e) => warn!("could not publish 'leaving': {e}"),
                    }
                    break;
                }
                StopNext::Disarm => break,
            }
        }
        if let Err(e) = self.watchdog.disarm() {
            warn!("cannot disarm the watchdog: {e}");
        }
        info!("stopped");
        exit::OK
    }
}

/// sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET.
pub(crate) fn notify_systemd(msg: &str) {
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    if let Some(abs) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        if let Ok(addr) = std::os::unix::net::SocketAddr::from_abstract_name(abs.as_bytes()) {
            let _ = sock.send_to_addr(msg.as_bytes(), &addr);
        }
    } else {
        let _ = sock.send_to(msg.as_bytes(), path);
    }
}

use crate::clock::Clock as _;
