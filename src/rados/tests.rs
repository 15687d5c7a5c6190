use super::*;

/// A librados error keeps its errno through the worker's reply:
/// EBLOCKLISTED (108, ESHUTDOWN) reaches the daemon as 108.
#[test]
fn a_blocklisted_error_keeps_its_errno() {
    let e = err_of("rados write 1.00000000", -libc::ESHUTDOWN);
    assert_eq!(errno_of(&e), Some(libc::ESHUTDOWN));
    assert!(e.to_string().starts_with("rados write 1.00000000: "), "{e}");
    let Reply::Err { errno, .. } = worker::failed(e) else {
        panic!("an error reply")
    };
    assert_eq!(errno, libc::ESHUTDOWN);
    let Reply::Err { errno, .. } = worker::failed(err_of("read", -libc::ENOENT)) else {
        panic!("an error reply")
    };
    assert_eq!(errno, libc::ENOENT);
}

#[test]
fn layout_to_object() {
    let o = parse_layout(
        "stripe_unit=4194304 stripe_count=1 object_size=4194304 pool=cephfs_data",
        0x1000000000a,
        1_024_000,
    )
    .unwrap();
    assert_eq!(
        o,
        TableObject {
            pool: "cephfs_data".into(),
            namespace: String::new(),
            object: "1000000000a.00000000".into()
        }
    );
    let o = parse_layout(
        "stripe_unit=4194304 stripe_count=4 object_size=8388608 pool=data pool_namespace=vm",
        255,
        4096,
    )
    .unwrap();
    assert_eq!(
        (o.namespace.as_str(), o.object.as_str()),
        ("vm", "ff.00000000")
    );
    let e = parse_layout(
        "stripe_unit=65536 stripe_count=4 object_size=4194304 pool=d",
        1,
        1_024_000,
    )
    .unwrap_err();
    assert!(e.contains("more than one object"), "{e}");
    assert!(parse_layout("stripe_unit=4194304 object_size=4194304", 1, 512).is_err());
}

#[test]
fn a_missing_object_is_told_by_its_kind() {
    // rados_read of an object never written returns -ENOENT: the
    // table then reads as zeros, as the sparse file does.
    let e = err_of("rados read x", -libc::ENOENT);
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("rados read x"), "{e}");
    assert_ne!(
        err_of("w", -libc::ETIMEDOUT).kind(),
        std::io::ErrorKind::NotFound
    );
}

/// A worker that never answers is hung storage: the request fails at
/// its deadline (TimedOut, not later), the worker is killed, and the
/// next request starts another.
#[test]
fn a_silent_worker_is_killed_at_the_deadline_and_replaced() {
    let dir = std::env::temp_dir().join(format!(
        "vmlease-rados-worker-{}-{}",
        std::process::id(),
        crate::process::random_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let prog = dir.join("silent-worker");
    // Keeps its pipes open and never answers.
    std::fs::write(&prog, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let t = RadosTable::for_object(
        RadosConf {
            conf: "/etc/ceph/ceph.conf".into(),
            client_id: "admin".into(),
            timeout_ms: 300,
            worker: prog,
        },
        TableObject {
            pool: "p".into(),
            namespace: String::new(),
            object: "1.00000000".into(),
        },
        4096,
    );
    let mut pids = Vec::new();
    for i in 1..=2u64 {
        let start = Instant::now();
        let e = t.read(0, 512).unwrap_err();
        let took = start.elapsed();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        assert!(
            e.to_string().contains("did not answer within 300 ms"),
            "{e}"
        );
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(2000),
            "request {i} failed after {took:?}, deadline 300 ms"
        );
        assert_eq!(t.worker_pid(), None, "the worker is still running");
        assert_eq!(t.workers_started(), i);
        let pid = e
            .to_string()
            .split("pid ")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or_else(|| panic!("no pid in '{e}'"));
        pids.push(pid);
    }
    assert_ne!(pids[0], pids[1], "the same worker answered twice");
    // Killed: gone (reaped) or a zombie within a bounded wait.
    for pid in pids {
        let start = Instant::now();
        loop {
            let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = st.rsplit(')').next().unwrap_or("").trim_start();
            if st.is_empty() || state.starts_with('Z') || state.starts_with('X') {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "worker {pid} still alive 5 s after its kill: {st}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    drop(t);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_file_off_cephfs_has_no_object() {
    let d = std::env::temp_dir().join(format!("vmlease-rados-{}", std::process::id()));
    std::fs::write(&d, b"x").unwrap();
    let e = table_object(&d, 512).unwrap_err();
    assert!(e.contains("no CephFS layout"), "{e}");
    std::fs::remove_file(&d).unwrap();
}
