//! The hosts' network: one network namespace per host, joined by veth
//! pairs to one bridge per link ("storage", "mgmt", ...) inside a separate
//! "switch" namespace. Addresses come from 192.0.2.0/24 (TEST-NET-1) and
//! exist only inside these namespaces: link k is 192.0.2.64k/26, host i
//! has .64k+1+i, the switch's bridge (a probe target, like a gateway)
//! has .64k+62.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use super::super::util::text;

/// Links a host can have: link k uses 192.0.2.64k/26.
pub const MAX_LINKS: usize = 4;
/// Hosts per cluster: the addresses .64k+1 ..= .64k+61.
pub const MAX_HOSTS: usize = 61;

fn ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("ip {}: {e} (install iproute2)", args.join(" ")))
}

fn ip_ok(args: &[&str]) {
    let o = ip(args);
    assert!(
        o.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        text(&o)
    );
}

/// Deletes network namespaces `PREFIX-PID-...` left by test processes that
/// died without cleaning up (PID no longer runs).
pub fn remove_stale_netns(prefix: &str) {
    let o = ip(&["netns", "list"]);
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing the stale network namespace {name} (test pid {pid} is gone)");
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn add(name: &str) -> Netns {
        ip_ok(&["netns", "add", name]);
        let ns = Netns { name: name.into() };
        ns.ip_ok(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, for `nsenter --net=`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut v = vec!["-n", &self.name];
        v.extend_from_slice(args);
        ip(&v)
    }

    /// `ip -n NAME ARGS...`, panicking with its output on failure.
    pub fn ip_ok(&self, args: &[&str]) {
        let o = self.ip(args);
        assert!(
            o.status.success(),
            "`ip -n {} {}` failed: {}",
            self.name,
            args.join(" "),
            text(&o)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let o = ip(&["netns", "del", &self.name]);
        if !o.status.success() {
            eprintln!("ip netns del {}: {}", self.name, text(&o));
        }
    }
}

/// One host's end of one link.
#[derive(Clone, Debug)]
pub struct Link {
    /// The link's name, e.g. "storage"; also the interface's name inside
    /// the host's namespace.
    pub name: String,
    /// The interface in the host's namespace (same as `name`).
    pub host_dev: String,
    /// The peer interface in the switch namespace, `HOST-LINK`.
    pub switch_dev: String,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    /// The switch's own address on this link.
    pub gateway: Ipv4Addr,
}

/// The switch: a namespace with one bridge per link.
pub struct Switch {
    pub ns: Netns,
    links: Vec<String>,
}

fn addr(link: usize, last: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, (64 * link + last) as u8)
}

impl Switch {
    pub fn new(ns_name: &str, links: &[&str]) -> Switch {
        assert!(
            !links.is_empty() && links.len() <= MAX_LINKS,
            "1 to {MAX_LINKS} links, not {links:?}"
        );
        let sw = Switch {
            ns: Netns::add(ns_name),
            links: links.iter().map(|s| s.to_string()).collect(),
        };
        for (k, l) in links.iter().enumerate() {
            let br = Switch::bridge(l);
            assert!(br.len() <= 15, "link name {l:?} is too long");
            sw.ns.ip_ok(&["link", "add", &br, "type", "bridge"]);
            sw.ns
                .ip_ok(&["addr", "add", &format!("{}/26", addr(k, 62)), "dev", &br]);
            sw.ns.ip_ok(&["link", "set", &br, "up"]);
        }
        sw
    }

    /// The bridge of a link in the switch namespace.
    pub fn bridge(link: &str) -> String {
        format!("br-{link}")
    }

    pub fn links(&self) -> &[String] {
        &self.links
    }

    /// The switch's address on a link.
    pub fn gateway(&self, link: &str) -> Ipv4Addr {
        let k = self.index(link);
        addr(k, 62)
    }

    fn index(&self, link: &str) -> usize {
        self.links
            .iter()
            .position(|l| l == link)
            .unwrap_or_else(|| panic!("no link {link:?}; links are {:?}", self.links))
    }

    /// Plugs host number `index` (its namespace `host`) into every link.
    pub fn connect(&self, host: &Netns, index: usize, host_name: &str) -> Vec<Link> {
        assert!(index < MAX_HOSTS, "at most {MAX_HOSTS} hosts");
        let mut v = Vec::new();
        for (k, l) in self.links.iter().enumerate() {
            let switch_dev = format!("{host_name}-{l}");
            assert!(
                switch_dev.len() <= 15,
                "interface name {switch_dev:?} is longer than 15 bytes: use shorter host or link names"
            );
            host.ip_ok(&[
                "link",
                "add",
                l,
                "type",
                "veth",
                "peer",
                "name",
                &switch_dev,
                "netns",
                self.ns.name(),
            ]);
            let a = addr(k, 1 + index);
            host.ip_ok(&["addr", "add", &format!("{a}/26"), "dev", l]);
            host.ip_ok(&["link", "set", l, "up"]);
            self.ns
                .ip_ok(&["link", "set", &switch_dev, "master", &Switch::bridge(l)]);
            self.ns.ip_ok(&["link", "set", &switch_dev, "up"]);
            v.push(Link {
                name: l.clone(),
                host_dev: l.clone(),
                switch_dev,
                addr: a,
                prefix_len: 26,
                gateway: addr(k, 62),
            });
        }
        v
    }
}
