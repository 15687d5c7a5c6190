use super::*;

fn kv(key: &str, value: &[u8]) -> Kv {
    Kv {
        key: key.into(),
        value: value.into(),
        mod_revision: 1,
        lease: 0,
    }
}

#[test]
fn corrupt_values_are_named_by_key_and_their_hosts_unreadable() {
    let h = HostRecord {
        name: "b".into(),
        host_id: 2,
        state: "live".into(),
        protected: true,
        reason: String::new(),
        mem_total_kib: 1,
        mem_used_kib: 0,
        vcpus: 1,
        vcpus_used: 0,
    };
    let kvs = [
        kv("/p/hosts/a", b"garbage{"),
        kv("/p/hosts/b", &to_json(&h)),
        // Valid, but another host's record under this key.
        kv("/p/hosts/c", &to_json(&h)),
        kv("/p/vms/u-1", b"\xff"),
        kv("/p/leader", b"b"),
    ];
    let (v, leader, bad) = view_of("/p/", &kvs);
    assert_eq!(leader.as_deref(), Some("b"));
    assert_eq!(v.hosts.keys().collect::<Vec<_>>(), ["b"]);
    assert_eq!(v.unreadable.iter().collect::<Vec<_>>(), ["a", "c"]);
    assert!(v.vms.is_empty());
    let keys: Vec<&str> = bad.iter().map(|b| b.split_once(": ").unwrap().0).collect();
    assert_eq!(keys, ["/p/hosts/a", "/p/hosts/c", "/p/vms/u-1"], "{bad:?}");
}
