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
//! peer can make it wait (src/rados/, docs/cephfs.md).
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

/// Whether a renewal failed because Ceph refuses this host: a request
/// answered EBLOCKLISTED (ESHUTDOWN, 108: "Cannot send after transport
/// endpoint shutdown"), from the RADOS worker (librados) or from the
/// CephFS mount (ceph-fuse and the kernel client answer every call so
/// once the client is blocklisted). Nothing else returns it: a dead
/// ceph-fuse gives ENOTCONN, a cut link a deadline. It does not pass:
/// only an operator's `vmlease clear-fence` (the entry removed, a new
/// client) ends it.
pub fn blocklisted(e: &crate::error::Error) -> bool {
    match e {
        crate::error::Error::Io { source, .. } => {
            source.raw_os_error() == Some(libc::ESHUTDOWN)
                || crate::rados::errno_of(source) == Some(libc::ESHUTDOWN)
        }
        _ => false,
    }
}

/// The own slot out of a table read.
pub fn own_slot(table: &[u8], host_id: u16) -> Vec<u8> {
    let off = (host_id as usize - 1) * SLOT_SIZE;
    let mut own = table.get(off..off + SLOT_SIZE).unwrap_or(&[]).to_vec();
    own.resize(SLOT_SIZE, 0);
    own
}

/// The records the own slot may hold after a renewal wrote `written`:
/// that one, and the earlier writes that failed (`unconfirmed`, oldest
/// first), which may still land after it: a write a killed RADOS worker
/// had sent reaches the OSD when a cut link comes back, possibly after
/// the new worker's. Such a late write is this host's own record, not
/// another machine's, so the next renewal must not call it a collision.
/// At most `max` records, the newest kept.
pub fn after_write(unconfirmed: &[Vec<u8>], written: Vec<u8>, max: usize) -> Vec<Vec<u8>> {
    let keep = max.saturating_sub(1);
    let mut expect = vec![written];
    for w in unconfirmed.iter().rev().take(keep) {
        if !expect.contains(w) {
            expect.push(w.clone());
        }
    }
    expect
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Timing;
    use crate::hosts::HostState;
    use crate::rados::RadosConf;

    fn rec(counter: u64) -> HostRecord {
        HostRecord {
            host_id: 1,
            host_name: "h1".into(),
            boot_id: "b1".into(),
            incarnation: 7,
            counter,
            state: HostState::Live,
            timing: Timing {
                renew_interval: 1000,
                renew_fail_timeout: 8000,
                kill_timeout: 1000,
                watchdog_timeout: 1000,
                host_dead_timeout: 11000,
                host_dead_derived: false,
            },
            unsafe_no_watchdog: false,
            mono_ms: 0,
            wall: 0,
        }
    }

    /// A failed write that lands after a later successful one is still
    /// this host's own record: the check before the next write accepts
    /// it, and it is no collision.
    #[test]
    fn a_late_failed_write_is_no_collision() {
        let (r1, r2, r3, r4) = (
            rec(1).encode(),
            rec(2).encode(),
            rec(3).encode(),
            rec(4).encode(),
        );
        // r2's write failed (the worker was killed), r3's succeeded.
        let expect = after_write(std::slice::from_ref(&r2), r3.clone(), 32);
        assert_eq!(expect, vec![r3.clone(), r2.clone()]);
        // r2 landed late, over r3: the next renewal (r4) writes over it.
        assert_eq!(check_own(1, &r2, &expect), Ok(()));
        // Without it (the expectation before), r2 was a collision.
        assert!(check_own(1, &r2, std::slice::from_ref(&r3)).is_err());
        // Bounded, newest kept, no duplicates.
        let failed: Vec<Vec<u8>> = (10..50).map(|c| rec(c).encode()).collect();
        let e = after_write(&failed, r4.clone(), 32);
        assert_eq!(e.len(), 32);
        assert_eq!(e[0], r4);
        assert_eq!(e[1], rec(49).encode());
        assert!(!e.contains(&rec(10).encode()));
        assert_eq!(
            after_write(&[r1.clone(), r1.clone()], r1.clone(), 32),
            vec![r1]
        );
    }

    /// EBLOCKLISTED from the mount or from the RADOS worker is a
    /// blocklist; other errors (a dead ceph-fuse, a deadline) are not.
    #[test]
    fn blocklisted_is_eshutdown_only() {
        use crate::error::Error;
        let io = |e: std::io::Error| Error::io("write probe", "/ls/probes/1/alive", e);
        let fuse = std::io::Error::from_raw_os_error(libc::ESHUTDOWN);
        assert!(blocklisted(&io(fuse)));
        assert!(!blocklisted(&io(std::io::Error::from_raw_os_error(
            libc::ENOTCONN
        ))));
        assert!(!blocklisted(&io(std::io::Error::from_raw_os_error(
            libc::EIO
        ))));
        assert!(!blocklisted(&Error::Timeout {
            op: "renew",
            path: "/ls/hosts".into(),
            after_ms: 2000
        }));
    }

    /// With the table on RADOS a renewal first rewrites the own probe
    /// file (never creating it), and a lockspace that is not on CephFS
    /// fails the renewal: it never falls back to the file quietly.
    #[test]
    fn rados_renewal_writes_the_probe_first_and_never_falls_back() {
        let d = std::env::temp_dir().join(format!(
            "vmlease-test-renew-{}-{}",
            std::process::id(),
            crate::process::random_u64()
        ));
        Lockspace::init(&d, 4).unwrap();
        let ls = Lockspace::open(&d).unwrap().via_rados(RadosConf {
            conf: "/nonexistent/ceph.conf".into(),
            client_id: "admin".into(),
            timeout_ms: 1000,
            worker: "/nonexistent/vmlease-watchdog".into(),
        });
        let e = renew_io(&ls, 1, &[vec![0; SLOT_SIZE]], Some(&rec(1))).unwrap_err();
        assert!(e.to_string().contains("probes/1/alive"), "{e}");
        ls.create_probe(1).unwrap();
        let e = renew_io(&ls, 1, &[vec![0; SLOT_SIZE]], Some(&rec(2))).unwrap_err();
        assert!(e.to_string().contains("no CephFS layout"), "{e}");
        assert_eq!(
            std::fs::read(d.join("probes/1/alive")).unwrap(),
            rec(2).encode()
        );
        // Nothing reached the file.
        let file = Lockspace::open(&d).unwrap();
        assert_eq!(file.read_slot_raw(1).unwrap(), vec![0; SLOT_SIZE]);
        // Without RADOS there is no probe: the table write proves the same.
        assert_eq!(file.probe_path(1), None);
        let io = renew_io(&file, 1, &[vec![0; SLOT_SIZE]], Some(&rec(3))).unwrap();
        assert!(io.wrote);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
