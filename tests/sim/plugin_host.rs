//! A simulated host as the lock plugin sees it (`plugin::Host`): its
//! daemon's status, its clock, its QEMUs in /proc and its registry, so
//! that the plugin's production decisions (`plugin::acquire`,
//! `plugin::release`, `plugin::register_on`) run in the simulator. The
//! mutations of the protected check are seams here: the host answers the
//! check, or the clock it judges by, as the mutation says.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::Path;

use vmlease::config::Config;
use vmlease::error::{Error, Result};
use vmlease::plugin::Host as PluginHost;
use vmlease::process::ProcId;
use vmlease::registry::{Entries, Entry as RegEntry};
use vmlease::status::{protected_status_on, Status, StatusSource};

use crate::mutation::Mutation;
use crate::store::SimIo;
use crate::world::{pk, Pk, World};

/// A simulated host's registry (`<state_dir>/procs`) as the plugin uses
/// it (`registry::Entries`); every change bumps the directory's version.
pub struct SimRegistry<'a> {
    map: RefCell<&'a mut BTreeMap<Pk, RegEntry>>,
    version: RefCell<&'a mut u64>,
}

impl<'a> SimRegistry<'a> {
    pub fn of(hs: &'a mut crate::world::Host) -> SimRegistry<'a> {
        SimRegistry::new(&mut hs.registry, &mut hs.registry_version)
    }

    fn new(map: &'a mut BTreeMap<Pk, RegEntry>, version: &'a mut u64) -> SimRegistry<'a> {
        SimRegistry {
            map: RefCell::new(map),
            version: RefCell::new(version),
        }
    }

    fn bump(&self) {
        **self.version.borrow_mut() += 1;
    }
}

impl Entries for SimRegistry<'_> {
    fn read(&self, p: ProcId) -> Result<Option<RegEntry>> {
        Ok(self.map.borrow().get(&pk(p)).cloned())
    }

    fn list(&self) -> Result<Vec<std::result::Result<RegEntry, Error>>> {
        Ok(self.map.borrow().values().cloned().map(Ok).collect())
    }

    fn write(&self, e: &RegEntry) -> Result<()> {
        self.map.borrow_mut().insert(pk(e.proc_id), e.clone());
        self.bump();
        Ok(())
    }

    fn update(
        &self,
        p: ProcId,
        base: Option<&RegEntry>,
        f: &mut dyn FnMut(&mut RegEntry),
    ) -> Result<()> {
        let mut map = self.map.borrow_mut();
        let Some(mut e) = map.get(&pk(p)).cloned().or_else(|| base.cloned()) else {
            return Ok(());
        };
        f(&mut e);
        map.insert(pk(p), e);
        drop(map);
        self.bump();
        Ok(())
    }
}

/// libvirtd, the caller of the plugin's acquires (their intents name it).
/// The simulated daemon does not read intents, and no QEMU has this pid.
const LIBVIRTD: ProcId = ProcId { pid: 1, start: 0 };

/// A simulated host as the plugin sees it (`plugin::Host`): its daemon's
/// status, its clock, its QEMUs in /proc, its registry.
pub struct SimHost<'a> {
    boot_id: String,
    status: Option<Status>,
    daemon_pid: Option<u32>,
    now_ms: u64,
    /// The QEMUs of this boot that /proc shows (a zombie included).
    procs: Vec<ProcId>,
    mutation: Mutation,
    registry: SimRegistry<'a>,
    next_intent: Cell<u64>,
}

impl StatusSource for SimHost<'_> {
    fn boot_id(&self) -> Result<String> {
        Ok(self.boot_id.clone())
    }

    fn read_status(&self, _state_dir: &Path) -> Result<Option<Status>> {
        Ok(self.status.clone())
    }

    fn daemon_alive(&self, pid: u32) -> bool {
        self.daemon_pid == Some(pid)
    }

    fn now_ms(&self) -> u64 {
        match (&self.status, self.mutation) {
            // The protected check judges the status as of when it was
            // written.
            (Some(st), Mutation::StaleStatusAccepted) => st.written_ms,
            _ => self.now_ms,
        }
    }
}

impl<'a> PluginHost for SimHost<'a> {
    type Registry = SimRegistry<'a>;

    fn registry(&self) -> &SimRegistry<'a> {
        &self.registry
    }

    fn proc_id(&self, pid: u32) -> std::io::Result<ProcId> {
        self.procs
            .iter()
            .find(|p| p.pid == pid)
            .copied()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }

    fn caller(&self) -> Result<ProcId> {
        Ok(LIBVIRTD)
    }

    fn intent_id(&self) -> u64 {
        let id = self.next_intent.get();
        self.next_intent.set(id + 1);
        id
    }

    fn protected(&self, cfg: &Config) -> Result<(u16, String, Status)> {
        if self.mutation == Mutation::NoProtectedCheck {
            let host_id = cfg.require_host_id()?;
            let st = self
                .status
                .clone()
                .unwrap_or_else(|| empty_status(host_id, &self.boot_id));
            return Ok((host_id, self.boot_id.clone(), st));
        }
        protected_status_on(cfg, self)
    }
}

impl World {
    /// Runs `f` on host `h` as the plugin sees it (for op `op`: its
    /// intents' ids), with a view of the store and the host's config.
    pub fn with_plugin<T>(
        &mut self,
        h: u16,
        op: u64,
        f: impl FnOnce(&SimHost<'_>, &SimIo<'_>, &Config) -> T,
    ) -> T {
        let boot = self.host(h).boot_no;
        let procs: Vec<ProcId> = self
            .qemus
            .iter()
            .filter(|q| q.host == h && q.boot == boot && q.alive())
            .map(|q| q.proc_id)
            .collect();
        let now_ms = self.host(h).local_ms(self.now);
        let io = SimIo::new(&self.store, h, self.now, self.p.stale_ms, 0);
        let hs = &mut self.hosts[h as usize - 1];
        let host = SimHost {
            boot_id: hs.boot_id.clone(),
            status: hs.status.clone(),
            daemon_pid: hs.daemon.as_ref().map(|d| d.pid),
            now_ms,
            procs,
            mutation: self.mutation,
            registry: SimRegistry::new(&mut hs.registry, &mut hs.registry_version),
            next_intent: Cell::new(op << 16),
        };
        f(&host, &io, &hs.cfg)
    }
}

fn empty_status(host_id: u16, boot: &str) -> Status {
    Status {
        daemon_pid: 0,
        host_id,
        boot_id: boot.to_string(),
        incarnation: 0,
        written_ms: 0,
        last_renewal_ms: 0,
        state: vmlease::hosts::HostState::Live,
        reason: String::new(),
        unsafe_no_watchdog: false,
        lockspace_dir: String::new(),
        // The simulated store's (`SimIo`'s identity): only the protected
        // check is off.
        lockspace_uuid: "sim-lockspace".into(),
        allow_local_lockspace: false,
        local_lockspace: String::new(),
        observing_since_ms: 0,
        renew_interval_ms: 0,
        renew_fail_timeout_ms: 0,
        host_dead_timeout_ms: 0,
        networks: Vec::new(),
        peers: Vec::new(),
    }
}
