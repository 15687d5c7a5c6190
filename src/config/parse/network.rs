//! The network sections, `[storage]`, `[management]` and `[service]`:
//! their probes, `min_up`, timeouts and policy.

use super::{Builder, RawNetwork};
use crate::config::{Network, Policy, ProbeKind};
use crate::error::Result;

impl Builder<'_> {
    pub(super) fn network(
        &self,
        name: &str,
        raw: Option<RawNetwork>,
        default_policy: Policy,
    ) -> Result<Network> {
        let raw = raw.unwrap_or_default();
        let mut probes = Vec::new();
        for p in raw.probes.unwrap_or_default() {
            let span = p.span();
            let p = p.into_inner();
            let key = format!("{name}.probes");
            let kind = p.kind.get_ref().as_str();
            let probe = match kind {
                "tcp" | "icmp" => {
                    if let Some(i) = &p.interface {
                        return Err(self.err(
                            &key,
                            i.span(),
                            format!("a {kind} probe takes 'target', not 'interface'"),
                        ));
                    }
                    let t = p.target.ok_or_else(|| {
                        self.err(&key, span.clone(), format!("a {kind} probe needs 'target'"))
                    })?;
                    let target = t.get_ref().clone();
                    if kind == "tcp" {
                        if target
                            .rsplit_once(':')
                            .and_then(|(_, port)| port.parse::<u16>().ok())
                            .is_none()
                        {
                            return Err(self.err(
                                &key,
                                t.span(),
                                format!("tcp target must be HOST:PORT, got '{target}'"),
                            ));
                        }
                        ProbeKind::Tcp(target)
                    } else {
                        if target.parse::<std::net::IpAddr>().is_err() {
                            return Err(self.err(
                                &key,
                                t.span(),
                                format!("icmp target must be an IP address, got '{target}'"),
                            ));
                        }
                        ProbeKind::Icmp(target)
                    }
                }
                "carrier" => {
                    if let Some(t) = &p.target {
                        return Err(self.err(
                            &key,
                            t.span(),
                            "a carrier probe takes 'interface', not 'target'",
                        ));
                    }
                    let i = p.interface.ok_or_else(|| {
                        self.err(&key, span.clone(), "a carrier probe needs 'interface'")
                    })?;
                    let ifname = i.get_ref().clone();
                    if ifname.is_empty() || ifname.len() > 15 || ifname.contains('/') {
                        return Err(self.err(
                            &key,
                            i.span(),
                            format!("'{ifname}' is not an interface name"),
                        ));
                    }
                    ProbeKind::Carrier(ifname)
                }
                other => {
                    return Err(self.err(
                        &key,
                        p.kind.span(),
                        format!("unknown probe type '{other}' (expected tcp, icmp or carrier)"),
                    ))
                }
            };
            probes.push(probe);
        }
        let min_up = match raw.min_up {
            None => 1,
            Some(m) => {
                let v = *m.get_ref();
                if v < 1 || (v as usize) > probes.len().max(1) {
                    return Err(self.err(
                        &format!("{name}.min_up"),
                        m.span(),
                        format!(
                            "must be between 1 and the number of probes ({}), got {v}",
                            probes.len()
                        ),
                    ));
                }
                v as usize
            }
        };
        let policy = match raw.policy {
            None => default_policy,
            Some(p) => match p.get_ref().as_str() {
                "report" if name != "storage" => Policy::Report,
                "fence" => Policy::Fence,
                "report" => {
                    return Err(self.err(
                        "storage.policy",
                        p.span(),
                        "storage loss always fences; only \"fence\" is allowed",
                    ))
                }
                other => {
                    return Err(self.err(
                        &format!("{name}.policy"),
                        p.span(),
                        format!("unknown policy '{other}' (expected \"report\" or \"fence\")"),
                    ))
                }
            },
        };
        Ok(Network {
            probes,
            min_up,
            timeout: self.ms(&format!("{name}.timeout"), &raw.timeout, 10_000)?,
            probe_timeout: self.ms(&format!("{name}.probe_timeout"), &raw.probe_timeout, 1_000)?,
            policy,
        })
    }
}
