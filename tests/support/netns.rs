//! Network namespaces for tests: a "switch" namespace with one bridge per
//! network and host namespaces with a veth into each bridge. Nothing is
//! routed anywhere else; the namespaces are deleted when the guard drops
//! (and those of test processes that died are deleted by the next test
//! that builds some with the same tag).

use std::path::Path;
use std::process::Command;

/// Deletes its namespaces on drop.
pub struct Namespaces(pub Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `ip ARGS`; panics with its output when it fails.
pub fn ip(args: &[&str]) {
    let argv: Vec<&str> = std::iter::once("ip").chain(args.iter().copied()).collect();
    super::util::run_ok(&argv);
}

/// Sets `link` in namespace `ns` "up" or "down".
pub fn set_link(ns: &str, link: &str, state: &str) {
    ip(&["-n", ns, "link", "set", link, state]);
}

/// Deletes `TAG-PID-*` namespaces whose test process is gone.
fn remove_stale(tag: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let prefix = format!("{tag}-");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name.strip_prefix(&prefix).and_then(|r| r.split('-').next()) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// One network: the link is called `link` inside every host namespace,
/// host i (from 0) has `{net}.{i + 1}/{len}`, the switch's bridge
/// `br-{link}` has `{net}.{switch}/{len}`.
pub struct Net {
    pub link: &'static str,
    pub net: &'static str,
    pub len: u8,
    pub switch: u8,
}

/// The switch namespace and the host namespaces, in the order asked for.
pub struct Switched {
    pub guard: Namespaces,
    pub switch: String,
    pub hosts: Vec<String>,
}

/// Builds `TAG-PID-sw` and `TAG-PID-H` for each H of `hosts` (a short
/// name: the switch-side veth is `H-LINK`, at most 15 characters), with
/// every network of `nets`.
pub fn switched(tag: &str, hosts: &[&str], nets: &[Net]) -> Switched {
    remove_stale(tag);
    let pid = std::process::id();
    let sw = format!("{tag}-{pid}-sw");
    let names: Vec<String> = hosts.iter().map(|h| format!("{tag}-{pid}-{h}")).collect();
    let mut all = names.clone();
    all.push(sw.clone());
    let guard = Namespaces(all.clone());
    for ns in &all {
        ip(&["netns", "add", ns]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    for n in nets {
        let br = format!("br-{}", n.link);
        let addr = format!("{}.{}/{}", n.net, n.switch, n.len);
        ip(&["-n", &sw, "link", "add", &br, "type", "bridge"]);
        ip(&["-n", &sw, "addr", "add", &addr, "dev", &br]);
        ip(&["-n", &sw, "link", "set", &br, "up"]);
        for (i, (ns, h)) in names.iter().zip(hosts).enumerate() {
            let peer = format!("{h}-{}", n.link);
            let addr = format!("{}.{}/{}", n.net, i + 1, n.len);
            ip(&[
                "-n", ns, "link", "add", n.link, "type", "veth", "peer", "name", &peer, "netns",
                &sw,
            ]);
            ip(&["-n", ns, "addr", "add", &addr, "dev", n.link]);
            ip(&["-n", ns, "link", "set", n.link, "up"]);
            ip(&["-n", &sw, "link", "set", &peer, "master", &br]);
            ip(&["-n", &sw, "link", "set", &peer, "up"]);
        }
    }
    Switched {
        guard,
        switch: sw,
        hosts: names,
    }
}
