use super::*;

const INFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:25 / /run rw,nosuid shared:5 - tmpfs tmpfs rw
41 22 0:40 / /mnt/ceph\\040fs rw,relatime shared:20 - fuse.ceph-fuse ceph-fuse rw
42 41 0:41 / /mnt/ceph\\040fs/sub rw - ceph 10.0.0.1:/ rw
50 22 0:50 / /mnt/nfs3 rw,relatime shared:30 - nfs 192.0.2.5:/export rw,vers=3,rsize=1048576,wsize=1048576,namlen=255,hard,nolock,proto=tcp,timeo=600,retrans=2,sec=sys,mountaddr=192.0.2.5,mountvers=3,mountport=20048,mountproto=udp,local_lock=all,addr=192.0.2.5
51 22 0:51 / /mnt/nfs4 rw,relatime shared:31 - nfs4 192.0.2.5:/ rw,vers=4.2,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,clientaddr=192.0.2.9,local_lock=none,addr=192.0.2.5
52 22 0:52 / /mnt/nfs4-posix rw,relatime shared:32 - nfs4 192.0.2.5:/ rw,vers=4.1,hard,proto=tcp,sec=sys,clientaddr=192.0.2.9,local_lock=posix,addr=192.0.2.5
53 22 0:53 / /mnt/nfs4-flock rw,relatime shared:33 - nfs4 192.0.2.5:/ rw,vers=4.1,hard,proto=tcp,sec=sys,local_lock=flock,addr=192.0.2.5
54 22 0:54 / /mnt/sshfs rw,nosuid,nodev,relatime shared:34 - fuse.sshfs u@h:/ rw,user_id=0,group_id=0
55 22 0:55 / /mnt/fuse rw,nosuid,nodev,relatime shared:35 - fuse something rw,user_id=0,group_id=0
56 22 0:56 / /mnt/smb rw,relatime shared:36 - cifs //srv/share rw,vers=3.1.1,nobrl,uid=0
";

fn at(p: &str) -> Mount {
    find_mount(INFO, Path::new(p)).unwrap()
}

#[test]
fn longest_mount_point_wins() {
    let m = at("/mnt/ceph fs/vmlease");
    assert_eq!(m.fstype, "fuse.ceph-fuse");
    assert!(m.is_shared() && m.is_cephfs());
    let m = at("/mnt/ceph fs/sub/x");
    assert_eq!(
        (m.fstype.as_str(), m.source.as_str()),
        ("ceph", "10.0.0.1:/")
    );
    let m = at("/var/lib/vmlease");
    assert_eq!(m.fstype, "ext4");
    assert!(!m.is_shared());
    assert_eq!(at("/run/x").mount_point, PathBuf::from("/run"));
    assert_eq!(at("/mnt/cephfs").fstype, "ext4");
}

#[test]
fn mountinfo_line_parser_keeps_both_option_sets() {
    let m = parse_mountinfo_line(INFO.lines().nth(4).unwrap()).unwrap();
    assert_eq!(m.mount_point, PathBuf::from("/mnt/nfs3"));
    assert_eq!(m.fstype, "nfs");
    assert_eq!(m.source, "192.0.2.5:/export");
    assert!(
        m.options.starts_with("rw,relatime,rw,vers=3,"),
        "{}",
        m.options
    );
    assert!(m.options.ends_with("local_lock=all,addr=192.0.2.5"));
    // Optional fields (none, several) before the separator.
    let m = parse_mountinfo_line("1 2 0:3 / /a rw - tmpfs none rw").unwrap();
    assert_eq!((m.fstype.as_str(), m.source.as_str()), ("tmpfs", "none"));
    let m = parse_mountinfo_line("1 2 0:3 / /a rw shared:1 master:2 - xfs /dev/x rw").unwrap();
    assert_eq!(m.fstype, "xfs");
    assert!(parse_mountinfo_line("garbage").is_none());
}

#[test]
fn nfs_with_local_locks_is_not_shared() {
    assert_eq!(at("/mnt/nfs3/ls").local_locks().as_deref(), Some("nolock"));
    assert_eq!(at("/mnt/nfs4/ls").local_locks(), None);
    assert_eq!(
        at("/mnt/nfs4-posix/ls").local_locks().as_deref(),
        Some("local_lock=posix")
    );
    assert_eq!(
        at("/mnt/nfs4-flock/ls").local_locks().as_deref(),
        Some("local_lock=flock")
    );
    assert_eq!(at("/mnt/smb/ls").local_locks().as_deref(), Some("nobrl"));
    assert!(judge(INFO, "", Path::new("/mnt/nfs4/ls"), false).is_ok());
    for p in ["/mnt/nfs3/ls", "/mnt/nfs4-posix/ls", "/mnt/nfs4-flock/ls"] {
        let e = judge(INFO, "", Path::new(p), false).unwrap_err();
        assert!(
            e.contains("its locks stay on this host") && e.contains("allow_local_lockspace"),
            "{e}"
        );
        let ok = judge(INFO, "", Path::new(p), true).unwrap();
        assert!(ok.local.unwrap().contains("local_lock") || p.contains("nfs3"));
    }
}

#[test]
fn only_filesystems_that_hosts_share_count() {
    for p in [
        "/var/lib/vmlease/ls",
        "/run/ls",
        "/mnt/sshfs/ls",
        "/mnt/fuse/ls",
    ] {
        let e = judge(INFO, "", Path::new(p), false).unwrap_err();
        assert!(e.contains("not on a shared filesystem"), "{p}: {e}");
        let ok = judge(INFO, "", Path::new(p), true).unwrap();
        assert!(ok.local.is_some(), "{p}");
    }
    let ok = judge(INFO, "", Path::new("/mnt/ceph fs/ls"), false).unwrap();
    assert_eq!(ok.local, None);
    assert_eq!(ok.mount.fstype, "fuse.ceph-fuse");
    assert!(judge(INFO, "", Path::new("/mnt/ceph fs/sub/ls"), false).is_ok());
}

const FSTAB: &str = "\
# /etc/fstab
UUID=1234 / ext4 errors=remount-ro 0 1
/dev/sdb1 none swap sw 0 0
10.0.0.1:/ /mnt/cephfs ceph name=admin,_netdev 0 0
none /mnt/ceph\\040fs fuse.ceph-fuse _netdev 0 0
192.0.2.5:/ /mnt/nfs4 nfs4 defaults 0 0
";

#[test]
fn an_empty_mount_point_listed_in_fstab_is_refused_even_when_local_is_allowed() {
    let mounts = fstab_mounts(FSTAB);
    assert_eq!(mounts.len(), 4, "{mounts:?}");
    assert_eq!(mounts[2].0, PathBuf::from("/mnt/ceph fs"));
    // /mnt/cephfs is in fstab but not mounted: the directory is an empty
    // mount point on the root filesystem.
    for allow in [false, true] {
        let e = judge(INFO, FSTAB, Path::new("/mnt/cephfs/vmlease"), allow).unwrap_err();
        assert!(
            e.contains("/mnt/cephfs is not mounted (/etc/fstab mounts ceph 10.0.0.1:/ there)"),
            "{e}"
        );
        let e = judge(INFO, FSTAB, Path::new("/mnt/cephfs"), allow).unwrap_err();
        assert!(e.contains("is not mounted"), "{e}");
    }
    // Mounted fstab entries and paths no entry covers are judged by type.
    assert!(judge(INFO, FSTAB, Path::new("/mnt/ceph fs/vmlease"), false).is_ok());
    assert!(judge(INFO, FSTAB, Path::new("/mnt/nfs4/vmlease"), false).is_ok());
    assert!(judge(INFO, FSTAB, Path::new("/srv/vmlease"), true).is_ok());
    assert!(judge(INFO, FSTAB, Path::new("/srv/vmlease"), false).is_err());
}

#[test]
fn resolve_keeps_the_missing_rest_of_a_path() {
    let tmp = std::env::temp_dir().canonicalize().unwrap();
    let p = resolve(&tmp.join("vmlease-missing-dir/sub")).unwrap();
    assert_eq!(p, tmp.join("vmlease-missing-dir/sub"));
    assert!(mount_of(Path::new("/definitely/missing/dir")).is_some());
    // This machine's temp dir is on a local disk.
    let e = check(&tmp.join("vmlease-missing-dir"), false).unwrap_err();
    assert!(e.contains("not on a shared filesystem"), "{e}");
    let ok = check(&tmp.join("vmlease-missing-dir"), true).unwrap();
    assert!(ok.local.is_some());
}

#[test]
fn a_systemd_mount_unit_counts_like_an_fstab_line() {
    let unit = "[Unit]\nDescription=CephFS\n\n[Mount]\nWhat=10.0.0.1:/\nWhere=/mnt/cephfs\nType=ceph\nOptions=name=admin\n";
    let line = mount_unit_as_fstab(unit).unwrap();
    assert_eq!(line, "10.0.0.1:/ /mnt/cephfs ceph\n");
    let e = judge(INFO, &line, Path::new("/mnt/cephfs/vmlease"), true).unwrap_err();
    assert!(e.contains("/mnt/cephfs is not mounted"), "{e}");
    assert_eq!(mount_unit_as_fstab("[Unit]\nDescription=x\n"), None);
}

#[test]
fn a_real_ceph_fuse_mount_is_shared() {
    // As this machine's split-brain checker mounts CephFS (ceph-fuse).
    let line = "117 69 0:45 / /tmp/vmlease-splitbrain-6523-0/mnt/sbh1 rw,nosuid,nodev,relatime - fuse.ceph-fuse ceph-fuse rw,user_id=0,group_id=0,allow_other";
    let p = judge(
        line,
        "",
        Path::new("/tmp/vmlease-splitbrain-6523-0/mnt/sbh1/ls"),
        false,
    )
    .unwrap();
    assert!(p.mount.is_cephfs() && p.local.is_none(), "{p:?}");
}
