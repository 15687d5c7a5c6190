//! TCP sockets of this network namespace through NETLINK_SOCK_DIAG
//! (inet_diag, what `ss` uses): a dump of every IPv4 and IPv6 TCP socket
//! (cookie, owning inode, state, endpoints, send queue), and SOCK_DESTROY
//! of one socket (what `ss -K` does; needs CONFIG_INET_DIAG_DESTROY and
//! CAP_NET_ADMIN): the kernel drops its queues, sends a reset where the
//! state calls for one and closes it; an owner sees ECONNABORTED.
//!
//! The netlink socket belongs to the network namespace of the thread
//! that opens it. Messages are built and parsed as bytes here (nix wraps
//! the socket calls; it has no inet_diag types), so no `unsafe`.
#![forbid(unsafe_code)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{
    recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::{TimeVal, TimeValLike};

/// TCP states as the kernel numbers them (include/net/tcp_states.h).
pub mod state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;

    /// The name `ss` prints.
    pub fn name(s: u8) -> &'static str {
        match s {
            ESTABLISHED => "established",
            SYN_SENT => "syn-sent",
            SYN_RECV => "syn-recv",
            FIN_WAIT1 => "fin-wait-1",
            FIN_WAIT2 => "fin-wait-2",
            TIME_WAIT => "time-wait",
            CLOSE => "close",
            CLOSE_WAIT => "close-wait",
            LAST_ACK => "last-ack",
            LISTEN => "listen",
            CLOSING => "closing",
            NEW_SYN_RECV => "new-syn-recv",
            _ => "unknown",
        }
    }

    /// A FIN was queued: it counts one in the send queue.
    pub fn fin_queued(s: u8) -> bool {
        matches!(s, FIN_WAIT1 | CLOSING | LAST_ACK)
    }
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDRLEN: usize = 16;
/// struct inet_diag_sockid: sport, dport, src[4], dst[4], if, cookie[2].
pub const SOCKID_LEN: usize = 48;
/// struct inet_diag_req_v2.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// struct inet_diag_msg without its attributes.
const MSG_LEN: usize = 4 + SOCKID_LEN + 20;
const IPPROTO_TCP: u8 = 6;

/// One TCP socket as the kernel reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSock {
    /// AF_INET or AF_INET6.
    pub family: u8,
    pub state: u8,
    /// Retransmissions of the oldest unacknowledged segment so far.
    pub retrans: u8,
    /// The kernel's socket id, as reported: SOCK_DESTROY names the socket
    /// by it (its 4-tuple and cookie).
    pub id: [u8; SOCKID_LEN],
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The socket's cookie: unique for the namespace's lifetime.
    pub cookie: u64,
    /// The inode of its file (`socket:[N]` in /proc/PID/fd); 0 for an
    /// orphan, a socket no process holds any more.
    pub inode: u32,
    /// Bytes sent but not acknowledged, plus what was never sent
    /// (`write_seq - snd_una`; a queued FIN counts one): what `ss` shows
    /// as Send-Q.
    pub send_queue: u32,
}

impl TcpSock {
    /// The data bytes in the send queue (a queued FIN not counted).
    pub fn unsent_bytes(&self) -> u32 {
        if state::fin_queued(self.state) {
            self.send_queue.saturating_sub(1)
        } else {
            self.send_queue
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// A NETLINK_SOCK_DIAG socket of the calling thread's network namespace.
pub struct Diag {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
    timeout: Duration,
}

impl Diag {
    /// Opens the socket; every receive waits at most `timeout`, and so
    /// does a whole dump (the kernel answers at once; the bound is for
    /// the unforeseen).
    pub fn open(timeout: Duration) -> io::Result<Diag> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )
        .map_err(super::io_err)?;
        let ms = i64::try_from(timeout.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::milliseconds(ms))
            .map_err(super::io_err)?;
        Ok(Diag {
            fd,
            seq: 0,
            buf: vec![0u8; 64 * 1024],
            timeout,
        })
    }

    /// Every TCP socket (IPv4, then IPv6) whose state is in `states` (a
    /// bit mask of `1 << state`; `u32::MAX` for all).
    pub fn dump(&mut self, states: u32) -> io::Result<Vec<TcpSock>> {
        let start = std::time::Instant::now();
        let mut out = Vec::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let seq = self.send(
                SOCK_DIAG_BY_FAMILY,
                NLM_F_REQUEST | NLM_F_DUMP,
                family,
                states,
                &[0u8; SOCKID_LEN],
            )?;
            loop {
                let n = self.recv()?;
                if parse_dump(&self.buf[..n], seq, &mut out)? {
                    break;
                }
                if start.elapsed() > self.timeout {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "sock_diag: the dump took too long",
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Destroys `s` (SOCK_DESTROY by its 4-tuple and cookie). Ok(false):
    /// no such socket any more (closed meanwhile; or its 4-tuple now
    /// belongs to another socket, whose cookie differs: left alone).
    pub fn destroy(&mut self, s: &TcpSock) -> io::Result<bool> {
        let seq = self.send(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            s.family,
            u32::MAX,
            &s.id,
        )?;
        loop {
            let n = self.recv()?;
            if let Some(errno) = parse_ack(&self.buf[..n], seq)? {
                return match errno {
                    0 => Ok(true),
                    libc::ENOENT | libc::ESTALE => Ok(false),
                    e => Err(io::Error::from_raw_os_error(e)),
                };
            }
        }
    }

    fn send(
        &mut self,
        kind: u16,
        flags: u16,
        family: u8,
        states: u32,
        id: &[u8; SOCKID_LEN],
    ) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut m = Vec::with_capacity(NLMSG_HDRLEN + REQ_LEN);
        m.extend_from_slice(&((NLMSG_HDRLEN + REQ_LEN) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&self.seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        // inet_diag_req_v2: family, protocol, ext, pad, states, id.
        m.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
        m.extend_from_slice(&states.to_ne_bytes());
        m.extend_from_slice(id);
        sendto(
            self.fd.as_raw_fd(),
            &m,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .map_err(super::io_err)?;
        Ok(self.seq)
    }

    fn recv(&mut self) -> io::Result<usize> {
        match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty()) {
            Ok(n) => Ok(n),
            Err(nix::errno::Errno::EAGAIN) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "sock_diag: no answer from the kernel in time",
            )),
            Err(e) => Err(super::io_err(e)),
        }
    }
}

/// The netlink messages of one datagram: (type, seq, payload).
fn messages(buf: &[u8]) -> io::Result<Vec<(u16, u32, &[u8])>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            return Err(bad("netlink message length out of bounds"));
        }
        let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap());
        let seq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().unwrap());
        out.push((kind, seq, &buf[at + NLMSG_HDRLEN..at + len]));
        at += (len + 3) & !3;
    }
    Ok(out)
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {what}"))
}

/// The errno of an NLMSG_ERROR payload (0: an acknowledgement).
fn error_of(payload: &[u8]) -> io::Result<i32> {
    let b: [u8; 4] = payload
        .get(..4)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| bad("short error message"))?;
    Ok(-i32::from_ne_bytes(b))
}

/// Appends the sockets of one dump datagram; true at its end.
fn parse_dump(buf: &[u8], seq: u32, out: &mut Vec<TcpSock>) -> io::Result<bool> {
    for (kind, s, payload) in messages(buf)? {
        if s != seq {
            continue; // an answer to an earlier request that timed out
        }
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let e = error_of(payload)?;
                return Err(io::Error::from_raw_os_error(e));
            }
            SOCK_DIAG_BY_FAMILY => out.push(parse_msg(payload)?),
            _ => {}
        }
    }
    Ok(false)
}

/// The errno of the acknowledgement of request `seq`, if this datagram
/// holds it.
fn parse_ack(buf: &[u8], seq: u32) -> io::Result<Option<i32>> {
    for (kind, s, payload) in messages(buf)? {
        if s == seq && kind == NLMSG_ERROR {
            return error_of(payload).map(Some);
        }
    }
    Ok(None)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}

/// One struct inet_diag_msg.
fn parse_msg(p: &[u8]) -> io::Result<TcpSock> {
    if p.len() < MSG_LEN {
        return Err(bad("short inet_diag_msg"));
    }
    let family = p[0];
    let state = p[1];
    let retrans = p[3];
    let id: [u8; SOCKID_LEN] = p[4..4 + SOCKID_LEN].try_into().unwrap();
    let sport = u16::from_be_bytes([id[0], id[1]]);
    let dport = u16::from_be_bytes([id[2], id[3]]);
    let addr = |b: &[u8]| -> io::Result<IpAddr> {
        if family == libc::AF_INET as u8 {
            Ok(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))
        } else if family == libc::AF_INET6 as u8 {
            let a: [u8; 16] = b[..16].try_into().unwrap();
            Ok(IpAddr::V6(Ipv6Addr::from(a)))
        } else {
            Err(bad("unknown address family"))
        }
    };
    let cookie = u64::from(u32_at(&id, 40)) | (u64::from(u32_at(&id, 44)) << 32);
    let rest = 4 + SOCKID_LEN;
    Ok(TcpSock {
        family,
        state,
        retrans,
        local: SocketAddr::new(addr(&id[4..20])?, sport),
        remote: SocketAddr::new(addr(&id[20..36])?, dport),
        id,
        cookie,
        // expires, rqueue, wqueue, uid, inode
        send_queue: u32_at(p, rest + 8),
        inode: u32_at(p, rest + 16),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::fs::MetadataExt;

    /// Loopback sockets of this test process: the dump shows them with
    /// their inode, endpoints and unacknowledged bytes, and a destroyed
    /// one is gone from the next dump while its peer sees the abort.
    #[test]
    fn dumps_and_destroys_a_loopback_connection() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(b"hello").unwrap();
        let ino = std::fs::metadata(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&c)
        ))
        .unwrap()
        .ino() as u32;
        let mut d = match Diag::open(Duration::from_secs(1)) {
            Ok(d) => d,
            Err(e) => panic!("open sock_diag: {e}"),
        };
        let all = d.dump(u32::MAX).unwrap();
        let mine = all
            .iter()
            .find(|t| t.inode == ino)
            .unwrap_or_else(|| panic!("inode {ino} not in the dump: {all:?}"));
        assert_eq!(mine.state, state::ESTABLISHED);
        assert_eq!(mine.local, c.local_addr().unwrap());
        assert_eq!(mine.remote, l.local_addr().unwrap());
        assert_ne!(mine.cookie, 0);
        let mine = mine.clone();
        match d.destroy(&mine) {
            Ok(true) => {}
            Ok(false) => panic!("the socket was not found for SOCK_DESTROY"),
            // Not root / no CONFIG_INET_DIAG_DESTROY: say which.
            Err(e) => {
                panic!("SOCK_DESTROY: {e} (needs CAP_NET_ADMIN and CONFIG_INET_DIAG_DESTROY)")
            }
        }
        let after = d.dump(u32::MAX).unwrap();
        assert!(
            !after.iter().any(|t| t.cookie == mine.cookie),
            "destroyed socket still dumped"
        );
        let e = c.write_all(b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECONNABORTED), "{e}");
        // A second destroy finds nothing.
        assert!(!d.destroy(&mine).unwrap());
        use std::io::Read;
        let mut buf = [0u8; 16];
        let _ = s.read(&mut buf);
    }

    #[test]
    fn parses_a_message_and_rejects_short_ones() {
        let mut p = vec![0u8; MSG_LEN];
        p[0] = libc::AF_INET as u8;
        p[1] = state::FIN_WAIT1;
        p[4..6].copy_from_slice(&6800u16.to_be_bytes());
        p[6..8].copy_from_slice(&40000u16.to_be_bytes());
        p[8..12].copy_from_slice(&[192, 0, 2, 1]);
        p[24..28].copy_from_slice(&[192, 0, 2, 9]);
        p[44..48].copy_from_slice(&7u32.to_ne_bytes());
        p[48..52].copy_from_slice(&1u32.to_ne_bytes());
        let rest = 4 + SOCKID_LEN;
        p[rest + 8..rest + 12].copy_from_slice(&4097u32.to_ne_bytes());
        let t = parse_msg(&p).unwrap();
        assert_eq!(t.local, "192.0.2.1:6800".parse().unwrap());
        assert_eq!(t.remote, "192.0.2.9:40000".parse().unwrap());
        assert_eq!(t.cookie, 7 | (1 << 32));
        assert_eq!(t.inode, 0);
        assert_eq!(t.unsent_bytes(), 4096, "the FIN is not data");
        assert!(parse_msg(&p[..MSG_LEN - 1]).is_err());
        assert_eq!(
            canonical("[::ffff:192.0.2.9]:1".parse().unwrap()),
            "192.0.2.9:1".parse().unwrap()
        );
    }

    #[test]
    fn a_bad_message_length_is_an_error_not_a_panic() {
        let mut b = vec![0u8; 20];
        b[0..4].copy_from_slice(&64u32.to_ne_bytes());
        assert!(messages(&b).is_err());
        b[0..4].copy_from_slice(&4u32.to_ne_bytes());
        assert!(messages(&b).is_err());
    }
}
