//! The world a seed builds: cluster size, the timing (a valid config, as
//! `vmlease check-config` would accept it, often at the tightest legal
//! host_dead_timeout), the storage and clock models, and the phase lengths.

use vmlease::config::{self, Config};

use crate::rng::Rng;

/// Real (simulated) time in microseconds.
pub type Us = u64;
pub const MS: Us = 1000;

#[derive(Debug, Clone)]
pub struct Params {
    pub hosts: u16,
    pub vms: usize,
    /// The configuration every host uses (host_id set per host).
    pub cfg: Config,
    /// The daemon's loop period: `renew_interval.clamp(20, 100)`.
    pub tick_ms: u64,
    /// Largest clock rate error of a host (and of its watchdog), in ppm.
    pub drift_ppm: i64,
    /// Faults start at `fault_start_ms` and end by `fault_ms`.
    pub fault_start_ms: u64,
    pub fault_ms: u64,
    /// After the last fault heals, every wanted VM must run within this.
    pub settle_ms: u64,
    /// Latency of one healthy storage operation, in microseconds.
    pub io_us: (u64, u64),
    /// A storage partition longer than this evicts the client: its record
    /// locks are dropped and its pending writes never land.
    pub evict_ms: u64,
    /// Unlocked reads may return the previous version of a slot written
    /// less than this long ago (0: reads are always fresh).
    pub stale_ms: u64,
    pub reboot_ms: (u64, u64),
    /// systemd's restart delay plus the daemon's start.
    pub restart_ms: (u64, u64),
    pub controller_ms: u64,
    pub operator_ms: u64,
    pub qemu_write_ms: u64,
    /// How many faults the schedule draws.
    pub faults: usize,
}

/// How long schedules are: CI keeps them short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Ci,
    Long,
}

fn secs(ms: u64) -> String {
    format!("{}", ms as f64 / 1000.0)
}

impl Params {
    pub fn generate(rng: &mut Rng, profile: Profile) -> Params {
        let r = *rng.pick(&[100u64, 150, 200, 250]);
        // The plugin wants a renewal younger than F/2, and a renewal is
        // R + one tick old just before the next one is collected: below
        // that, hosts refuse leases half of the time (see the note in
        // docs/simulation.md), so the simulated clusters keep F/2 above it.
        let tick = r.clamp(20, 100);
        let f_min = (2 * (r + tick) + 100).div_ceil(r);
        // Up to 20 R (the shipped default is 10 R): with a long F and a
        // short K and W, the taker's F/2 protection no longer bounds how
        // stale its view can be, and the slot read under the record lock
        // becomes the only guard (see the no-fresh-slot-read mutation).
        let f = r * if rng.chance(0.7) {
            rng.range(f_min.max(4), 8)
        } else {
            rng.range(9, 20)
        };
        let k = rng.range(r, 4 * r) / 10 * 10;
        // A watchdog shorter than a few daemon ticks fires on a healthy
        // host (config validation allows it; a hardware watchdog takes
        // whole seconds anyway).
        let w = rng.range(r.max(3 * tick), 5 * r.max(tick)) / 10 * 10;
        let tight = rng.chance(0.5);
        let floor = (f + k).max(f + w) + 2 * r;
        let lock_timeout = rng.range(2 * r, 6 * r);
        let mgmt_timeout = rng.range(2 * r, 6 * r);
        let policy = if rng.chance(0.5) { "fence" } else { "report" };
        let mut text = format!(
            "lockspace_dir = \"/sim/lockspace\"\n\
             state_dir = \"/sim/state\"\n\
             renew_interval = {}\n\
             renew_fail_timeout = {}\n\
             kill_timeout = {}\n\
             watchdog_timeout = {}\n\
             lock_timeout = {}\n",
            secs(r),
            secs(f),
            secs(k),
            secs(w),
            secs(lock_timeout)
        );
        if tight {
            // The tightest host_dead_timeout the inequality allows.
            text.push_str(&format!("host_dead_timeout = {}\n", secs(floor + 1)));
        }
        text.push_str(&format!(
            "[management]\n\
             probes = [{{ type = \"tcp\", target = \"mgmt.sim:22\" }}]\n\
             timeout = {}\n\
             probe_timeout = {}\n\
             policy = \"{policy}\"\n",
            secs(mgmt_timeout),
            secs(r / 2)
        ));
        let cfg = config::parse(&text, "sim.conf").expect("the simulator builds valid configs");
        let t = cfg.timing;
        let d = t.host_dead_timeout;
        let hosts = *rng.pick(&[2u16, 3, 3, 3, 4]);
        let vms = rng.range(1, 3) as usize;
        let drift_ppm = if rng.chance(0.2) {
            0
        } else {
            rng.range(1, 500) as i64
        };
        // The faults begin a second after the hosts have joined: a claim
        // of an empty slot takes the claim wait (its write is read back
        // that much later, `collision::claim_wait_ms`).
        let join_ms = vmlease::collision::claim_wait_ms(cfg.io_timeout, r, None);
        let fault_ms = join_ms
            + match profile {
                Profile::Ci => d * rng.range(2, 3),
                Profile::Long => d * rng.range(2, 4),
            };
        let reboot_ms = (5 * r, 20 * r);
        let restart_ms = (100, 1000);
        let controller_ms = rng.range(2 * r, 5 * r);
        let operator_ms = rng.range(500, 1500);
        let tick_ms = t.renew_interval.clamp(20, 100);
        let io = cfg.io_timeout;
        // The promise checked at the end (docs/simulation.md derives it):
        // a fence in progress finishes (kill, or reset after K, or the
        // watchdog after W), a reset host reboots and rejoins, every other
        // holder is freed by rule 1-3 or by D at the latest, the operator
        // clears fences, and the controller's next attempt succeeds.
        let settle_ms = t.kill_timeout.max(t.watchdog_timeout)
            + 2 * tick_ms
            + reboot_ms.1
            + restart_ms.1
            + 2 * t.renew_interval
            + io
            + t.renew_interval
            + d
            + 2 * controller_ms
            + operator_ms
            + 4 * (io + cfg.lock_timeout)
            + 1000;
        Params {
            hosts,
            vms,
            cfg,
            tick_ms,
            drift_ppm,
            fault_start_ms: 1000 + join_ms,
            fault_ms,
            settle_ms,
            io_us: (300, 3000),
            evict_ms: rng.range(f, 3 * d),
            stale_ms: if rng.chance(0.5) { 0 } else { rng.range(1, r) },
            reboot_ms,
            restart_ms,
            controller_ms,
            operator_ms,
            qemu_write_ms: rng.range(40, 100),
            faults: rng.range(2, 10) as usize,
        }
    }

    /// Fixed parameters for a scenario test: the timing in ms, D at the
    /// tightest legal value, fault-free storage and clocks.
    pub fn fixed(hosts: u16, vms: usize, r: u64, f: u64, k: u64, w: u64) -> Params {
        let floor = (f + k).max(f + w) + 2 * r;
        let text = format!(
            "lockspace_dir = \"/sim/lockspace\"\n\
             state_dir = \"/sim/state\"\n\
             renew_interval = {}\n\
             renew_fail_timeout = {}\n\
             kill_timeout = {}\n\
             watchdog_timeout = {}\n\
             host_dead_timeout = {}\n\
             lock_timeout = {}\n",
            secs(r),
            secs(f),
            secs(k),
            secs(w),
            secs(floor + 1),
            secs(3 * r)
        );
        let cfg = config::parse(&text, "scenario.conf").expect("a valid scenario config");
        Params {
            hosts,
            vms,
            tick_ms: r.clamp(20, 100),
            drift_ppm: 0,
            fault_start_ms: 1000,
            fault_ms: 0,
            settle_ms: 30_000,
            io_us: (300, 3000),
            evict_ms: 60_000,
            stale_ms: 0,
            reboot_ms: (2000, 2000),
            restart_ms: (100, 100),
            controller_ms: 300,
            operator_ms: 1000,
            qemu_write_ms: 50,
            faults: 0,
            cfg,
        }
    }

    pub fn describe(&self) -> String {
        let t = &self.cfg.timing;
        format!(
            "{} hosts, {} VMs; R {} F {} K {} W {} D {} (floor {}), io_timeout {}, lock_timeout {}, mgmt {:?} after {}; \
             drift <= {} ppm, evict after {} ms, stale reads {} ms, faults from {} to {} ms, settle {} ms",
            self.hosts,
            self.vms,
            t.renew_interval,
            t.renew_fail_timeout,
            t.kill_timeout,
            t.watchdog_timeout,
            t.host_dead_timeout,
            t.dead_floor(),
            self.cfg.io_timeout,
            self.cfg.lock_timeout,
            self.cfg.management.policy,
            self.cfg.management.timeout,
            self.drift_ppm,
            self.evict_ms,
            self.stale_ms,
            self.fault_start_ms,
            self.fault_ms,
            self.settle_ms
        )
    }
}
