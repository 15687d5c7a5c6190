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
    member_with(dir, None)
}

/// [`member`], serving its clients over TLS when `tls` names a directory
/// with `server.pem`, `server.key` and the CA `ca.pem` that client
/// certificates must be signed by.
pub fn member_with(dir: &Path, tls: Option<&Path>) -> (ProcGuard, String) {
    let (client, peer) = (free_port(), free_port());
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{client}");
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
    if let Some(t) = tls {
        c.arg("--cert-file")
            .arg(t.join("server.pem"))
            .arg("--key-file")
            .arg(t.join("server.key"))
            .arg("--trusted-ca-file")
            .arg(t.join("ca.pem"))
            .arg("--client-cert-auth");
    }
    let g = ProcGuard::spawn_logged(&mut c, "etcd member", &dir.join("etcd.log"));
    (g, url)
}
