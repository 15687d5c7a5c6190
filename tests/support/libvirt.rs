//! Several libvirt "hypervisor hosts" on one machine, for tests with a
//! real libvirtd and real QEMU.
//!
//! A host is a set of namespaces and daemons:
//! - its own network namespace, joined to the others through a switch
//!   namespace (see `net.rs`), with one interface per link;
//! - its own mount and UTS namespaces (hostname `host-NAME.test`), with
//!   private bind mounts over /run/libvirt, /var/lib/libvirt,
//!   /var/log/libvirt, /var/cache/libvirt, /etc/libvirt and /run/vmlease,
//!   and without the machine's /run/netns mounts (they would pin every
//!   test's network namespaces);
//! - an anchor: a child subreaper (`scripts/lib/subreaper.c`, shared
//!   with the shell harness) running a shell that
//!   starts the host's daemons in the background on request. Daemons and
//!   the QEMUs libvirt double-forks are orphans of the anchor, which reaps
//!   them at once (PID 1 here reaps late, and libvirt waits for a killed
//!   QEMU to disappear);
//! - virtlogd, libvirtd and optionally virtlockd, in the foreground with
//!   their pid files in the private /run/libvirt.
//!
//! The host's directories live in a scratch directory and are visible to
//! the test at the same time: `Host::dir()`, the libvirt socket, logs,
//! QEMU pid files. `/var/lib/libvirt/images` (`IMAGES_DIR`) is private per
//! host, so the same image path is a different inode on each host, as on
//! separate machines with the lease key shared (QEMU's own image locking
//! refuses a second opener of one inode on one machine).
//!
//! Things to know when writing tests with it:
//! - mounts are private: a mount made outside after a host is up is not
//!   seen inside it. Mount what a host needs inside the host (e.g.
//!   `spawn_in_host(&["ceph-fuse", "-f", ...])`) or before `add_hosts`;
//! - the host has its own sysfs: /sys/class/net shows its interfaces;
//! - `exec_in_host` waits for the command's stdout and stderr to close: a
//!   command that leaves a process in the background holding them blocks.
//!   Start long-running processes with `spawn_in_host` (they are children
//!   of the anchor and stopped with the host);
//! - a service every host reaches over its "storage" link (and loses when
//!   that link is cut) runs in the switch namespace (`spawn_in_switch`) at
//!   `Cluster::gateway("storage")`;
//! - the mount points (/run/vmlease ...) are created on the machine if
//!   missing, as empty directories.
//!
//! Everything is stopped by pid on drop, also when the test panics: the
//! QEMUs, the daemons, any other process left in the host's mount
//! namespace, the anchor; then the network namespaces go (and the veths
//! with them) and the scratch directory is removed.

//! Files: `spec.rs` (what a host runs, the builder tests use),
//! `host.rs` (a running host: namespaces, daemons, virsh, domains,
//! teardown), `files.rs` (what is generated for a host: its /etc/libvirt,
//! the namespace setup script, the QEMU capabilities cache), `net.rs`
//! (namespaces, switch, links), `domain.rs` (domain XML, images).

pub mod domain;
mod files;
pub mod host;
pub mod net;
pub mod spec;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

// Re-exported for the tests; not every test binary uses each.
#[allow(unused_imports)]
pub use domain::{create_image, random_uuid, Disk, Domain, Format, Lease};
#[allow(unused_imports)]
pub use host::Host;
#[allow(unused_imports)]
pub use net::{Link, Netns, Switch};
#[allow(unused_imports)]
pub use spec::HostSpec;

use super::util::{self, unique_name, ProcGuard, Scratch};

/// Where each host keeps its disk images (its own directory per host).
pub const IMAGES_DIR: &str = "/var/lib/libvirt/images";

/// The links every cluster has unless it asks for others.
pub const DEFAULT_LINKS: &[&str] = &["storage", "mgmt"];

/// How long libvirtd may take to answer after it is started.
pub const LIBVIRTD_READY: Duration = Duration::from_secs(20);

const POLL: Duration = Duration::from_millis(20);

/// Network namespaces are named `vml-TESTPID-N-HOST` (`-sw`: the switch).
const NETNS_PREFIX: &str = "vml";

// ------------------------------------------------------------------ cluster

/// Hosts on one switch, in one scratch directory. Dropping it stops every
/// host, deletes the namespaces and removes the scratch directory.
pub struct Cluster {
    // Drop order: hosts (processes), then the switch, then the files.
    hosts: Vec<Host>,
    switch: Switch,
    id: String,
    scratch: Scratch,
}

impl Cluster {
    /// An empty cluster with the default links ("storage", "mgmt").
    /// `test` names the scratch directory and appears in messages.
    pub fn new(test: &str) -> Cluster {
        Cluster::with_links(test, DEFAULT_LINKS)
    }

    pub fn with_links(test: &str, links: &[&str]) -> Cluster {
        util::require_root();
        net::remove_stale_netns(NETNS_PREFIX);
        let scratch = Scratch::new(test);
        // Netns names must not clash with other tests or test binaries.
        let id = unique_name(NETNS_PREFIX);
        let switch = Switch::new(&format!("{id}-sw"), links);
        Cluster {
            hosts: Vec::new(),
            switch,
            id,
            scratch,
        }
    }

    /// A cluster with these hosts up (brought up in parallel).
    pub fn start(test: &str, specs: Vec<HostSpec>) -> Cluster {
        let mut c = Cluster::new(test);
        c.add_hosts(specs);
        c
    }

    /// Brings a host up and returns it.
    pub fn add_host(&mut self, spec: HostSpec) -> &Host {
        self.add_hosts(vec![spec]);
        self.hosts.last().expect("just added")
    }

    /// Brings several hosts up, in parallel.
    pub fn add_hosts(&mut self, specs: Vec<HostSpec>) {
        let first = self.hosts.len();
        for (i, s) in specs.iter().enumerate() {
            assert!(
                self.hosts.iter().all(|h| h.name() != s.name)
                    && specs[..i].iter().all(|o| o.name != s.name),
                "two hosts named {:?}",
                s.name
            );
        }
        let (switch, id, dir) = (&self.switch, &self.id, self.scratch.path());
        let made: Vec<std::thread::Result<Host>> = std::thread::scope(|sc| {
            let handles: Vec<_> = specs
                .into_iter()
                .enumerate()
                .map(|(i, spec)| sc.spawn(move || Host::up(spec, first + i, id, dir, switch)))
                .collect();
            handles.into_iter().map(|h| h.join()).collect()
        });
        let mut failure = None;
        for m in made {
            match m {
                Ok(h) => self.hosts.push(h),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if let Some(e) = failure {
            std::panic::resume_unwind(e);
        }
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name() == name)
            .unwrap_or_else(|| panic!("no host {name:?} in cluster {}", self.id))
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    /// A directory every host and the test see at the same path with the
    /// same inodes (like a shared filesystem): `SCRATCH/shared`.
    pub fn shared_dir(&self) -> PathBuf {
        self.scratch.dir("shared")
    }

    pub fn switch(&self) -> &Switch {
        &self.switch
    }

    /// The switch's address on a link (a probe target for the hosts).
    pub fn gateway(&self, link: &str) -> Ipv4Addr {
        self.switch.gateway(link)
    }

    /// A command that runs in the switch's network namespace (e.g. a
    /// storage server every host reaches on its "storage" link at
    /// `gateway("storage")`, and loses when that link is cut).
    pub fn command_in_switch(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.switch.ns.path().display()))
            .arg("--")
            .args(argv)
            .stdin(Stdio::null());
        c
    }

    /// Starts a long-running process in the switch's network namespace,
    /// stdout and stderr appended to `SCRATCH/switch-BASENAME.log`.
    pub fn spawn_in_switch(&self, argv: &[&str], env: &[(&str, &str)]) -> ProcGuard {
        let base = Path::new(argv[0])
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| argv[0].into());
        let log = self.scratch.path().join(format!("switch-{base}.log"));
        let mut c = self.command_in_switch(argv);
        c.envs(env.iter().copied());
        ProcGuard::spawn_logged(&mut c, &format!("{base} in the switch namespace"), &log)
    }

    /// One line per host: where everything is, for failure messages.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "cluster {} (switch netns {}, scratch {}):\n",
            self.id,
            self.switch.ns.name(),
            self.scratch.path().display()
        );
        for h in &self.hosts {
            s.push_str(&format!("  {}\n", h.describe()));
        }
        s
    }
}
