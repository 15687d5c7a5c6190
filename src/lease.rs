//! Resource lease records: one file per leased resource, naming its
//! holder(s). Ownership is the record's content, never a filesystem lock.
#![forbid(unsafe_code)]

use std::fmt;

use crate::codec;

const MAGIC: &str = "vmlease-lease v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Exclusive,
    Shared,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Exclusive => "exclusive",
            Mode::Shared => "shared",
        }
    }
    pub fn parse(s: &str) -> Result<Mode, String> {
        match s {
            "exclusive" => Ok(Mode::Exclusive),
            "shared" => Ok(Mode::Shared),
            o => Err(format!("unknown lease mode '{o}'")),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who holds a lease: a QEMU process on a host, in one boot of that host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Holder {
    pub host_id: u16,
    pub boot_id: String,
    pub pid: u32,
    /// The process start time (clock ticks since boot, /proc/PID/stat field
    /// 22): with the pid it names one process for the lifetime of a boot.
    pub pid_start: u64,
    pub domain_uuid: String,
    pub domain_name: String,
}

impl Holder {
    /// The holder's process (pid + start time).
    pub fn proc_id(&self) -> crate::process::ProcId {
        crate::process::ProcId {
            pid: self.pid,
            start: self.pid_start,
        }
    }

    /// Same process of the same host boot.
    pub fn same_process(&self, other: &Holder) -> bool {
        self.host_id == other.host_id
            && self.boot_id == other.boot_id
            && self.pid == other.pid
            && self.pid_start == other.pid_start
    }

    fn encode(&self) -> String {
        format!(
            "{} {} {} {} {} {}",
            self.host_id,
            codec::encode(&self.boot_id),
            self.pid,
            self.pid_start,
            codec::encode(&self.domain_uuid),
            codec::encode(&self.domain_name)
        )
    }

    fn decode(s: &str) -> Result<Holder, String> {
        let parts: Vec<&str> = s.split(' ').collect();
        if parts.len() != 6 {
            return Err(format!("holder has {} parts, expected 6", parts.len()));
        }
        let num = |i: usize, what: &str| {
            parts[i]
                .parse::<u64>()
                .map_err(|_| format!("holder {what} '{}' is not a number", parts[i]))
        };
        let host_id = num(0, "host id")?;
        if host_id == 0 || host_id > crate::config::MAX_HOST_ID as u64 {
            return Err(format!("holder host id {host_id} out of range"));
        }
        Ok(Holder {
            host_id: host_id as u16,
            boot_id: codec::decode(parts[1])?,
            pid: u32::try_from(num(2, "pid")?).map_err(|_| "holder pid out of range")?,
            pid_start: num(3, "start time")?,
            domain_uuid: codec::decode(parts[4])?,
            domain_name: codec::decode(parts[5])?,
        })
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "host {} (domain {} {}, pid {})",
            self.host_id, self.domain_name, self.domain_uuid, self.pid
        )
    }
}

/// The content of one lease file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// File name key (e.g. `disk-<sha256>`).
    pub key: String,
    /// The full resource name (disk path, domain UUID, lockspace/key).
    pub resource: String,
    /// Changes on every change of ownership; never goes back.
    pub version: u64,
    /// `None` when free. Shared leases may have many holders.
    pub mode: Option<Mode>,
    pub holders: Vec<Holder>,
}

impl LeaseRecord {
    pub fn free(key: &str, resource: &str) -> LeaseRecord {
        LeaseRecord {
            key: key.into(),
            resource: resource.into(),
            version: 0,
            mode: None,
            holders: Vec::new(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = codec::Writer::new(MAGIC);
        w.field("key", &self.key)
            .field("resource", &self.resource)
            .field("version", self.version)
            .field("mode", self.mode.map(Mode::as_str).unwrap_or("free"));
        for h in &self.holders {
            w.field("holder", h.encode());
        }
        w.finish()
    }

    pub fn decode(data: &[u8]) -> Result<LeaseRecord, String> {
        let f = codec::parse(data, MAGIC)?;
        let mode = match f.req("mode")? {
            "free" => None,
            m => Some(Mode::parse(m)?),
        };
        let holders = f
            .all("holder")
            .map(Holder::decode)
            .collect::<Result<Vec<_>, _>>()?;
        match (mode, holders.len()) {
            (None, 0) => {}
            (None, _) => return Err("free lease with holders".into()),
            (Some(_), 0) => return Err("held lease without holders".into()),
            (Some(Mode::Exclusive), n) if n > 1 => {
                return Err(format!("exclusive lease with {n} holders"))
            }
            _ => {}
        }
        Ok(LeaseRecord {
            key: f.req("key")?.to_string(),
            resource: f.req("resource")?.to_string(),
            version: f.req_u64("version")?,
            mode,
            holders,
        })
    }

    pub fn is_free(&self) -> bool {
        self.holders.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn holder(host: u16, pid: u32) -> Holder {
        Holder {
            host_id: host,
            boot_id: "boot-1".into(),
            pid,
            pid_start: 12345,
            domain_uuid: "c7a5fdbd-edaf-9455-926a-d65c16db1809".into(),
            domain_name: "web 01 <prod>".into(),
        }
    }

    #[test]
    fn roundtrip() {
        let r = LeaseRecord {
            key: "disk-abc".into(),
            resource: "/var/lib/libvirt/images/a b.qcow2".into(),
            version: 7,
            mode: Some(Mode::Shared),
            holders: vec![holder(1, 10), holder(2, 20)],
        };
        assert_eq!(LeaseRecord::decode(&r.encode()).unwrap(), r);
        let f = LeaseRecord::free("dom-x", "x");
        assert_eq!(LeaseRecord::decode(&f.encode()).unwrap(), f);
    }

    #[test]
    fn inconsistent_records_are_corrupt() {
        let mut r = LeaseRecord::free("k", "r");
        r.holders.push(holder(1, 1));
        assert!(LeaseRecord::decode(&r.encode()).is_err());
        r.mode = Some(Mode::Exclusive);
        r.holders.push(holder(2, 2));
        assert!(LeaseRecord::decode(&r.encode()).is_err());
        r.holders.clear();
        assert!(LeaseRecord::decode(&r.encode()).is_err());
    }
}
