//! Domain XML for the tests: a minimal guest (64 MiB, no OS) with the
//! disks and `<lease>`s a test asks for, and disk images made with
//! qemu-img.

use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use super::super::util::text;

/// A disk image format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Qcow2,
    Raw,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Qcow2 => "qcow2",
            Format::Raw => "raw",
        }
    }
}

/// A `<disk type='file' device='disk'>` on the virtio bus.
#[derive(Clone, Debug)]
pub struct Disk {
    /// The source path as the host (libvirtd, QEMU) sees it.
    pub path: String,
    pub format: Format,
    pub readonly: bool,
    pub shareable: bool,
    /// `vda`, `vdb`...; by default the next free one.
    pub target: Option<String>,
}

impl Disk {
    /// A writable qcow2 disk.
    pub fn new(path: &str) -> Disk {
        Disk {
            path: path.into(),
            format: Format::Qcow2,
            readonly: false,
            shareable: false,
            target: None,
        }
    }

    pub fn format(mut self, f: Format) -> Disk {
        self.format = f;
        self
    }

    pub fn raw(self) -> Disk {
        self.format(Format::Raw)
    }

    pub fn readonly(mut self) -> Disk {
        self.readonly = true;
        self
    }

    pub fn shareable(mut self) -> Disk {
        self.shareable = true;
        self
    }

    pub fn target(mut self, dev: &str) -> Disk {
        self.target = Some(dev.into());
        self
    }
}

/// A `<lease>` element.
#[derive(Clone, Debug)]
pub struct Lease {
    pub lockspace: String,
    pub key: String,
    pub path: String,
    pub offset: Option<u64>,
}

impl Lease {
    pub fn new(lockspace: &str, key: &str, path: &str) -> Lease {
        Lease {
            lockspace: lockspace.into(),
            key: key.into(),
            path: path.into(),
            offset: None,
        }
    }
}

/// A domain definition; `xml()` renders it.
#[derive(Clone, Debug)]
pub struct Domain {
    pub name: String,
    pub uuid: String,
    pub memory_mib: u32,
    /// `kvm` or `qemu` (TCG).
    pub virt_type: String,
    /// VNC on 127.0.0.1 (of the host's network namespace); else no graphics.
    pub vnc: bool,
    pub disks: Vec<Disk>,
    pub leases: Vec<Lease>,
    /// Raw XML appended inside `<devices>`.
    pub extra_devices: String,
}

impl Domain {
    /// A 64 MiB guest with no OS and no disks, a random UUID, `type='kvm'`
    /// when /dev/kvm exists, else `type='qemu'`.
    pub fn new(name: &str) -> Domain {
        Domain {
            name: name.into(),
            uuid: random_uuid(),
            memory_mib: 64,
            virt_type: if Path::new("/dev/kvm").exists() {
                "kvm".into()
            } else {
                "qemu".into()
            },
            vnc: false,
            disks: Vec::new(),
            leases: Vec::new(),
            extra_devices: String::new(),
        }
    }

    pub fn uuid(mut self, uuid: &str) -> Domain {
        self.uuid = uuid.into();
        self
    }

    /// `kvm` or `qemu`.
    pub fn virt_type(mut self, t: &str) -> Domain {
        self.virt_type = t.into();
        self
    }

    /// TCG: a guest with no OS spins in the BIOS for seconds of CPU under
    /// (nested) KVM after each start; TCG costs less when many domains run.
    pub fn tcg(self) -> Domain {
        self.virt_type("qemu")
    }

    pub fn vnc(mut self) -> Domain {
        self.vnc = true;
        self
    }

    pub fn disk(mut self, d: Disk) -> Domain {
        self.disks.push(d);
        self
    }

    pub fn lease(mut self, l: Lease) -> Domain {
        self.leases.push(l);
        self
    }

    pub fn xml(&self) -> String {
        let mut x = String::new();
        let _ = writeln!(x, "<domain type='{}'>", esc(&self.virt_type));
        let _ = writeln!(x, "  <name>{}</name>", esc(&self.name));
        let _ = writeln!(x, "  <uuid>{}</uuid>", esc(&self.uuid));
        let _ = writeln!(x, "  <memory unit='MiB'>{}</memory>", self.memory_mib);
        x.push_str("  <vcpu>1</vcpu>\n");
        x.push_str("  <os><type arch='x86_64' machine='pc'>hvm</type></os>\n");
        x.push_str("  <features><acpi/></features>\n");
        x.push_str("  <devices>\n");
        for l in &self.leases {
            let off = l
                .offset
                .map(|o| format!(" offset='{o}'"))
                .unwrap_or_default();
            let _ = writeln!(
                x,
                "    <lease><lockspace>{}</lockspace><key>{}</key><target path='{}'{off}/></lease>",
                esc(&l.lockspace),
                esc(&l.key),
                esc(&l.path)
            );
        }
        let mut next = b'a';
        for d in &self.disks {
            let target = match &d.target {
                Some(t) => t.clone(),
                None => {
                    while self
                        .disks
                        .iter()
                        .any(|o| o.target.as_deref() == Some(&format!("vd{}", next as char)))
                    {
                        next += 1;
                    }
                    let t = format!("vd{}", next as char);
                    next += 1;
                    t
                }
            };
            let _ = writeln!(
                x,
                "    <disk type='file' device='disk'><driver name='qemu' type='{}'/>\
                 <source file='{}'/><target dev='{}' bus='virtio'/>{}{}</disk>",
                d.format.as_str(),
                esc(&d.path),
                esc(&target),
                if d.readonly { "<readonly/>" } else { "" },
                if d.shareable { "<shareable/>" } else { "" },
            );
        }
        if self.vnc {
            x.push_str("    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>\n");
        }
        x.push_str("    <memballoon model='none'/>\n");
        x.push_str(&self.extra_devices);
        x.push_str("  </devices>\n</domain>\n");
        x
    }
}

/// Escapes text for XML content and single- or double-quoted attributes.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// A random version-4 UUID, as text.
pub fn random_uuid() -> String {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Creates a disk image with qemu-img (`size_mib` MiB, sparse).
pub fn create_image(path: &Path, format: Format, size_mib: u32) {
    let o = Command::new("qemu-img")
        .args(["create", "-q", "-f", format.as_str()])
        .arg(path)
        .arg(format!("{size_mib}M"))
        .output()
        .unwrap_or_else(|e| panic!("qemu-img: {e} (install qemu-utils)"));
    assert!(
        o.status.success(),
        "qemu-img create {}: {}",
        path.display(),
        text(&o)
    );
}
