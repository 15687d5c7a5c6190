//! Host liveness records: one 512-byte slot per host id in the lockspace's
//! `hosts` file, like sanlock's delta-lease area. A host writes only its own
//! slot (one pwrite + fsync per renewal) and reads the whole table (one
//! pread) to observe the others.
#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;

use crate::codec;
use crate::config::Timing;

pub const SLOT_SIZE: usize = 512;
const MAGIC: &str = "vmlease-host v1";

/// The longest host name a slot can carry, in bytes once percent-encoded
/// as the record holds it: with every other field at its largest (a
/// 36-byte boot id, 20-digit counters and clocks, timings up to 86400 s)
/// the record then still fits [`SLOT_SIZE`] (`longest_name_fits` below).
pub const MAX_HOST_NAME_ENCODED: usize = 100;

/// Checks a host name for the liveness record: 1-64 bytes, no spaces or
/// control characters, and short enough once encoded to fit the slot
/// (64 bytes of non-ASCII text encode to 192: it would not).
pub fn check_host_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || name.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err("must be 1-64 characters without spaces or control characters".into());
    }
    let encoded = codec::encode(name).len();
    if encoded > MAX_HOST_NAME_ENCODED {
        return Err(format!(
            "is {encoded} bytes long in the host record (characters other than \
             letters, digits and '._:/@+-,' take 3 bytes each), at most {MAX_HOST_NAME_ENCODED} fit"
        ));
    }
    Ok(())
}

/// A host's state as published in its liveness record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostState {
    /// Renewing; all networks fine.
    Live,
    /// Renewing; management network lost (VMs still run: do not evacuate).
    MgmtIsolated,
    /// Renewing; service network lost.
    ServiceIsolated,
    /// Killing its leased VMs.
    Fencing,
    /// Killed every leased VM after a fence and starts none: its leases may
    /// be taken at once.
    FencedClean,
    /// The daemon stopped cleanly with no leases held.
    Leaving,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Live => "live",
            HostState::MgmtIsolated => "mgmt-isolated",
            HostState::ServiceIsolated => "service-isolated",
            HostState::Fencing => "fencing",
            HostState::FencedClean => "fenced-clean",
            HostState::Leaving => "leaving",
        }
    }

    /// States in which the host still runs its VMs and renews.
    pub fn is_running(self) -> bool {
        matches!(
            self,
            HostState::Live | HostState::MgmtIsolated | HostState::ServiceIsolated
        )
    }
}

impl fmt::Display for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HostState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "live" => HostState::Live,
            "mgmt-isolated" => HostState::MgmtIsolated,
            "service-isolated" => HostState::ServiceIsolated,
            "fencing" => HostState::Fencing,
            "fenced-clean" => HostState::FencedClean,
            "leaving" => HostState::Leaving,
            other => return Err(format!("unknown host state '{other}'")),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRecord {
    pub host_id: u16,
    pub host_name: String,
    /// The kernel boot id (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// Random per daemon start.
    pub incarnation: u64,
    /// Changes at every renewal: the only thing other hosts watch.
    pub counter: u64,
    pub state: HostState,
    /// The writer's own timing, so others use its numbers, not theirs.
    pub timing: Timing,
    pub unsafe_no_watchdog: bool,
    /// Writer's monotonic ms and wall seconds: informational only, never
    /// compared with another host's clock.
    pub mono_ms: u64,
    pub wall: u64,
}

impl HostRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = codec::Writer::new(MAGIC);
        w.field("host_id", self.host_id)
            .field("host_name", &self.host_name)
            .field("boot_id", &self.boot_id)
            .field("incarnation", self.incarnation)
            .field("counter", self.counter)
            .field("state", self.state)
            .field("renew_interval_ms", self.timing.renew_interval)
            .field("renew_fail_timeout_ms", self.timing.renew_fail_timeout)
            .field("kill_timeout_ms", self.timing.kill_timeout)
            .field("watchdog_timeout_ms", self.timing.watchdog_timeout)
            .field("host_dead_timeout_ms", self.timing.host_dead_timeout)
            .field("unsafe_no_watchdog", u8::from(self.unsafe_no_watchdog))
            .field("mono_ms", self.mono_ms)
            .field("wall", self.wall);
        let mut data = w.finish();
        assert!(
            data.len() <= SLOT_SIZE,
            "host record exceeds its slot ({} bytes)",
            data.len()
        );
        data.resize(SLOT_SIZE, 0);
        data
    }

    /// Decodes one slot. `Ok(None)` for a never-written (all zero) slot.
    pub fn decode(slot: &[u8]) -> Result<Option<HostRecord>, String> {
        if slot.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let f = codec::parse(slot, MAGIC)?;
        let num = |k: &str| f.req_u64(k);
        let host_id = num("host_id")?;
        if host_id == 0 || host_id > crate::config::MAX_HOST_ID as u64 {
            return Err(format!("host_id {host_id} out of range"));
        }
        let timing = Timing {
            renew_interval: num("renew_interval_ms")?,
            renew_fail_timeout: num("renew_fail_timeout_ms")?,
            kill_timeout: num("kill_timeout_ms")?,
            watchdog_timeout: num("watchdog_timeout_ms")?,
            host_dead_timeout: num("host_dead_timeout_ms")?,
            host_dead_derived: false,
        };
        Ok(Some(HostRecord {
            host_id: host_id as u16,
            host_name: f.req("host_name")?.to_string(),
            boot_id: f.req("boot_id")?.to_string(),
            incarnation: num("incarnation")?,
            counter: num("counter")?,
            state: f.req("state")?.parse()?,
            timing,
            unsafe_no_watchdog: num("unsafe_no_watchdog")? != 0,
            mono_ms: num("mono_ms")?,
            wall: num("wall")?,
        }))
    }
}

/// One slot of the table as read: empty, a record, or damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    Empty,
    Record(HostRecord),
    Corrupt(String),
}

impl Slot {
    pub fn record(&self) -> Option<&HostRecord> {
        match self {
            Slot::Record(r) => Some(r),
            _ => None,
        }
    }
}

/// Decodes a table read in one piece; slot i holds host id i + 1. A record
/// that names a different host id than its slot is corrupt.
pub fn decode_table(data: &[u8]) -> Vec<Slot> {
    data.chunks(SLOT_SIZE)
        .enumerate()
        .map(|(i, chunk)| match u16::try_from(i + 1) {
            Ok(id) => decode_slot(id, chunk),
            // Past any host id (a damaged or foreign file of more than
            // 32 MiB): never a record, never a wrapped-around host id.
            Err(_) if chunk.iter().all(|&b| b == 0) => Slot::Empty,
            Err(_) => Slot::Corrupt(format!("slot {} is past the largest host id", i + 1)),
        })
        .collect()
}

pub fn decode_slot(host_id: u16, chunk: &[u8]) -> Slot {
    match HostRecord::decode(chunk) {
        Ok(None) => Slot::Empty,
        Ok(Some(r)) if r.host_id != host_id => Slot::Corrupt(format!(
            "slot {host_id} holds a record for host {}",
            r.host_id
        )),
        Ok(Some(r)) => Slot::Record(r),
        Err(e) => Slot::Corrupt(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample(id: u16) -> HostRecord {
        HostRecord {
            host_id: id,
            host_name: "host-a.example.org".into(),
            boot_id: "0b6f5b8e-8f2c-4b59-9d7c-7a1e3a0d9c11".into(),
            incarnation: 0xdead_beef_1234_5678,
            counter: 99,
            state: HostState::MgmtIsolated,
            timing: Timing {
                renew_interval: 2000,
                renew_fail_timeout: 20000,
                kill_timeout: 10000,
                watchdog_timeout: 15000,
                host_dead_timeout: 41000,
                host_dead_derived: false,
            },
            unsafe_no_watchdog: true,
            mono_ms: u64::MAX,
            wall: u64::MAX,
        }
    }

    #[test]
    fn roundtrip_fits_slot() {
        let mut r = sample(2000);
        r.host_name = "x".repeat(64);
        let data = r.encode();
        assert_eq!(data.len(), SLOT_SIZE);
        assert_eq!(HostRecord::decode(&data).unwrap(), Some(r));
    }

    #[test]
    fn longest_name_fits() {
        let mut r = sample(2000);
        r.state = HostState::ServiceIsolated;
        r.incarnation = u64::MAX;
        r.counter = u64::MAX;
        // 86400 s for every timing, D derived from them at its largest.
        let day = 86_400_000;
        r.timing = Timing {
            renew_interval: day,
            renew_fail_timeout: day,
            kill_timeout: day,
            watchdog_timeout: day,
            host_dead_timeout: Timing::derive_dead(day, day, day, day).max(day),
            host_dead_derived: false,
        };
        // 33 characters of 3 escaped bytes each: 99 encoded bytes.
        r.host_name = "\u{e9}".repeat(16) + "#";
        assert_eq!(check_host_name(&r.host_name), Ok(()));
        let data = r.encode();
        assert_eq!(HostRecord::decode(&data).unwrap(), Some(r.clone()));
        r.host_name = "a".repeat(64);
        assert_eq!(check_host_name(&r.host_name), Ok(()));
        r.encode();
        assert!(check_host_name(&"\u{e9}".repeat(32)).is_err());
        assert!(check_host_name("a b").is_err());
        assert!(check_host_name("").is_err());
    }

    #[test]
    fn table_decoding() {
        let mut table = vec![0u8; 4 * SLOT_SIZE];
        table[SLOT_SIZE..2 * SLOT_SIZE].copy_from_slice(&sample(2).encode());
        // A record in the wrong slot.
        table[2 * SLOT_SIZE..3 * SLOT_SIZE].copy_from_slice(&sample(1).encode());
        table[3 * SLOT_SIZE + 10] = 7;
        let slots = decode_table(&table);
        assert_eq!(slots[0], Slot::Empty);
        assert_eq!(slots[1].record().unwrap().host_id, 2);
        assert!(matches!(slots[2], Slot::Corrupt(_)));
        assert!(matches!(slots[3], Slot::Corrupt(_)));
    }

    #[test]
    fn a_table_past_the_largest_host_id() {
        let mut table = vec![0u8; (u16::MAX as usize + 2) * SLOT_SIZE];
        let last = table.len() - 1;
        table[last] = 1;
        let slots = decode_table(&table);
        assert_eq!(slots[u16::MAX as usize], Slot::Empty);
        assert!(
            matches!(&slots[u16::MAX as usize + 1], Slot::Corrupt(e) if e.contains("past the largest host id"))
        );
    }
}
