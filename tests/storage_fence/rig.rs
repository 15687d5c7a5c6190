//! The storage-fence tests' steps on the split-brain rig: the fence run
//! as a host, stand-in VMs with their disks on CephFS, link cuts.

use std::ffi::CString;
use std::fs;
use std::process::Command;

use crate::abi;
use crate::support::daemons;
use crate::world::{self, World, HOSTS};
use vmlease::clock::boottime_ms;
use vmlease::lockspace::Lockspace;

/// A fresh lockspace on the rig's CephFS, the stand-ins' disks in
/// directory `disks` there, every host's daemon started and protected
/// (waited for at most `timeout_ms` each).
pub fn setup(w: &mut World, disks: &str, timeout_ms: u64) {
    let ls = w.check_mount.path.join("ls");
    let _ = fs::remove_dir_all(&ls);
    Lockspace::init(&ls, 16).unwrap();
    let _ = fs::remove_dir_all(w.check_mount.path.join(disks));
    fs::create_dir_all(w.check_mount.path.join(disks)).unwrap();
    *w.sh.disks.lock().unwrap() = disks.to_string();
    for h in 0..HOSTS {
        w.start_daemon(h);
    }
    for h in 0..HOSTS {
        let cfg = w.hosts[h].cfg.clone();
        daemons::wait_until(&format!("host {} protected", h + 1), timeout_ms, || {
            vmlease::status::protected_status(&cfg)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
    }
}

/// `vmlease ARGS` as host `from` (in its namespace, its config, the
/// cluster's ceph.conf): (exit code, output).
pub fn vmlease(w: &World, from: usize, args: &[&str]) -> (i32, String) {
    let net = format!("--net=/run/netns/{}", w.netns[from]);
    let conf = w.sh.confs[from].display().to_string();
    let out = Command::new("nsenter")
        .arg(&net)
        .arg(daemons::bin("vmlease"))
        .args(["--config", &conf])
        .args(args)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CEPH_ARGS", format!("-c {}", w.ceph.conf().display()))
        .output()
        .expect("run vmlease");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// `vmlease --json storage-fence HOST EXTRA` as host `from`.
pub fn storage_fence(w: &World, from: usize, host: u16, extra: &[&str]) -> (i32, String) {
    let h = host.to_string();
    let mut args = vec!["--json", "storage-fence", &h];
    args.extend_from_slice(extra);
    vmlease(w, from, &args)
}

/// vm `v` with its disk lease on CephFS (a path under the test's own
/// ceph-fuse mount: the fencing host judges it on Ceph).
pub fn ceph_dom(w: &World, v: usize) -> abi::Dom {
    let d = &w.sh.doms[v];
    let p = w.check_mount.path.join(format!("vm{v}.img"));
    abi::Dom {
        uuid: d.uuid,
        name: d.name.clone(),
        disk: CString::new(p.display().to_string()).unwrap(),
    }
}

/// Starts vm `v` (as `dom`) on host `h` through the plugin ABI; the
/// writer's pid.
pub fn start(w: &World, dom: &abi::Dom, v: usize, h: usize, inc: u32) -> Result<i32, String> {
    let disk = w.sh.disk_path(h, v);
    let argv: Vec<CString> = [
        w.sh.writer.display().to_string(),
        disk.display().to_string(),
        (h + 1).to_string(),
        v.to_string(),
        inc.to_string(),
        world::WRITE_INTERVAL_MS.to_string(),
    ]
    .into_iter()
    .map(|s| CString::new(s).unwrap())
    .collect();
    match w.sh.plugins[h].start(dom, &argv) {
        Ok(st) => {
            let pid = st.pid;
            w.sh.instances.lock().unwrap().push(world::Instance {
                vm: v,
                inc,
                host: h,
                pid,
                escaped: None,
                started_ms: boottime_ms(),
                exited_ms: None,
                escaped_exited: false,
                killed_by: None,
            });
            st.go();
            Ok(pid)
        }
        Err((pid, why)) => {
            if let Some(p) = pid {
                // SAFETY: waitpid on our own killed child.
                unsafe { libc::waitpid(p, std::ptr::null_mut(), 0) };
            }
            Err(why)
        }
    }
}

pub fn disk(w: &World, v: usize) -> Vec<u8> {
    let p = w
        .check_mount
        .path
        .join(&*w.sh.disks.lock().unwrap())
        .join(format!("vm{v}"));
    fs::read(&p).unwrap_or_default()
}

pub fn set_links(w: &World, h: usize, state: &str) {
    for link in ["storage", "mgmt"] {
        crate::support::netns::set_link(&w.netns[h], link, state);
    }
}
