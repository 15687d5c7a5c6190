//! Log records for journald with structured fields, through its native
//! datagram socket, and for syslog (`/dev/log`) when journald is not there.
//!
//! Like the rest of the logger it takes no lock and keeps no shared state:
//! each record is one datagram on a non-blocking socket opened for it, so
//! it is safe in libvirt's forked pre-exec child and never blocks the
//! daemon's loop (a full socket drops the record).
//!
//! Events an operator alerts on carry a stable `MESSAGE_ID` (one per kind,
//! listed in docs/daemon.md; `journalctl MESSAGE_ID=...`) and `VMLEASE_*`
//! fields. A call site names them as key-values of the `log` macros:
//! `error!(event = "fence", host_id = 3; "...")` becomes
//! `MESSAGE_ID=<fence's id>`, `VMLEASE_EVENT=fence` and
//! `VMLEASE_HOST_ID=3`.
#![forbid(unsafe_code)]

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use log::Level;

/// journald's native protocol socket.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
/// The syslog socket (journald's too, when it runs).
pub const SYSLOG_SOCKET: &str = "/dev/log";

/// The event kinds and their `MESSAGE_ID`s. Never change an id: operators
/// alert on them.
pub const EVENTS: &[(&str, &str, &str)] = &[
    (
        "fence",
        "5b6a4e0f1c8d4b7f9a2e3c1d7f0b9e21",
        "this host fences: it kills its leased VMs, then resets",
    ),
    (
        "takeover",
        "8f3d2a6c4e1b47d09c5a7e2f1b3d6c48",
        "a lease was taken over from a host found dead",
    ),
    (
        "collision",
        "c2e9174b5a3f4d86b1e07c9a2d4f6e13",
        "another live host uses this host's host_id",
    ),
    (
        "lease-refused",
        "1d7c5e3a9b2f4068a4c6e8f0b2d4a6c1",
        "the plugin refused a lease (VM start, resume or migration)",
    ),
    (
        "dead-qemu-release",
        "a4b6c8d0e2f44a1c8e3b5d7f9a1c3e52",
        "the leases of an exited QEMU were released",
    ),
    (
        "clear-fence",
        "e7f9a1b3c5d74e2f806a8c0e2a4c6e89",
        "the operator cleared this host's fence",
    ),
    (
        "fence-tcp-abort",
        "8382f07b40a2447c8e32fc2dd344178b",
        "the fence destroyed the killed VMs' TCP sockets (their unsent writes)",
    ),
    (
        "stopped-with-leases",
        "3c5e7a9b1d2f4c6e8a0b2d4f6a8c0e17",
        "the daemon stopped while leased VMs run: the host resets unless it is started again",
    ),
];

/// The `MESSAGE_ID` of an event kind.
pub fn message_id(event: &str) -> Option<&'static str> {
    EVENTS.iter().find(|(e, _, _)| *e == event).map(|e| e.1)
}

/// syslog's severity of a log level (also journald's `PRIORITY`).
pub fn priority(l: Level) -> u8 {
    match l {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

const LOG_DAEMON: u8 = 3 << 3;

/// The journal field name of a key-value (`host_id` -> `VMLEASE_HOST_ID`);
/// None for a key that is not a valid field name.
pub fn field_name(key: &str) -> Option<String> {
    let f = format!("VMLEASE_{}", key.to_ascii_uppercase());
    let ok = f.len() <= 64
        && f.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    ok.then_some(f)
}

/// One field in journald's native format: `KEY=value\n`, or for a value
/// with a newline `KEY\n`, its length (u64 little-endian), the value, `\n`.
fn put(buf: &mut Vec<u8>, key: &str, value: &[u8]) {
    buf.extend_from_slice(key.as_bytes());
    if value.contains(&b'\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value);
    buf.push(b'\n');
}

/// The native datagram of one record. `fields` are the key-values of the
/// call site (`event` selects the `MESSAGE_ID`).
pub fn native(level: Level, ident: &str, msg: &str, fields: &[(String, String)]) -> Vec<u8> {
    let mut b = Vec::with_capacity(128 + msg.len());
    put(&mut b, "PRIORITY", priority(level).to_string().as_bytes());
    put(&mut b, "SYSLOG_FACILITY", b"3");
    put(&mut b, "SYSLOG_IDENTIFIER", ident.as_bytes());
    put(&mut b, "MESSAGE", msg.as_bytes());
    for (k, v) in fields {
        if k == "event" {
            if let Some(id) = message_id(v) {
                put(&mut b, "MESSAGE_ID", id.as_bytes());
            }
        }
        if let Some(f) = field_name(k) {
            put(&mut b, &f, v.as_bytes());
        }
    }
    b
}

/// The same record as a syslog line (RFC 3164 as glibc sends it).
pub fn syslog_line(level: Level, ident: &str, pid: u32, msg: &str) -> Vec<u8> {
    format!("<{}>{ident}[{pid}]: {msg}", LOG_DAEMON | priority(level)).into_bytes()
}

/// Sends one record: to journald's native socket at `journal` when it
/// takes it, else to syslog at `syslog`. A full socket (journald stalled)
/// drops the record rather than wait; other failures (no journald) fall
/// back to syslog. Errors there are ignored (no syslog daemon).
pub fn send_to(
    journal: &Path,
    syslog: &Path,
    level: Level,
    ident: &str,
    msg: &str,
    fields: &[(String, String)],
) {
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let _ = sock.set_nonblocking(true);
    match sock.send_to(&native(level, ident, msg, fields), journal) {
        Ok(_) => return,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
        Err(_) => {}
    }
    let _ = sock.send_to(&syslog_line(level, ident, std::process::id(), msg), syslog);
}

/// [`send_to`] the system's sockets.
pub fn send(level: Level, ident: &str, msg: &str, fields: &[(String, String)]) {
    send_to(
        Path::new(JOURNAL_SOCKET),
        Path::new(SYSLOG_SOCKET),
        level,
        ident,
        msg,
        fields,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Parses a native datagram back into (key, value) pairs.
    fn parse(mut b: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let nl = b.iter().position(|&c| c == b'\n').unwrap();
            let line = &b[..nl];
            if let Some(eq) = line.iter().position(|&c| c == b'=') {
                out.push((
                    String::from_utf8(line[..eq].to_vec()).unwrap(),
                    line[eq + 1..].to_vec(),
                ));
                b = &b[nl + 1..];
            } else {
                let key = String::from_utf8(line.to_vec()).unwrap();
                let len = u64::from_le_bytes(b[nl + 1..nl + 9].try_into().unwrap()) as usize;
                let v = b[nl + 9..nl + 9 + len].to_vec();
                assert_eq!(b[nl + 9 + len], b'\n');
                out.push((key, v));
                b = &b[nl + 10 + len..];
            }
        }
        out
    }

    #[test]
    fn event_ids_are_unique_128_bit_hex() {
        let mut seen = HashSet::new();
        for (e, id, _) in EVENTS {
            assert_eq!(id.len(), 32, "{e}");
            assert!(id
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
            assert!(seen.insert(*id), "{e}: duplicate id");
        }
    }

    #[test]
    fn every_event_is_documented_with_its_id() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/daemon.md"))
            .unwrap();
        for (e, id, _) in EVENTS {
            assert!(
                doc.contains(&format!("| `{e}` | `{id}` |")),
                "docs/daemon.md lacks the row of {e} ({id})"
            );
        }
    }

    #[test]
    fn a_record_carries_its_fields() {
        let f = vec![
            ("event".to_string(), "fence".to_string()),
            ("host_id".to_string(), "3".to_string()),
            ("bad key".to_string(), "x".to_string()),
        ];
        let got = parse(&native(Level::Error, "vmlease-watchdog", "two\nlines", &f));
        let get = |k: &str| {
            got.iter()
                .find(|(kk, _)| kk == k)
                .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        };
        assert_eq!(get("PRIORITY").as_deref(), Some("3"));
        assert_eq!(get("MESSAGE").as_deref(), Some("two\nlines"));
        assert_eq!(get("MESSAGE_ID").as_deref(), message_id("fence"));
        assert_eq!(get("VMLEASE_EVENT").as_deref(), Some("fence"));
        assert_eq!(get("VMLEASE_HOST_ID").as_deref(), Some("3"));
        assert_eq!(
            get("SYSLOG_IDENTIFIER").as_deref(),
            Some("vmlease-watchdog")
        );
        assert!(got.iter().all(|(k, _)| !k.contains(' ')), "{got:?}");
    }

    #[test]
    fn journald_first_then_syslog() {
        let dir = std::env::temp_dir().join(format!("vmlease-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (jp, sp) = (dir.join("journal"), dir.join("log"));
        let syslog = UnixDatagram::bind(&sp).unwrap();
        syslog.set_nonblocking(true).unwrap();
        let f = vec![("event".to_string(), "takeover".to_string())];
        // No journald: syslog gets the line.
        send_to(&jp, &sp, Level::Warn, "vmlease", "took over", &f);
        let mut buf = [0u8; 4096];
        let n = syslog.recv(&mut buf).unwrap();
        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(line.starts_with("<28>vmlease["), "{line}");
        assert!(line.ends_with("]: took over"), "{line}");
        // journald there: it gets the record, syslog nothing.
        let journal = UnixDatagram::bind(&jp).unwrap();
        send_to(&jp, &sp, Level::Warn, "vmlease", "took over", &f);
        let n = journal.recv(&mut buf).unwrap();
        let rec = parse(&buf[..n]);
        assert!(rec
            .iter()
            .any(|(k, v)| k == "MESSAGE_ID" && v == message_id("takeover").unwrap().as_bytes()));
        assert!(syslog.recv(&mut buf).is_err(), "sent twice");
        // journald's socket full: the record is dropped, the call returns.
        journal.set_nonblocking(true).unwrap();
        let big = "x".repeat(60_000);
        let t0 = std::time::Instant::now();
        for _ in 0..200 {
            send_to(&jp, &sp, Level::Info, "vmlease", &big, &[]);
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(2));
        assert!(
            syslog.recv(&mut buf).is_err(),
            "a full journal is not a missing one"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
