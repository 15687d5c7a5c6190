//! The per-host watchdog daemon (`vmlease-watchdog`): renews this host's
//! liveness record, observes the other hosts, releases the leases of QEMU
//! processes that died, watches the networks, and fences by policy.
//!
//! One main loop that never touches shared storage itself: renewals (one
//! write + one table read per tick) run on a storage thread, lease releases
//! on another, probes on a third. The loop only looks at their results, so
//! a hung CephFS cannot stall fencing.
#![forbid(unsafe_code)]

pub mod actions;
pub mod claim;
pub mod fence;
pub mod lockspace_wait;
pub mod metrics;
pub mod probes;
pub mod reaper;
pub mod renew;
pub mod sd_watchdog;
pub mod signals;
pub mod softdog;
pub mod watchdog;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};

use log::{error, info, warn, LevelFilter};

use crate::clock::boottime_ms;
use crate::collision::CLAIM_COUNTER;
use crate::config::{self, secs, Config, ResetAction};
use crate::error::{Error, Result};
use crate::hosts::{self, HostRecord, HostState};
use crate::lockspace::Lockspace;
use crate::process;
use crate::status::{NetView, Observer, Status};

use actions::{HostActions, RealHost};
use fence::{Fence, Inputs, Phase};
use probes::{NetState, Nets, Round};
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

const USAGE: &str = "usage: vmlease-watchdog [--config FILE] [--verbose]

Renews this host's liveness lease in the vmlease lockspace, watches the
networks and the other hosts, releases the leases of QEMU processes that
exit, and fences this host (kills its leased VMs, then resets it through
the hardware watchdog) when its storage or, by policy, its networks fail.
Runs in the foreground; SIGTERM stops it.

  --config FILE   configuration (default /etc/libvirt/qemu-vmlease.conf)
  --verbose       log debug messages

Exit codes: 0 clean stop, 1 bad configuration, 2 usage, 3 lockspace or
host id problem, 4 watchdog device problem, 5 already running, 6 stopped
while leased VMs run (the hardware watchdog stays armed).";

/// Entry point of the `vmlease-watchdog` binary; returns the exit code.
pub fn main(args: Vec<String>) -> i32 {
    if args.get(1).map(String::as_str) == Some(crate::rados::worker::ARG) && args.len() == 2 {
        return crate::rados::worker::main();
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
        Err((exit::OK, e)) => {
            info!("{e}");
            exit::OK
        }
        Err((code, e)) => {
            error!("{e}");
            code
        }
    }
}

/// A request to the renewal thread: the records our slot may hold, and
/// the record to write when it holds one of them (`None`: only read).
struct RenewReq {
    expect: Vec<Vec<u8>>,
    rec: Option<HostRecord>,
    issued_ms: u64,
}

/// Result of one renewal on the storage thread.
struct Renewed {
    issued_ms: u64,
    /// The encoded record it was asked to write.
    written: Option<Vec<u8>>,
    result: Result<renew::RenewIo>,
    /// How long the I/O took, measured on the storage thread.
    took_ms: u64,
}

/// At most this many records the slot may hold while writes fail (each
/// may or may not have landed); more means renewals failed for far longer
/// than F and the host has fenced anyway.
const MAX_EXPECT: usize = 32;

/// The file in the state directory that puts the daemon in maintenance.
pub const MAINTENANCE_MARKER: &str = "maintenance";
/// Appended to a network's detail in the status while its fence policy
/// is disarmed by maintenance (vmlease-ha's agent waits for it).
pub const DISARMED_NOTE: &str = " (fence disarmed: maintenance)";

pub struct Daemon {
    cfg: Config,
    ls: Lockspace,
    host_id: u16,
    host_name: String,
    boot_id: String,
    incarnation: u64,
    counter: u64,
    started_ms: u64,
    last_renewal_ms: u64,
    renew_inflight: Option<u64>,
    next_renew_ms: u64,
    /// The records our slot may hold: the one we wrote last, and those
    /// whose write failed after it (they may have landed).
    expect: Vec<Vec<u8>>,
    /// The records whose write failed since the last claim (oldest
    /// first, at most MAX_EXPECT): they may land late, after a later
    /// write ([`renew::after_write`]).
    unconfirmed: Vec<Vec<u8>>,
    renew_tx: Sender<RenewReq>,
    renew_rx: Receiver<Renewed>,
    observer: Observer,
    fence: Fence,
    reaper: Reaper,
    watchdog: Box<dyn Watchdog>,
    host: Box<dyn HostActions>,
    nets: Nets,
    probe_out: Arc<Mutex<Vec<(&'static str, Round)>>>,
    /// Another machine wrote our slot: we write it no more until a
    /// re-claim (`vmlease clear-fence`) succeeds.
    collision: bool,
    /// A renewal failed with EBLOCKLISTED since the last one that wrote
    /// (`renew::blocklisted`): Ceph refuses this host; it fences at once.
    blocklisted: bool,
    /// Why the lockspace is not really shared (allow_local_lockspace).
    local_lockspace: Option<String>,
    collision_msg: String,
    /// A re-claim of the slot after a collision, driven by table reads.
    reclaim: Option<claim::Claim>,
    /// What the last re-claim said (for the status).
    reclaim_note: String,
    /// A re-claim succeeded: clear the fence once a renewal confirms it.
    clear_after_renewal: bool,
    clear_ready: bool,
    reset_done: bool,
    last_state: HostState,
    last_renew_error: String,
    /// When the status was last written, and what it said.
    status_written_ms: u64,
    status_key: (HostState, u64, String),
    /// `STATE_DIR/maintenance` exists: network-policy fences disarmed.
    maintenance: bool,
    /// What the loop counts for the metrics, and the thread that writes
    /// them (`metrics_dir`), with when the next snapshot is due.
    counters: crate::metrics::Counters,
    metrics: Option<metrics::MetricsWriter>,
    metrics_due_ms: u64,
    _instance_lock: std::fs::File,
}

impl Daemon {
    pub fn start(cfg: Config) -> std::result::Result<Daemon, (i32, Error)> {
        let host_id = cfg.require_host_id().map_err(|e| (exit::CONFIG, e))?;
        for w in cfg.warnings() {
            warn!("{w}");
        }
        let state_dir = cfg.state_dir.clone();
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| (exit::CONFIG, Error::io("create state dir", &state_dir, e)))?;
        let instance_lock = single_instance(&state_dir).map_err(|e| (exit::RUNNING, e))?;
        let boot_id = process::boot_id().map_err(|e| {
            (
                exit::CONFIG,
                Error::io("read boot id", "/proc/sys/kernel/random/boot_id", e),
            )
        })?;
        let host_name = cfg.host_name.clone().unwrap_or_else(process::hostname);
        // The config checked a configured name; the kernel's may be any
        // 64 bytes, which the liveness slot may not hold.
        if let Err(why) = crate::hosts::check_host_name(&host_name) {
            return Err((
                exit::CONFIG,
                Error::Config(format!(
                    "the host name '{host_name}' {why}: set host_name in the config"
                )),
            ));
        }

        signals::install();
        if let Some(t) = sd_watchdog::init() {
            if let Some(w) = sd_watchdog::check(t, cfg.timing.watchdog_timeout) {
                warn!("{w}");
            }
        }
        let (ls, placement) = lockspace_wait::wait(&cfg, host_id, &boot_id)?;
        if let Some(why) = &placement.local {
            warn!("LOCAL LOCKSPACE (allow_local_lockspace = true): {why}; it protects nothing across hosts; for tests and demos only");
        }
        let ls = liveness_path(&cfg, ls, placement.mount.is_cephfs())?;
        if host_id > ls.max_hosts {
            return Err((
                exit::CONFIG,
                Error::Config(format!(
                    "host_id {host_id} is larger than the lockspace's {} slots",
                    ls.max_hosts
                )),
            ));
        }
        // After a collision fence, even our own record of this boot gets
        // the claim delay: the other machine may still be about.
        let careful = fence::load_marker(&cfg.state_dir) == Some(fence::Cause::HostIdCollision);
        let incarnation = process::random_u64();
        let (own, written) = claim::claim(
            &ls,
            claim::Claim::new(
                host_id,
                &host_name,
                &boot_id,
                cfg.timing.host_dead_timeout,
                cfg.io_timeout,
                cfg.timing.renew_interval,
                careful,
            ),
            cfg.io_timeout,
            || {
                host_record(
                    &cfg,
                    host_id,
                    &host_name,
                    &boot_id,
                    incarnation,
                    CLAIM_COUNTER,
                    HostState::Live,
                )
            },
        )
        .map_err(|e| {
            if matches!(e, Error::Config(_)) {
                crate::collision::store_refusal(&cfg.state_dir, Some(&e.to_string()));
            }
            (exit::LOCKSPACE, e)
        })?;
        crate::collision::store_refusal(&cfg.state_dir, None);
        // A restart on the same boot continues the fence clock of the
        // daemon before it, from our own record as the claim read it
        // (fence::clock_start, KB1).
        let now0 = boottime_ms();
        let fence_clock = fence::clock_start(Some(&own), &host_name, &boot_id, now0);
        if fence_clock < now0 {
            info!(
                "continuing the previous daemon's fence clock: last renewal {} ago",
                secs(now0 - fence_clock)
            );
        }

        // Opening a watchdog device pings it. A daemon restarted while its
        // host's renewals had already failed for F, or while it is fenced,
        // must not extend a watchdog its predecessor left running: it
        // opens the device at its first pet, which the fence allows only
        // once it is safe again.
        let late = now0.saturating_sub(fence_clock) > cfg.timing.renew_fail_timeout;
        let defer = late || fence::load_marker(&cfg.state_dir).is_some();
        if !cfg.unsafe_no_watchdog {
            if let Err(why) = softdog::check(Path::new("/"), &cfg.watchdog_device) {
                if !matches!(cfg.reset_action, ResetAction::Record(_)) {
                    return Err((
                        exit::WATCHDOG,
                        Error::io(
                            "check hardware watchdog",
                            &cfg.watchdog_device,
                            std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
                        ),
                    ));
                }
                warn!("{why} (accepted: reset_action = \"record\" is test mode)");
            }
        }
        let watchdog: Box<dyn Watchdog> = if cfg.unsafe_no_watchdog {
            warn!("RUNNING WITHOUT A HARDWARE WATCHDOG (unsafe_no_watchdog = true): a hung host will not be reset; for tests and demos only");
            Box::new(watchdog::NoWatchdog)
        } else if defer {
            warn!(
                "restarted while this host is fencing or fenced: the watchdog {} is opened (armed) only once it is safe to pet it",
                cfg.watchdog_device.display()
            );
            Box::new(
                watchdog::Deferred::new(&cfg.watchdog_device, cfg.timing.watchdog_timeout)
                    .map_err(|e| {
                        (
                            exit::WATCHDOG,
                            Error::io("check hardware watchdog", &cfg.watchdog_device, e),
                        )
                    })?,
            )
        } else {
            watchdog::open(&cfg.watchdog_device, cfg.timing.watchdog_timeout).map_err(|e| {
                (
                    exit::WATCHDOG,
                    Error::io("open hardware watchdog", &cfg.watchdog_device, e),
                )
            })?
        };
        info!("watchdog: {}", watchdog.describe());
        try_realtime();

        let (renew_tx, renew_rx) = spawn_renewer(ls.clone(), host_id);
        let reaper = Reaper::new(&cfg, ls.clone(), host_id, &boot_id);
        let nets = Nets {
            storage: NetState::new("storage", cfg.storage.clone()),
            management: NetState::new("management", cfg.management.clone()),
            service: NetState::new("service", cfg.service.clone()),
        };
        let probe_out = Arc::new(Mutex::new(Vec::new()));
        probes::spawn(
            nets.iter().map(|n| (n.name, n.net.clone())).collect(),
            cfg.timing.renew_interval,
            probe_out.clone(),
        )
        .map_err(|e| (exit::CONFIG, Error::io("start prober", "-", e)))?;

        let metrics = match &cfg.metrics_dir {
            None => None,
            Some(dir) => match metrics::MetricsWriter::spawn(dir.clone(), cfg.state_dir.clone()) {
                Ok(w) => {
                    info!(
                        "metrics: writing {} for node_exporter's textfile collector",
                        dir.join(crate::metrics::FILE_NAME).display()
                    );
                    Some(w)
                }
                Err(e) => {
                    warn!("metrics: cannot start the metrics thread ({e}); going on without them");
                    None
                }
            },
        };

        let now = boottime_ms();
        let mut fence = Fence::new(cfg.timing, cfg.management.policy, cfg.service.policy);
        // A fence survives a daemon restart (not a reboot: the state dir is
        // on tmpfs); only the operator clears it.
        if let Some(cause) = fence::load_marker(&cfg.state_dir) {
            warn!(
                "this host was fenced before the restart ({}); it starts no protected VM until 'vmlease clear-fence'",
                cause.describe()
            );
            fence.phase = Phase::Fenced { cause, since: now };
        }
        crate::storage_fence::publish_target(&ls, &cfg, host_id, &boot_id);
        info!(
            "host {host_id} ({host_name}) joined lockspace {} (UUID {}) on {}; renew every {}, fence after {}, takeover by others after {}",
            cfg.lockspace_dir.display(),
            ls.uuid.as_deref().unwrap_or("-"),
            placement.mount.describe(),
            secs(cfg.timing.renew_interval),
            secs(cfg.timing.renew_fail_timeout),
            secs(cfg.timing.host_dead_timeout)
        );
        Ok(Daemon {
            ls,
            host_id,
            host_name,
            boot_id,
            incarnation,
            counter: CLAIM_COUNTER,
            started_ms: fence_clock,
            last_renewal_ms: 0,
            renew_inflight: None,
            next_renew_ms: now,
            expect: vec![written],
            unconfirmed: Vec::new(),
            renew_tx,
            renew_rx,
            observer: Observer::new(now),
            fence,
            reaper,
            watchdog,
            host: Box::new(RealHost {
                reset_action: cfg.reset_action.clone(),
            }),
            nets,
            probe_out,
            collision: false,
            blocklisted: false,
            local_lockspace: placement.local,
            collision_msg: String::new(),
            reclaim: None,
            reclaim_note: String::new(),
            clear_after_renewal: false,
            clear_ready: false,
            reset_done: false,
            last_state: HostState::Live,
            last_renew_error: String::new(),
            status_written_ms: 0,
            status_key: (HostState::Live, 0, String::new()),
            maintenance: false,
            counters: crate::metrics::Counters::default(),
            metrics,
            metrics_due_ms: now,
            _instance_lock: instance_lock,
            cfg,
        })
    }

    fn record(&self, state: HostState) -> HostRecord {
        host_record(
            &self.cfg,
            self.host_id,
            &self.host_name,
            &self.boot_id,
            self.incarnation,
            self.counter,
            state,
        )
    }

    /// The main loop; returns the exit code.
    pub fn run(&mut self) -> i32 {
        notify_systemd(&format!(
            "READY=1\nSTATUS=joined lockspace {} (UUID {}) as host {}",
            self.cfg.lockspace_dir.display(),
            self.ls.uuid.as_deref().unwrap_or("-"),
            self.host_id
        ));
        let tick = self.cfg.timing.renew_interval.clamp(20, 100);
        loop {
            if signals::stop_requested() {
                return self.stop();
            }
            let now = boottime_ms();
            self.collect_renewal(now);
            if self.reset_done {
                // A recorded reset (tests): behave like a dead host.
                self.reaper.wait(tick);
                continue;
            }
            self.collect_probes();
            self.reaper.scan();
            let alive = self.reaper.alive_count();

            let mgmt_lost = self.nets.management.lost(now);
            let service_lost = self.nets.service.lost(now);
            self.check_maintenance();
            let clear = self.clear_input();
            let mut inputs = Inputs {
                now,
                last_renewal: self.last_renewal_ms,
                started: self.started_ms,
                mgmt_lost,
                service_lost,
                mgmt_down: self.nets.management.down(),
                service_down: self.nets.service.down(),
                collision: self.collision,
                blocklisted: self.blocklisted,
                alive_leased: alive,
                clear_requested: clear,
            };
            let cause_before = fence_cause(&self.fence.phase);
            let reaper = &mut self.reaper;
            let act = self.fence.step_counted(&mut inputs, || {
                reaper.scan_now();
                reaper.alive_count()
            });
            if let (None, Some(c)) = (cause_before, fence_cause(&self.fence.phase)) {
                if let Some(i) = crate::metrics::FENCE_REASONS
                    .iter()
                    .position(|r| *r == c.as_str())
                {
                    self.counters.fences[i] += 1;
                }
            }
            if let Some(l) = &act.log {
                if act.kill_all || act.reset {
                    error!(event = "fence", host_id = self.host_id; "{l}");
                } else {
                    warn!("{l}");
                }
            }
            if act.kill_all {
                for (p, what) in self.reaper.alive_processes() {
                    match self.host.kill(p) {
                        Ok(true) => {
                            self.counters.fence_kills += 1;
                            warn!("fence: killed QEMU pid {} ({what})", p.pid)
                        }
                        Ok(false) => {}
                        Err(e) => error!("fence: cannot kill QEMU pid {} ({what}): {e}", p.pid),
                    }
                }
            }
            if act.reset && !self.reset_done {
                let why = match &self.fence.phase {
                    Phase::Reset { cause } => cause.describe(),
                    _ => "fence",
                };
                error!(event = "fence", host_id = self.host_id; "resetting the host: {why}");
                if let Err(e) = self.host.reset(why) {
                    error!("reset failed: {e}; the hardware watchdog fires when it expires");
                }
                self.reset_done = true;
                continue;
            }
            if act.pet {
                let pet = self.watchdog.pet();
                match (&pet, self.cfg.unsafe_no_watchdog) {
                    (_, true) => {}
                    (Ok(()), false) => self.counters.watchdog_pets += 1,
                    (Err(_), false) => self.counters.watchdog_pet_failures += 1,
                }
                if let Err(e) = pet {
                    error!("cannot pet the watchdog {}: {e}", self.watchdog.describe());
                    if !self.watchdog.is_open() {
                        // A deferred open failed: without a watchdog this
                        // host must not run protected VMs; stopping makes
                        // the plugin refuse.
                        error!("no hardware watchdog: stopping");
                        return exit::WATCHDOG;
                    }
                }
            }
            if act.state != self.last_state {
                info!("host state {} -> {}", self.last_state, act.state);
                self.last_state = act.state;
                fence::store_marker(&self.cfg.state_dir, &self.fence.phase);
            }
            self.maybe_renew(now, act.state);
            self.reaper.release_dead();
            // The status is rewritten when it changes and at least every
            // R/2 (the plugin wants it younger than R + 0.5 s).
            let key = (
                self.last_state,
                self.last_renewal_ms,
                self.last_renew_error.clone(),
            );
            let every = (self.cfg.timing.renew_interval / 2).clamp(50, 1000);
            if key != self.status_key || now.saturating_sub(self.status_written_ms) >= every {
                self.write_status(now);
                self.status_written_ms = now;
                self.status_key = key;
            }
            self.offer_metrics(now);
            // The loop went round: tell systemd (WatchdogSec=).
            sd_watchdog::keepalive(now);
            self.reaper.wait(tick);
        }
    }

    fn maybe_renew(&mut self, now: u64, state: HostState) {
        if self.renew_inflight.is_some() || now < self.next_renew_ms {
            return;
        }
        self.next_renew_ms = now + self.cfg.timing.renew_interval;
        // After a collision the slot is not ours: read the table only (to
        // observe the others, and for a re-claim), write nothing - unless
        // the re-claim asks for its claim write.
        let rec = if self.collision {
            match self.reclaim.as_mut().map(|c| c.pending_write()) {
                Some(Some(expect)) => {
                    self.expect = vec![expect];
                    self.unconfirmed.clear();
                    self.counter = CLAIM_COUNTER;
                    Some(self.record(HostState::Live))
                }
                _ => None,
            }
        } else {
            self.counter += 1;
            Some(self.record(state))
        };
        let req = RenewReq {
            expect: self.expect.clone(),
            rec,
            issued_ms: now,
        };
        if self.renew_tx.send(req).is_ok() {
            self.renew_inflight = Some(now);
        }
    }

    /// The clear request as the fence sees it. A collision fence is cleared
    /// only through a new claim of the slot (`claim::Claim`, the same rules
    /// as at start): the request starts one, and the fence hears "clear"
    /// once the claim has succeeded and a renewal confirmed it.
    fn clear_input(&mut self) -> bool {
        let asked = self.take_clear_request();
        if std::mem::take(&mut self.clear_ready) {
            self.reclaim_note.clear();
            return true;
        }
        if asked && self.collision {
            if self.reclaim.is_none() {
                info!(
                    "host id {}: re-claiming the slot before clearing the collision fence",
                    self.host_id
                );
                self.reclaim_note = "re-claiming the host id".into();
                self.reclaim = Some(claim::Claim::new(
                    self.host_id,
                    &self.host_name,
                    &self.boot_id,
                    self.cfg.timing.host_dead_timeout,
                    self.cfg.io_timeout,
                    self.cfg.timing.renew_interval,
                    true,
                ));
                // Read the slot at once.
                self.next_renew_ms = 0;
            }
            return false;
        }
        asked
    }

    /// Feeds a re-claim with our slot as read at `now`.
    fn step_reclaim(&mut self, now: u64, own: &[u8], wrote: Option<Vec<u8>>) {
        let Some(c) = self.reclaim.as_mut() else {
            return;
        };
        let step = match wrote {
            Some(rec) => c.wrote(now, rec),
            None => c.step(now, own),
        };
        match step {
            claim::ClaimStep::ReadAt(at) => self.next_renew_ms = at,
            claim::ClaimStep::Write { .. } => self.next_renew_ms = 0,
            claim::ClaimStep::Joined | claim::ClaimStep::Rejoined => {
                info!(
                    "host id {}: slot claimed again; the collision is over",
                    self.host_id
                );
                self.reclaim = None;
                self.reclaim_note =
                    "re-claiming the host id: claimed; clearing at the next renewal".into();
                self.collision = false;
                self.collision_msg.clear();
                self.clear_after_renewal = true;
                self.next_renew_ms = 0;
            }
            claim::ClaimStep::Refused(why) => {
                warn!("fence not cleared: {why}");
                self.reclaim = None;
                self.reclaim_note = format!("fence not cleared: {why}");
            }
        }
    }

    fn collect_renewal(&mut self, now: u64) {
        loop {
            match self.renew_rx.try_recv() {
                Ok(r) => {
                    self.renew_inflight = None;
                    match r.result {
                        Ok(io) => {
                            let raw = io.table;
                            let own = renew::own_slot(&raw, self.host_id);
                            let written = r.written.clone().unwrap_or_default();
                            if self.reclaim.is_some() {
                                // A re-claim's read, its claim write, or the
                                // claim write refused (the slot changed).
                                if io.wrote {
                                    self.expect = vec![written.clone()];
                                    self.step_reclaim(now, &own, Some(written));
                                } else {
                                    self.step_reclaim(now, &own, None);
                                }
                            } else if let Some(c) = io.collision {
                                if !self.collision {
                                    error!(
                                        event = "collision", host_id = self.host_id;
                                        "{c}; this host ('{}', boot {}) fences and stops writing the slot; \
                                         give one of the machines another host_id, then run 'vmlease clear-fence'",
                                        self.host_name,
                                        crate::collision::short(&self.boot_id)
                                    );
                                    self.collision_msg = c.to_string();
                                }
                                self.collision = true;
                            } else if io.wrote {
                                self.counters.renewals += 1;
                                self.counters.renewal_latency.observe(r.took_ms);
                                if self.last_renewal_ms == 0 || !self.last_renew_error.is_empty() {
                                    info!("liveness lease renewed (counter {})", self.counter);
                                    self.last_renew_error.clear();
                                }
                                self.last_renewal_ms = r.issued_ms;
                                self.blocklisted = false;
                                self.expect =
                                    renew::after_write(&self.unconfirmed, written, MAX_EXPECT);
                                if self.clear_after_renewal {
                                    self.clear_after_renewal = false;
                                    self.clear_ready = true;
                                }
                            }
                            let slots = hosts::decode_table(&raw);
                            self.observer.update(now, &raw, &slots);
                        }
                        Err(e) => {
                            self.counters.renewal_failures += 1;
                            // A write that failed may have landed.
                            if let Some(w) = r.written {
                                if !self.unconfirmed.contains(&w) {
                                    self.unconfirmed.push(w.clone());
                                }
                                if self.unconfirmed.len() > MAX_EXPECT {
                                    self.unconfirmed.remove(0);
                                }
                                if !self.expect.contains(&w) {
                                    self.expect.push(w);
                                }
                                if self.expect.len() > MAX_EXPECT {
                                    self.expect.remove(0);
                                }
                            }
                            let msg = e.to_string();
                            if renew::blocklisted(&e) && !self.blocklisted {
                                error!(
                                    "renewal refused by Ceph: {msg}; this host's client is \
                                     blocklisted (storage-fenced): fencing now"
                                );
                                self.blocklisted = true;
                            }
                            if msg != self.last_renew_error {
                                warn!("renewal failed: {msg}");
                                self.last_renew_error = msg;
                            }
                        }
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => break,
            }
        }
        if let Some(issued) = self.renew_inflight {
            let age = now.saturating_sub(issued);
            if age > self.cfg.io_timeout {
                let msg = format!(
                    "renewal I/O has not completed for {} (storage hung?)",
                    secs(age)
                );
                if msg.split(" for ").next() != self.last_renew_error.split(" for ").next() {
                    warn!("{msg}");
                }
                self.last_renew_error = msg;
            }
        }
    }

    fn collect_probes(&mut self) {
        let rounds = self
            .probe_out
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        for (name, r) in rounds {
            if let Some(n) = self.nets.iter_mut().find(|n| n.name == name) {
                let was_up = n.down_since.is_none();
                n.feed(r);
                let is_up = n.down_since.is_none();
                if was_up != is_up {
                    let (s, d) = n.describe(boottime_ms());
                    warn!("{} network is {s}: {d}", n.name);
                }
            }
        }
    }

    fn take_clear_request(&self) -> bool {
        let p = self.cfg.state_dir.join("clear-fence");
        if p.exists() {
            let _ = std::fs::remove_file(&p);
            info!(event = "clear-fence", host_id = self.host_id; "operator asked to clear the fence");
            true
        } else {
            false
        }
    }

    /// Maintenance (vmlease-ha's agent writes `STATE_DIR/maintenance` while
    /// its host is in maintenance): a lost management or service network
    /// is reported, not fenced. Only liveness depends on those fences (they
    /// let other hosts restart the VMs sooner); the storage fence, which
    /// safety depends on, stays armed. A fence already under way goes on.
    fn check_maintenance(&mut self) {
        let on = self.cfg.state_dir.join(MAINTENANCE_MARKER).exists();
        if on == self.maintenance {
            return;
        }
        self.maintenance = on;
        let (m, s) = if on {
            (config::Policy::Report, config::Policy::Report)
        } else {
            (self.cfg.management.policy, self.cfg.service.policy)
        };
        self.fence.mgmt_policy = m;
        self.fence.service_policy = s;
        warn!(
            "maintenance {}: network-policy fences {} (management: {:?}, service: {:?})",
            if on { "entered" } else { "over" },
            if on { "disarmed" } else { "armed again" },
            m,
            s
        );
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
        self.counters.dead_qemu_released = self.reaper.released_total;
        let t = &self.cfg.timing;
        let snap = crate::metrics::Snapshot {
            host_id: self.host_id,
            host_name: self.host_name.clone(),
            state: self.last_state,
            fenced: fence_cause(&self.fence.phase).is_some(),
            renewal_age_ms: now.saturating_sub(self.last_renewal_ms.max(self.started_ms)),
            renew_interval_ms: t.renew_interval,
            renew_fail_timeout_ms: t.renew_fail_timeout,
            host_dead_timeout_ms: t.host_dead_timeout,
            watchdog_timeout_ms: t.watchdog_timeout,
            unsafe_no_watchdog: self.cfg.unsafe_no_watchdog,
            maintenance: self.maintenance,
            leased_processes: self.reaper.alive_count(),
            leases: self.reaper.alive_lease_count(),
            counters: self.counters.clone(),
            networks: self
                .nets
                .iter()
                .map(|n| crate::metrics::NetSample {
                    name: n.name,
                    state: n.describe(now).0,
                    probes_up: n.last.as_ref().map(|r| r.up).unwrap_or(0),
                    probes: n.net.probes.len(),
                })
                .collect(),
            peers: self
                .observer
                .peers()
                .into_iter()
                .filter(|p| p.host_id != self.host_id && p.kind != crate::status::PeerKind::Empty)
                .map(|p| crate::metrics::PeerSample {
                    host_id: p.host_id,
                    host_name: p.host_name,
                    published: match (p.kind, p.state) {
                        (crate::status::PeerKind::Corrupt, _) => "corrupt".into(),
                        (_, Some(s)) => s.as_str().into(),
                        (_, None) => "unknown".into(),
                    },
                    silent_ms: now.saturating_sub(p.last_change_ms),
                    dead_timeout_ms: p.dead_timeout_ms,
                })
                .collect(),
        };
        w.offer(snap);
    }

    fn write_status(&self, now: u64) {
        let reason = match &self.fence.phase {
            Phase::Healthy => self.last_renew_error.clone(),
            Phase::Fencing { cause, .. } | Phase::Fenced { cause, .. } | Phase::Reset { cause } => {
                let mut r = cause.describe().to_string();
                if *cause == fence::Cause::HostIdCollision && !self.collision_msg.is_empty() {
                    r = format!("{r}: {}", self.collision_msg);
                }
                if !self.reclaim_note.is_empty() {
                    r = format!("{r}; {}", self.reclaim_note);
                }
                r
            }
        };
        let st = Status {
            daemon_pid: std::process::id(),
            host_id: self.host_id,
            boot_id: self.boot_id.clone(),
            incarnation: self.incarnation,
            written_ms: now,
            last_renewal_ms: self.last_renewal_ms,
            state: self.last_state,
            reason,
            unsafe_no_watchdog: self.cfg.unsafe_no_watchdog,
            lockspace_dir: self.cfg.lockspace_dir.display().to_string(),
            lockspace_uuid: self.ls.uuid.clone().unwrap_or_default(),
            allow_local_lockspace: self.cfg.allow_local_lockspace,
            local_lockspace: self.local_lockspace.clone().unwrap_or_default(),
            observing_since_ms: self.observer.since_ms,
            renew_interval_ms: self.cfg.timing.renew_interval,
            renew_fail_timeout_ms: self.cfg.timing.renew_fail_timeout,
            host_dead_timeout_ms: self.cfg.timing.host_dead_timeout,
            networks: self
                .nets
                .iter()
                .map(|n| {
                    let (state, mut detail) = n.describe(now);
                    let fences = match n.name {
                        "management" => self.cfg.management.policy,
                        "service" => self.cfg.service.policy,
                        _ => config::Policy::Report,
                    };
                    if self.maintenance && fences == config::Policy::Fence {
                        detail.push_str(DISARMED_NOTE);
                    }
                    NetView {
                        name: n.name.to_string(),
                        state,
                        detail,
                    }
                })
                .collect(),
            peers: self.observer.peers(),
        };
        if let Err(e) = st.write(&self.cfg.state_dir) {
            warn!("cannot write status: {e}");
        }
    }

    /// At a stop: true (and a warning) when a leased QEMU runs, from a
    /// fresh registry scan.
    fn leased_running_at_stop(&mut self) -> bool {
        self.reaper.scan_now();
        let alive = self.reaper.alive_processes().len();
        if alive > 0 {
            let w = secs(self.cfg.timing.watchdog_timeout);
            error!(
                event = "stopped-with-leases", host_id = self.host_id;
                "stopping with {alive} leased QEMU process(es) running: the hardware watchdog stays armed; \
                 restart vmlease-watchdog within {w} or the host resets"
            );
            notify_systemd(&format!(
                "STOPPING=1\nSTATUS=STOPPED WITH {alive} LEASED VM(S) RUNNING: the host resets within {w} unless vmlease-watchdog is started again"
            ));
        }
        alive > 0
    }

    /// Clean stop on SIGTERM.
    fn stop(&mut self) -> i32 {
        // First make the plugin refuse new leases, then look at what runs.
        let _ = std::fs::remove_file(Status::path(&self.cfg.state_dir));
        if self.leased_running_at_stop() {
            return exit::STOPPED_LEASED;
        }
        // Nothing leased: leave cleanly so others need not wait for us.
        // A renewal in flight is waited for (at most io_timeout): else no
        // 'leaving' is written, and a daemon started soon after continues
        // the fence clock from our last renewal (KB1) and may fence a host
        // that runs nothing.
        let until = boottime_ms() + self.cfg.io_timeout;
        while self.renew_inflight.is_some() && boottime_ms() < until {
            std::thread::sleep(std::time::Duration::from_millis(5));
            self.collect_renewal(boottime_ms());
        }
        // 'leaving' frees every lease of this host at once: count again,
        // from a fresh registry scan, right before publishing it (a start
        // that checked the status before it was removed registers late).
        if self.leased_running_at_stop() {
            return exit::STOPPED_LEASED;
        }
        // After a collision the slot is not ours: nothing is written; else
        // only over the record we wrote last (the renewal's check).
        if self.last_renewal_ms > 0 && self.renew_inflight.is_none() && !self.collision {
            self.counter += 1;
            let rec = self.record(HostState::Leaving);
            let ls = self.ls.clone();
            let (id, expect) = (self.host_id, self.expect.clone());
            match crate::deadline::run(
                2 * self.cfg.io_timeout,
                "write leaving record",
                &ls.hosts_path(),
                move || renew::renew_io(&ls, id, &expect, Some(&rec)),
            ) {
                Ok(io) => match io.collision {
                    None => info!("left the lockspace cleanly"),
                    Some(c) => error!("{c}; not publishing 'leaving'"),
                },
                Err(e) => warn!("could not publish 'leaving': {e}"),
            }
        }
        if let Err(e) = self.watchdog.disarm() {
            warn!("cannot disarm the watchdog: {e}");
        }
        info!("stopped");
        exit::OK
    }
}

/// The cause of a fence begun or done; `None` while healthy.
fn fence_cause(p: &Phase) -> Option<fence::Cause> {
    match p {
        Phase::Healthy => None,
        Phase::Fencing { cause, .. } | Phase::Fenced { cause, .. } | Phase::Reset { cause } => {
            Some(cause.clone())
        }
    }
}

/// One liveness record of this host.
fn host_record(
    cfg: &Config,
    host_id: u16,
    host_name: &str,
    boot_id: &str,
    incarnation: u64,
    counter: u64,
    state: HostState,
) -> HostRecord {
    HostRecord {
        host_id,
        host_name: host_name.to_string(),
        boot_id: boot_id.to_string(),
        incarnation,
        counter,
        state,
        timing: cfg.timing,
        unsafe_no_watchdog: cfg.unsafe_no_watchdog,
        mono_ms: boottime_ms(),
        wall: crate::clock::SystemClock.wall_secs(),
    }
}

/// The lockspace with the host table on the path the config chose:
/// through RADOS (`liveness_rados = true`, checked here: librados loads
/// and the table is one object of a CephFS data pool) or through the
/// file. A CephFS lockspace renewed through the file is said loudly: a
/// hung client of another host can then stall this host's renewals
/// (docs/cephfs.md).
fn liveness_path(
    cfg: &Config,
    ls: Lockspace,
    cephfs: bool,
) -> std::result::Result<Lockspace, (i32, Error)> {
    let Some(r) = &cfg.liveness_rados else {
        if cephfs {
            warn!(
                "the lockspace is on CephFS and liveness_rados is not set: another host's hung \
                 CephFS client can stall this host's renewals until the MDS evicts it \
                 (docs/cephfs.md, \"Renewal independent of other hosts\")"
            );
        }
        return Ok(ls);
    };
    let bad = |e: String| {
        (
            exit::CONFIG,
            Error::Config(format!("liveness_rados = true: {e}")),
        )
    };
    let obj =
        crate::rados::table_object(&ls.hosts_path(), ls.max_hosts as usize * hosts::SLOT_SIZE)
            .map_err(bad)?;
    info!(
        "host table through RADOS: pool {} object {} (client.{}, {}; I/O in a worker process)",
        obj.pool,
        obj.object,
        r.client_id,
        r.conf.display()
    );
    let ls = ls.via_rados(crate::rados::RadosConf {
        conf: r.conf.clone(),
        client_id: r.client_id.clone(),
        timeout_ms: cfg.io_timeout,
        worker: crate::rados::RadosConf::DAEMON_EXE.into(),
    });
    let id = cfg.require_host_id().map_err(|e| (exit::CONFIG, e))?;
    // The probe's create may wait (a directory a hung peer holds): bounded
    // by F, at start, before any lease.
    let l = ls.clone();
    crate::deadline::run(
        cfg.timing.renew_fail_timeout,
        "create the probe file",
        &ls.hosts_path(),
        move || l.create_probe(id),
    )
    .map_err(|e| (exit::LOCKSPACE, e))?;
    // The worker loads librados and connects to the monitors, bounded by
    // F too (the daemon's side of the pipe keeps the deadline).
    if let Some(t) = &ls.rados {
        if let Err(e) = t.connect(cfg.timing.renew_fail_timeout) {
            let code = if crate::rados::errno_of(&e) == Some(crate::rados::proto::ELIBACC) {
                exit::CONFIG
            } else {
                exit::LOCKSPACE
            };
            return Err((code, Error::io("connect to RADOS", ls.hosts_path(), e)));
        }
        info!("RADOS worker pid {} connected", t.worker_pid().unwrap_or(0));
    }
    Ok(ls)
}

fn spawn_renewer(ls: Lockspace, host_id: u16) -> (Sender<RenewReq>, Receiver<Renewed>) {
    let (tx, rx) = mpsc::channel::<RenewReq>();
    let (rtx, rrx) = mpsc::channel::<Renewed>();
    std::thread::Builder::new()
        .name("vmlease-renew".into())
        .stack_size(THREAD_STACK)
        .spawn(move || {
            for req in rx {
                let start = boottime_ms();
                let result = renew::renew_io(&ls, host_id, &req.expect, req.rec.as_ref());
                let took_ms = boottime_ms().saturating_sub(start);
                let written = req.rec.as_ref().map(HostRecord::encode);
                let done = Renewed {
                    issued_ms: req.issued_ms,
                    written,
                    result,
                    took_ms,
                };
                if rtx.send(done).is_err() {
                    return;
                }
            }
        })
        .expect("spawn the renewal thread");
    (tx, rrx)
}

fn single_instance(state_dir: &Path) -> Result<std::fs::File> {
    let path = state_dir.join("daemon.lock");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io("open", &path, e))?;
    let ls_lock = crate::lockspace::ofd_try_lock(&f).map_err(|e| Error::io("lock", &path, e))?;
    if !ls_lock {
        let pid = std::fs::read_to_string(&path).unwrap_or_default();
        return Err(Error::Config(format!(
            "another vmlease-watchdog is already running for {} (pid {})",
            state_dir.display(),
            pid.trim()
        )));
    }
    let _ = f.set_len(0);
    use std::io::Write;
    let _ = (&f).write_all(format!("{}\n", std::process::id()).as_bytes());
    Ok(f)
}

/// Locks memory and asks for a realtime priority; warns when not allowed.
fn try_realtime() {
    if let Err(e) = crate::sys::sched::lock_memory() {
        warn!("mlockall failed ({e}): the daemon may be paged out under memory pressure");
    }
    if let Err(e) = crate::sys::sched::realtime() {
        warn!("no realtime priority ({e}): heavy load may delay renewals");
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
