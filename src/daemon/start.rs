//! The daemon's start-up: the configuration checks, the single-instance
//! lock, the lockspace wait and claim, the watchdog, the threads; and the
//! helpers only the start-up uses. Moved from `daemon/mod.rs`.

use super::*;

/// Why the daemon did not start: the error, and the exit code that tells
/// systemd and the operator which kind of failure it was (`exit`).
#[derive(Debug)]
pub struct StartError {
    code: i32,
    error: Error,
}

impl StartError {
    pub fn new(code: i32, error: Error) -> StartError {
        StartError { code, error }
    }

    /// The process's exit code (`exit::*`): `exit::OK` when a stop was
    /// requested before the daemon joined.
    pub fn exit_code(&self) -> i32 {
        self.code
    }

    pub fn error(&self) -> &Error {
        &self.error
    }
}

impl Daemon {
    pub fn start(cfg: Config) -> std::result::Result<Daemon, StartError> {
        let host_id = cfg
            .require_host_id()
            .map_err(|e| StartError::new(exit::CONFIG, e))?;
        for w in cfg.warnings() {
            warn!("{w}");
        }
        let state_dir = cfg.state_dir.clone();
        std::fs::create_dir_all(&state_dir).map_err(|e| {
            StartError::new(exit::CONFIG, Error::io("create state dir", &state_dir, e))
        })?;
        let instance_lock =
            single_instance(&state_dir).map_err(|e| StartError::new(exit::RUNNING, e))?;
        let boot_id = process::boot_id().map_err(|e| {
            StartError::new(
                exit::CONFIG,
                Error::io("read boot id", "/proc/sys/kernel/random/boot_id", e),
            )
        })?;
        let host_name = cfg.host_name.clone().unwrap_or_else(process::hostname);
        // The config checked a configured name; the kernel's may be any
        // 64 bytes, which the liveness slot may not hold.
        if let Err(why) = crate::hosts::check_host_name(&host_name) {
            return Err(StartError::new(
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
            return Err(StartError::new(
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
        let now_start = boottime_ms();
        let (own, written) = claim::claim(
            &ls,
            claim::Join::new(
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
                None,
            ),
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
            |e| {
                let reason =
                    format!("joining the lockspace: the storage is slow ({e}); trying again");
                warn!(
                    "{reason}; this host is not protected and leases nothing until it has joined"
                );
                notify_systemd(&format!("STATUS={reason}"));
                lockspace_wait::write_waiting(&cfg, host_id, &boot_id, now_start, &reason);
            },
        )
        .map_err(|e| {
            if matches!(e, Error::Config(_)) {
                crate::collision::store_refusal(&cfg.state_dir, Some(&e.to_string()));
            }
            if signals::stop_requested() {
                let _ = std::fs::remove_file(crate::status::Status::path(&cfg.state_dir));
                return StartError::new(exit::OK, e);
            }
            StartError::new(exit::LOCKSPACE, e)
        })?;
        crate::collision::store_refusal(&cfg.state_dir, None);
        // A restart on the same boot continues the fence clock of the
        // daemon before it, from our own record as the claim read it
        // (fence::clock_start, KB1).
        let now0 = boottime_ms();
        let mut setup = core::Setup::new(&cfg, host_id, &host_name, &boot_id, incarnation);
        setup.lockspace_uuid = ls.uuid.clone().unwrap_or_default();
        setup.local_lockspace = placement.local.clone().unwrap_or_default();
        let mut core = Core::new(setup, Some(&own), written, now0, None);
        let fence_clock = core.fence_clock();
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
                    return Err(StartError::new(
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
                        StartError::new(
                            exit::WATCHDOG,
                            Error::io("check hardware watchdog", &cfg.watchdog_device, e),
                        )
                    })?,
            )
        } else {
            watchdog::open(&cfg.watchdog_device, cfg.timing.watchdog_timeout).map_err(|e| {
                StartError::new(
                    exit::WATCHDOG,
                    Error::io("open hardware watchdog", &cfg.watchdog_device, e),
                )
            })?
        };
        info!("watchdog: {}", watchdog.describe());
        try_realtime();
        match tcp_abort::self_check() {
            Ok(()) => info!("fence: TCP abort available (sock_diag SOCK_DESTROY)"),
            Err(e) => warn!(
                "fence: this host cannot abort TCP sockets ({e}): the unsent writes of a QEMU the \
                 fence kills may still reach the storage after its leases were taken over; needs \
                 CAP_NET_ADMIN and a kernel with CONFIG_INET_DIAG_DESTROY"
            ),
        }

        let (renew_tx, renew_rx) = spawn_renewer(ls.clone(), host_id);
        let reaper = Reaper::new(&cfg, ls.clone(), host_id, &boot_id);
        let probe_out = Arc::new(Mutex::new(Vec::new()));
        probes::spawn(
            core.nets.iter().map(|n| (n.name, n.net.clone())).collect(),
            cfg.timing.renew_interval,
            probe_out.clone(),
        )
        .map_err(|e| StartError::new(exit::CONFIG, Error::io("start prober", "-", e)))?;

        let status = status_writer::StatusWriter::spawn(cfg.state_dir.clone())
            .map_err(|e| StartError::new(exit::CONFIG, Error::io("start status writer", "-", e)))?;

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

        // A fence survives a daemon restart (not a reboot: the state dir is
        // on tmpfs); only the operator clears it.
        let marker = fence::load_marker(&cfg.state_dir);
        if let Some(cause) = &marker {
            warn!(
                "this host was fenced before the restart ({}); it starts no protected VM until 'vmlease clear-fence'",
                cause.describe()
            );
        }
        let now = boottime_ms();
        core.begin(now, marker);
        // Into the shared lockspace, after the watchdog is armed: on a
        // thread of its own, so that a create that waits for a peer's hung
        // client (up to io_timeout, which may exceed W) never delays the
        // first pets. Until it lands, peers wait host_dead_timeout.
        {
            let (ls, cfg, boot_id) = (ls.clone(), cfg.clone(), boot_id.clone());
            std::thread::Builder::new()
                .name("vmlease-target".into())
                .stack_size(THREAD_STACK)
                .spawn(move || crate::storage_fence::publish_target(&ls, &cfg, host_id, &boot_id))
                .map_err(|e| {
                    StartError::new(exit::CONFIG, Error::io("start target publisher", "-", e))
                })?;
        }
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
            core,
            renew_tx,
            renew_rx,
            reaper,
            watchdog,
            host: Box::new(RealHost {
                reset_action: cfg.reset_action.clone(),
            }),
            sockets: tcp_abort::Sockets::default(),
            probe_out,
            status,
            metrics,
            metrics_due_ms: now,
            _instance_lock: instance_lock,
            cfg,
        })
    }
}

/// One liveness record of this host (for the claim at start).
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
) -> std::result::Result<Lockspace, StartError> {
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
        StartError::new(
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
    let id = cfg
        .require_host_id()
        .map_err(|e| StartError::new(exit::CONFIG, e))?;
    // The probe's create may wait (a directory a hung peer holds): bounded
    // by F, at start, before any lease.
    let l = ls.clone();
    crate::deadline::run(
        cfg.timing.renew_fail_timeout,
        "create the probe file",
        &ls.hosts_path(),
        move || l.create_probe(id),
    )
    .map_err(|e| StartError::new(exit::LOCKSPACE, e))?;
    // The worker loads librados and connects to the monitors, bounded by
    // F too (the daemon's side of the pipe keeps the deadline).
    if let Some(t) = &ls.rados {
        if let Err(e) = t.connect(cfg.timing.renew_fail_timeout) {
            let code = if crate::rados::errno_of(&e) == Some(crate::rados::proto::ELIBACC) {
                exit::CONFIG
            } else {
                exit::LOCKSPACE
            };
            return Err(StartError::new(
                code,
                Error::io("connect to RADOS", ls.hosts_path(), e),
            ));
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
                let slots = match &result {
                    Ok(io) => hosts::decode_table(&io.table),
                    Err(_) => Vec::new(),
                };
                let done = Renewed {
                    result,
                    slots,
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
