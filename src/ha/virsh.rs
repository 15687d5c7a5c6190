//! The local libvirt, through `virsh` (the default URI, or
//! `LIBVIRT_DEFAULT_URI`). Chosen over the `virt` crate: the agent needs a
//! handful of calls a few times a second at most, `virsh` is installed
//! wherever libvirt is, and libvirt-dev would become a build dependency of
//! the whole package (plugin and watchdog included). Lifecycle events
//! (VM-level failures) may later want the bindings; this module is the one
//! place to change.
#![forbid(unsafe_code)]

use std::io::Write;
use std::process::{Command, Stdio};

use super::error::{Error, Result};
use super::policy::{self, Policy};

/// A running domain's name and size, from `virsh domstats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub name: String,
    pub memory_kib: u64,
    pub vcpus: u32,
}

fn virsh(op: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut c = Command::new("virsh");
    c.arg("-q")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|e| Error::Libvirt {
        op: op.into(),
        reason: format!("cannot run virsh: {e}"),
    })?;
    if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
        let _ = w.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| Error::Libvirt {
        op: op.into(),
        reason: e.to_string(),
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Libvirt {
            op: op.into(),
            reason: err
                .lines()
                .filter(|l| !l.trim().is_empty())
                .collect::<Vec<_>>()
                .join(" "),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Parses `virsh domstats --balloon --vcpu` output.
pub fn parse_domstats(text: &str) -> Vec<Running> {
    let mut out: Vec<Running> = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("Domain: ") {
            let name = rest.trim_matches(|c| c == '\'' || c == '"').to_string();
            out.push(Running {
                name,
                memory_kib: 0,
                vcpus: 0,
            });
        } else if let (Some(d), Some((k, v))) = (out.last_mut(), l.split_once('=')) {
            match k {
                "balloon.maximum" => d.memory_kib = v.parse().unwrap_or(0),
                "vcpu.current" => d.vcpus = v.parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    out
}

/// The running domains.
pub fn running() -> Result<Vec<Running>> {
    virsh(
        "list running domains",
        &["domstats", "--list-active", "--balloon", "--vcpu"],
        None,
    )
    .map(|t| parse_domstats(&t))
}

/// The domain's persistent definition (its live one if it has none).
pub fn definition(name: &str) -> Result<String> {
    virsh(
        &format!("dumpxml --inactive {name}"),
        &["dumpxml", "--inactive", "--", name],
        None,
    )
    .or_else(|_| virsh(&format!("dumpxml {name}"), &["dumpxml", "--", name], None))
}

/// (CPUs, memory KiB) of this host.
pub fn node() -> Result<(u32, u64)> {
    let t = virsh("nodeinfo", &["nodeinfo"], None)?;
    let field = |k: &str| {
        t.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("CPU(s)") as u32, field("Memory size")))
}

/// The progress of the domain's migration job (`virsh domjobinfo`), e.g.
/// "12.5 MiB of 70.1 MiB"; "" when there is none.
pub fn job_progress(name: &str) -> String {
    virsh("domjobinfo", &["domjobinfo", "--", name], None)
        .map(|t| parse_jobinfo(&t))
        .unwrap_or_default()
}

pub fn parse_jobinfo(t: &str) -> String {
    let field = |k: &str| {
        t.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    match (field("Data processed"), field("Data total")) {
        (Some(p), Some(t)) => format!("{p} of {t}"),
        (Some(p), None) => p,
        _ => String::new(),
    }
}

pub fn domstate(name: &str) -> Option<String> {
    virsh("domstate", &["domstate", "--", name], None)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Defines the domain from `xml` (the failed host's definition) and
/// starts it. An existing definition with the same UUID is replaced; an
/// inactive one is undefined first (its NVRAM kept): a domain that was
/// live-migrated away from this host keeps, in libvirt's memory, the lock
/// state of its migration's switch-over, which libvirt hands to the next
/// start and the lock plugin refuses as stale ("lease version is 3,
/// expected 2"); `define` alone does not drop it.
pub fn define_and_start(name: &str, xml: &str) -> Result<()> {
    if domstate(name).as_deref() == Some("shut off") {
        // Best effort: a domain that cannot be undefined (snapshots, a
        // managed save) is defined over, as before.
        let _ = virsh(
            &format!("undefine {name}"),
            &["undefine", "--keep-nvram", "--", name],
            None,
        );
    }
    let file = std::env::temp_dir().join(format!(
        "vmlease-ha-{}-{}.xml",
        std::process::id(),
        name.replace('/', "_")
    ));
    std::fs::write(&file, xml).map_err(|e| Error::Libvirt {
        op: format!("define {name}"),
        reason: format!("write {}: {e}", file.display()),
    })?;
    let r = virsh(
        &format!("define {name}"),
        &["define", &file.to_string_lossy()],
        None,
    );
    let _ = std::fs::remove_file(&file);
    r?;
    virsh(&format!("start {name}"), &["start", "--", name], None)?;
    Ok(())
}

/// `virsh domstate --reason`: e.g. `shut off (crashed)`.
pub fn domstate_reason(name: &str) -> Option<String> {
    virsh(
        "domstate --reason",
        &["domstate", "--reason", "--", name],
        None,
    )
    .ok()
    .map(|s| s.trim().to_string())
}

/// Starts a defined domain (the lock plugin takes its leases).
pub fn start(name: &str) -> Result<()> {
    virsh(&format!("start {name}"), &["start", "--", name], None).map(|_| ())
}

/// Resets a domain (as the reset button: same QEMU, same leases).
pub fn reset(name: &str) -> Result<()> {
    virsh(&format!("reset {name}"), &["reset", "--", name], None).map(|_| ())
}

/// Sends `guest-ping` to the domain's QEMU guest agent, answered within
/// `timeout_s`: the child exits 0 when the agent answered (its stderr,
/// piped, says why not). Spawned, not waited for: the caller polls it.
pub fn spawn_guest_ping(name: &str, timeout_s: u64) -> Result<std::process::Child> {
    Command::new("virsh")
        .args(["-q", "qemu-agent-command", "--timeout"])
        .arg(timeout_s.to_string())
        .args(["--", name, r#"{"execute":"guest-ping"}"#])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Libvirt {
            op: format!("guest-ping {name}"),
            reason: format!("cannot run virsh: {e}"),
        })
}

/// Sets (or replaces) the vmlease metadata of a domain: in its persistent
/// definition, and in the running one when it runs.
pub fn set_policy(name: &str, p: Policy) -> Result<()> {
    let xml = policy::metadata_xml(p);
    let op = format!("set metadata of {name}");
    let base = [
        "metadata",
        "--domain",
        name,
        "--uri",
        policy::NS_URI,
        "--key",
        policy::NS_KEY,
        "--set",
        xml.as_str(),
    ];
    let running = domstate(name).as_deref() == Some("running");
    let mut args: Vec<&str> = base.to_vec();
    args.push("--config");
    virsh(&op, &args, None)?;
    if running {
        let mut args: Vec<&str> = base.to_vec();
        args.push("--live");
        virsh(&op, &args, None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobinfo_gives_the_data_processed() {
        let t = "Job type:         Unbounded\nOperation:        Outgoing migration\nTime elapsed:     110 ms\nData processed:   12.500 MiB\nData remaining:   57.600 MiB\nData total:       70.100 MiB\n";
        assert_eq!(parse_jobinfo(t), "12.500 MiB of 70.100 MiB");
        assert_eq!(parse_jobinfo("Job type:         None\n"), "");
    }

    #[test]
    fn domstats_gives_names_and_sizes() {
        let t = "Domain: 'web'\n  balloon.current=65536\n  balloon.maximum=131072\n  vcpu.current=2\n  vcpu.maximum=4\n\nDomain: 'db'\n  balloon.maximum=65536\n  vcpu.current=1\n";
        assert_eq!(
            parse_domstats(t),
            vec![
                Running {
                    name: "web".into(),
                    memory_kib: 131072,
                    vcpus: 2
                },
                Running {
                    name: "db".into(),
                    memory_kib: 65536,
                    vcpus: 1
                }
            ]
        );
    }
}
