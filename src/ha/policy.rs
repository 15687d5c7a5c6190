//! A domain's HA policy and size, read from its XML as libvirt writes it
//! (`virsh dumpxml`): `<metadata><vmlease:ha xmlns:vmlease="URI"
//! restart="always|never" priority="N"/></metadata>`, `<memory>` and
//! `<vcpu>`. libvirt's output is canonical, so a small scanner suffices;
//! anything malformed is an error naming what is wrong (the agent then
//! treats the domain as unmanaged), never a panic.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

/// The namespace of vmlease's domain metadata (`virsh metadata --uri`).
pub const NS_URI: &str = "http://vmlease.org/xmlns/ha/1";
/// The prefix libvirt writes for it (`virsh metadata --key`).
pub const NS_KEY: &str = "vmlease";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Restart {
    /// Restart elsewhere when its host fails.
    Always,
    /// Known to vmlease-ha, never restarted.
    Never,
}

impl Restart {
    pub fn as_str(self) -> &'static str {
        match self {
            Restart::Always => "always",
            Restart::Never => "never",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub restart: Restart,
    /// Higher first; default 0.
    pub priority: i32,
}

/// What the agent publishes about a domain's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    pub uuid: String,
    pub name: String,
    /// `None`: no vmlease metadata (not managed).
    pub policy: Option<Policy>,
    pub memory_kib: u64,
    pub vcpus: u32,
}

/// Reads the policy and size from a domain XML.
pub fn parse(xml: &str) -> Result<DomainInfo, String> {
    let name = element_text(xml, "name").ok_or("no <name> in the domain XML")?;
    let uuid = element_text(xml, "uuid")
        .ok_or("no <uuid> in the domain XML")?
        .to_ascii_lowercase();
    if uuid.len() != 36 || !uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(format!("<uuid> '{uuid}' is not a UUID"));
    }
    let (meta, after) = match (xml.find("<metadata>"), xml.find("</metadata>")) {
        (Some(a), Some(b)) if a < b => (&xml[a..b], &xml[b..]),
        _ => ("", xml),
    };
    let memory = element_text(after, "memory").ok_or("no <memory> in the domain XML")?;
    let unit = start_tag(after, "memory")
        .and_then(|t| attr(t, "unit"))
        .unwrap_or_else(|| "KiB".into());
    let memory_kib = to_kib(memory.trim(), &unit)?;
    let vcpus = element_text(after, "vcpu")
        .ok_or("no <vcpu> in the domain XML")?
        .trim()
        .parse::<u32>()
        .map_err(|_| "<vcpu> is not a number".to_string())?;
    Ok(DomainInfo {
        uuid,
        name: unescape(name.trim()),
        policy: policy(meta)?,
        memory_kib,
        vcpus,
    })
}

/// The start tag of `<P:ha xmlns:P="NS_URI" .../>` inside `<metadata>`
/// (its inside, without `<` and `>`).
fn ha_tag(meta: &str) -> Result<Option<&str>, String> {
    let mut rest = meta;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let end = rest.find('>').ok_or("unterminated tag in <metadata>")?;
        let tag = &rest[..end];
        rest = &rest[end..];
        if tag.starts_with('/') || tag.starts_with('!') || tag.starts_with('?') {
            continue;
        }
        let tag_name = tag
            .split(|c: char| c.is_whitespace() || c == '/')
            .next()
            .unwrap_or("");
        let Some((prefix, local)) = tag_name.split_once(':') else {
            continue;
        };
        if local != "ha" || attr(tag, &format!("xmlns:{prefix}")).as_deref() != Some(NS_URI) {
            continue;
        }
        return Ok(Some(tag));
    }
    Ok(None)
}

/// An attribute of the vmlease `<ha>` element of a domain XML: `Ok(None)`
/// when the element or the attribute is absent.
pub fn ha_attr(xml: &str, name: &str) -> Result<Option<String>, String> {
    let meta = match (xml.find("<metadata>"), xml.find("</metadata>")) {
        (Some(a), Some(b)) if a < b => &xml[a..b],
        _ => return Ok(None),
    };
    Ok(ha_tag(meta)?.and_then(|t| attr(t, name)))
}

/// The `<P:ha xmlns:P="NS_URI" .../>` element inside `<metadata>`.
fn policy(meta: &str) -> Result<Option<Policy>, String> {
    let Some(tag) = ha_tag(meta)? else {
        return Ok(None);
    };
    let restart = match attr(tag, "restart").as_deref() {
        None | Some("always") => Restart::Always,
        Some("never") => Restart::Never,
        Some(other) => {
            return Err(format!(
                "vmlease metadata: restart=\"{other}\" (expected \"always\" or \"never\")"
            ))
        }
    };
    let priority = match attr(tag, "priority") {
        None => 0,
        Some(p) => p
            .parse::<i32>()
            .ok()
            .filter(|p| (-1000..=1000).contains(p))
            .ok_or_else(|| format!("vmlease metadata: priority=\"{p}\" (expected -1000..1000)"))?,
    };
    Ok(Some(Policy { restart, priority }))
}

/// The start tag `<name ...>` (its inside, without `<` and `>`).
fn start_tag<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(i) = xml[from..].find(&format!("<{name}")) {
        let at = from + i + 1;
        let next = xml[at + name.len()..].chars().next()?;
        if next == '>' || next == '/' || next.is_whitespace() {
            let end = xml[at..].find('>')?;
            return Some(&xml[at..at + end]);
        }
        from = at;
    }
    None
}

/// The text of the first `<name>...</name>`.
fn element_text<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let tag = start_tag(xml, name)?;
    let start = tag.as_ptr() as usize - xml.as_ptr() as usize + tag.len() + 1;
    let end = xml[start..].find(&format!("</{name}>"))?;
    Some(&xml[start..start + end])
}

/// An attribute's value in a start tag (either quote).
fn attr(tag: &str, name: &str) -> Option<String> {
    let mut rest = tag;
    while let Some(i) = rest.find(name) {
        let before = rest[..i].chars().last();
        let after = &rest[i + name.len()..];
        let after_eq = after.trim_start().strip_prefix('=').map(str::trim_start);
        if before.is_some_and(char::is_whitespace) {
            if let Some(v) = after_eq {
                let q = v.chars().next()?;
                if q == '"' || q == '\'' {
                    let end = v[1..].find(q)?;
                    return Some(unescape(&v[1..1 + end]));
                }
            }
        }
        rest = &rest[i + name.len()..];
    }
    None
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn to_kib(v: &str, unit: &str) -> Result<u64, String> {
    let n: u64 = v
        .parse()
        .map_err(|_| format!("<memory> '{v}' is not a number"))?;
    let mul: u64 = match unit {
        "b" | "bytes" => return Ok(n / 1024),
        "KiB" | "k" => 1,
        "MiB" | "M" => 1024,
        "GiB" | "G" => 1024 * 1024,
        "TiB" | "T" => 1024 * 1024 * 1024,
        other => return Err(format!("<memory unit='{other}'> is not supported")),
    };
    n.checked_mul(mul)
        .ok_or_else(|| "<memory> is too large".to_string())
}

/// The metadata element `vmlease ha enable|disable` sets.
pub fn metadata_xml(p: Policy) -> String {
    format!(
        "<ha restart=\"{}\" priority=\"{}\"/>",
        p.restart.as_str(),
        p.priority
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = "<domain type='kvm' id='4'>\n  <name>web&amp;1</name>\n  \
        <uuid>AAAAAAAA-0000-4000-8000-000000000001</uuid>\n  <metadata>\n    \
        <nova:instance xmlns:nova=\"http://openstack.org/xmlns/libvirt/nova/1.1\"><nova:memory>9</nova:memory></nova:instance>\n    \
        <vmlease:ha xmlns:vmlease=\"http://vmlease.org/xmlns/ha/1\" restart=\"always\" priority=\"7\"/>\n  \
        </metadata>\n  <memory unit='MiB'>64</memory>\n  <currentMemory unit='KiB'>65536</currentMemory>\n  \
        <vcpu placement='static'>2</vcpu>\n</domain>\n";

    #[test]
    fn reads_policy_and_size() {
        let d = parse(XML).unwrap();
        assert_eq!(d.name, "web&1");
        assert_eq!(d.uuid, "aaaaaaaa-0000-4000-8000-000000000001");
        assert_eq!(
            d.policy,
            Some(Policy {
                restart: Restart::Always,
                priority: 7
            })
        );
        assert_eq!((d.memory_kib, d.vcpus), (65536, 2));
    }

    #[test]
    fn no_metadata_is_unmanaged_and_other_namespaces_are_ignored() {
        let x = XML.replace("http://vmlease.org/xmlns/ha/1", "http://example.org/ha");
        assert_eq!(parse(&x).unwrap().policy, None);
        let start = XML.find("<metadata>").unwrap();
        let end = XML.find("</metadata>").unwrap() + "</metadata>".len();
        let x = format!("{}{}", &XML[..start], &XML[end..]);
        assert_eq!(parse(&x).unwrap().policy, None);
    }

    #[test]
    fn never_and_bad_values() {
        let x = XML.replace("restart=\"always\"", "restart='never'");
        assert_eq!(parse(&x).unwrap().policy.unwrap().restart, Restart::Never);
        let x = XML.replace("restart=\"always\"", "restart=\"sometimes\"");
        assert!(parse(&x).unwrap_err().contains("restart=\"sometimes\""));
        let x = XML.replace("priority=\"7\"", "priority=\"high\"");
        assert!(parse(&x).unwrap_err().contains("priority=\"high\""));
        assert!(parse("<domain><name>x</name></domain>").is_err());
        assert!(parse("").is_err());
        assert!(parse("<domain><name>x</name><uuid>zz</uuid>").is_err());
    }
}
