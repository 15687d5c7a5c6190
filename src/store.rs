//! The shared store as the lease engine sees it: a few operations on the
//! host table and on lease records, with the semantics the protocol relies
//! on. [`Lockspace`] (a directory on CephFS) is the real one; the
//! deterministic simulator (`tests/sim`) has another.
//!
//! What an implementation must guarantee:
//!
//! - a record write is atomic: readers see the old record or the new one,
//!   never a mix (the lockspace writes a temp file and renames it);
//! - a read of a lease record made while holding its record lock sees the
//!   last write made under that lock;
//! - the record lock excludes every other holder until the guard is
//!   dropped, or until the storage drops it (CephFS evicts a partitioned
//!   client); a write issued under a lock that was dropped never lands;
//! - a read (of the host table or of a record) returns what the writes
//!   that completed before it began left, whichever host made them: a
//!   host that renews is never seen standing still. Host table reads need
//!   no lock. The lockspace reads around this host's page cache (O_DIRECT),
//!   which ceph-fuse's default mounts would otherwise serve stale.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use crate::error::Result;
use crate::hosts::HostRecord;
use crate::lease::LeaseRecord;
use crate::lockspace::{Lockspace, RecordLock};

/// The operations of one lockspace, as the engine and the daemon use them.
pub trait Store {
    /// Held while a lease record is read, modified and written.
    type Guard;

    /// Number of host slots in the table.
    fn max_hosts(&self) -> u16;

    /// One host's slot, raw (`SLOT_SIZE` bytes; zeros past the end of the
    /// table). The caller checks `host_id` against [`Store::max_hosts`].
    fn read_slot_raw(&self, host_id: u16) -> Result<Vec<u8>>;

    /// The whole host table in one read (`max_hosts * SLOT_SIZE` bytes).
    fn read_hosts_raw(&self) -> Result<Vec<u8>>;

    /// Takes the serialising lock of a record, waiting at most `timeout_ms`.
    fn lock_record(&self, key: &str, timeout_ms: u64) -> Result<Self::Guard>;

    /// Reads a lease record; a missing one is free. `resource` (when not
    /// empty) must match the record's.
    fn read_lease(&self, key: &str, resource: &str) -> Result<LeaseRecord>;

    /// Replaces a lease record atomically.
    fn write_lease(&self, rec: &LeaseRecord, writer_host: u16) -> Result<()>;

    /// Writes one host's slot (its liveness record).
    fn write_host(&self, rec: &HostRecord) -> Result<()>;

    /// The raw `storage-fenced` verdict of a host (takeover rule 5), read
    /// under the record lock; None when there is none. A store without
    /// storage fencing has none.
    fn read_storage_fence_raw(&self, _host_id: u16) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }

    /// Where the lockspace is and the UUID it was initialised with (None:
    /// it has none), to compare with the one the daemon renews in.
    fn identity(&self) -> (PathBuf, Option<String>);
}

impl Store for Lockspace {
    type Guard = RecordLock;

    fn max_hosts(&self) -> u16 {
        self.max_hosts
    }

    fn read_slot_raw(&self, host_id: u16) -> Result<Vec<u8>> {
        Lockspace::read_slot_raw(self, host_id)
    }

    fn read_hosts_raw(&self) -> Result<Vec<u8>> {
        Lockspace::read_hosts_raw(self)
    }

    fn lock_record(&self, key: &str, timeout_ms: u64) -> Result<RecordLock> {
        Lockspace::lock_record(self, key, timeout_ms)
    }

    fn read_lease(&self, key: &str, resource: &str) -> Result<LeaseRecord> {
        Lockspace::read_lease(self, key, resource)
    }

    fn write_lease(&self, rec: &LeaseRecord, writer_host: u16) -> Result<()> {
        Lockspace::write_lease(self, rec, writer_host)
    }

    fn write_host(&self, rec: &HostRecord) -> Result<()> {
        Lockspace::write_host(self, rec)
    }

    fn read_storage_fence_raw(&self, host_id: u16) -> Result<Option<Vec<u8>>> {
        Lockspace::read_storage_fence_raw(self, host_id)
    }

    fn identity(&self) -> (PathBuf, Option<String>) {
        (self.dir.clone(), self.uuid.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Timing;
    use crate::hosts::HostState;
    use crate::hosts::SLOT_SIZE;

    fn store() -> (std::path::PathBuf, Lockspace) {
        let dir = std::env::temp_dir().join(format!(
            "vmlease-store-{}-{}",
            std::process::id(),
            crate::process::random_u64()
        ));
        Lockspace::init(&dir, 4).unwrap();
        let ls = Lockspace::open(&dir).unwrap();
        (dir, ls)
    }

    /// Goes through the trait only, as the generic engine does.
    fn roundtrip<S: Store>(s: &S) {
        assert_eq!(s.max_hosts(), 4);
        let rec = HostRecord {
            host_id: 3,
            host_name: "h3".into(),
            boot_id: "b".into(),
            incarnation: 1,
            counter: 7,
            state: HostState::Live,
            timing: Timing::TEST,
            unsafe_no_watchdog: false,
            mono_ms: 1,
            wall: 2,
        };
        s.write_host(&rec).unwrap();
        assert_eq!(s.read_slot_raw(3).unwrap(), rec.encode());
        let table = s.read_hosts_raw().unwrap();
        assert_eq!(table.len(), 4 * SLOT_SIZE);
        assert_eq!(&table[2 * SLOT_SIZE..3 * SLOT_SIZE], &rec.encode()[..]);
        let _g = s.lock_record("k", 100).unwrap();
        let mut l = s.read_lease("k", "r").unwrap();
        assert!(l.is_free());
        l.version = 3;
        s.write_lease(&l, 3).unwrap();
        assert_eq!(s.read_lease("k", "r").unwrap().version, 3);
    }

    #[test]
    fn lockspace_implements_the_store() {
        let (dir, ls) = store();
        roundtrip(&ls);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
