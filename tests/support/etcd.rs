//! One etcd member (Debian's etcd-server) on loopback ports, for the
//! tests of vmlease-ha.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use super::util::ProcGuard;

/// A port nobody listens on now (the kernel's choice).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A one-member etcd cluster with its data and log in `dir`; its client
/// URL.
pub fn member(dir: &Path) -> (ProcGuard, String) {
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let data = dir.join("etcd");
    std::fs::create_dir_all(&data).unwrap();
    let mut c = Command::new("etcd");
    c.args(["--name", "m1", "--data-dir"])
        .arg(&data)
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("m1={peer_url}")])
        .args([
            "--initial-cluster-token",
            &format!("vmlease-test-{}", std::process::id()),
        ]);
    let g = ProcGuard::spawn_logged(&mut c, "etcd member", &dir.join("etcd.log"));
    (g, url)
}
