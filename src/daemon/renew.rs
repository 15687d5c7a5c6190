//! One renewal of this host's liveness slot, on the renewal thread: read
//! the host table (one read), check that our slot still holds what we
//! wrote last (`collision::check_own`), and only then write the new record
//! (one write + fsync). The read is the same one the observer needs, made
//! right before the write, so the check costs no extra I/O and covers the
//! whole time since our previous write: any record another machine wrote
//! in between is seen, and a machine that lost the slot writes it no more.
//!
//! Is one read before the write enough? Two writers A and B of one slot,
//! each doing read-check-write: if B's write lands between A's write and
//! A's next read, A sees it; if it lands between A's read and A's write,
//! A's write covers it, and B's next read (after its write, so after A's
//! read... and A's write) sees A's record. Either way one of them sees the
//! other at its next renewal, and it stops writing.
//!
//! With `liveness_rados` the read and the write go to the table's RADOS
//! object, after a write of this host's own CephFS probe file: nothing
//! in a renewal touches what another host's client touches, so no hung
//! peer can make it wait (src/rados.rs, docs/cephfs.md).
#![forbid(unsafe_code)]

use crate::collision::{check_own, Collision};
use crate::error::Result;
use crate::hosts::{HostRecord, SLOT_SIZE};
use crate::lockspace::Lockspace;

/// What one renewal did.
#[derive(Debug)]
pub struct RenewIo {
    /// The host table as read before the write.
    pub table: Vec<u8>,
    /// Whether `rec` was written.
    pub wrote: bool,
    /// Our slot did not hold what we expected: nothing was written.
    pub collision: Option<Collision>,
}

/// Reads the table; writes `rec` when our slot holds one of `expect`
/// (`None`: only read).
pub fn renew_io(
    ls: &Lockspace,
    host_id: u16,
    expect: &[Vec<u8>],
    rec: Option<&HostRecord>,
) -> Result<RenewIo> {
    // With the table on RADOS, first prove this host's CephFS client
    // (its own probe file, which no other client touches).
    if let Some(rec) = rec {
        ls.write_probe(rec)?;
    }
    let table = ls.read_hosts_raw()?;
    let own = own_slot(&table, host_id);
    let Some(rec) = rec else {
        return Ok(RenewIo {
            table,
            wrote: false,
            collision: None,
        });
    };
    if let Err(c) = check_own(host_id, &own, expect) {
        return Ok(RenewIo {
            table,
            wrote: false,
            collision: Some(c),
        });
    }
    ls.write_host(rec)?;
    Ok(RenewIo {
        table,
        wrote: true,
        collision: None,
    })
}

/// The own slot out of a table read.
pub fn own_slot(table: &[u8], host_id: u16) -> Vec<u8> {
    let off = (host_id as usize - 1) * SLOT_SIZE;
    let mut own = table.get(off..off + SLOT_SIZE).unwrap_or(&[]).to_vec();
    own.resize(SLOT_SIZE, 0);
    own
}
