//! The daemon's events reach journald with their structured fields: the
//! daemon runs in its own mount namespace where a socket of this test is
//! bind-mounted at journald's native socket path
//! (`/run/systemd/journal/socket`), and the test reads the datagrams.
//!
//! Heavy (daemons, mount namespaces): run under the shared lock.

mod support;

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Arc, Mutex};

use support::daemons::{lease, lockspace, serial, sh, standin_qemu, wait_until, Host, Scratch};
use vmlease::journal::message_id;

const UUID_A: [u8; 16] = [0x4a; 16];
const UUID_B: [u8; 16] = [0x4b; 16];

type Record = Vec<(String, String)>;

/// journald's native datagrams, parsed into fields.
fn parse(mut b: &[u8]) -> Record {
    let mut out = Vec::new();
    while let Some(nl) = b.iter().position(|&c| c == b'\n') {
        let line = &b[..nl];
        if let Some(eq) = line.iter().position(|&c| c == b'=') {
            out.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            ));
            b = &b[nl + 1..];
        } else {
            let len = u64::from_le_bytes(b[nl + 1..nl + 9].try_into().unwrap()) as usize;
            out.push((
                String::from_utf8_lossy(line).into_owned(),
                String::from_utf8_lossy(&b[nl + 9..nl + 9 + len]).into_owned(),
            ));
            b = &b[nl + 10 + len..];
        }
    }
    out
}

fn field<'a>(r: &'a Record, k: &str) -> Option<&'a str> {
    r.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.as_str())
}

struct Journal {
    path: std::path::PathBuf,
    records: Arc<Mutex<Vec<Record>>>,
}

impl Journal {
    fn new(dir: &Path) -> Journal {
        let path = dir.join("journal.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let records = Arc::new(Mutex::new(Vec::new()));
        let r = records.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 17];
            while let Ok(n) = sock.recv(&mut buf) {
                r.lock().unwrap().push(parse(&buf[..n]));
            }
        });
        Journal { path, records }
    }

    fn wait_event(&self, event: &str) -> Record {
        wait_until(
            &format!("a journal record of event '{event}'"),
            10_000,
            || {
                let recs = self.records.lock().unwrap();
                recs.iter()
                    .find(|r| field(r, "VMLEASE_EVENT") == Some(event))
                    .cloned()
                    .ok_or_else(|| {
                        let msgs: Vec<&str> =
                            recs.iter().filter_map(|r| field(r, "MESSAGE")).collect();
                        format!("{} records: {msgs:?}", recs.len())
                    })
            },
        )
    }
}

#[test]
fn daemon_events_carry_message_ids_and_fields() {
    let _g = serial();
    let s = Scratch::new("journal");
    let ls = lockspace(&s);
    let view = s.0.join("a-view");
    fs::create_dir_all(&view).unwrap();
    let j = Journal::new(&s.0);
    let mut a = Host::new(&s, 1, &view, "unsafe_no_watchdog = true\n");
    // The daemon's namespace: the lockspace through a bind mount (cut
    // below), and this test's socket as journald's.
    let inner = format!(
        "mount --bind '{}' '{}' && mount -t tmpfs vmlease-run /run && mkdir -p /run/systemd/journal \
         && touch /run/systemd/journal/socket && mount --bind '{}' /run/systemd/journal/socket \
         && exec \"$0\" \"$@\"",
        ls.display(),
        view.display(),
        j.path.display()
    );
    a.start_in_own_mount_ns(&inner, &[]);
    let apid = a.daemon.as_ref().unwrap().pid();
    // The plugin side of host A writes the real lockspace path.
    let mut plug = a.cfg.clone();
    plug.lockspace_dir = ls.clone();
    let a_plugin = Host {
        cfg: plug,
        daemon: None,
        ..Host::new(&s, 1, &view, "unsafe_no_watchdog = true\n")
    };

    // Every line reaches journald with its priority and identifier.
    let joined = wait_until("the join record", 10_000, || {
        j.records
            .lock()
            .unwrap()
            .iter()
            .find(|r| field(r, "MESSAGE").is_some_and(|m| m.contains("joined lockspace")))
            .cloned()
            .ok_or("none".to_string())
    });
    assert_eq!(field(&joined, "PRIORITY"), Some("6"), "{joined:?}");
    assert_eq!(
        field(&joined, "SYSLOG_IDENTIFIER"),
        Some("vmlease-watchdog")
    );
    assert_eq!(
        field(&joined, "MESSAGE_ID"),
        None,
        "not an event: {joined:?}"
    );

    // A leased QEMU exits: its leases are released.
    let q1 = standin_qemu();
    lease(&a_plugin, UUID_A, "web", &q1, Some("/images/web.qcow2")).unwrap();
    q1.signal(libc::SIGKILL);
    let rel = j.wait_event("dead-qemu-release");
    eprintln!("dead-qemu-release: {rel:?}");
    assert_eq!(field(&rel, "MESSAGE_ID"), message_id("dead-qemu-release"));
    assert_eq!(field(&rel, "PRIORITY"), Some("6"));
    assert_eq!(field(&rel, "VMLEASE_DOMAIN"), Some("web"));
    let uuid = vmlease::resource::format_uuid(&UUID_A);
    assert_eq!(field(&rel, "VMLEASE_DOMAIN_UUID"), Some(uuid.as_str()));
    assert!(
        field(&rel, "VMLEASE_RESOURCE").is_some_and(|r| r.split(' ').count() == 2),
        "the domain lease and the disk: {rel:?}"
    );

    // Storage cut: the host fences.
    let q2 = standin_qemu();
    lease(&a_plugin, UUID_B, "db", &q2, None).unwrap();
    sh(&format!(
        "nsenter -t {apid} -m umount -l '{}'",
        view.display()
    ));
    let fence = j.wait_event("fence");
    eprintln!("fence: {fence:?}");
    assert_eq!(field(&fence, "MESSAGE_ID"), message_id("fence"));
    assert_eq!(field(&fence, "PRIORITY"), Some("3"));
    assert_eq!(field(&fence, "VMLEASE_HOST_ID"), Some("1"));
    // The same line on stderr, as before.
    let msg = field(&fence, "MESSAGE").unwrap().to_string();
    a.wait_log(&msg);
    drop(q2);
}
