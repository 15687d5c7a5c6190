//! The raw ICMP socket of the daemon's network probes (needs
//! CAP_NET_RAW; the daemon runs as root).
#![forbid(unsafe_code)]

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn,
};

/// A raw IPv4 ICMP socket (close-on-exec). What it receives starts with
/// the IP header.
pub fn open() -> io::Result<OwnedFd> {
    socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Icmp,
    )
    .map_err(super::io_err)
}

/// Sends one ICMP message (`pkt`, header included) to `to`.
pub fn send_to(sock: &OwnedFd, pkt: &[u8], to: Ipv4Addr) -> io::Result<()> {
    let addr = SockaddrIn::from(SocketAddrV4::new(to, 0));
    sendto(sock.as_raw_fd(), pkt, &addr, MsgFlags::empty()).map_err(super::io_err)?;
    Ok(())
}

/// Receives one datagram into `buf`; its length.
pub fn recv_into(sock: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    recv(sock.as_raw_fd(), buf, MsgFlags::empty()).map_err(super::io_err)
}
