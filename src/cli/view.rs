//! What the CLI knows about the cluster: the lockspace (every read with a
//! deadline), this host's watchdog view, and the facts for the host-level
//! verdict a controller acts on (decided in [`crate::takeover::host`]).
//!
//! Silence is this host's daemon's observation, carried forward to the
//! moment the CLI read the host table: the daemon recorded when it first
//! saw a slot's current bytes; a record's counter never repeats, so when
//! the CLI reads the same bytes again, the slot has not changed from that
//! moment until the read. That holds even when the daemon has stopped
//! writing its status, as long as it ran in this boot (one clock).
#![forbid(unsafe_code)]

use crate::clock::boottime_ms;
use crate::config::{secs, Config};
use crate::deadline;
use crate::error::{Error, Result};
use crate::hosts::{self, Slot, SLOT_SIZE};
use crate::lease::{Holder, LeaseRecord};
use crate::lockspace::Lockspace;
use crate::process::{self, ProcId};
use crate::status::Status;
use crate::takeover::host::{self, HostFacts, HostVerdict, Silence};
use crate::takeover::{unwatched, Judge, Verdict};

pub struct Ctx {
    pub cfg: Config,
    pub ls: Lockspace,
    /// This host's daemon status, if it is usable as a view (this boot,
    /// this host id).
    pub view: Option<Status>,
    /// Why there is no usable view, or why it is old (for messages).
    pub view_note: Option<String>,
    pub boot_id: String,
}

/// The host table as read once, with the local time taken just before.
pub struct Table {
    pub raw: Vec<u8>,
    pub slots: Vec<Slot>,
    pub read_at: u64,
}

impl Table {
    pub fn slot_raw(&self, host_id: u16) -> &[u8] {
        let i = host_id as usize - 1;
        &self.raw[i * SLOT_SIZE..(i + 1) * SLOT_SIZE]
    }

    pub fn slot(&self, host_id: u16) -> &Slot {
        &self.slots[host_id as usize - 1]
    }

    /// Finds a host by id or by the name in its liveness record.
    pub fn find_host(&self, want: &str) -> std::result::Result<u16, String> {
        if let Ok(id) = want.parse::<u16>() {
            if id >= 1 && (id as usize) <= self.slots.len() {
                return Ok(id);
            }
            return Err(format!(
                "host id {id} is outside this lockspace (1..{})",
                self.slots.len()
            ));
        }
        let ids: Vec<u16> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Slot::Record(r) if r.host_name == want))
            .map(|(i, _)| i as u16 + 1)
            .collect();
        match ids.as_slice() {
            [id] => Ok(*id),
            [] => Err(format!("no host named '{want}' in the lockspace")),
            many => Err(format!(
                "host name '{want}' is used by host ids {}: give the id",
                many.iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

impl Ctx {
    /// Opens the lockspace (with a deadline) and reads the daemon status.
    pub fn open(cfg: Config) -> Result<Ctx> {
        let boot_id = process::boot_id()
            .map_err(|e| Error::io("read boot id", "/proc/sys/kernel/random/boot_id", e))?;
        let (view, view_note) = usable_view(&cfg, &boot_id);
        let dir = cfg.lockspace_dir.clone();
        let ls = deadline::run(cfg.io_timeout, "open lockspace", &dir.clone(), move || {
            Lockspace::open(&dir)
        })?;
        Ok(Ctx {
            cfg,
            ls,
            view,
            view_note,
            boot_id,
        })
    }

    /// The host table, read in one piece with a deadline.
    pub fn table(&self) -> Result<Table> {
        let ls = self.ls.clone();
        let read_at = boottime_ms();
        let raw = deadline::run(
            self.cfg.io_timeout,
            "read host table",
            &ls.hosts_path(),
            move || ls.read_hosts_raw(),
        )?;
        let slots = hosts::decode_table(&raw);
        Ok(Table {
            raw,
            slots,
            read_at,
        })
    }

    /// Every lease record (damaged ones as errors naming the file). The
    /// records are read one by one on an I/O thread; the deadline is per
    /// record (io_timeout without progress), so a large lockspace may take
    /// as long as it takes while a hung one gives up after io_timeout.
    pub fn leases(&self) -> Result<Vec<(String, std::result::Result<LeaseRecord, Error>)>> {
        let ls = self.ls.clone();
        let io = self.cfg.io_timeout;
        let dir = ls.dir.join("leases");
        let keys = deadline::run(4 * io, "list leases", &dir, move || ls.list_leases())?;
        let n = keys.len();
        let (tx, rx) = std::sync::mpsc::sync_channel(64);
        let ls = self.ls.clone();
        let work = keys.clone();
        std::thread::Builder::new()
            .name("vmlease-io".into())
            .spawn(move || {
                for k in work {
                    let r = ls.read_lease(&k, "");
                    if tx.send((k, r)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| Error::io("read lease records", &dir, e))?;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match rx.recv_timeout(std::time::Duration::from_millis(io)) {
                Ok(x) => out.push(x),
                Err(_) => {
                    return Err(Error::Timeout {
                        op: "read lease record",
                        path: self.ls.lease_path(&keys[out.len()]),
                        after_ms: io,
                    })
                }
            }
        }
        Ok(out)
    }

    /// The daemon's view carried forward to the table read (see the module
    /// documentation).
    pub fn view_at(&self, t: &Table) -> Option<Status> {
        self.view.clone().map(|mut s| {
            s.written_ms = s.written_ms.max(t.read_at);
            s
        })
    }

    pub fn silence(&self, t: &Table, host_id: u16) -> Silence {
        match self.view_at(t) {
            None => Silence::Unknown,
            Some(v) => match v.observed_unchanged_ms(host_id, t.slot_raw(host_id)) {
                Some(ms) => Silence::Silent(ms),
                None => Silence::Renewing,
            },
        }
    }

    /// The takeover rule for one holder, exactly as the plugin applies it
    /// when this host acquires (with the view carried forward).
    pub fn judge(&self, t: &Table, h: &Holder) -> Verdict {
        if h.host_id == 0 || h.host_id as usize > t.slots.len() {
            return Verdict::Held(format!("host id {} is outside this lockspace", h.host_id));
        }
        let view = self.view_at(t);
        let alive = |p: ProcId| p.is_alive();
        let me = self.cfg.host_id.unwrap_or(0);
        let v = Judge {
            my_host_id: me,
            my_boot_id: &self.boot_id,
            my_dead_ms: self.cfg.timing.host_dead_timeout,
            trust_unsafe_peers: self.cfg.trust_unsafe_peers,
            view: view.as_ref(),
            process_alive: &alive,
        }
        .judge(h, t.slot_raw(h.host_id));
        let held = v.clone();
        // Rule 5: the storage-fence verdict, read with the I/O deadline.
        let ls = self.ls.clone();
        let id = h.host_id;
        let path = crate::storage_fence::verdict_path(&ls.dir, id);
        let read = move || {
            deadline::run(
                self.cfg.io_timeout,
                "read storage-fence verdict",
                &path,
                move || ls.read_storage_fence_raw(id),
            )
        };
        crate::takeover::with_rule5(v, me, h, t.slot_raw(h.host_id), read).unwrap_or_else(|e| {
            match held {
                Verdict::Held(why) => Verdict::Held(format!("{why}; storage fence: {e}")),
                other => other,
            }
        })
    }

    /// The host_dead_timeout that applies to `host_id` (the larger of its
    /// own and this host's), as in the takeover rule.
    pub fn dead_ms(&self, t: &Table, host_id: u16) -> u64 {
        let own = match t.slot(host_id) {
            Slot::Record(r) => r.timing.host_dead_timeout,
            _ => self
                .view
                .as_ref()
                .and_then(|v| v.peer(host_id))
                .map(|p| p.dead_timeout_ms)
                .unwrap_or(0),
        };
        own.max(self.cfg.timing.host_dead_timeout)
    }
}

/// The daemon status as a view of the other hosts: it must be from this
/// boot and this host id. An old one still counts (see the module
/// documentation); the note says how old.
pub fn usable_view(cfg: &Config, boot_id: &str) -> (Option<Status>, Option<String>) {
    let st = match Status::read(&cfg.state_dir) {
        Ok(Some(s)) => s,
        Ok(None) => {
            return (
                None,
                Some(format!(
                    "no vmlease-watchdog status in {}: this host observes no other host",
                    cfg.state_dir.display()
                )),
            )
        }
        Err(e) => return (None, Some(format!("unusable watchdog status: {e}"))),
    };
    if st.boot_id != boot_id {
        return (
            None,
            Some("the watchdog status is from another boot of this host".into()),
        );
    }
    if Some(st.host_id) != cfg.host_id {
        return (
            None,
            Some(format!(
                "the watchdog status is for host id {}, the configuration says {:?}",
                st.host_id, cfg.host_id
            )),
        );
    }
    let age = boottime_ms().saturating_sub(st.written_ms);
    let note = (age > cfg.timing.renew_interval + 500).then(|| {
        format!(
            "this host's watchdog last reported {} ago (not running?); its observations end there",
            secs(age)
        )
    });
    (Some(st), note)
}

/// The can-evacuate verdict on `host_id` ([`host::verdict`]), from the
/// table as read and this host's view.
pub fn host_verdict(ctx: &Ctx, t: &Table, host_id: u16) -> HostVerdict {
    let slot = t.slot(host_id);
    host::verdict(&HostFacts {
        collision: collision(ctx, t, host_id),
        state: slot.record().map(|r| r.state),
        this_host: ctx.cfg.host_id == Some(host_id),
        renew_fail_ms: slot
            .record()
            .map(|r| r.timing.renew_fail_timeout)
            .unwrap_or(0),
        dead_ms: ctx.dead_ms(t, host_id),
        silence: ctx.silence(t, host_id),
        view_note: ctx.view_note.as_deref(),
        unwatched: !ctx.cfg.trust_unsafe_peers && unwatched(slot),
    })
}

/// A host id collision known here: this host's daemon saw two machines
/// take turns on the slot, or the slot of this host's own id holds another
/// machine's record.
pub fn collision(ctx: &Ctx, t: &Table, host_id: u16) -> Option<String> {
    if let Some(p) = ctx
        .view
        .as_ref()
        .and_then(|v| v.peer(host_id))
        .filter(|p| !p.collision.is_empty())
    {
        return Some(p.collision.clone());
    }
    if ctx.cfg.host_id == Some(host_id) {
        if let Some(why) = crate::collision::load_refusal(&ctx.cfg.state_dir) {
            return Some(why);
        }
        let me = ctx.cfg.host_name.clone().unwrap_or_else(process::hostname);
        let joined = ctx.view.as_ref().is_some_and(|v| v.last_renewal_ms > 0);
        return crate::collision::not_ours(t.slot(host_id), &me, &ctx.boot_id, joined);
    }
    None
}
