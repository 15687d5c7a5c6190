//! The lock state string handed to libvirt by Release/Inquire and back to
//! Acquire on resume and on the migration destination. libvirt embeds it
//! unescaped in XML, so it uses only `[a-z0-9:- ]`.
//!
//! Format: `vmlease1 <key>:<version> <key>:<version> ...`
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use crate::error::{Error, Result};

const TAG: &str = "vmlease1";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockState {
    pub versions: BTreeMap<String, u64>,
}

impl LockState {
    pub fn encode(&self) -> String {
        let mut s = String::from(TAG);
        for (k, v) in &self.versions {
            s.push(' ');
            s.push_str(k);
            s.push(':');
            s.push_str(&v.to_string());
        }
        s
    }

    /// Parses a state; an empty string is an empty state. A state from
    /// another lock manager or a damaged one is an error.
    pub fn parse(s: &str) -> Result<LockState> {
        let s = s.trim();
        let mut versions = BTreeMap::new();
        if s.is_empty() {
            return Ok(LockState { versions });
        }
        let mut parts = s.split(' ');
        if parts.next() != Some(TAG) {
            return Err(Error::Invalid(format!(
                "lock state '{}' was not written by vmlease",
                truncate(s)
            )));
        }
        for p in parts {
            let (k, v) = p
                .rsplit_once(':')
                .ok_or_else(|| Error::Invalid(format!("bad lock state item '{}'", truncate(p))))?;
            let ok_key = !k.is_empty()
                && k.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
            let v =
                v.parse::<u64>().ok().filter(|_| ok_key).ok_or_else(|| {
                    Error::Invalid(format!("bad lock state item '{}'", truncate(p)))
                })?;
            // A key given twice is damage: which version was meant?
            if versions.insert(k.to_string(), v).is_some() {
                return Err(Error::Invalid(format!(
                    "lock state names '{}' twice",
                    truncate(k)
                )));
            }
        }
        Ok(LockState { versions })
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_xml_safe() {
        let mut st = LockState::default();
        st.versions
            .insert("domain-c7a5fdbd-edaf-9455-926a-d65c16db1809".into(), 3);
        st.versions.insert("disk-00ff".into(), 12);
        let s = st.encode();
        assert!(!s.contains(['<', '>', '&', '"', '\'']));
        assert_eq!(LockState::parse(&s).unwrap(), st);
        assert_eq!(LockState::parse("").unwrap(), LockState::default());
    }

    #[test]
    fn rejects_foreign_and_damaged_states() {
        assert!(LockState::parse("__LIBVIRT__DISKS__:abc:/x:0:5").is_err());
        assert!(LockState::parse("vmlease1 disk-a:x").is_err());
        assert!(LockState::parse("vmlease1 ../etc:1").is_err());
        assert!(LockState::parse("vmlease1 :1").is_err());
        assert!(LockState::parse("vmlease1 disk-a:1 disk-a:2").is_err());
    }
}
