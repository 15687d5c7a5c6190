//! What a test host runs and how its libvirt is configured: the builder
//! that `Cluster::start` and `Cluster::add_host` take.

use std::path::{Path, PathBuf};

use super::super::util;

/// What a host runs and how libvirt is configured there.
#[derive(Clone, Debug)]
pub struct HostSpec {
    /// Short name ("a"): the hostname is `host-NAME.test`; interface
    /// names on the switch are `NAME-LINK` (15 bytes at most).
    pub name: String,
    /// qemu.conf `lock_manager`; None leaves it unset (nop).
    pub lock_manager: Option<String>,
    /// `LIBVIRT_LOCK_MANAGER_PLUGIN_DIR` for libvirtd.
    pub plugin_dir: Option<PathBuf>,
    /// Start virtlockd (for `lock_manager = "lockd"`).
    pub virtlockd: bool,
    /// Lines appended to the generated qemu.conf.
    pub qemu_conf: String,
    /// Lines appended to the generated libvirtd.conf.
    pub libvirtd_conf: String,
    /// Files written into the host's /etc/libvirt: (path relative to it,
    /// content, mode).
    pub etc_files: Vec<(String, String, u32)>,
    /// Extra bind mounts: (path outside, path inside the host).
    pub binds: Vec<(PathBuf, PathBuf)>,
    /// Extra environment for libvirtd.
    pub libvirtd_env: Vec<(String, String)>,
    /// Start libvirtd when the host comes up (default true).
    pub start_libvirtd: bool,
}

impl HostSpec {
    pub fn new(name: &str) -> HostSpec {
        HostSpec {
            name: name.into(),
            lock_manager: None,
            plugin_dir: None,
            virtlockd: false,
            qemu_conf: String::new(),
            libvirtd_conf: String::new(),
            etc_files: Vec::new(),
            binds: Vec::new(),
            libvirtd_env: Vec::new(),
            start_libvirtd: true,
        }
    }

    pub fn lock_manager(mut self, name: &str) -> HostSpec {
        self.lock_manager = Some(name.into());
        self
    }

    /// `lock_manager = "lockd"` with virtlockd running; `file_lockspace_dir`
    /// (a path inside the host) shares the lock files between hosts when
    /// it is the same directory for all of them.
    pub fn lockd(mut self, file_lockspace_dir: Option<&str>) -> HostSpec {
        self.lock_manager = Some("lockd".into());
        self.virtlockd = true;
        let mut conf = String::from("auto_disk_leases = 1\n");
        if let Some(d) = file_lockspace_dir {
            conf.push_str(&format!("file_lockspace_dir = \"{d}\"\n"));
        }
        self.etc_file("qemu-lockd.conf", &conf)
    }

    /// The vmlease plugin from this build (`util::plugin_dir()`), with its
    /// config file `/etc/libvirt/qemu-vmlease.conf` inside the host.
    pub fn vmlease(mut self, config: &str) -> HostSpec {
        self.lock_manager = Some("vmlease".into());
        self.plugin_dir = Some(util::plugin_dir());
        self.etc_file("qemu-vmlease.conf", config)
    }

    pub fn plugin_dir(mut self, dir: &Path) -> HostSpec {
        self.plugin_dir = Some(dir.into());
        self
    }

    pub fn virtlockd(mut self) -> HostSpec {
        self.virtlockd = true;
        self
    }

    pub fn qemu_conf(mut self, lines: &str) -> HostSpec {
        self.qemu_conf.push_str(lines);
        self.qemu_conf.push('\n');
        self
    }

    pub fn libvirtd_conf(mut self, lines: &str) -> HostSpec {
        self.libvirtd_conf.push_str(lines);
        self.libvirtd_conf.push('\n');
        self
    }

    /// A file in the host's /etc/libvirt (mode 0644).
    pub fn etc_file(mut self, rel: &str, content: &str) -> HostSpec {
        self.etc_files.push((rel.into(), content.into(), 0o644));
        self
    }

    /// An executable qemu hook, `/etc/libvirt/hooks/qemu.d/NAME` (libvirt
    /// looks for hooks when libvirtd starts).
    pub fn qemu_hook(mut self, name: &str, script: &str) -> HostSpec {
        self.etc_files
            .push((format!("hooks/qemu.d/{name}"), script.into(), 0o755));
        self
    }

    pub fn bind(mut self, outside: &Path, inside: &Path) -> HostSpec {
        self.binds.push((outside.into(), inside.into()));
        self
    }

    pub fn libvirtd_env(mut self, key: &str, value: &str) -> HostSpec {
        self.libvirtd_env.push((key.into(), value.into()));
        self
    }

    /// Bring the host up without libvirtd (start it with `start_libvirtd`).
    pub fn without_libvirtd(mut self) -> HostSpec {
        self.start_libvirtd = false;
        self
    }
}
