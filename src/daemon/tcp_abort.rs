//! The fence's TCP abort: a killed QEMU's unsent writes must never reach
//! the storage later.
//!
//! A process killed while its storage link is down leaves what it wrote
//! last in the kernel's send queues. Its sockets outlive it as orphans
//! (fin-wait-1, no inode) that the kernel retransmits, with backoff, for
//! minutes (`tcp_orphan_retries`). When the link comes back - maybe after
//! another host took the lease over at D (takeover rule 4) - such a write
//! can still reach an OSD and overwrite the new owner's data: nothing
//! blocklists a librbd client under rule 4.
//!
//! So the fence, before it kills, notes the TCP sockets of each leased
//! process ([`Sockets::before_kill`]: `socket:[N]` links in
//! /proc/PID/fd matched with a sock_diag dump, a few ms), and once the
//! kills are done ([`Sockets::abort`], before `fenced-clean`) destroys
//! them by cookie (SOCK_DESTROY: the kernel drops their queues), and with
//! them every orphaned TCP socket to one of their remote endpoints (a
//! socket made between the snapshot and the kill). What the abort does
//! not close: docs/design.md, "The fence sequence".
#![forbid(unsafe_code)]

use std::collections::{BTreeSet, HashSet};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::process::ProcId;
use crate::sys::tcp_diag::{canonical, Diag};

pub use crate::sys::tcp_diag::{state, TcpSock};

/// Every netlink receive waits at most this long (the kernel answers at
/// once; sock_diag never waits on the network).
pub const NETLINK_TIMEOUT: Duration = Duration::from_secs(1);

/// A note before the kills waits at most this long for the kernel: the
/// kill is delayed by the note, never by more than this.
pub const NOTE_TIMEOUT: Duration = Duration::from_millis(250);

/// States in which a socket may still put data on the wire: the ones the
/// abort destroys. Not listen, time-wait, close, syn-recv (nothing of
/// ours queued) nor fin-wait-2 (everything acknowledged).
pub fn may_send(s: u8) -> bool {
    matches!(
        s,
        state::ESTABLISHED
            | state::SYN_SENT
            | state::FIN_WAIT1
            | state::CLOSE_WAIT
            | state::LAST_ACK
            | state::CLOSING
    )
}

/// The `1 << state` mask of [`may_send`] for the dumps.
pub fn may_send_mask() -> u32 {
    (0u8..16)
        .filter(|s| may_send(*s))
        .fold(0, |m, s| m | (1u32 << s))
}

/// The socket inodes of process `pid` (`socket:[N]` links of its fds).
/// A process whose leader thread has exited shows no fds under
/// /proc/PID/fd: then the first of its threads that shows some.
pub fn socket_inodes(pid: u32) -> io::Result<HashSet<u32>> {
    let mut out = HashSet::new();
    let fd_dir = format!("/proc/{pid}/fd");
    let first = read_socket_links(&fd_dir, &mut out);
    if !out.is_empty() {
        return Ok(out);
    }
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let dir = t.path().join("fd");
            if read_socket_links(&dir.to_string_lossy(), &mut out).is_ok() && !out.is_empty() {
                return Ok(out);
            }
        }
    }
    first.map(|_| out)
}

fn read_socket_links(dir: &str, out: &mut HashSet<u32>) -> io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let Ok(e) = e else { continue };
        // An fd closed meanwhile: skip it.
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        if let Some(n) = parse_socket_link(&target.to_string_lossy()) {
            out.insert(n);
        }
    }
    Ok(())
}

/// `socket:[N]` -> N.
pub fn parse_socket_link(s: &str) -> Option<u32> {
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Every TCP socket of this network namespace in a state of `mask`.
pub fn dump(mask: u32) -> io::Result<Vec<TcpSock>> {
    Diag::open(NETLINK_TIMEOUT)?.dump(mask)
}

/// The TCP sockets of `pids` that may still send, from one dump.
pub fn snapshot(pids: &[u32]) -> io::Result<Vec<TcpSock>> {
    let mut inodes = HashSet::new();
    for &pid in pids {
        match socket_inodes(pid) {
            Ok(s) => inodes.extend(s),
            // Gone already: it has nothing left to note.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if inodes.is_empty() {
        return Ok(Vec::new());
    }
    let all = Diag::open(NOTE_TIMEOUT)?.dump(may_send_mask())?;
    Ok(all
        .into_iter()
        .filter(|s| s.inode != 0 && inodes.contains(&s.inode))
        .collect())
}

/// What to destroy, from the snapshot and a dump taken now: the
/// snapshot's sockets still there (same cookie), and every orphan (inode
/// 0) to one of the snapshot's remote endpoints, in a state that may
/// send. Pure: the unit tests drive it.
pub fn plan(snap: &[TcpSock], now: &[TcpSock]) -> Vec<TcpSock> {
    let cookies: HashSet<u64> = snap.iter().map(|s| s.cookie).collect();
    let remotes = remotes(snap);
    now.iter()
        .filter(|s| may_send(s.state))
        .filter(|s| {
            cookies.contains(&s.cookie) || (s.inode == 0 && remotes.contains(&canonical(s.remote)))
        })
        .cloned()
        .collect()
}

/// The remote endpoints of `socks` (IPv4-mapped ones as IPv4), without
/// unspecified addresses.
pub fn remotes(socks: &[TcpSock]) -> BTreeSet<SocketAddr> {
    socks
        .iter()
        .map(|s| canonical(s.remote))
        .filter(|a| !a.ip().is_unspecified())
        .collect()
}

/// What an abort did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Aborted {
    /// Sockets destroyed.
    pub count: usize,
    /// Of them, orphans not in the snapshot (made after it).
    pub orphans_by_endpoint: usize,
    /// Data bytes dropped from their send queues.
    pub bytes: u64,
    /// Their remote endpoints.
    pub remotes: BTreeSet<SocketAddr>,
    /// Noted sockets already closed, or in a state with nothing left to
    /// send (fin-wait-2, time-wait): nothing to drop.
    pub gone: usize,
    /// Destroys that failed, with why.
    pub errors: Vec<String>,
}

impl Aborted {
    /// The journal line.
    pub fn describe(&self) -> String {
        let to: Vec<String> = self.remotes.iter().map(|a| a.to_string()).collect();
        let mut s = format!(
            "fence: aborted {} TCP socket(s) of the killed QEMU processes ({} orphan(s) matched by endpoint), \
             dropping {} unsent byte(s); remote endpoints: {}",
            self.count,
            self.orphans_by_endpoint,
            self.bytes,
            if to.is_empty() { "none".into() } else { to.join(" ") }
        );
        if self.gone > 0 {
            s.push_str(&format!(
                "; {} noted socket(s) already closed or with nothing left to send",
                self.gone
            ));
        }
        if !self.errors.is_empty() {
            s.push_str(&format!("; FAILED: {}", self.errors.join("; ")));
        }
        s
    }
}

/// Destroys what [`plan`] picks from a fresh dump.
pub fn abort(snap: &[TcpSock]) -> io::Result<Aborted> {
    let mut d = Diag::open(NETLINK_TIMEOUT)?;
    let now = d.dump(may_send_mask())?;
    let targets = plan(snap, &now);
    let cookies: HashSet<u64> = snap.iter().map(|s| s.cookie).collect();
    let mut a = Aborted::default();
    let mut seen = HashSet::new();
    for t in &targets {
        seen.insert(t.cookie);
        match d.destroy(t) {
            Ok(true) => {
                a.count += 1;
                if !cookies.contains(&t.cookie) {
                    a.orphans_by_endpoint += 1;
                }
                a.bytes += u64::from(t.unsent_bytes());
                a.remotes.insert(canonical(t.remote));
            }
            Ok(false) => a.gone += 1,
            Err(e) => a.errors.push(format!(
                "{} -> {} ({}): {e}",
                t.local,
                t.remote,
                state::name(t.state)
            )),
        }
    }
    a.gone += snap.iter().filter(|s| !seen.contains(&s.cookie)).count();
    Ok(a)
}

/// Whether this host can abort TCP sockets: a loopback connection of our
/// own is found in a dump (by its inode) and destroyed. Err: why not
/// (no CAP_NET_ADMIN, a kernel without CONFIG_INET_DIAG_DESTROY, no
/// loopback in this network namespace).
pub fn self_check() -> Result<(), String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let l =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1: {e}"))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let c = std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    let _peer = l.accept().map_err(|e| format!("accept: {e}"))?;
    let ino = std::fs::metadata(format!("/proc/self/fd/{}", c.as_raw_fd()))
        .map_err(|e| format!("stat own socket: {e}"))?
        .ino();
    let mut d = Diag::open(NETLINK_TIMEOUT).map_err(|e| format!("open sock_diag: {e}"))?;
    let all = d
        .dump(may_send_mask())
        .map_err(|e| format!("sock_diag dump: {e}"))?;
    let me = all
        .iter()
        .find(|s| u64::from(s.inode) == ino)
        .ok_or_else(|| "own test connection missing from the sock_diag dump".to_string())?;
    match d.destroy(me) {
        Ok(true) => Ok(()),
        Ok(false) => Err("SOCK_DESTROY did not find its own test connection".into()),
        Err(e) => Err(format!("SOCK_DESTROY: {e}")),
    }
}

/// The driver's side: the sockets noted before the kills of one fence,
/// destroyed when the core says the kills are done.
#[derive(Default)]
pub struct Sockets {
    noted: Vec<TcpSock>,
    /// Processes already noted in this fence (the kill repeats every
    /// tick while one lives: they are noted once).
    snapped: HashSet<ProcId>,
    /// The time the last snapshot took (ms), for the log.
    pub last_snapshot_ms: u64,
}

impl Sockets {
    /// Notes the TCP sockets of `procs` not noted yet in this fence; an
    /// error is returned for the log, and the kill goes on.
    pub fn before_kill(&mut self, procs: &[ProcId]) -> io::Result<()> {
        let new: Vec<u32> = procs
            .iter()
            .filter(|p| !self.snapped.contains(p))
            .map(|p| p.pid)
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        self.snapped.extend(procs.iter().copied());
        let t0 = crate::clock::boottime_ms();
        let r = snapshot(&new);
        self.last_snapshot_ms = crate::clock::boottime_ms().saturating_sub(t0);
        let mut s = r?;
        // Noted twice (another process shares the socket): once.
        s.retain(|x| !self.noted.iter().any(|n| n.cookie == x.cookie));
        self.noted.extend(s);
        Ok(())
    }

    /// Sockets noted and waiting for the abort.
    pub fn noted(&self) -> &[TcpSock] {
        &self.noted
    }

    /// Destroys the noted sockets and the orphans to their endpoints, and
    /// forgets them. `None` when nothing was noted.
    pub fn abort(&mut self) -> Option<io::Result<Aborted>> {
        self.snapped.clear();
        if self.noted.is_empty() {
            return None;
        }
        let snap = std::mem::take(&mut self.noted);
        Some(abort(&snap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(cookie: u64, inode: u32, st: u8, remote: &str, q: u32) -> TcpSock {
        TcpSock {
            family: libc::AF_INET as u8,
            state: st,
            retrans: 0,
            id: [0; crate::sys::tcp_diag::SOCKID_LEN],
            local: "192.0.2.1:40000".parse().unwrap(),
            remote: remote.parse().unwrap(),
            cookie,
            inode,
            send_queue: q,
        }
    }

    #[test]
    fn plan_takes_the_snapshot_by_cookie_and_orphans_by_endpoint() {
        let osd = "192.0.2.9:6800";
        let snap = vec![
            sock(1, 100, state::ESTABLISHED, osd, 0),
            sock(2, 101, state::ESTABLISHED, "192.0.2.10:6801", 0),
        ];
        let now = vec![
            // 1 is now an orphan with data queued: by cookie.
            sock(1, 0, state::FIN_WAIT1, osd, 4097),
            // 2 closed meanwhile: not in the dump.
            // An orphan to the same OSD, made after the snapshot.
            sock(3, 0, state::FIN_WAIT1, osd, 10),
            // The same endpoint through an IPv4-mapped IPv6 socket.
            TcpSock {
                family: libc::AF_INET6 as u8,
                remote: "[::ffff:192.0.2.9]:6800".parse().unwrap(),
                ..sock(4, 0, state::LAST_ACK, osd, 5)
            },
            // A live socket of another process to the same OSD: kept.
            sock(5, 200, state::ESTABLISHED, osd, 7),
            // An orphan to another endpoint: kept.
            sock(6, 0, state::FIN_WAIT1, "192.0.2.11:6800", 9),
            // An orphan to the endpoint with nothing left to send: kept.
            sock(7, 0, state::TIME_WAIT, osd, 0),
        ];
        let cookies: Vec<u64> = plan(&snap, &now).iter().map(|s| s.cookie).collect();
        assert_eq!(cookies, vec![1, 3, 4]);
        assert!(plan(&[], &now).is_empty(), "no snapshot, nothing aborted");
    }

    #[test]
    fn unspecified_remotes_match_nothing() {
        let snap = vec![sock(1, 100, state::SYN_SENT, "0.0.0.0:0", 0)];
        let now = vec![sock(9, 0, state::FIN_WAIT1, "0.0.0.0:0", 3)];
        assert!(remotes(&snap).is_empty());
        assert!(plan(&snap, &now).is_empty());
    }

    #[test]
    fn socket_links_and_masks() {
        assert_eq!(parse_socket_link("socket:[12345]"), Some(12345));
        assert_eq!(parse_socket_link("pipe:[12345]"), None);
        assert_eq!(parse_socket_link("/dev/null"), None);
        let m = may_send_mask();
        assert_ne!(m & (1 << state::FIN_WAIT1), 0);
        assert_eq!(m & (1 << state::LISTEN), 0);
        assert_eq!(m & (1 << state::TIME_WAIT), 0);
    }

    #[test]
    fn this_host_can_abort_tcp_sockets() {
        self_check().unwrap();
    }

    /// A real process's sockets are found through /proc/PID/fd and the
    /// dump: this test process's own loopback connection.
    #[test]
    fn snapshot_finds_a_process_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let snap = snapshot(&[std::process::id()]).unwrap();
        assert!(
            snap.iter()
                .any(|s| s.local == c.local_addr().unwrap() && s.remote == l.local_addr().unwrap()),
            "{snap:?}"
        );
        assert!(snapshot(&[1 << 23]).unwrap().is_empty(), "no such process");
    }
}
