//! Is a lockspace directory on a filesystem that every host shares? The
//! one place for that rule: the daemon applies it before it joins (and
//! waits while it fails), `vmlease init` before it creates a lockspace,
//! `check-config` shows it.
//!
//! A lockspace on a local disk (or on an empty mount point whose mount is
//! missing, which is the same thing seen from this host) protects nothing:
//! every host would lease in its own copy. The rule reads
//! `/proc/self/mountinfo` (filesystem type with the FUSE subtype, and the
//! mount options statfs(2) cannot show) and `/etc/fstab`:
//!
//! 1. a mount point listed in /etc/fstab (or a systemd mount unit in
//!    /etc/systemd/system) at the directory or above it,
//!    deeper than the mount that holds the directory now, is not mounted:
//!    refused (the mount is missing), whatever `allow_local_lockspace` says;
//! 2. the filesystem is not one several hosts mount at once (CephFS kernel
//!    client or ceph-fuse, NFS, GlusterFS, GFS2, OCFS2, Lustre, CIFS):
//!    refused unless `allow_local_lockspace = true` (tests, single-host
//!    demos);
//! 3. the filesystem is shared but keeps its locks local (NFS `nolock` or
//!    `local_lock=` other than `none`, CIFS `nobrl`, Lustre `localflock`):
//!    the record locks would not exclude other hosts; refused unless
//!    `allow_local_lockspace = true`.
#![forbid(unsafe_code)]

use std::path::{Component, Path, PathBuf};

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    /// With the FUSE subtype: `fuse.ceph-fuse`.
    pub fstype: String,
    pub source: String,
    /// The per-mount options and the superblock options, comma-joined.
    pub options: String,
}

impl Mount {
    /// True for filesystems several hosts can mount at once.
    pub fn is_shared(&self) -> bool {
        let t = self.fstype.as_str();
        matches!(
            t,
            "ceph"
                | "nfs"
                | "nfs4"
                | "glusterfs"
                | "fuse.glusterfs"
                | "gfs2"
                | "ocfs2"
                | "cifs"
                | "smb3"
                | "lustre"
        ) || t.starts_with("fuse.ceph")
    }

    /// CephFS: the kernel client or ceph-fuse.
    pub fn is_cephfs(&self) -> bool {
        self.fstype == "ceph" || self.fstype.starts_with("fuse.ceph")
    }

    /// The option that makes a shared filesystem keep its locks on this
    /// host only, if it has one.
    pub fn local_locks(&self) -> Option<String> {
        let nfs = self.fstype.starts_with("nfs");
        self.options.split(',').find_map(|o| {
            let local = match o.split_once('=') {
                Some(("local_lock", v)) => nfs && v != "none",
                None => (nfs && o == "nolock") || (self.fstype == "cifs" && o == "nobrl"),
                _ => false,
            } || (self.fstype == "lustre" && o == "localflock");
            local.then(|| o.to_string())
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "{} ({} mounted on {})",
            self.fstype,
            self.source,
            self.mount_point.display()
        )
    }
}

/// Where a lockspace directory is, when the rule accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub mount: Mount,
    /// Why it is not really shared, when `allow_local_lockspace` let it
    /// pass (tests and demos): said loudly in logs and status.
    pub local: Option<String>,
}

/// Parses one line of /proc/self/mountinfo:
/// `id parent maj:min root mount_point options [optional...] - fstype source super_options`.
pub fn parse_mountinfo_line(line: &str) -> Option<Mount> {
    let (left, right) = line.split_once(" - ")?;
    let mut l = left.split(' ');
    let mp = l.nth(4)?;
    let mount_opts = l.next().unwrap_or("");
    let mut r = right.split(' ');
    let fstype = r.next()?;
    let source = r.next()?;
    let super_opts = r.next().unwrap_or("");
    Some(Mount {
        mount_point: PathBuf::from(unescape(mp)),
        fstype: fstype.to_string(),
        source: unescape(source),
        options: format!("{mount_opts},{super_opts}"),
    })
}

/// The mount that holds `path` (an absolute, resolved path).
pub fn find_mount(mountinfo: &str, path: &Path) -> Option<Mount> {
    let mut best: Option<Mount> = None;
    for m in mountinfo.lines().filter_map(parse_mountinfo_line) {
        if !path.starts_with(&m.mount_point) {
            continue;
        }
        // Later lines are mounted over earlier ones at the same point.
        let longer = best
            .as_ref()
            .map(|b| m.mount_point.as_os_str().len() >= b.mount_point.as_os_str().len())
            .unwrap_or(true);
        if longer {
            best = Some(m);
        }
    }
    best
}

/// The mount points /etc/fstab lists: (mount point, fstype, source).
pub fn fstab_mounts(fstab: &str) -> Vec<(PathBuf, String, String)> {
    fstab
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (source, mp, fstype) = (f.next()?, f.next()?, f.next()?);
            let mp = PathBuf::from(unescape(mp));
            (mp.is_absolute() && fstype != "swap")
                .then(|| (mp, fstype.to_string(), unescape(source)))
        })
        .collect()
}

/// The rule, on the texts of /proc/self/mountinfo and /etc/fstab. `path`
/// is absolute with its existing part resolved (symlinks followed).
pub fn judge(
    mountinfo: &str,
    fstab: &str,
    path: &Path,
    allow_local: bool,
) -> Result<Placement, String> {
    let mount = find_mount(mountinfo, path)
        .ok_or_else(|| format!("no mount holds {} (no /proc?)", path.display()))?;
    let mounted: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(parse_mountinfo_line)
        .map(|m| m.mount_point)
        .collect();
    for (mp, fstype, source) in fstab_mounts(fstab) {
        let deeper = mp.as_os_str().len() > mount.mount_point.as_os_str().len();
        if path.starts_with(&mp) && deeper && !mounted.contains(&mp) {
            return Err(format!(
                "{} is not mounted (/etc/fstab mounts {fstype} {source} there): {} is on {}",
                mp.display(),
                path.display(),
                mount.describe()
            ));
        }
    }
    let local = if !mount.is_shared() {
        Some(format!(
            "{} is on {}, not on a shared filesystem: each host would lease in its own copy \
             (is the shared filesystem mounted?)",
            path.display(),
            mount.describe()
        ))
    } else {
        mount.local_locks().map(|o| {
            format!(
                "{} is on {} with '{o}': its locks stay on this host, other hosts do not see them \
                 (remount with shared locks)",
                path.display(),
                mount.describe()
            )
        })
    };
    match local {
        Some(why) if !allow_local => Err(format!(
            "{why}; set allow_local_lockspace = true only for tests and single-host demos"
        )),
        local => Ok(Placement { mount, local }),
    }
}

/// `path` made absolute with its existing part resolved: the nearest
/// existing ancestor canonicalised, the missing rest appended. Blocks on a
/// hung filesystem: call it with a deadline.
pub fn resolve(path: &Path) -> Option<PathBuf> {
    let mut base = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(r) = std::fs::canonicalize(&base) {
            let mut out = r;
            for c in rest.iter().rev() {
                out.push(c);
            }
            return Some(out);
        }
        match base.components().next_back() {
            Some(Component::Normal(n)) => rest.push(n.to_os_string()),
            _ => return None,
        }
        base.pop();
    }
}

/// The mount holding `path`, if /proc/self/mountinfo can be read. Blocks
/// on a hung filesystem: call it with a deadline.
pub fn mount_of(path: &Path) -> Option<Mount> {
    let real = resolve(path)?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    find_mount(&info, &real)
}

/// A systemd mount unit (`What=`, `Where=`, `Type=`) as an fstab line.
pub fn mount_unit_as_fstab(unit: &str) -> Option<String> {
    let get = |k: &str| {
        unit.lines()
            .rev()
            .filter_map(|l| l.trim().strip_prefix(k))
            .filter_map(|l| l.trim_start().strip_prefix('='))
            .map(|v| v.trim().replace(' ', "\\040"))
            .next()
    };
    let at = get("Where")?;
    Some(format!(
        "{} {at} {}\n",
        get("What").unwrap_or_else(|| "-".into()),
        get("Type").unwrap_or_else(|| "auto".into())
    ))
}

/// [`judge`] on this host's mounts: /proc/self/mountinfo, /etc/fstab and
/// the mount units in /etc/systemd/system. Blocks on a hung filesystem:
/// call it with a deadline.
pub fn check(path: &Path, allow_local: bool) -> Result<Placement, String> {
    let real = resolve(path).ok_or_else(|| format!("cannot resolve {}", path.display()))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("read /proc/self/mountinfo: {e}"))?;
    let mut fstab = std::fs::read_to_string("/etc/fstab").unwrap_or_default();
    fstab.push('\n');
    if let Ok(units) = std::fs::read_dir("/etc/systemd/system") {
        for u in units.flatten() {
            if u.file_name().to_string_lossy().ends_with(".mount") {
                let text = std::fs::read_to_string(u.path()).unwrap_or_default();
                fstab.extend(mount_unit_as_fstab(&text));
            }
        }
    }
    judge(&info, &fstab, &real, allow_local)
}

/// mountinfo and fstab escape space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests;
