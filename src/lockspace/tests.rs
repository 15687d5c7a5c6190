use super::file_io::{uncached, MAX_RECORD};
use super::*;

pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "vmlease-test-{name}-{}-{}",
        std::process::id(),
        crate::process::random_u64()
    ));
    fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn uncached_reads_any_offset_and_length() {
    let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    // ext4 under temp_dir (O_DIRECT) and tmpfs (O_DIRECT or the local
    // fallback, by kernel version).
    let dirs = [tempdir("uncached"), PathBuf::from("/dev/shm")];
    for dir in dirs.iter().filter(|d| d.is_dir()) {
        let path = dir.join(format!("vmlease-uncached-{}", std::process::id()));
        fs::write(&path, &data).unwrap();
        for (off, len) in [
            (0, 512),
            (512, 512),
            (511, 3),
            (4095, 2),
            (1000, 9000),
            (19_990, 100),
            (20_000, 10),
            (30_000, 512),
        ] {
            let got = read_uncached(&path, off, len).unwrap();
            let from = (off as usize).min(data.len());
            let to = (off as usize + len).min(data.len());
            assert_eq!(got, &data[from..to], "{} at {off}+{len}", path.display());
        }
        assert_eq!(read_uncached_whole(&path).unwrap(), data);
        fs::write(&path, b"").unwrap();
        assert!(read_uncached_whole(&path).unwrap().is_empty());
        fs::remove_file(&path).unwrap();
        let e = read_uncached(&path, 0, 512).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}

#[test]
fn uncached_fallback_only_on_local_filesystems() {
    assert!(uncached::is_local(0xef53));
    assert!(uncached::is_local(0x0102_1994));
    assert!(!uncached::is_local(0x0065_735546)); // fuse
    assert!(!uncached::is_local(0x00c3_6400)); // ceph
    assert!(!uncached::is_local(0x6969)); // nfs
    let t = crate::sys::statfs::fs_type(&std::env::temp_dir()).unwrap();
    assert!(uncached::is_local(t), "temp dir on {t:#x}");
}

#[test]
fn a_record_larger_than_any_record_is_refused() {
    let d = tempdir("big");
    let path = d.join("big");
    fs::write(&path, vec![b'x'; MAX_RECORD + 1]).unwrap();
    let e = read_uncached_whole(&path).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
}

#[test]
fn init_open_and_errors() {
    let d = tempdir("ls");
    let ls_dir = d.join("ls");
    let e = Lockspace::open(&ls_dir).unwrap_err().to_string();
    assert!(e.contains("directory missing"), "{e}");
    fs::create_dir_all(&ls_dir).unwrap();
    let e = Lockspace::open(&ls_dir).unwrap_err().to_string();
    assert!(e.contains("not initialised"), "{e}");
    assert!(Lockspace::init(&ls_dir, 16).unwrap());
    assert!(
        !Lockspace::init(&ls_dir, 16).unwrap(),
        "second init is a no-op"
    );
    let ls = Lockspace::open(&ls_dir).unwrap();
    assert_eq!(ls.max_hosts, 16);
    assert_eq!(ls.read_hosts().unwrap().len(), 16);
    let uuid = ls.uuid.clone().expect("init writes a UUID");
    assert!(is_uuid(&uuid), "{uuid}");
    assert_eq!(Lockspace::create(&ls_dir, 16).unwrap(), Made::Existing);
    assert_eq!(Lockspace::open(&ls_dir).unwrap().uuid, Some(uuid.clone()));
    let other = d.join("other");
    Lockspace::init(&other, 16).unwrap();
    assert_ne!(Lockspace::open(&other).unwrap().uuid, Some(uuid));
    fs::write(ls_dir.join("VMLEASE"), b"junk").unwrap();
    assert!(matches!(
        Lockspace::open(&ls_dir),
        Err(Error::Corrupt { .. })
    ));
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_lockspace_without_uuid_gets_one_once() {
    let d = tempdir("old");
    fs::create_dir_all(d.join("leases")).unwrap();
    fs::write(d.join("hosts"), vec![0u8; 4 * SLOT_SIZE]).unwrap();
    let mut w = codec::Writer::new(HEADER_MAGIC);
    w.field("max_hosts", 4).field("slot_size", SLOT_SIZE);
    fs::write(d.join("VMLEASE"), w.finish()).unwrap();
    let ls = Lockspace::open(&d).unwrap();
    assert_eq!((ls.max_hosts, ls.uuid.clone()), (4, None));
    let u = ls.add_uuid().unwrap();
    assert_eq!(Lockspace::open(&d).unwrap().uuid, Some(u.clone()));
    // A second upgrade (another host at the same time) keeps it.
    assert_eq!(ls.add_uuid().unwrap(), u);
    assert_eq!(Lockspace::create(&d, 4).unwrap(), Made::Existing);
    // 'init' on an old lockspace adds it.
    fs::write(d.join("VMLEASE"), {
        let mut w = codec::Writer::new(HEADER_MAGIC);
        w.field("max_hosts", 4).field("slot_size", SLOT_SIZE);
        w.finish()
    })
    .unwrap();
    assert_eq!(Lockspace::create(&d, 4).unwrap(), Made::AddedUuid);
    assert!(Lockspace::open(&d).unwrap().uuid.is_some());
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_cached_header_is_read_again_when_it_is_another_file() {
    let d = tempdir("cached");
    Lockspace::init(&d, 4).unwrap();
    let first = Lockspace::open_cached(&d, None).unwrap();
    let u = first.uuid.clone().unwrap();
    assert_eq!(
        Lockspace::open_cached(&d, Some(&u)).unwrap().uuid,
        Some(u.clone())
    );
    // Made anew (another UUID, a new header file): read again.
    write_header(&d, 3, &new_uuid()).unwrap();
    let again = Lockspace::open_cached(&d, Some(&u)).unwrap();
    assert_ne!(again.uuid, Some(u.clone()));
    assert_eq!(again.max_hosts, 3);
    // Rewritten in place (same inode, other size): read again.
    let mut w = codec::Writer::new(HEADER_MAGIC);
    w.field("max_hosts", 2).field("slot_size", SLOT_SIZE);
    fs::write(d.join("VMLEASE"), w.finish()).unwrap();
    assert_eq!(Lockspace::open_cached(&d, None).unwrap().uuid, None);
    // Gone (unmounted): the error of open, never the remembered header.
    fs::remove_dir_all(&d).unwrap();
    let e = Lockspace::open_cached(&d, None).unwrap_err().to_string();
    assert!(e.contains("directory missing"), "{e}");
}

#[test]
fn record_lock_excludes_threads_of_one_process() {
    let d = tempdir("lock");
    Lockspace::init(&d, 4).unwrap();
    let ls = Lockspace::open(&d).unwrap();
    let g = ls.lock_record("k", 100).unwrap();
    let ls2 = ls.clone();
    let r = std::thread::spawn(move || ls2.lock_record("k", 50).map(|_| ()))
        .join()
        .unwrap();
    assert!(matches!(r, Err(Error::Busy { .. })), "{r:?}");
    drop(g);
    ls.lock_record("k", 50).unwrap();
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn corrupt_lease_names_the_file() {
    let d = tempdir("corrupt");
    Lockspace::init(&d, 4).unwrap();
    let ls = Lockspace::open(&d).unwrap();
    fs::write(ls.lease_path("disk-x"), b"vmlease-lease v1\nkey=disk-x\n").unwrap();
    let e = ls.read_lease("disk-x", "/a").unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }));
    assert!(e.to_string().contains("leases/disk-x"), "{e}");
    fs::remove_dir_all(&d).unwrap();
}
