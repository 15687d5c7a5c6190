//! Network probes (TCP connect, ICMP echo, interface carrier) and the
//! per-network quorum rule: a network is up while at least `min_up` of its
//! probes succeed, and lost once it has been down for its `timeout`.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{Network, ProbeKind};

/// Runs one probe; Ok(()) = success, Err = why it failed.
pub fn run_probe(p: &ProbeKind, timeout_ms: u64) -> Result<(), String> {
    let t = Duration::from_millis(timeout_ms);
    match p {
        ProbeKind::Tcp(target) => {
            let addrs: Vec<SocketAddr> = target
                .to_socket_addrs()
                .map_err(|e| format!("tcp {target}: {e}"))?
                .collect();
            let mut last = String::from("no address");
            for a in addrs {
                match TcpStream::connect_timeout(&a, t) {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e.to_string(),
                }
            }
            Err(format!("tcp {target}: {last}"))
        }
        ProbeKind::Icmp(target) => {
            let ip: IpAddr = target
                .parse()
                .map_err(|_| format!("icmp {target}: bad address"))?;
            icmp::echo(ip, t).map_err(|e| format!("icmp {target}: {e}"))
        }
        ProbeKind::Carrier(ifname) => {
            let path = format!("/sys/class/net/{ifname}/carrier");
            match std::fs::read_to_string(&path) {
                Ok(s) if s.trim() == "1" => Ok(()),
                Ok(_) => Err(format!("carrier {ifname}: no carrier")),
                // EINVAL: the interface is administratively down.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    Err(format!("carrier {ifname}: interface down"))
                }
                Err(e) => Err(format!("carrier {ifname}: {e}")),
            }
        }
    }
}

mod icmp {
    //! ICMP echo over a raw socket (the daemon runs as root).
    use super::*;
    use crate::sys::icmp_socket;
    use std::os::fd::AsFd;

    fn checksum(data: &[u8]) -> u16 {
        let mut sum = 0u32;
        for c in data.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            sum = sum.wrapping_add(w as u32);
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    pub fn echo(ip: IpAddr, timeout: Duration) -> io::Result<()> {
        let IpAddr::V4(v4) = ip else {
            return Err(io::Error::other("only IPv4 is supported for icmp probes"));
        };
        let sock = icmp_socket::open()?;
        let id = (std::process::id() & 0xffff) as u16;
        let seq = (crate::process::random_u64() & 0xffff) as u16;
        let mut pkt = [0u8; 16];
        pkt[0] = 8; // echo request
        pkt[4..6].copy_from_slice(&id.to_be_bytes());
        pkt[6..8].copy_from_slice(&seq.to_be_bytes());
        let c = checksum(&pkt);
        pkt[2..4].copy_from_slice(&c.to_be_bytes());
        icmp_socket::send_to(&sock, &pkt, v4)?;
        let deadline = crate::clock::boottime_ms() + timeout.as_millis() as u64;
        let mut buf = [0u8; 1500];
        loop {
            let now = crate::clock::boottime_ms();
            if now >= deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no reply"));
            }
            match crate::sys::poll::readable(&[sock.as_fd()], deadline - now) {
                Ok(r) if r[0] => {}
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let got = icmp_socket::recv_into(&sock, &mut buf)?;
            if got < 20 {
                continue;
            }
            let ihl = ((buf[0] & 0x0f) as usize) * 4;
            if got < ihl + 8 {
                continue;
            }
            let icmp = &buf[ihl..got];
            let src = [buf[12], buf[13], buf[14], buf[15]];
            if icmp[0] == 0
                && src == v4.octets()
                && icmp[4..6] == id.to_be_bytes()
                && icmp[6..8] == seq.to_be_bytes()
            {
                return Ok(());
            }
        }
    }
}

/// The latest probe round of one network.
#[derive(Debug, Clone, Default)]
pub struct Round {
    pub at_ms: u64,
    pub up: usize,
    pub total: usize,
    pub failures: Vec<String>,
}

/// The three networks a host watches, by name (docs/design.md).
pub struct Nets {
    pub storage: NetState,
    pub management: NetState,
    pub service: NetState,
}

impl Nets {
    /// Storage, management, service: the order of the status file.
    pub fn iter(&self) -> impl Iterator<Item = &NetState> {
        [&self.storage, &self.management, &self.service].into_iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut NetState> {
        [&mut self.storage, &mut self.management, &mut self.service].into_iter()
    }
}

/// Tracks one network: up, down since when, lost.
#[derive(Debug, Clone)]
pub struct NetState {
    pub name: &'static str,
    pub net: Network,
    pub down_since: Option<u64>,
    pub last: Option<Round>,
}

impl NetState {
    pub fn new(name: &'static str, net: Network) -> NetState {
        NetState {
            name,
            net,
            down_since: None,
            last: None,
        }
    }

    pub fn monitored(&self) -> bool {
        !self.net.probes.is_empty()
    }

    pub fn feed(&mut self, r: Round) {
        let up = r.up >= self.net.min_up;
        if up {
            self.down_since = None;
        } else if self.down_since.is_none() {
            self.down_since = Some(r.at_ms);
        }
        self.last = Some(r);
    }

    /// Failing now, or not probed yet.
    pub fn down(&self) -> bool {
        self.monitored() && (self.down_since.is_some() || self.last.is_none())
    }

    pub fn lost(&self, now: u64) -> bool {
        self.down_since
            .map(|s| now.saturating_sub(s) >= self.net.timeout)
            .unwrap_or(false)
    }

    /// ("up"|"down"|"lost"|"unknown"|"unmonitored", detail)
    pub fn describe(&self, now: u64) -> (String, String) {
        if !self.monitored() {
            return ("unmonitored".into(), "no probes configured".into());
        }
        let Some(r) = &self.last else {
            return ("unknown".into(), "no probe round yet".into());
        };
        let counts = format!("{}/{} probes up (need {})", r.up, r.total, self.net.min_up);
        match self.down_since {
            None => ("up".into(), counts),
            Some(s) => {
                let state = if self.lost(now) { "lost" } else { "down" };
                let why = r.failures.join("; ");
                (
                    state.into(),
                    format!(
                        "{counts}, down for {}: {why}",
                        crate::config::secs(now.saturating_sub(s))
                    ),
                )
            }
        }
    }
}

/// Starts the prober thread: every `interval_ms` it probes every network
/// (each probe in parallel) and stores the rounds in `out`.
pub fn spawn(
    nets: Vec<(&'static str, Network)>,
    interval_ms: u64,
    out: Arc<Mutex<Vec<(&'static str, Round)>>>,
) -> io::Result<()> {
    if nets.iter().all(|(_, n)| n.probes.is_empty()) {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("vmlease-probe".into())
        .stack_size(super::THREAD_STACK)
        .spawn(move || loop {
            let start = crate::clock::boottime_ms();
            let mut handles = Vec::new();
            for (name, net) in &nets {
                for p in &net.probes {
                    let (p, t, name) = (p.clone(), net.probe_timeout, *name);
                    let h = std::thread::Builder::new()
                        .stack_size(super::THREAD_STACK)
                        .spawn(move || run_probe(&p, t));
                    handles.push((name, h));
                }
            }
            let mut rounds: Vec<(&'static str, Round)> = nets
                .iter()
                .filter(|(_, n)| !n.probes.is_empty())
                .map(|(name, n)| {
                    (
                        *name,
                        Round {
                            at_ms: start,
                            up: 0,
                            total: n.probes.len(),
                            failures: Vec::new(),
                        },
                    )
                })
                .collect();
            for (name, h) in handles {
                let res = match h {
                    Ok(h) => h.join().unwrap_or_else(|_| Err("probe panicked".into())),
                    Err(e) => Err(format!("cannot start a probe thread: {e}")),
                };
                if let Some((_, r)) = rounds.iter_mut().find(|(n, _)| *n == name) {
                    match res {
                        Ok(()) => r.up += 1,
                        Err(e) => r.failures.push(e),
                    }
                }
            }
            if let Ok(mut o) = out.lock() {
                *o = rounds;
            }
            let spent = crate::clock::boottime_ms().saturating_sub(start);
            std::thread::sleep(Duration::from_millis(
                interval_ms.saturating_sub(spent).max(10),
            ));
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Policy;

    fn net(timeout: u64, min_up: usize) -> Network {
        Network {
            probes: vec![
                ProbeKind::Carrier("lo".into()),
                ProbeKind::Carrier("nonexistent0".into()),
            ],
            min_up,
            timeout,
            probe_timeout: 100,
            policy: Policy::Report,
        }
    }

    #[test]
    fn quorum_and_timeout() {
        let mut s = NetState::new("management", net(1000, 1));
        s.feed(Round {
            at_ms: 0,
            up: 1,
            total: 2,
            failures: vec![],
        });
        assert!(!s.lost(5000));
        s.feed(Round {
            at_ms: 100,
            up: 0,
            total: 2,
            failures: vec!["x".into()],
        });
        assert!(!s.lost(1099));
        assert!(s.lost(1100));
        assert_eq!(s.describe(1100).0, "lost");
        s.feed(Round {
            at_ms: 1200,
            up: 1,
            total: 2,
            failures: vec![],
        });
        assert!(!s.lost(9999));
        let mut two = NetState::new("service", net(0, 2));
        two.feed(Round {
            at_ms: 0,
            up: 1,
            total: 2,
            failures: vec![],
        });
        assert!(two.lost(0));
    }

    #[test]
    fn real_probes() {
        // Loopback has no carrier file semantics everywhere; a missing
        // interface must fail with a reason.
        let e = run_probe(&ProbeKind::Carrier("nonexistent0".into()), 100).unwrap_err();
        assert!(e.contains("nonexistent0"), "{e}");
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        run_probe(&ProbeKind::Tcp(addr), 500).unwrap();
        drop(l);
        assert!(run_probe(&ProbeKind::Tcp("127.0.0.1:1".into()), 500).is_err());
        run_probe(&ProbeKind::Icmp("127.0.0.1".into()), 1000).unwrap();
    }
}
