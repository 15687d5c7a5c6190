//! The blocklist fault of the split-brain schedules: a host cut off from
//! both networks while it runs VMs is storage-fenced by a peer (`vmlease
//! storage-fence`, a real Ceph blocklist of its address, then the verdict
//! that frees its leases at once: takeover rule 5), and its links come
//! back while its stand-ins may still be writing: every one of their writes
//! must fail at the OSDs.
//!
//! The self-test replaces the blocklist by a no-op (the same fence
//! sequence, [`vmlease::storage_fence::fence_host`], with a Ceph that
//! blocklists nothing) while rule 5 stays on. On this rig the checker
//! cannot catch that: the MDS evicts a client that does not return
//! capabilities others need (1 s, the rig's setting, which it needs: with
//! that eviction off a cut host stalls every other client's lockspace I/O
//! until the 30 s session timeout - the no-op fence itself then waited
//! 31 s), and an eviction blocklists that client instance, so the cut
//! host's stand-ins (CephFS writers) are fenced by the MDS before the
//! verdict. The self-test therefore asserts: a violation, or else that
//! client blocklisted by the MDS at every no-op fence (the reason no write
//! could land). QEMU's librbd clients hold no MDS session: for them the
//! fence's blocklist is the only one.

use std::path::Path;

use crate::world::World;
use vmlease::lockspace::Lockspace;
use vmlease::storage_fence::ceph::{Ceph, OsdMap};
use vmlease::storage_fence::{fence_host, FenceOpts};

/// The host's Ceph address (what its config publishes).
pub fn addr(h: usize) -> String {
    format!("192.0.2.{}:0/0", h + 1)
}

/// A Ceph that blocklists nothing and reports every entry committed and
/// delivered: the self-test's broken fence.
struct NoBlocklist;

impl Ceph for NoBlocklist {
    fn blocklist_add(&self, _: &str, _: u64) -> Result<(), String> {
        Ok(())
    }
    fn blocklist_rm(&self, _: &str) -> Result<(), String> {
        Ok(())
    }
    fn osdmap(&self) -> Result<OsdMap, String> {
        Ok(OsdMap {
            epoch: 1,
            blocklist: (0..crate::world::HOSTS).map(addr).collect(),
            up_osds: Vec::new(),
        })
    }
    fn osd_epoch(&self, _: u32) -> Result<u64, String> {
        Ok(1)
    }
    fn client_epoch(&self, _: &Path) -> Result<u64, String> {
        Ok(1)
    }
}

/// Host `peer` storage-fences host `h`, silent for `silent_ms` (the
/// schedule cut it off then): Ok once the verdict is written.
pub fn fence(w: &World, peer: usize, h: usize, silent_ms: u64, noop: bool) -> Result<(), String> {
    if !noop {
        let (code, out) = crate::rig::storage_fence(w, peer, (h + 1) as u16, &[]);
        return if code == 0 { Ok(()) } else { Err(out) };
    }
    let ls = Lockspace::open(&w.check_mount.path.join("ls")).map_err(|e| e.to_string())?;
    let o = FenceOpts {
        expire_s: 3600,
        timeout: std::time::Duration::from_secs(10),
        client_asoks: Vec::new(),
        observed_silence_ms: Some(silent_ms),
        min_silence_ms: 3 * crate::world::R + 1000,
        writer_host: (peer + 1) as u16,
        writer_name: format!("host-{}.test", peer + 1),
        wall: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    fence_host(&ls, &NoBlocklist, (h + 1) as u16, &o)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The operator's clean-up once host `h` is down (reset) or the schedule
/// is over: the blocklist entry and the verdict go.
pub fn clear(w: &World, h: usize) {
    let _ = w.ceph.try_ceph(&["osd", "blocklist", "rm", &addr(h)]);
    let _ = vmlease::storage_fence::remove_verdict(&w.check_mount.path.join("ls"), (h + 1) as u16);
}

/// Whether the MDS has blocklisted a client instance of host `h` (an
/// entry `IP:PORT/NONCE`, not the fence's whole-IP `IP:0/0`): its eviction
/// of a client that does not return capabilities others need.
pub fn client_blocklisted(w: &World, h: usize) -> bool {
    let ip = format!("192.0.2.{}:", h + 1);
    let whole = addr(h);
    w.ceph
        .try_ceph(&["osd", "blocklist", "ls"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|e| e.starts_with(&ip) && e != whole)
}
