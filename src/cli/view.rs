//! What the CLI knows about the cluster: the lockspace, this host's daemon
//! view, and the verdicts an HA controller acts on.
#![forbid(unsafe_code)]

use std::sync::Arc;

use crate::clock::boottime_ms;
use crate::config::{secs, Config};
use crate::deadline;
use crate::error::{Error, Result};
use crate::hosts::{self, HostState, Slot, SLOT_SIZE};
use crate::lease::{Holder, LeaseRecord};
use crate::lockspace::Lockspace;
use crate::process::{self, ProcId};
use crate::status::Status;
use crate::takeover::{Judge, Verdict};

pub struct Ctx {
    pub cfg: Config,
    pub ls: Lockspace,
    /// This host's daemon status, if any.
    pub status: Option<Status>,
    pub now: u64,
    pub boot_id: String,
}

impl Ctx {
    /// Opens the lockspace (with a deadline) and reads the daemon status.
    pub fn open(cfg: Config) -> Result<Ctx> {
        let dir = cfg.lockspace_dir.clone();
        let ls = deadline::run(cfg.io_timeout, "open lockspace", &dir.clone(), move || {
            Lockspace::open(&dir)
        })?;
        let status = Status::read(&cfg.state_dir).ok().flatten();
        Ok(Ctx {
            boot_id: process::boot_id().unwrap_or_default(),
            now: boottime_ms(),
            cfg,
            ls,
            status,
        })
    }

    /// The host table, raw and decoded, read with a deadline.
    pub fn hosts(&self) -> Result<(Vec<u8>, Vec<Slot>)> {
        let ls = self.ls.clone();
        let raw = deadline::run(
            self.cfg.io_timeout,
            "read host table",
            &ls.hosts_path(),
            move || ls.read_hosts_raw(),
        )?;
        let slots = hosts::decode_table(&raw);
        Ok((raw, slots))
    }

    /// Every lease record (damaged ones as errors naming the file).
    pub fn leases(&self) -> Result<Vec<(String, std::result::Result<LeaseRecord, Error>)>> {
        let ls = self.ls.clone();
        deadline::run(
            self.cfg.io_timeout.max(5_000) * 4,
            "read lease records",
            &ls.dir.join("leases"),
            move || {
                let keys = ls.list_leases()?;
                Ok(keys
                    .into_iter()
                    .map(|k| {
                        let r = ls.read_lease(&k, "");
                        (k, r)
                    })
                    .collect())
            },
        )
    }

    /// Milliseconds since the daemon last saw `host_id`'s slot change,
    /// as of now (None: it changed since, or no daemon view).
    pub fn observed_age(&self, host_id: u16, slot_raw: &[u8]) -> Option<u64> {
        let st = self.status.as_ref()?;
        let unchanged = st.observed_unchanged_ms(host_id, slot_raw)?;
        Some(unchanged + self.now.saturating_sub(st.written_ms))
    }

    pub fn judge(&self, h: &Holder, slot_raw: &[u8]) -> Verdict {
        let alive = |p: ProcId| p.is_alive();
        Judge {
            my_host_id: self.cfg.host_id.unwrap_or(0),
            my_boot_id: &self.boot_id,
            my_dead_ms: self.cfg.timing.host_dead_timeout,
            view: self.status.as_ref(),
            process_alive: &alive,
        }
        .judge(h, slot_raw)
    }

    pub fn slot_raw<'a>(&self, raw: &'a [u8], host_id: u16) -> &'a [u8] {
        let i = host_id as usize - 1;
        &raw[i * SLOT_SIZE..(i + 1) * SLOT_SIZE]
    }
}

/// What a controller may do about a host's VMs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostVerdict {
    ThisHost,
    /// Renewing: its VMs run; do not evacuate.
    Alive(String),
    /// Restarting its VMs elsewhere is safe now.
    Safe(String),
    /// Not yet; safe in this many ms if nothing changes (None: unknown).
    NotYet(String, Option<u64>),
    /// This host cannot tell (no daemon view).
    Unknown(String),
}

impl HostVerdict {
    pub fn word(&self) -> &'static str {
        match self {
            HostVerdict::ThisHost => "this-host",
            HostVerdict::Alive(_) => "alive",
            HostVerdict::Safe(_) => "safe",
            HostVerdict::NotYet(..) => "not-yet",
            HostVerdict::Unknown(_) => "unknown",
        }
    }
    pub fn text(&self) -> String {
        match self {
            HostVerdict::ThisHost => "this host".into(),
            HostVerdict::Alive(w) | HostVerdict::Safe(w) | HostVerdict::Unknown(w) => w.clone(),
            HostVerdict::NotYet(w, Some(ms)) => format!("{w}; safe in {}", secs(*ms)),
            HostVerdict::NotYet(w, None) => w.clone(),
        }
    }
}

pub fn host_verdict(ctx: &Ctx, host_id: u16, slot: &Slot, raw: &[u8]) -> HostVerdict {
    if ctx.cfg.host_id == Some(host_id) {
        return HostVerdict::ThisHost;
    }
    let dead_ms = |own: u64| own.max(ctx.cfg.timing.host_dead_timeout);
    let (d, state, fail_ms) = match slot {
        Slot::Record(r) => {
            match r.state {
                HostState::FencedClean => {
                    return HostVerdict::Safe("fenced-clean: it killed its VMs".into())
                }
                HostState::Leaving => {
                    return HostVerdict::Safe("left the lockspace with no VM running".into())
                }
                _ => {}
            }
            (
                dead_ms(r.timing.host_dead_timeout),
                Some(r.state),
                r.timing.renew_fail_timeout,
            )
        }
        Slot::Empty => return HostVerdict::Safe("no such host in the lockspace".into()),
        Slot::Corrupt(_) => (dead_ms(0), None, 0),
    };
    if ctx.status.is_none() {
        return HostVerdict::Unknown(
            "no vmlease-watchdog view on this host: cannot tell how long it has been silent".into(),
        );
    }
    let alive = |state: Option<HostState>| {
        HostVerdict::Alive(match state {
            Some(HostState::MgmtIsolated) => {
                "mgmt-isolated: its VMs still run and write; do not evacuate".into()
            }
            Some(HostState::Fencing) => "fencing: it is killing its VMs".into(),
            Some(s) => format!("{s}: renewing; do not evacuate"),
            None => "its record changed recently".into(),
        })
    };
    match ctx.observed_age(host_id, raw) {
        // Silent for less than its renew_fail_timeout: a renewal may just
        // be due; it has not even started to fence itself.
        Some(age) if age < fail_ms => alive(state),
        None => alive(state),
        Some(age) if age >= d => HostVerdict::Safe(format!(
            "dead: no renewal seen for {} (host_dead_timeout {})",
            secs(age),
            secs(d)
        )),
        Some(age) => HostVerdict::NotYet(
            format!("silent for {} of host_dead_timeout {}", secs(age), secs(d)),
            Some(d - age),
        ),
    }
}

/// Finds a host by id or by the name in its liveness record.
pub fn find_host(slots: &[Slot], want: &str) -> Option<u16> {
    if let Ok(id) = want.parse::<u16>() {
        if id >= 1 && (id as usize) <= slots.len() {
            return Some(id);
        }
    }
    slots.iter().enumerate().find_map(|(i, s)| match s {
        Slot::Record(r) if r.host_name == want => Some(i as u16 + 1),
        _ => None,
    })
}

pub fn arc_status(s: &Option<Status>) -> Option<Arc<Status>> {
    s.clone().map(Arc::new)
}
