//! vmlease-ha's etcd client against a real etcd member (Debian's
//! etcd-server) on loopback: reads and writes, a presence key that goes
//! with its lease, leader election by a create-only transaction, writes
//! guarded by the leader key and by a record's revision, and a clear error
//! when no endpoint answers (the next endpoint is tried first).

mod support;

use std::process::Command;
use std::time::Duration;

use support::util::{wait_until, ProcGuard, Scratch};
use vmlease::ha::etcd::{Cmp, Etcd, Op};

use support::etcd::{free_port, member_with};

fn member(s: &Scratch) -> (ProcGuard, String) {
    support::etcd::member(s.path())
}

fn cfg(endpoints: &[&str]) -> vmlease::config::HaConfig {
    let text = format!(
        "[ha]\nendpoints = [{}]\nhost_ttl = 2\ninterval = 0.5\nrequest_timeout = 1\n",
        endpoints
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    vmlease::config::parse(&text, "test.conf")
        .unwrap()
        .ha
        .unwrap()
}

#[test]
fn the_etcd_client_against_a_real_member() {
    let s = Scratch::new("ha-etcd");
    let (etcd_proc, url) = member(&s);
    // A dead endpoint first: the client moves on to the live one.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let etcd = Etcd::new(&cfg(&[&dead, &url])).unwrap();
    wait_until(
        "etcd to answer",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            etcd.list("/x/")
                .map_err(|e| format!("{e}; log: {}", etcd_proc.log_tail(5)))
        },
    );

    // Reads and writes under a prefix.
    etcd.put("/t/vms/a", b"one", 0).unwrap();
    etcd.put("/t/vms/b", b"two", 0).unwrap();
    etcd.put("/t0", b"outside", 0).unwrap();
    let got: Vec<(String, Vec<u8>)> = etcd
        .list("/t/")
        .unwrap()
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect();
    assert_eq!(
        got,
        vec![
            ("/t/vms/a".to_string(), b"one".to_vec()),
            ("/t/vms/b".to_string(), b"two".to_vec())
        ]
    );
    assert_eq!(etcd.get("/t/none").unwrap(), None);

    // Election: only the first create-only transaction wins.
    let lease_a = etcd.grant(2).unwrap();
    let lease_b = etcd.grant(2).unwrap();
    let campaign = |who: &[u8], lease| {
        etcd.txn(
            "campaign",
            &[Cmp::Absent("/t/leader")],
            &[Op::Put {
                key: "/t/leader",
                value: who,
                lease,
            }],
        )
        .unwrap()
    };
    assert!(campaign(b"host-a", lease_a));
    assert!(!campaign(b"host-b", lease_b));
    // Writes guarded by the leader key: a's pass, b's do not.
    let guarded = |who: &[u8], v: &[u8]| {
        etcd.txn(
            "decide",
            &[Cmp::Value("/t/leader", who)],
            &[Op::Put {
                key: "/t/recovery/x",
                value: v,
                lease: 0,
            }],
        )
        .unwrap()
    };
    assert!(guarded(b"host-a", b"by a"));
    assert!(!guarded(b"host-b", b"by b"));
    // A report guarded by the record's revision: a stale one is refused.
    let kv = etcd.get("/t/recovery/x").unwrap().unwrap();
    assert_eq!(kv.value, b"by a");
    let report = |rev| {
        etcd.txn(
            "report",
            &[Cmp::ModRevision("/t/recovery/x", rev)],
            &[Op::Put {
                key: "/t/recovery/x",
                value: b"started",
                lease: 0,
            }],
        )
        .unwrap()
    };
    assert!(report(kv.mod_revision));
    assert!(!report(kv.mod_revision), "a stale revision was accepted");

    // Presence: a's lease kept alive, b's left to expire; a's leader key
    // stays, then goes with a's lease when a stops renewing.
    etcd.put("/t/hosts/b", b"b", lease_b).unwrap();
    wait_until(
        "host b's key to go with its lease",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            assert!(
                etcd.keepalive(lease_a).unwrap() > 0,
                "a's lease expired while kept alive"
            );
            match etcd.get("/t/hosts/b").unwrap() {
                None => Ok(()),
                Some(_) => Err("still there".to_string()),
            }
        },
    );
    assert_eq!(etcd.get("/t/leader").unwrap().unwrap().value, b"host-a");
    assert_eq!(
        etcd.keepalive(lease_b).unwrap(),
        0,
        "an expired lease renewed"
    );
    etcd.revoke(lease_a).unwrap();
    assert_eq!(etcd.get("/t/leader").unwrap(), None);
    assert!(campaign(b"host-b", etcd.grant(2).unwrap()));

    // No endpoint answers: an error naming the operation and the endpoint.
    drop(etcd_proc);
    let e = etcd.get("/t/leader").unwrap_err().to_string();
    assert!(
        e.starts_with("etcd get /t/leader:") && e.contains("127.0.0.1"),
        "{e}"
    );
}

/// Events: written only by the leader, bounded by count and by their
/// lease, read back oldest first, and delivered to a watch.
#[test]
fn events_are_stored_bounded_and_watched() {
    use vmlease::ha::etcd::WatchEvent;
    use vmlease::ha::event_store::{self, events_prefix, EventStore};
    use vmlease::ha::events::{kind, Event};

    let s = Scratch::new("ha-events");
    let (etcd_proc, url) = member(&s);
    let etcd = Etcd::new(&cfg(&[&url])).unwrap();
    wait_until(
        "etcd to answer",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            etcd.list("/x/")
                .map_err(|e| format!("{e}; log: {}", etcd_proc.log_tail(5)))
        },
    );
    etcd.put("/e/leader", b"host-a", 0).unwrap();
    // Events live 2 s (etcd's shortest lease), at most 3 kept.
    let mut store = EventStore::new("/e/", 2_000, 3);
    for i in 0..5u64 {
        let e = Event::host(kind::HOST_FAILED, 1_000 + i, &format!("h{i}"), "test");
        assert!(store.write(&etcd, "/e/leader", "host-a", &e).unwrap());
    }
    let mut other = EventStore::new("/e/", 2_000, 3);
    let e = Event::host(kind::HOST_BACK, 2_000, "x", "not the leader");
    assert!(!other.write(&etcd, "/e/leader", "host-b", &e).unwrap());
    // A host's own VM events: stored leader or not, and two stores of one
    // host (the controller's, the VM monitor's) never overwrite each other.
    let mut mine = EventStore::new("/own/", 2_000, 10);
    let mut monitor = EventStore::new("/own/", 2_000, 10);
    let e = Event::vm(kind::VM_CRASHED, 5_000, "host-b", "u-2", "db", "killed");
    assert!(mine.write_own(&etcd, "host-b", &e).unwrap());
    let r = Event::vm(kind::VM_RESTARTED, 5_000, "host-b", "u-2", "db", "again");
    assert!(monitor.write_own(&etcd, "host-b", &r).unwrap());
    let (own, _, _) = event_store::read(&etcd, "/own/").unwrap();
    assert_eq!(
        own,
        [e, r],
        "both events of the same ms and sequence number"
    );
    let (events, bad, rev) = event_store::read(&etcd, "/e/").unwrap();
    assert!(bad.is_empty(), "{bad:?}");
    let hosts: Vec<&str> = events.iter().map(|e| e.host.as_str()).collect();
    assert_eq!(hosts, ["h2", "h3", "h4"], "the newest 3, oldest first");

    // A watch from the listing's revision on sees the next event.
    let (tx, rx) = std::sync::mpsc::channel();
    let wurl = url.clone();
    std::thread::spawn(move || {
        let etcd = Etcd::new(&cfg(&[&wurl])).unwrap();
        let _ = etcd.watch(&events_prefix("/e/"), rev + 1, |we, _| {
            if let WatchEvent::Put(kv) = we {
                let e: Event = serde_json::from_slice(&kv.value).unwrap();
                tx.send((e, std::time::Instant::now())).is_ok()
            } else {
                true
            }
        });
    });
    std::thread::sleep(Duration::from_millis(300)); // the watch is set up
    let t0 = std::time::Instant::now();
    let e = Event::vm(kind::VM_RECOVERED, 3_000, "a", "u-1", "web", "runs on b");
    assert!(store.write(&etcd, "/e/leader", "host-a", &e).unwrap());
    let (got, at) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the watch delivered no event within 5 s");
    assert_eq!(got, e);
    println!(
        "event written -> delivered by the watch: {} ms (write incl. pruning: {} ms)",
        at.duration_since(t0).as_millis(),
        t0.elapsed().as_millis()
    );

    // Bounded in time too: the events go with their lease.
    wait_until(
        "the events to expire with their lease",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || match event_store::read(&etcd, "/e/").unwrap().0.len() {
            0 => Ok(()),
            n => Err(format!("{n} left")),
        },
    );
}

/// etcd with TLS and client certificates (`--client-cert-auth`): the client
/// with the CA and its certificate works; without a certificate the member
/// refuses it; a wrong CA is refused by the client.
#[test]
fn etcd_over_tls_with_client_certificates() {
    let s = Scratch::new("ha-tls");
    let d = s.path().to_path_buf();
    let sh = |script: &str| {
        let o = Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(&d)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca -keyout ca.key -out ca.pem 2>/dev/null
        for n in server client; do
          openssl req -newkey rsa:2048 -nodes -subj /CN=$n -keyout $n.key -out $n.csr 2>/dev/null
          printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth,clientAuth\\n' >$n.ext
          openssl x509 -req -in $n.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile $n.ext -out $n.pem 2>/dev/null
        done
        openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=other-ca -keyout other.key -out other.pem 2>/dev/null");
    let (etcd_proc, url) = member_with(&d, Some(&d));
    let conf = |extra: &str| {
        let text = format!(
            "[ha]\nendpoints = [\"{url}\"]\nrequest_timeout = 2\nca_file = \"{}\"\n{extra}",
            d.join("ca.pem").display()
        );
        vmlease::config::parse(&text, "tls.conf")
            .unwrap()
            .ha
            .unwrap()
    };
    let good = Etcd::new(&conf(&format!(
        "cert_file = \"{}\"\nkey_file = \"{}\"\n",
        d.join("client.pem").display(),
        d.join("client.key").display()
    )))
    .unwrap();
    wait_until(
        "etcd (TLS) to answer a client with a certificate",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            good.put("/tls/k", b"v", 0)
                .map_err(|e| format!("{e}; log: {}", etcd_proc.log_tail(5)))
        },
    );
    assert_eq!(good.get("/tls/k").unwrap().unwrap().value, b"v");

    let no_cert = Etcd::new(&conf("")).unwrap();
    let e = no_cert.get("/tls/k").unwrap_err().to_string();
    assert!(e.starts_with("etcd get /tls/k:"), "{e}");
    let wrong_ca = Etcd::new(&vmlease::config::HaConfig {
        ca_file: Some(d.join("other.pem")),
        ..conf(&format!(
            "cert_file = \"{}\"\nkey_file = \"{}\"\n",
            d.join("client.pem").display(),
            d.join("client.key").display()
        ))
    })
    .unwrap();
    let e = wrong_ca.get("/tls/k").unwrap_err().to_string();
    assert!(e.contains("127.0.0.1"), "{e}");
    println!(
        "without a client certificate: {}",
        no_cert.get("/tls/k").unwrap_err()
    );
    println!("with a CA that did not sign the member: {e}");
}
