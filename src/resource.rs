//! What can be leased and how each resource maps to a record file name.
#![forbid(unsafe_code)]

use std::fmt;

use crate::lease::Mode;
use crate::sha256::sha256_hex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// The per-domain lease, keyed by the domain UUID.
    Domain,
    /// A writable file or block disk, keyed by a hash of its path.
    Disk,
    /// An explicit `<lease>` element, keyed by lockspace and key.
    Lease,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Domain => "domain",
            Kind::Disk => "disk",
            Kind::Lease => "lease",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Resource {
    pub kind: Kind,
    /// The full name: UUID, disk path, or `lockspace/key`.
    pub name: String,
    pub mode: Mode,
}

impl Resource {
    pub fn domain(uuid: &str) -> Resource {
        Resource {
            kind: Kind::Domain,
            name: uuid.to_string(),
            mode: Mode::Exclusive,
        }
    }

    pub fn disk(path: &str, shared: bool) -> Resource {
        Resource {
            kind: Kind::Disk,
            name: path.to_string(),
            mode: if shared {
                Mode::Shared
            } else {
                Mode::Exclusive
            },
        }
    }

    pub fn lease(lockspace: &str, key: &str) -> Resource {
        Resource {
            kind: Kind::Lease,
            name: format!("{lockspace}/{key}"),
            mode: Mode::Exclusive,
        }
    }

    /// The record's file name in `leases/`: only `[a-z0-9-]`.
    pub fn key(&self) -> String {
        match self.kind {
            Kind::Domain if is_uuid(&self.name) => {
                format!("domain-{}", self.name.to_ascii_lowercase())
            }
            Kind::Domain => format!("domain-{}", sha256_hex(self.name.as_bytes())),
            Kind::Disk => format!("disk-{}", sha256_hex(self.name.as_bytes())),
            Kind::Lease => format!("lease-{}", sha256_hex(self.name.as_bytes())),
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Domain => write!(f, "domain {}", self.name),
            Kind::Disk => write!(f, "disk {}", self.name),
            Kind::Lease => write!(f, "lease {}", self.name),
        }
    }
}

/// Formats a raw 16-byte UUID the way libvirt prints it.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let h: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

/// Checks the textual form of a UUID (as used in keys and by the CLI).
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_safe_file_names() {
        let d = Resource::domain("C7A5FDBD-EDAF-9455-926A-D65C16DB1809");
        assert_eq!(d.key(), "domain-c7a5fdbd-edaf-9455-926a-d65c16db1809");
        let k = Resource::disk("/var/lib/libvirt/images/../a b.qcow2", false).key();
        assert!(k.starts_with("disk-") && k.len() == 5 + 64);
        assert!(k
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'));
        assert_ne!(
            Resource::disk("/a", false).key(),
            Resource::disk("/a/", false).key()
        );
        assert_ne!(
            Resource::lease("ls", "k").key(),
            Resource::disk("ls/k", false).key()
        );
    }

    #[test]
    fn uuid_format() {
        let u = [
            0xc7, 0xa5, 0xfd, 0xbd, 0xed, 0xaf, 0x94, 0x55, 0x92, 0x6a, 0xd6, 0x5c, 0x16, 0xdb,
            0x18, 0x09,
        ];
        let s = format_uuid(&u);
        assert_eq!(s, "c7a5fdbd-edaf-9455-926a-d65c16db1809");
        assert!(is_uuid(&s));
        assert!(!is_uuid("c7a5fdbd-edaf-9455-926a-d65c16db180"));
        assert!(!is_uuid("../../../etc/passwd-aaaaaaaaaaaaaaaaaa"));
    }
}
