//! A real Ceph cluster (tests/ceph/cluster.sh) for the CephFS tests: up in
//! a scratch directory on loopback, ceph-fuse mounts as separate clients,
//! everything stopped by pid on drop, even when a test panics.

use std::path::{Path, PathBuf};
use std::process::Command;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ceph/cluster.sh")
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new("sh")
        .arg(script())
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "cluster.sh {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub struct CephCluster {
    pub dir: PathBuf,
}

impl CephCluster {
    pub fn up(name: &str) -> CephCluster {
        let dir = PathBuf::from(format!(
            "/var/tmp/vmlease-ceph-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let c = CephCluster { dir };
        if let Err(e) = run(&["up", c.dir.to_str().unwrap()]) {
            panic!("the Ceph cluster did not come up: {e}");
        }
        c
    }

    /// Mounts CephFS with ceph-fuse as client.`client` (its own session).
    pub fn mount(&self, client: &str) -> CephMount {
        let mnt = self.dir.join(format!("mnt-{client}"));
        run(&[
            "mount",
            self.dir.to_str().unwrap(),
            client,
            mnt.to_str().unwrap(),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let pids = std::fs::read_to_string(self.dir.join("pids")).unwrap();
        let pid = pids
            .lines()
            .find(|l| l.ends_with(&format!(" fuse-{client}")))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .expect("ceph-fuse pid");
        CephMount {
            path: mnt,
            fuse_pid: pid,
            dir: self.dir.clone(),
        }
    }
}

impl Drop for CephCluster {
    fn drop(&mut self) {
        let _ = run(&["down", self.dir.to_str().unwrap()]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct CephMount {
    pub path: PathBuf,
    pub fuse_pid: u32,
    dir: PathBuf,
}

impl CephMount {
    /// Freezes this client: every new request on the mount waits.
    pub fn hang(&self) {
        // SAFETY: signalling our own ceph-fuse process.
        unsafe { libc::kill(self.fuse_pid as i32, libc::SIGSTOP) };
    }
    pub fn resume(&self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.fuse_pid as i32, libc::SIGCONT) };
    }
}

impl Drop for CephMount {
    fn drop(&mut self) {
        self.resume();
        let _ = run(&[
            "umount",
            self.dir.to_str().unwrap(),
            self.path.to_str().unwrap(),
        ]);
    }
}
