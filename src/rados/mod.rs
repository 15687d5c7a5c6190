//! The host table through RADOS instead of through the CephFS client.
//!
//! On CephFS a client that has touched a file holds *capabilities* on it,
//! and another client's conflicting access waits until the MDS takes them
//! back: from a frozen or cut-off client only after `session_timeout`
//! (60 s by default). With every host renewing its slot in the one shared
//! `hosts` file through its ceph-fuse (or kernel) client, one hung host
//! stalled every other host's renewal past F, and they all fenced
//! (docs/cephfs.md, "What a frozen client blocks").
//!
//! RADOS has no capabilities. The `hosts` file's data lives in the object
//! `<inode hex>.00000000` of the file system's data pool (the whole table
//! is within the first stripe unit, checked), so a host reads the table
//! and writes its own slot there directly, as its own librados client:
//! the same bytes at the same offsets as through the file, one read and
//! one write per renewal as before, and nothing a frozen peer holds can
//! make them wait. A host that reads the file through CephFS (an older
//! vmlease, the CLI, the plugin's takeover check) reads what RADOS
//! writers wrote: the data is the object's, and vmlease reads with
//! O_DIRECT, which ceph-fuse serves from the OSDs.
//!
//! librados never runs in the daemon: the fence path stays free of
//! network clients. The daemon starts a RADOS worker, a child process
//! (`vmlease-watchdog --rados-worker`, [`worker`]) that loads librados at
//! run time (`dlopen("librados.so.2")`: vmlease neither links nor
//! packages it), and sends it one request at a time over a pipe
//! ([`proto`]). Every request has a deadline on the daemon's side (the
//! daemon's io_timeout; librados's own op timeouts are set to it too): a
//! worker that does not answer in time is hung storage to the daemon (the
//! renewal fails, is late, and F applies as to any storage stall); it is
//! killed, and the next request starts another. Nothing in the daemon
//! waits on the worker but the thread that asked, and only until the
//! deadline.
#![deny(unsafe_code)]

use std::ffi::CString;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod proto;
mod sys;
pub mod worker;

use proto::{Reply, Request};

/// How to reach the cluster: the host's Ceph configuration and the client
/// identity its CephFS mount uses (that identity may read and write the
/// file system's data pool), and the program that is the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RadosConf {
    /// `ceph.conf` (monitors, keyring).
    pub conf: PathBuf,
    /// The client id, without `client.` (`admin` by default).
    pub client_id: String,
    /// Deadline of every request (ms), the daemon's io_timeout; also
    /// librados's own op timeouts.
    pub timeout_ms: u64,
    /// The program run with `--rados-worker` ([`worker`]): the daemon's
    /// own (`/proc/self/exe`, [`RadosConf::DAEMON_EXE`]).
    pub worker: PathBuf,
}

impl RadosConf {
    /// The daemon runs its own program as the worker (the running one,
    /// even if its file was replaced by an upgrade since).
    pub const DAEMON_EXE: &'static str = "/proc/self/exe";
}

/// Where the host table's data lives in RADOS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableObject {
    pub pool: String,
    pub namespace: String,
    pub object: String,
}

/// Finds the RADOS object that holds the first `len` bytes of `file`
/// (a file on CephFS) from its inode number and its `ceph.file.layout`.
pub fn table_object(file: &Path, len: usize) -> Result<TableObject, String> {
    let meta = std::fs::metadata(file).map_err(|e| format!("stat {}: {e}", file.display()))?;
    let layout = crate::sys::xattr::get(file, "ceph.file.layout").map_err(|e| {
        format!(
            "{}: no CephFS layout ({e}): liveness_rados needs the lockspace on CephFS",
            file.display()
        )
    })?;
    parse_layout(&layout, meta.ino(), len)
}
/// Parses a `ceph.file.layout` value (`stripe_unit=4194304
/// stripe_count=1 object_size=4194304 pool=cephfs_data
/// [pool_namespace=ns]`) into the object of the first `len` bytes.
pub fn parse_layout(layout: &str, ino: u64, len: usize) -> Result<TableObject, String> {
    let get = |k: &str| {
        layout
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
    };
    let num = |k: &str| -> Result<u64, String> {
        get(k)
            .ok_or_else(|| format!("layout '{layout}' has no {k}"))?
            .parse()
            .map_err(|_| format!("layout '{layout}': bad {k}"))
    };
    let stripe_unit = num("stripe_unit")?;
    let object_size = num("object_size")?;
    if stripe_unit < len as u64 || object_size < len as u64 {
        return Err(format!(
            "the host table ({len} bytes) spans more than one object (layout '{layout}')"
        ));
    }
    let pool = get("pool").ok_or_else(|| format!("layout '{layout}' has no pool"))?;
    Ok(TableObject {
        pool: pool.to_string(),
        namespace: get("pool_namespace").unwrap_or("").to_string(),
        object: format!("{ino:x}.00000000"),
    })
}

/// A running worker: its process, its stdin, and its replies as its
/// reader thread gets them.
struct Running {
    child: Child,
    stdin: ChildStdin,
    replies: Receiver<std::io::Result<Vec<u8>>>,
}

#[derive(Default)]
struct Workers {
    /// The table's object, found once (a stat and a getxattr of the
    /// `hosts` file through CephFS, on the thread that does the I/O).
    object: Option<TableObject>,
    running: Option<Running>,
    /// Killed workers not yet reaped.
    killed: Vec<Child>,
    /// Workers started so far (the first is the start's).
    started: u64,
}

/// The host table's object, reached through the RADOS worker. The worker
/// is started on first use (on the thread that does the I/O, never at
/// open) and again after it was killed. Requests are serialized: a caller
/// waits for the one before it, which is bounded by its deadline.
#[derive(Clone)]
pub struct RadosTable(Arc<Shared>);

struct Shared {
    conf: RadosConf,
    hosts_file: PathBuf,
    len: usize,
    workers: Mutex<Workers>,
}

impl std::fmt::Debug for RadosTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RadosTable")
            .field("conf", &self.0.conf)
            .field("hosts_file", &self.0.hosts_file)
            .finish()
    }
}

fn timed_out(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what)
}

impl RadosTable {
    pub fn new(conf: RadosConf, hosts_file: &Path, len: usize) -> RadosTable {
        RadosTable(Arc::new(Shared {
            conf,
            hosts_file: hosts_file.to_path_buf(),
            len,
            workers: Mutex::new(Workers::default()),
        }))
    }

    /// As [`RadosTable::new`] with the object already known (no CephFS
    /// layout to read: tests of the worker's handling).
    pub fn for_object(conf: RadosConf, obj: TableObject, len: usize) -> RadosTable {
        let t = RadosTable::new(conf, Path::new("/"), len);
        t.lock().object = Some(obj);
        t
    }

    /// Starts the worker and connects it now (at daemon start, so that the
    /// first renewal and the claim's reads, which run with the I/O
    /// deadline, need no connect), waiting at most `deadline_ms`. An error
    /// whose raw errno is [`proto::ELIBACC`] means librados cannot be
    /// loaded on this host.
    pub fn connect(&self, deadline_ms: u64) -> std::io::Result<()> {
        let mut w = self.lock();
        self.ready(&mut w, Duration::from_millis(deadline_ms))
    }

    /// `len` bytes at `off`; a missing object or a short one reads as
    /// zeros (the file is sparse until written), exactly as the file.
    pub fn read(&self, off: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let req = Request::Read {
            off,
            len: len as u32,
        };
        match self.request(&req, "read") {
            Ok(mut buf) => {
                buf.resize(len, 0);
                Ok(buf)
            }
            // Never written yet (a new lockspace): the file reads zeros.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![0u8; len]),
            Err(e) => Err(e),
        }
    }

    /// The first `len` bytes of another object of the table's pool and
    /// namespace (only those that exist); `None` when there is no such
    /// object.
    pub fn read_object(&self, object: &str, len: usize) -> std::io::Result<Option<Vec<u8>>> {
        let req = Request::ReadObject {
            object: object.to_string(),
            off: 0,
            len: len as u32,
        };
        match self.request(&req, &format!("read {object}")) {
            Ok(buf) => Ok(Some(buf)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `data` at `off`; durable on every replica when it returns.
    pub fn write(&self, off: u64, data: &[u8]) -> std::io::Result<()> {
        let req = Request::Write {
            off,
            data: data.to_vec(),
        };
        self.request(&req, "write").map(|_| ())
    }

    /// The pid of the running worker, if one runs (tests, benchmarks).
    pub fn worker_pid(&self) -> Option<u32> {
        self.lock().running.as_ref().map(|r| r.child.id())
    }

    /// How many workers were started so far.
    pub fn workers_started(&self) -> u64 {
        self.lock().started
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Workers> {
        self.0.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn request(&self, req: &Request, what: &str) -> std::io::Result<Vec<u8>> {
        let mut w = self.lock();
        // A restart of the worker (its connect) has a deadline of its own,
        // so that a slow connect does not leave the request no time and
        // get the new worker killed again; the renewal's lateness is F's
        // business, not the deadlines'.
        let timeout = Duration::from_millis(self.0.conf.timeout_ms);
        self.ready(&mut w, timeout)?;
        self.exchange(&mut w, req, timeout, &format!("rados {what}"))
    }

    /// A connected worker, started (and connected) if none runs.
    fn ready(&self, w: &mut Workers, timeout: Duration) -> std::io::Result<()> {
        w.killed
            .retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_)) | Err(_)));
        if w.running.is_some() {
            return Ok(());
        }
        let obj = match &w.object {
            Some(o) => o.clone(),
            None => {
                let o = table_object(&self.0.hosts_file, self.0.len)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::Unsupported, e))?;
                w.object = Some(o.clone());
                o
            }
        };
        w.running = Some(self.spawn()?);
        w.started += 1;
        let req = Request::Connect {
            timeout_ms: self.0.conf.timeout_ms,
            conf: self.0.conf.conf.to_string_lossy().into_owned(),
            client_id: self.0.conf.client_id.clone(),
            pool: obj.pool,
            namespace: obj.namespace,
            object: obj.object,
        };
        self.exchange(w, &req, timeout, "connect to RADOS")
            .map(|_| ())
            .inspect_err(|_| Self::kill(w))
    }

    fn spawn(&self) -> std::io::Result<Running> {
        let mut child = Command::new(&self.0.conf.worker)
            .arg(worker::ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "start the RADOS worker {} {}: {e}",
                        self.0.conf.worker.display(),
                        worker::ARG
                    ),
                )
            })?;
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // Ends when the worker's stdout does (it exited or was killed).
        let reader = std::thread::Builder::new()
            .name("vmlease-rados-rx".into())
            .stack_size(crate::daemon::THREAD_STACK)
            .spawn(move || loop {
                match proto::read_frame(&mut stdout) {
                    Ok(Some(body)) => {
                        if tx.send(Ok(body)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            });
        if let Err(e) = reader {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(Running {
            child,
            stdin,
            replies: rx,
        })
    }

    /// Sends one request and waits at most `timeout` for its reply. Any
    /// failure but an error the worker reported (no reply in time, a
    /// broken pipe, a garbled reply) kills the worker.
    fn exchange(
        &self,
        w: &mut Workers,
        req: &Request,
        timeout: Duration,
        what: &str,
    ) -> std::io::Result<Vec<u8>> {
        let r = w.running.as_mut().expect("a running worker");
        let until = Instant::now() + timeout;
        let sent = r.stdin.write_all(&proto::encode_request(req));
        let got = match sent {
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!("{what}: the RADOS worker's pipe: {e}"),
            )),
            Ok(()) => match r
                .replies
                .recv_timeout(until.saturating_duration_since(Instant::now()))
            {
                Ok(Ok(body)) => proto::decode_reply(&body).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{what}: the RADOS worker's reply: {e}"),
                    )
                }),
                Ok(Err(e)) => Err(std::io::Error::new(
                    e.kind(),
                    format!("{what}: the RADOS worker's reply: {e}"),
                )),
                Err(RecvTimeoutError::Timeout) => Err(timed_out(format!(
                    "{what}: the RADOS worker (pid {}) did not answer within {} ms: killed, \
                     another starts at the next request",
                    r.child.id(),
                    timeout.as_millis()
                ))),
                Err(RecvTimeoutError::Disconnected) => Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    format!("{what}: the RADOS worker (pid {}) exited", r.child.id()),
                )),
            },
        };
        match got {
            Ok(Reply::Ok(data)) => Ok(data),
            Ok(Reply::Err { errno, msg }) => Err(std::io::Error::new(
                std::io::Error::from_raw_os_error(errno).kind(),
                ErrnoMsg { errno, msg },
            )),
            Err(e) => {
                Self::kill(w);
                Err(e)
            }
        }
    }

    fn kill(w: &mut Workers) {
        if let Some(mut r) = w.running.take() {
            let _ = r.child.kill();
            if !matches!(r.child.try_wait(), Ok(Some(_))) {
                w.killed.push(r.child);
            }
        }
    }
}

impl Drop for Workers {
    /// The last handle is gone: the worker goes (it would at the end of
    /// its stdin anyway).
    fn drop(&mut self) {
        RadosTable::kill(self);
        for mut c in self.killed.drain(..) {
            let _ = c.try_wait();
        }
    }
}

/// An error the worker reported: its message, and its errno (read back
/// with [`errno_of`]).
#[derive(Debug)]
struct ErrnoMsg {
    errno: i32,
    msg: String,
}

impl std::fmt::Display for ErrnoMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for ErrnoMsg {}

/// The errno of an error the worker reported (`None` for the daemon's
/// own: a deadline, a broken pipe).
pub fn errno_of(e: &std::io::Error) -> Option<i32> {
    e.get_ref()?.downcast_ref::<ErrnoMsg>().map(|m| m.errno)
}

fn cstr(s: &str) -> std::io::Result<CString> {
    CString::new(s).map_err(|_| std::io::Error::other(format!("'{s}' contains NUL")))
}

/// The error of a librados call that returned `rc` (-errno). Its kind is
/// the errno's (`NotFound` for ENOENT), which callers test; the errno
/// itself is kept ([`errno_of`]): EBLOCKLISTED (ESHUTDOWN) has no kind of
/// its own, and the worker's reply must carry it to the daemon.
fn err_of(what: &str, rc: i32) -> std::io::Error {
    let e = std::io::Error::from_raw_os_error(-rc);
    std::io::Error::new(
        e.kind(),
        ErrnoMsg {
            errno: -rc,
            msg: format!("{what}: {e}"),
        },
    )
}

#[cfg(test)]
mod tests;
