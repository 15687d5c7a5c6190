//! The fence's TCP abort (src/daemon/tcp_abort.rs) for real: a writer
//! process in a network namespace of its own, TCP-connected over a veth
//! to a listener (this test, in a second namespace), killed while its link
//! is cut and its last bytes sit in its send queue.
//!
//! - The control: without the abort, the killed writer's socket lives on
//!   as an orphan (fin-wait-1, inode 0, the bytes queued) and, once the
//!   link is back, the listener receives the bytes of a dead process.
//! - With the abort: the orphans (the noted socket, and one made after the
//!   note) are gone, and the listener receives nothing for several times
//!   the delay the control measured, while a new connection gets through.
//! - A real vmlease-watchdog fencing (management policy `fence`) a leased
//!   stand-in that holds such a connection: it aborts the orphan before
//!   `fenced-clean` and logs it.
//! - The cost with 1,000 other TCP sockets in the namespace.
//!
//! Needs root (network namespaces, SOCK_DESTROY); run under the heavy lock.

mod support;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::netns::{ip, set_link, Namespaces};
use vmlease::clock::boottime_ms;
use vmlease::daemon::tcp_abort::{self, state, Sockets, TcpSock};
use vmlease::process::ProcId;

const WRITER_IP: &str = "192.0.2.1";
const PEER_IP: &str = "192.0.2.2";
const PORT: u16 = 7000;
/// Bytes the writer queues on a cut link (below the initial send buffer,
/// so a non-blocking write takes them all).
const N: usize = 8000;

/// Runs `f` on a thread that joined network namespace `ns`: sockets it
/// makes (a listener, a sock_diag socket) belong to that namespace.
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let path = format!("/run/netns/{ns}");
            let fd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns with an open namespace fd; it changes only the
            // calling thread's network namespace.
            let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    })
}

/// Two namespaces joined by one veth: `vw` (writer side, WRITER_IP) and
/// `vp` (peer side, PEER_IP).
struct Link {
    _guard: Namespaces,
    w: String,
    p: String,
}

impl Link {
    fn new(tag: &str) -> Link {
        let pid = std::process::id();
        let (w, p) = (format!("vmta-{pid}-{tag}w"), format!("vmta-{pid}-{tag}p"));
        let guard = Namespaces(vec![w.clone(), p.clone()]);
        for ns in [&w, &p] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n", &w, "link", "add", "vw", "type", "veth", "peer", "name", "vp", "netns", &p,
        ]);
        ip(&[
            "-n",
            &w,
            "addr",
            "add",
            &format!("{WRITER_IP}/24"),
            "dev",
            "vw",
        ]);
        ip(&[
            "-n",
            &p,
            "addr",
            "add",
            &format!("{PEER_IP}/24"),
            "dev",
            "vp",
        ]);
        ip(&["-n", &w, "link", "set", "vw", "up"]);
        ip(&["-n", &p, "link", "set", "vp", "up"]);
        Link {
            _guard: guard,
            w,
            p,
        }
    }

    fn cut(&self) {
        set_link(&self.w, "vw", "down");
    }

    fn heal(&self) {
        set_link(&self.w, "vw", "up");
    }

    /// The TCP sockets of the writer's namespace.
    fn dump(&self) -> Vec<TcpSock> {
        in_ns(&self.w, || {
            tcp_abort::dump(u32::MAX).expect("sock_diag dump")
        })
    }
}

/// The listener, in the peer namespace: counts every byte received on
/// any connection, and when the count last grew.
struct Listener {
    got: Arc<Mutex<(u64, u64)>>,
    stop: Arc<AtomicBool>,
}

impl Listener {
    fn start(link: &Link) -> Listener {
        let l = in_ns(&link.p, || {
            TcpListener::bind((PEER_IP, PORT)).expect("bind")
        });
        l.set_nonblocking(true).unwrap();
        let got = Arc::new(Mutex::new((0u64, 0u64)));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        let (g, s) = (g.clone(), s.clone());
                        std::thread::spawn(move || read_all(c, g, s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Listener { got, stop }
    }

    fn total(&self) -> u64 {
        self.got.lock().unwrap().0
    }

    /// Waits (at most `ms`) until `want` bytes came; when (boottime ms).
    fn wait_total(&self, want: u64, ms: u64, what: &str) -> u64 {
        wait(what, ms, || {
            let (t, at) = *self.got.lock().unwrap();
            if t == want {
                Ok(at)
            } else {
                Err(format!("{t} of {want} bytes received"))
            }
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn read_all(mut c: TcpStream, got: Arc<Mutex<(u64, u64)>>, stop: Arc<AtomicBool>) {
    c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf = [0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        match c.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let mut g = got.lock().unwrap();
                g.0 += n as u64;
                g.1 = boottime_ms();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
    }
}

/// Polls `f` every 10 ms until Ok, at most `ms`; panics with what it
/// waited for and what it saw last.
fn wait<T>(what: &str, ms: u64, mut f: impl FnMut() -> Result<T, String>) -> T {
    support::util::wait_until(
        what,
        Duration::from_millis(ms),
        Duration::from_millis(10),
        &mut f,
    )
}

/// The stand-in storage client (tests/support/tcp_writer.c) in the
/// writer's namespace; killed and reaped on drop.
struct Writer {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Writer {
    fn spawn(link: &Link) -> Writer {
        Writer::spawn_with(link, &[])
    }

    fn spawn_with(link: &Link, extra: &[&str]) -> Writer {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &link.w])
            .arg(support::util::c_helper("tcp_writer"))
            .args([PEER_IP, &PORT.to_string()])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn tcp_writer");
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Writer {
            child,
            stdin,
            lines,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One command and its answer (within 5 s).
    fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        let a = self
            .lines
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("tcp_writer did not answer '{cmd}': {e}"));
        assert!(!a.starts_with("error"), "tcp_writer '{cmd}': {a}");
        a
    }

    /// A new connection (its hello byte sent); its local address.
    fn connect(&mut self) -> SocketAddr {
        let a = self.ask("connect");
        let port: u16 = a.rsplit(' ').next().unwrap().parse().unwrap();
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    /// Queues N bytes on connection `c` (a cut link: they stay queued).
    fn write(&mut self, c: usize) {
        let a = self.ask(&format!("write {c} {N}"));
        assert_eq!(a, format!("wrote {c} {N}"), "all {N} bytes queued");
    }

    /// SIGKILL, and reap it: its sockets are closed (orphans) after this.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        let st = self.child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn show(s: &TcpSock) -> String {
    format!(
        "{} -> {} {} inode {} send-q {} retransmissions {}",
        s.local,
        s.remote,
        state::name(s.state),
        s.inode,
        s.send_queue,
        s.retrans
    )
}

/// Retransmissions an orphan makes on the cut link before the test goes
/// on (200 ms, then 400 ms: the backoff is under way).
const RETRANS: u8 = 2;

/// Waits until the socket from `local` is an orphan in fin-wait-1 with
/// the N bytes still queued, retransmitted RETRANS times.
fn wait_orphan(link: &Link, local: SocketAddr) -> TcpSock {
    let what =
        format!("an orphan from {local} with {N} bytes queued, retransmitted {RETRANS} times");
    wait(&what, 5000, || {
        let all = link.dump();
        match all.iter().find(|s| s.local == local) {
            Some(s)
                if s.inode == 0
                    && s.state == state::FIN_WAIT1
                    && s.unsent_bytes() as usize == N
                    && s.retrans >= RETRANS =>
            {
                Ok(s.clone())
            }
            Some(s) => Err(show(s)),
            None => Err("no such socket".into()),
        }
    })
}

/// The tests of this file one at a time: the timing of the first must not
/// share the CPU with the second's thousand connections.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn a_killed_writers_queued_bytes_arrive_later_unless_the_fence_aborts_them() {
    support::util::require_root();
    let _g = serial();
    let link = Link::new("a");
    let l = Listener::start(&link);

    // ---- The control: kill without the abort.
    let mut w = Writer::spawn(&link);
    let local = w.connect();
    l.wait_total(1, 3000, "the hello of the control's writer");
    link.cut();
    let cut = boottime_ms();
    w.write(0);
    w.kill();
    let orphan = wait_orphan(&link, local);
    eprintln!(
        "control: killed writer's socket lives on: {}",
        show(&orphan)
    );
    link.heal();
    let up = boottime_ms();
    let got_at = l.wait_total(
        1 + N as u64,
        30_000,
        "the dead writer's bytes to arrive after the link came back",
    );
    let control_delay = got_at.saturating_sub(up);
    eprintln!(
        "control: link down {} ms; {N} bytes of the killed writer arrived {control_delay} ms after the link came back",
        up - cut
    );

    // ---- With the abort, as the fence does it: note, (a socket made
    // after the note,) kill, abort.
    let mut w = Writer::spawn(&link);
    let first = w.connect();
    let id = ProcId::of(w.pid()).unwrap();
    let mut sockets = Sockets::default();
    in_ns(&link.w, || sockets.before_kill(&[id])).expect("note the writer's sockets");
    let noted: Vec<SocketAddr> = sockets.noted().iter().map(|s| s.local).collect();
    assert_eq!(noted, vec![first], "the writer's one connection is noted");
    let second = w.connect();
    let base = 1 + N as u64;
    l.wait_total(base + 2, 3000, "the hellos of the second writer");
    link.cut();
    let cut = boottime_ms();
    w.write(0);
    w.write(1);
    w.kill();
    wait_orphan(&link, first);
    wait_orphan(&link, second);
    let t0 = Instant::now();
    let a = in_ns(&link.w, || sockets.abort())
        .expect("something was noted")
        .expect("abort");
    eprintln!("abort ({:?}): {}", t0.elapsed(), a.describe());
    assert_eq!(a.count, 2, "{a:?}");
    assert_eq!(
        a.orphans_by_endpoint, 1,
        "the unnoted one by endpoint: {a:?}"
    );
    assert_eq!(a.bytes, 2 * N as u64, "{a:?}");
    let peer: SocketAddr = (std::net::Ipv4Addr::new(192, 0, 2, 2), PORT).into();
    assert_eq!(a.remotes.iter().copied().collect::<Vec<_>>(), vec![peer]);
    assert!(a.errors.is_empty(), "{a:?}");
    let left: Vec<String> = link
        .dump()
        .iter()
        .filter(|s| s.remote == peer && tcp_abort::may_send(s.state))
        .map(show)
        .collect();
    assert!(
        left.is_empty(),
        "sockets to the peer after the abort: {left:?}"
    );
    link.heal();
    let down = boottime_ms() - cut;
    // The next retransmission of a live orphan would come within one
    // backoff interval after the link is back, and the interval is at
    // most the time since the first send (doubling from 200 ms).
    let window = (4 * control_delay)
        .max(2 * (down + 200))
        .clamp(1000, 15_000);
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(window) {
        assert_eq!(
            l.total(),
            base + 2,
            "bytes of the killed writer arrived {:?} after the link came back, although its sockets were aborted",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "abort: link down {down} ms; nothing arrived in {window} ms after the link came back \
         (control: {control_delay} ms)"
    );
    // The link works: a new writer's hello arrives.
    let mut w3 = Writer::spawn(&link);
    w3.connect();
    l.wait_total(
        base + 3,
        3000,
        "a new writer's hello after the link came back",
    );
}

/// A QEMU whose main thread exited while another thread runs shows no
/// fds under /proc/PID/fd: the note finds its sockets through the
/// threads' fd tables.
#[test]
fn the_sockets_of_a_process_whose_leader_exited_are_noted() {
    support::util::require_root();
    let _g = serial();
    let link = Link::new("z");
    let l = Listener::start(&link);
    let mut w = Writer::spawn_with(&link, &["leader-exits"]);
    let local = w.connect();
    l.wait_total(1, 3000, "the hello");
    let pid = w.pid();
    wait("the writer's leader thread to be a zombie", 3000, || {
        let stat =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
        let st = stat.rsplit(')').next().unwrap_or("").trim_start();
        if st.starts_with('Z') {
            Ok(())
        } else {
            Err(stat)
        }
    });
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(fds, 0, "the exited leader's /proc/PID/fd lists no fds");
    let id = ProcId::of(pid).unwrap();
    let mut sockets = Sockets::default();
    in_ns(&link.w, || sockets.before_kill(&[id])).expect("note the writer's sockets");
    let noted: Vec<SocketAddr> = sockets.noted().iter().map(|s| s.local).collect();
    assert_eq!(noted, vec![local], "found through /proc/PID/task/*/fd");
}

/// The cost of the fence's note (before the kills) and of the abort,
/// with 1,000 other TCP sockets in the namespace (500 loopback
/// connections) and a writer with 8 connections.
#[test]
fn snapshot_and_abort_cost_with_1000_other_sockets() {
    support::util::require_root();
    let _g = serial();
    let link = Link::new("c");
    let l = Listener::start(&link);
    let noise = in_ns(&link.w, || {
        let ls = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = ls.local_addr().unwrap();
        let mut v = Vec::new();
        for _ in 0..500 {
            let c = TcpStream::connect(addr).unwrap();
            let (s, _) = ls.accept().unwrap();
            v.push((c, s));
        }
        (ls, v)
    });
    let mut w = Writer::spawn(&link);
    let mut locals = Vec::new();
    for _ in 0..8 {
        locals.push(w.connect());
    }
    l.wait_total(8, 3000, "the writer's 8 hellos");
    let all = link.dump().len();
    let id = ProcId::of(w.pid()).unwrap();
    let mut sockets = Sockets::default();
    let mut snap_ms = Vec::new();
    let mut abort_ms = Vec::new();
    in_ns(&link.w, || {
        for _ in 0..5 {
            let mut s = Sockets::default();
            let t = Instant::now();
            s.before_kill(&[id]).unwrap();
            snap_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(s.noted().len(), 8);
        }
        sockets.before_kill(&[id]).unwrap();
    });
    link.cut();
    for c in 0..8 {
        w.write(c);
    }
    w.kill();
    for loc in &locals {
        wait_orphan(&link, *loc);
    }
    let a = in_ns(&link.w, || {
        let t = Instant::now();
        let a = sockets.abort().unwrap().unwrap();
        abort_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        a
    });
    assert_eq!(a.count, 8, "{a:?}");
    assert_eq!(a.bytes, 8 * N as u64, "{a:?}");
    // A dump and a plan alone, for comparison (nothing left to destroy).
    in_ns(&link.w, || {
        for _ in 0..4 {
            let t = Instant::now();
            let r = tcp_abort::abort(&[]).unwrap();
            assert_eq!(r.count, 0);
            abort_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    });
    snap_ms.sort_by(f64::total_cmp);
    eprintln!(
        "{all} TCP sockets in the namespace: note before the kill {:.2} ms median ({:.2}-{:.2}); \
         abort of 8 sockets {:.2} ms; a dump with nothing to destroy {:.2}-{:.2} ms",
        snap_ms[snap_ms.len() / 2],
        snap_ms[0],
        snap_ms[snap_ms.len() - 1],
        abort_ms[0],
        abort_ms[1..].iter().copied().fold(f64::MAX, f64::min),
        abort_ms[1..].iter().copied().fold(0.0, f64::max),
    );
    assert!(all >= 1000, "{all} sockets");
    drop(noise);
}

/// A real vmlease-watchdog in the writer's namespace fences by its
/// management policy when the link is cut (its probe target is the
/// peer): the leased stand-in holds a connection with N bytes queued.
/// When the daemon reports `fenced-clean` the orphan is already gone, the
/// log says what was aborted, and the bytes never arrive.
#[test]
fn a_fencing_daemon_aborts_the_killed_qemus_sockets_before_fenced_clean() {
    use support::daemons::{lockspace, manager, Host, Scratch};
    use vmlease::hosts::HostState;
    support::util::require_root();
    let _g = serial();
    let link = Link::new("d");
    let l = Listener::start(&link);
    let s = Scratch::new("tcpabort");
    let ls = lockspace(&s);
    let extra = format!(
        "unsafe_no_watchdog = true\n[management]\nprobes = [ {{ type = \"icmp\", target = \"{PEER_IP}\" }} ]\n\
         min_up = 1\ntimeout = 1\nprobe_timeout = 0.3\npolicy = \"fence\"\n"
    );
    let mut a = Host::new(&s, 1, &ls, &extra);
    a.start(&["ip", "netns", "exec", &link.w]);
    a.wait_log("fence: TCP abort available");
    wait("the daemon's management network to be up", 5000, || {
        let st = a.status();
        match st.networks.iter().find(|n| n.name == "management") {
            Some(n) if n.state == "up" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let mut w = Writer::spawn(&link);
    let local = w.connect();
    l.wait_total(1, 3000, "the stand-in's hello");
    let m = manager([0xab; 16], "web", w.pid());
    vmlease::plugin::register(&a.cfg, &m).unwrap();
    vmlease::plugin::acquire(&a.cfg, &m, None).unwrap();

    link.cut();
    let cut = boottime_ms();
    w.write(0);
    let st = wait("the daemon to fence and report fenced-clean", 8000, || {
        let st = a.status();
        if st.state == HostState::FencedClean {
            Ok(st)
        } else {
            Err(format!("state {}; log:\n{}", st.state, a.log_text()))
        }
    });
    // Seen at once: nothing of the stand-in may still send.
    let left: Vec<String> = link
        .dump()
        .iter()
        .filter(|s| s.local == local && tcp_abort::may_send(s.state))
        .map(show)
        .collect();
    assert!(
        left.is_empty(),
        "fenced-clean ({}) while the killed stand-in's socket lives: {left:?}; log:\n{}",
        st.state,
        a.log_text()
    );
    a.wait_log(&format!(
        "fence: aborted 1 TCP socket(s) of the killed QEMU processes (0 orphan(s) matched by endpoint), \
         dropping {N} unsent byte(s); remote endpoints: {PEER_IP}:{PORT}"
    ));
    let line = a
        .log_text()
        .lines()
        .find(|l| l.contains("fence: aborted"))
        .unwrap_or_default()
        .to_string();
    eprintln!("daemon: {line}");
    assert!(
        w.child.try_wait().unwrap().is_some(),
        "the fence killed the stand-in"
    );
    link.heal();
    let down = boottime_ms() - cut;
    let window = (2 * (down + 200)).clamp(3000, 15_000);
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(window) {
        assert_eq!(
            l.total(),
            1,
            "the killed stand-in's bytes arrived {:?} after the link came back",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("daemon: link down {down} ms; nothing arrived in {window} ms after it came back");
    let mut w2 = Writer::spawn(&link);
    w2.connect();
    l.wait_total(2, 3000, "a new writer's hello after the link came back");
    a.stop();
}
