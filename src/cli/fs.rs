//! Which filesystem a path is on, from /proc/self/mountinfo: `init` and
//! `check-config` say it, and warn when a lockspace would be on a local
//! disk (each host would then have its own and none would be protected).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

/// The mount that holds a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

impl Mount {
    /// True for filesystems several hosts can mount at once.
    pub fn is_shared(&self) -> bool {
        let t = self.fstype.as_str();
        matches!(
            t,
            "ceph" | "nfs" | "nfs4" | "glusterfs" | "gfs2" | "ocfs2" | "cifs" | "smb3" | "lustre"
        ) || t.starts_with("fuse.ceph")
            || t.starts_with("fuse.gluster")
            || t == "fuse"
    }

    /// CephFS: the kernel client or ceph-fuse.
    pub fn is_cephfs(&self) -> bool {
        self.fstype == "ceph" || self.fstype.starts_with("fuse.ceph")
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

/// The mount holding `path` (its nearest existing ancestor), if
/// /proc/self/mountinfo can be read. Call it with a deadline: resolving a
/// path on a hung CephFS blocks.
pub fn mount_of(path: &Path) -> Option<Mount> {
    let mut p = path.to_path_buf();
    let real = loop {
        if let Ok(r) = std::fs::canonicalize(&p) {
            break r;
        }
        if !p.pop() {
            return None;
        }
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    find_mount(&info, &real)
}

fn find_mount(mountinfo: &str, path: &Path) -> Option<Mount> {
    let mut best: Option<Mount> = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mp) = left.split(' ').nth(4) else {
            continue;
        };
        let mp = PathBuf::from(unescape(mp));
        let mut r = right.split(' ');
        let (Some(fstype), Some(source)) = (r.next(), r.next()) else {
            continue;
        };
        if !path.starts_with(&mp) {
            continue;
        }
        // Later lines are mounted over earlier ones at the same point.
        let longer = best
            .as_ref()
            .map(|b| mp.as_os_str().len() >= b.mount_point.as_os_str().len())
            .unwrap_or(true);
        if longer {
            best = Some(Mount {
                mount_point: mp,
                fstype: fstype.to_string(),
                source: unescape(source),
            });
        }
    }
    best
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
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
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:25 / /run rw,nosuid shared:5 - tmpfs tmpfs rw
41 22 0:40 / /mnt/ceph\\040fs rw,relatime shared:20 - fuse.ceph-fuse ceph-fuse rw
42 41 0:41 / /mnt/ceph\\040fs/sub rw - ceph 10.0.0.1:/ rw
";

    #[test]
    fn longest_mount_point_wins() {
        let m = find_mount(INFO, Path::new("/mnt/ceph fs/vmlease")).unwrap();
        assert_eq!(m.fstype, "fuse.ceph-fuse");
        assert!(m.is_shared());
        let m = find_mount(INFO, Path::new("/mnt/ceph fs/sub/x")).unwrap();
        assert_eq!(
            (m.fstype.as_str(), m.source.as_str()),
            ("ceph", "10.0.0.1:/")
        );
        let m = find_mount(INFO, Path::new("/var/lib/vmlease")).unwrap();
        assert_eq!(m.fstype, "ext4");
        assert!(!m.is_shared());
        let m = find_mount(INFO, Path::new("/run/x")).unwrap();
        assert_eq!(m.mount_point, PathBuf::from("/run"));
        assert!(find_mount(INFO, Path::new("/mnt/cephfs")).unwrap().fstype == "ext4");
    }

    #[test]
    fn this_machine_has_a_root_mount() {
        assert!(mount_of(Path::new("/definitely/missing/dir")).is_some());
    }
}
