//! The watchdog daemon's published status: this host's health and its view
//! of the other hosts, written to `<state_dir>/status` at every tick and
//! read by the plugin (may this host lease? is that holder dead?), the hook
//! and the CLI.
//!
//! All times are this host's `CLOCK_BOOTTIME` milliseconds.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use crate::checksum::crc32c;
use crate::codec;
use crate::config::{secs, Config};
use crate::error::{Error, Result};
use crate::hosts::HostState;
use crate::lockspace::Lockspace;

const MAGIC: &str = "vmlease-status v1";

/// What the daemon has observed of one host slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    pub host_id: u16,
    /// CRC of the slot's raw bytes at the last change.
    pub fingerprint: u32,
    /// When the daemon last saw the slot change (or started observing it).
    pub last_change_ms: u64,
    /// Decoded content, for display and for the holder's own D.
    pub kind: PeerKind,
    pub host_name: String,
    pub boot_id: String,
    pub counter: u64,
    pub state: Option<HostState>,
    /// The host's own host_dead_timeout from its last valid record (the
    /// largest of its writers' while a collision is flagged).
    pub dead_timeout_ms: u64,
    /// Two machines were seen taking turns writing this slot (who); empty
    /// when not. Takeover rule 2 never applies to such a slot.
    pub collision: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    Record,
    Empty,
    Corrupt,
}

impl PeerKind {
    fn as_str(self) -> &'static str {
        match self {
            PeerKind::Record => "record",
            PeerKind::Empty => "empty",
            PeerKind::Corrupt => "corrupt",
        }
    }
}

/// A network's state as the daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetView {
    pub name: String,
    /// "up", "down" (failing, not yet lost), "lost", "unknown" (not probed
    /// yet) or "unmonitored".
    pub state: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub daemon_pid: u32,
    pub host_id: u16,
    pub boot_id: String,
    pub incarnation: u64,
    /// When this status was written.
    pub written_ms: u64,
    /// Last successful renewal (0: none yet).
    pub last_renewal_ms: u64,
    pub state: HostState,
    /// Why the host is not protected / was fenced ("" when fine).
    pub reason: String,
    pub unsafe_no_watchdog: bool,
    /// The lockspace the daemon renews in (its lockspace_dir) and the
    /// UUID in its header; the UUID is "" while the daemon waits for the
    /// lockspace (`reason` says why).
    pub lockspace_dir: String,
    pub lockspace_uuid: String,
    /// allow_local_lockspace = true, and why the lockspace is not really
    /// shared when that let it pass ("" on a shared filesystem).
    pub allow_local_lockspace: bool,
    pub local_lockspace: String,
    /// When the daemon began observing the host table.
    pub observing_since_ms: u64,
    pub renew_interval_ms: u64,
    pub renew_fail_timeout_ms: u64,
    pub host_dead_timeout_ms: u64,
    pub networks: Vec<NetView>,
    pub peers: Vec<PeerView>,
}

impl Status {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("status")
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = codec::Writer::new(MAGIC);
        w.field("daemon_pid", self.daemon_pid)
            .field("host_id", self.host_id)
            .field("boot_id", &self.boot_id)
            .field("incarnation", self.incarnation)
            .field("written_ms", self.written_ms)
            .field("last_renewal_ms", self.last_renewal_ms)
            .field("state", self.state)
            .field("reason", &self.reason)
            .field("unsafe_no_watchdog", u8::from(self.unsafe_no_watchdog))
            .field("lockspace_dir", &self.lockspace_dir)
            .field("lockspace_uuid", &self.lockspace_uuid)
            .field(
                "allow_local_lockspace",
                u8::from(self.allow_local_lockspace),
            )
            .field("local_lockspace", &self.local_lockspace)
            .field("observing_since_ms", self.observing_since_ms)
            .field("renew_interval_ms", self.renew_interval_ms)
            .field("renew_fail_timeout_ms", self.renew_fail_timeout_ms)
            .field("host_dead_timeout_ms", self.host_dead_timeout_ms);
        for n in &self.networks {
            w.field(
                "network",
                format!(
                    "{} {} {}",
                    codec::encode(&n.name),
                    codec::encode(&n.state),
                    codec::encode(&n.detail)
                ),
            );
        }
        for p in &self.peers {
            w.field(
                "peer",
                format!(
                    "{} {:08x} {} {} {} {} {} {} {} {}",
                    p.host_id,
                    p.fingerprint,
                    p.last_change_ms,
                    p.kind.as_str(),
                    codec::encode(if p.host_name.is_empty() {
                        "-"
                    } else {
                        &p.host_name
                    }),
                    codec::encode(if p.boot_id.is_empty() {
                        "-"
                    } else {
                        &p.boot_id
                    }),
                    p.counter,
                    p.state.map(HostState::as_str).unwrap_or("-"),
                    p.dead_timeout_ms,
                    codec::encode(if p.collision.is_empty() {
                        "-"
                    } else {
                        &p.collision
                    })
                ),
            );
        }
        w.finish()
    }

    pub fn decode(data: &[u8]) -> std::result::Result<Status, String> {
        let f = codec::parse(data, MAGIC)?;
        let mut networks = Vec::new();
        for n in f.all("network") {
            let p: Vec<&str> = n.split(' ').collect();
            if p.len() != 3 {
                return Err(format!("bad network line '{n}'"));
            }
            networks.push(NetView {
                name: codec::decode(p[0])?,
                state: codec::decode(p[1])?,
                detail: codec::decode(p[2])?,
            });
        }
        let mut peers = Vec::new();
        for line in f.all("peer") {
            let p: Vec<&str> = line.split(' ').collect();
            if p.len() != 9 && p.len() != 10 {
                return Err(format!("bad peer line '{line}'"));
            }
            let n = |i: usize| {
                p[i].parse::<u64>()
                    .map_err(|_| format!("bad number in peer line '{line}'"))
            };
            let dash = |s: String| if s == "-" { String::new() } else { s };
            peers.push(PeerView {
                host_id: u16::try_from(n(0)?)
                    .map_err(|_| format!("bad host id in peer line '{line}'"))?,
                fingerprint: u32::from_str_radix(p[1], 16)
                    .map_err(|_| format!("bad fingerprint in '{line}'"))?,
                last_change_ms: n(2)?,
                kind: match p[3] {
                    "record" => PeerKind::Record,
                    "empty" => PeerKind::Empty,
                    "corrupt" => PeerKind::Corrupt,
                    o => return Err(format!("bad peer kind '{o}'")),
                },
                host_name: dash(codec::decode(p[4])?),
                boot_id: dash(codec::decode(p[5])?),
                counter: n(6)?,
                state: match p[7] {
                    "-" => None,
                    s => Some(s.parse()?),
                },
                dead_timeout_ms: n(8)?,
                collision: match p.get(9) {
                    Some(c) => dash(codec::decode(c)?),
                    None => String::new(),
                },
            });
        }
        Ok(Status {
            // Out of range is damage, never a wrapped-around number.
            daemon_pid: u32::try_from(f.req_u64("daemon_pid")?)
                .map_err(|_| "daemon_pid out of range".to_string())?,
            host_id: u16::try_from(f.req_u64("host_id")?)
                .map_err(|_| "host_id out of range".to_string())?,
            boot_id: f.req("boot_id")?.to_string(),
            incarnation: f.req_u64("incarnation")?,
            written_ms: f.req_u64("written_ms")?,
            last_renewal_ms: f.req_u64("last_renewal_ms")?,
            state: f.req("state")?.parse()?,
            reason: f.req("reason")?.to_string(),
            unsafe_no_watchdog: f.req_u64("unsafe_no_watchdog")? != 0,
            // Absent in a status of a daemon that predates them: it is then
            // never protected (check_protected).
            lockspace_dir: f.get("lockspace_dir").unwrap_or("").to_string(),
            lockspace_uuid: f.get("lockspace_uuid").unwrap_or("").to_string(),
            allow_local_lockspace: f.get("allow_local_lockspace") == Some("1"),
            local_lockspace: f.get("local_lockspace").unwrap_or("").to_string(),
            observing_since_ms: f.req_u64("observing_since_ms")?,
            renew_interval_ms: f.req_u64("renew_interval_ms")?,
            renew_fail_timeout_ms: f.req_u64("renew_fail_timeout_ms")?,
            host_dead_timeout_ms: f.req_u64("host_dead_timeout_ms")?,
            networks,
            peers,
        })
    }

    /// Writes the status atomically into the (local) state dir: a
    /// temporary file renamed over it, not fsynced (a status means
    /// nothing after a crash: readers check its age on the boot clock,
    /// and the state dir is a tmpfs; an fsync on a busy disk took 2 s).
    pub fn write(&self, state_dir: &Path) -> Result<()> {
        crate::lockspace::write_atomic_unsynced(&Status::path(state_dir), &self.encode())
    }

    /// Reads the status; `Ok(None)` when no daemon has written one.
    pub fn read(state_dir: &Path) -> Result<Option<Status>> {
        let path = Status::path(state_dir);
        match std::fs::read(&path) {
            Ok(d) => Status::decode(&d)
                .map(Some)
                .map_err(|reason| Error::Corrupt { path, reason }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read daemon status", path, e)),
        }
    }

    pub fn peer(&self, host_id: u16) -> Option<&PeerView> {
        self.peers.iter().find(|p| p.host_id == host_id)
    }

    /// How long the daemon had seen `host_id`'s slot unchanged when it wrote
    /// this status, given the slot's current raw bytes. `None` means "seen
    /// to change since" (the holder is alive).
    pub fn observed_unchanged_ms(&self, host_id: u16, current_slot: &[u8]) -> Option<u64> {
        let fp = crc32c(current_slot);
        match self.peer(host_id) {
            Some(p) if p.fingerprint == fp => {
                Some(self.written_ms.saturating_sub(p.last_change_ms))
            }
            Some(_) => None,
            // Never listed: the slot has been empty since observation began.
            None if current_slot.iter().all(|&b| b == 0) => {
                Some(self.written_ms.saturating_sub(self.observing_since_ms))
            }
            None => None,
        }
    }

    /// May this host take leases now? `Err` carries the reason for users.
    pub fn check_protected(
        &self,
        cfg: &Config,
        boot_id: &str,
        now_ms: u64,
        daemon_alive: bool,
    ) -> std::result::Result<(), String> {
        let r = cfg.timing.renew_interval;
        if !daemon_alive {
            return Err(format!(
                "the vmlease-watchdog daemon (pid {}) is not running",
                self.daemon_pid
            ));
        }
        if Some(self.host_id) != cfg.host_id {
            return Err(format!(
                "the watchdog daemon runs as host id {}, the config says {:?}",
                self.host_id, cfg.host_id
            ));
        }
        if self.boot_id != boot_id {
            return Err("the watchdog status is from another boot".into());
        }
        if self.written_ms > now_ms + 1000 {
            return Err(format!(
                "the watchdog status is {} in the future of this host's clock (another clock domain?)",
                secs(self.written_ms - now_ms)
            ));
        }
        let age = now_ms.saturating_sub(self.written_ms);
        // The daemon writes its status every tick (at most 100 ms apart).
        let fresh = r + 500;
        if age > fresh {
            return Err(format!(
                "the watchdog daemon has not reported for {} (hung?)",
                secs(age)
            ));
        }
        self.check_joined()?;
        if !self.state.is_running() {
            let why = if self.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", self.reason)
            };
            return Err(format!("this host is {}{why}", self.state));
        }
        if self.last_renewal_ms == 0 {
            return Err(
                "the watchdog daemon has not renewed this host's liveness lease yet".into(),
            );
        }
        let renewal_age = now_ms.saturating_sub(self.last_renewal_ms);
        if renewal_age > cfg.timing.renew_fail_timeout / 2 {
            return Err(format!(
                "the liveness lease was last renewed {} ago (storage trouble?)",
                secs(renewal_age)
            ));
        }
        Ok(())
    }
}

impl Status {
    /// Has the daemon joined a lockspace? While it waits for one (not
    /// mounted, not shared, not initialised) its reason is the refusal.
    /// Whether it is this process's lockspace is for
    /// [`Status::check_same_lockspace`] (by UUID): a test or an operator
    /// may reach one lockspace through two paths.
    fn check_joined(&self) -> std::result::Result<(), String> {
        if self.lockspace_uuid.is_empty() {
            return Err(if self.reason.is_empty() {
                "the watchdog daemon does not say which lockspace it renews in (an older daemon? restart vmlease-watchdog)".into()
            } else {
                format!("the watchdog daemon is {}", self.reason)
            });
        }
        Ok(())
    }

    /// Is `ls`, the lockspace this process opened, the one the daemon
    /// renews in? The same path can hold another lockspace: another
    /// mount namespace, a mount made or replaced since, a re-initialised
    /// directory.
    pub fn check_same_lockspace(&self, ls: &Lockspace) -> std::result::Result<(), String> {
        self.check_same_uuid(&ls.dir, ls.uuid.as_deref())
    }

    /// [`Status::check_same_lockspace`] for the lockspace at `dir` with
    /// `uuid` (any store: [`crate::store::Store::identity`]).
    pub fn check_same_uuid(
        &self,
        dir: &std::path::Path,
        uuid: Option<&str>,
    ) -> std::result::Result<(), String> {
        if uuid == Some(self.lockspace_uuid.as_str()) {
            return Ok(());
        }
        Err(format!(
            "lockspace {} has UUID {}, but the watchdog daemon renews in {} with UUID {}: \
             they are not the same lockspace (a mount missing or different in libvirtd's \
             view, or a config changed since libvirtd started); check that {} is the shared \
             filesystem for both, then restart libvirtd so that its lock plugin reads the \
             current config",
            dir.display(),
            uuid.unwrap_or("(none)"),
            self.lockspace_dir,
            self.lockspace_uuid,
            dir.display(),
        ))
    }
}

mod observer;
pub use observer::Observer;

mod protected;
pub use protected::{local_boot_id, protected_status, protected_status_on, StatusSource, ThisHost};

#[cfg(test)]
mod tests;
