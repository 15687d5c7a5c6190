use super::*;

#[test]
fn entries_roundtrip_and_keys_accumulate() {
    let d = std::env::temp_dir().join(format!("vmlease-reg-{}", crate::process::random_u64()));
    let reg = Registry::new(&d);
    let e = Entry {
        proc_id: ProcId { pid: 42, start: 7 },
        domain_uuid: "u".into(),
        domain_name: "my vm".into(),
        keys: vec![],
        released: vec![("domain-u".into(), 4)],
        acquired: vec![],
        acquiring: vec![],
    };
    reg.write(&e).unwrap();
    reg.add_keys(&e, &[("disk-a".into(), "/a b".into())])
        .unwrap();
    reg.add_keys(
        &e,
        &[
            ("disk-a".into(), "/a b".into()),
            ("domain-u".into(), "u".into()),
        ],
    )
    .unwrap();
    let got = reg.read(e.proc_id).unwrap().unwrap();
    assert_eq!(got.keys.len(), 2);
    assert_eq!(got.released, vec![("domain-u".to_string(), 4)]);
    let caller = ProcId { pid: 7, start: 9 };
    reg.begin_acquire(&e, 5, caller).unwrap();
    let got = reg.read(e.proc_id).unwrap().unwrap();
    assert_eq!(got.acquiring, vec![Intent { id: 5, caller }]);
    assert_eq!(got.live_intents(&|p| p == caller).len(), 1);
    assert!(got.live_intents(&|_| false).is_empty());
    reg.end_acquire(e.proc_id, 5, Some(("disk-a".into(), 3)))
        .unwrap();
    let got = reg.read(e.proc_id).unwrap().unwrap();
    assert!(got.acquiring.is_empty());
    assert_eq!(got.acquired_version("disk-a"), Some(3));
    reg.forget_acquired(e.proc_id, &["disk-a".into()]).unwrap();
    assert_eq!(
        reg.read(e.proc_id)
            .unwrap()
            .unwrap()
            .acquired_version("disk-a"),
        None
    );
    reg.remove_keys(e.proc_id, &["disk-a".into()]).unwrap();
    assert_eq!(reg.read(e.proc_id).unwrap().unwrap().keys.len(), 1);
    // A domain's acquire: keys and intents in one write, ends in one.
    reg.begin_domain_acquire(&e, &[("disk-b".into(), "/b".into())], &[6, 7], caller)
        .unwrap();
    let got = reg.read(e.proc_id).unwrap().unwrap();
    assert_eq!(got.keys.len(), 2);
    assert_eq!(got.acquiring.len(), 2);
    assert_eq!(got.released, vec![("domain-u".to_string(), 4)]);
    let ends = IntentEnds::default();
    ends.end(&reg, e.proc_id, 6, Some(("disk-b".into(), 9)))
        .unwrap();
    // Handed over, not written yet: the intent stays until the caller writes.
    assert_eq!(reg.read(e.proc_id).unwrap().unwrap().acquiring.len(), 2);
    let handed = ends.close();
    assert!(ends.is_closed());
    assert_eq!(handed, vec![(6, Some(("disk-b".to_string(), 9)))]);
    reg.end_acquires(e.proc_id, &handed, true).unwrap();
    let got = reg.read(e.proc_id).unwrap().unwrap();
    assert_eq!(got.acquiring, vec![Intent { id: 7, caller }]);
    assert_eq!(got.acquired_version("disk-b"), Some(9));
    assert!(got.released.is_empty());
    // After close, a late call ends its own intent.
    ends.end(&reg, e.proc_id, 7, None).unwrap();
    assert!(reg.read(e.proc_id).unwrap().unwrap().acquiring.is_empty());
    assert!(ends.close().is_empty());
    reg.remove_keys(e.proc_id, &["disk-b".into()]).unwrap();
    fs::write(reg.dir.join("9-9"), b"junk").unwrap();
    let all = reg.list().unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all.iter().filter(|r| r.is_err()).count(), 1);
    fs::remove_dir_all(&d).unwrap();
}
