//! The simulated shared store: the host table and the lease records, with
//! the semantics the protocol relies on (SPEC section 2): a record write
//! is atomic, the record lock serialises read-modify-writes, and reads of
//! a slot another machine wrote a moment ago may return its previous
//! version (a machine always reads its own writes; two machines with one
//! host id share a slot and read each other's writes late too).
//!
//! [`SimIo`] is what the real [`vmlease::engine::Engine`] runs on: every
//! read is served from the store as it is when the operation got its lock,
//! every write is buffered and lands when the world says the operation
//! completes (or never, if the client is evicted first).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use vmlease::error::{Error, Result};
use vmlease::hosts::{HostRecord, HostState, SLOT_SIZE};
use vmlease::lease::LeaseRecord;
use vmlease::store::Store;

use crate::params::{Us, MS};

#[derive(Debug, Clone)]
pub struct SlotCell {
    pub cur: Vec<u8>,
    pub prev: Vec<u8>,
    pub written_at: Us,
    /// Counts the writes of this slot (for the decode cache).
    pub version: u64,
    pub prev_version: u64,
    /// The machine (host index) that wrote `cur`.
    pub writer: u16,
}

#[derive(Debug, Clone, Default)]
pub struct RecCell {
    pub cur: Option<Vec<u8>>,
    pub prev: Option<Vec<u8>>,
    pub written_at: Us,
    /// `LeaseRecord::decode` of `cur` and `prev` (a pure function of the
    /// bytes: decoded once per write).
    pub cur_rec: Option<std::result::Result<LeaseRecord, String>>,
    pub prev_rec: Option<std::result::Result<LeaseRecord, String>>,
}

#[derive(Debug, Clone)]
pub struct StoreState {
    pub max_hosts: u16,
    pub slots: Vec<SlotCell>,
    pub leases: BTreeMap<String, RecCell>,
    /// Storage-fence verdicts (takeover rule 5), by host id.
    pub fences: BTreeMap<u16, Vec<u8>>,
}

/// A write issued by an operation, applied when it lands.
#[derive(Debug, Clone)]
pub enum Write {
    Lease {
        key: String,
        data: Vec<u8>,
    },
    Host {
        host_id: u16,
        boot_id: String,
        data: Vec<u8>,
    },
}

impl StoreState {
    pub fn new(max_hosts: u16) -> StoreState {
        StoreState {
            max_hosts,
            slots: (0..max_hosts)
                .map(|_| SlotCell {
                    cur: vec![0; SLOT_SIZE],
                    prev: vec![0; SLOT_SIZE],
                    written_at: 0,
                    version: 0,
                    prev_version: 0,
                    writer: 0,
                })
                .collect(),
            leases: BTreeMap::new(),
            fences: BTreeMap::new(),
        }
    }

    /// Applies a write that landed; `writer` is the machine (host index)
    /// that issued it.
    pub fn apply(&mut self, w: &Write, now: Us, writer: u16) {
        match w {
            Write::Lease { key, data } => {
                let c = self.leases.entry(key.clone()).or_default();
                c.prev = c.cur.take();
                c.prev_rec = c.cur_rec.take();
                c.cur = Some(data.clone());
                c.cur_rec = Some(LeaseRecord::decode(data));
                c.written_at = now;
            }
            Write::Host { host_id, data, .. } => {
                let c = &mut self.slots[*host_id as usize - 1];
                c.prev = std::mem::replace(&mut c.cur, data.clone());
                c.prev_version = c.version;
                c.version += 1;
                c.written_at = now;
                c.writer = writer;
            }
        }
    }

    pub fn lease(&self, key: &str) -> Option<&LeaseRecord> {
        self.leases
            .get(key)
            .and_then(|c| c.cur_rec.as_ref())
            .and_then(|r| r.as_ref().ok())
    }
}

fn eio(op: &'static str, path: &str) -> Error {
    Error::io(
        op,
        PathBuf::from(path),
        io::Error::from_raw_os_error(5), // EIO
    )
}

/// One operation's view of the store (see the module doc).
pub struct SimIo<'a> {
    st: &'a StoreState,
    /// The reading machine (host index, not host id).
    reader: u16,
    now: Us,
    stale_us: Us,
    rng: Cell<u64>,
    /// Lease reads happen under the record lock (always fresh).
    pub locked: bool,
    pub writes: RefCell<Vec<Write>>,
    pub ops: Cell<u32>,
    /// Of which on the host table (the `hosts` file).
    pub table_ops: Cell<u32>,
    /// The operation with this index fails with EIO.
    pub fail_at: Option<u32>,
    /// Writes fail with EROFS.
    pub read_only: bool,
    /// Mutation "no fresh slot read": slot reads answered from the
    /// daemon's own last table read instead of the store.
    pub answer_slots_from: Option<&'a [u8]>,
    /// Mutation "fenced-clean-vouches-for-all": slot reads show a
    /// fenced-clean or leaving record as written after every QEMU.
    pub timeless_clean: bool,
    /// The slot versions a table read returned (decode cache key).
    pub table_versions: RefCell<Vec<u64>>,
}

impl<'a> SimIo<'a> {
    pub fn new(st: &'a StoreState, reader: u16, now: Us, stale_ms: u64, seed: u64) -> SimIo<'a> {
        SimIo {
            st,
            reader,
            now,
            stale_us: stale_ms * MS,
            rng: Cell::new(seed | 1),
            locked: false,
            writes: RefCell::new(Vec::new()),
            ops: Cell::new(0),
            table_ops: Cell::new(0),
            fail_at: None,
            read_only: false,
            answer_slots_from: None,
            timeless_clean: false,
            table_versions: RefCell::new(Vec::new()),
        }
    }

    fn op(&self, what: &'static str, path: &str) -> Result<()> {
        let n = self.ops.get();
        self.ops.set(n + 1);
        if self.fail_at == Some(n) {
            return Err(eio(what, path));
        }
        Ok(())
    }

    fn check_writable(&self, op: &'static str, path: &str) -> Result<()> {
        if self.read_only {
            return Err(Error::io(
                op,
                PathBuf::from(path),
                io::Error::from_raw_os_error(30), // EROFS
            ));
        }
        Ok(())
    }

    fn coin(&self) -> bool {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x & 1 == 1
    }

    /// The bytes of slot `i` (0-based) this read returns, and their version.
    fn slot(&self, i: usize) -> (&'a [u8], u64) {
        let c = &self.st.slots[i];
        let recent = self.now.saturating_sub(c.written_at) < self.stale_us;
        if c.writer != self.reader && recent && c.version > 0 && self.coin() {
            (&c.prev, c.prev_version)
        } else {
            (&c.cur, c.version)
        }
    }
}

impl Store for SimIo<'_> {
    type Guard = ();

    /// The simulated daemons publish this UUID in their status.
    fn identity(&self) -> (std::path::PathBuf, Option<String>) {
        ("/sim/lockspace".into(), Some("sim-lockspace".into()))
    }

    fn read_storage_fence_raw(&self, host_id: u16) -> Result<Option<Vec<u8>>> {
        Ok(self.st.fences.get(&host_id).cloned())
    }

    fn max_hosts(&self) -> u16 {
        self.st.max_hosts
    }

    fn read_slot_raw(&self, host_id: u16) -> Result<Vec<u8>> {
        let i = host_id as usize - 1;
        if let Some(view) = self.answer_slots_from {
            return Ok(view[i * SLOT_SIZE..(i + 1) * SLOT_SIZE].to_vec());
        }
        self.op("read host record", "/sim/lockspace/hosts")?;
        self.table_ops.set(self.table_ops.get() + 1);
        if i >= self.st.slots.len() {
            return Ok(vec![0; SLOT_SIZE]);
        }
        let raw = self.slot(i).0;
        if self.timeless_clean {
            if let vmlease::hosts::Slot::Record(mut r) = vmlease::hosts::decode_slot(host_id, raw) {
                if matches!(r.state, HostState::FencedClean | HostState::Leaving) {
                    r.mono_ms = u64::MAX / 2;
                    return Ok(r.encode());
                }
            }
        }
        Ok(raw.to_vec())
    }

    fn read_hosts_raw(&self) -> Result<Vec<u8>> {
        self.op("read host table", "/sim/lockspace/hosts")?;
        self.table_ops.set(self.table_ops.get() + 1);
        let mut out = Vec::with_capacity(self.st.slots.len() * SLOT_SIZE);
        let mut versions = self.table_versions.borrow_mut();
        versions.clear();
        for i in 0..self.st.slots.len() {
            let (b, v) = self.slot(i);
            out.extend_from_slice(b);
            versions.push(v);
        }
        Ok(out)
    }

    fn lock_record(&self, key: &str, _timeout_ms: u64) -> Result<()> {
        // The world grants the lock before the operation runs (or times
        // the wait out); by now it is held.
        self.op("open record lock", key)
    }

    fn read_lease(&self, key: &str, resource: &str) -> Result<LeaseRecord> {
        let path = format!("/sim/lockspace/leases/{key}");
        self.op("read lease", &path)?;
        let cell = self.st.leases.get(key);
        let decoded = cell.and_then(|c| {
            let recent = self.now.saturating_sub(c.written_at) < self.stale_us;
            if !self.locked && recent && c.prev.is_some() && self.coin() {
                c.prev_rec.as_ref()
            } else {
                c.cur_rec.as_ref()
            }
        });
        let Some(decoded) = decoded else {
            return Ok(LeaseRecord::free(key, resource));
        };
        // As Lockspace::read_lease checks it.
        let rec = decoded.clone().map_err(|reason| Error::Corrupt {
            path: PathBuf::from(&path),
            reason,
        })?;
        if rec.key != key || (!resource.is_empty() && rec.resource != resource) {
            return Err(Error::Corrupt {
                path: PathBuf::from(&path),
                reason: format!("record names key '{}' / '{}'", rec.key, rec.resource),
            });
        }
        Ok(rec)
    }

    fn write_lease(&self, rec: &LeaseRecord, _writer_host: u16) -> Result<()> {
        self.op("rename lease", &rec.key)?;
        self.check_writable("create", &rec.key)?;
        self.writes.borrow_mut().push(Write::Lease {
            key: rec.key.clone(),
            data: rec.encode(),
        });
        Ok(())
    }

    fn write_host(&self, rec: &HostRecord) -> Result<()> {
        self.op("write host record", "/sim/lockspace/hosts")?;
        self.table_ops.set(self.table_ops.get() + 1);
        self.check_writable("open host table", "/sim/lockspace/hosts")?;
        self.writes.borrow_mut().push(Write::Host {
            host_id: rec.host_id,
            boot_id: rec.boot_id.clone(),
            data: rec.encode(),
        });
        Ok(())
    }
}
