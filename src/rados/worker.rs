//! The RADOS worker: `vmlease-watchdog --rados-worker`, a child process
//! of the daemon that does the daemon's RADOS I/O, so that librados (its
//! threads, its memory, its network client) never runs inside the
//! fence-critical daemon. It answers the requests of [`super::proto`]
//! on stdin/stdout, one at a time, and exits when stdin ends (the daemon
//! closed it or died). It is not locked in memory and runs at normal
//! priority: a worker that is paged out, slow or stuck only makes a
//! renewal late, which the daemon treats as hung storage (the deadline of
//! each request, then F); the daemon kills it and starts another.
#![forbid(unsafe_code)]

use std::io::Write;

use super::proto::{self, Reply, Request};
use super::sys;
use super::TableObject;

/// The argument that makes `vmlease-watchdog` a RADOS worker.
pub const ARG: &str = "--rados-worker";

/// When the program was started as a RADOS worker (`PROGRAM
/// --rados-worker`, by [`super::RadosTable`]): runs it and returns its
/// exit code. Every vmlease program that reads RADOS calls this first.
pub fn run_if_asked(argv: &[String]) -> Option<i32> {
    (argv.len() == 2 && argv[1] == ARG).then(main)
}

/// Runs the worker until stdin ends; returns the exit code.
pub fn main() -> i32 {
    // Started by the daemon, which runs SCHED_RR: librados's threads must
    // not compete with the daemon (or starve the host) at a realtime
    // priority. A late worker only makes a renewal late.
    let _ = crate::sys::sched::normal();
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let mut conn: Option<sys::Conn> = None;
    loop {
        let body = match proto::read_frame(&mut stdin) {
            Ok(Some(b)) => b,
            Ok(None) => return 0,
            Err(e) => {
                eprintln!("vmlease-watchdog --rados-worker: {e}");
                return 1;
            }
        };
        let reply = match proto::decode_request(&body) {
            Ok(req) => serve(&mut conn, req),
            Err(e) => Reply::Err {
                errno: libc::EINVAL,
                msg: format!("bad request: {e}"),
            },
        };
        if stdout
            .write_all(&proto::encode_reply(&reply))
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return 0;
        }
    }
}

/// A librados error as a reply: its message, and the errno that tells
/// the daemon what it was (ENOENT: a table object never written reads as
/// zeros; EBLOCKLISTED: this host was blocklisted, it fences at once).
pub(super) fn failed(e: std::io::Error) -> Reply {
    let errno = match (super::errno_of(&e), e.kind()) {
        (Some(n), _) => n,
        (None, std::io::ErrorKind::NotFound) => libc::ENOENT,
        (None, std::io::ErrorKind::TimedOut) => libc::ETIMEDOUT,
        (None, _) => e.raw_os_error().unwrap_or(libc::EIO),
    };
    Reply::Err {
        errno,
        msg: e.to_string(),
    }
}

fn serve(conn: &mut Option<sys::Conn>, req: Request) -> Reply {
    match req {
        Request::Connect {
            timeout_ms,
            conf,
            client_id,
            pool,
            namespace,
            object,
        } => {
            if let Err(e) = sys::lib() {
                return Reply::Err {
                    errno: proto::ELIBACC,
                    msg: e,
                };
            }
            *conn = None;
            let obj = TableObject {
                pool,
                namespace,
                object,
            };
            match sys::Conn::connect(&conf, &client_id, timeout_ms, &obj) {
                Ok(c) => {
                    *conn = Some(c);
                    Reply::Ok(Vec::new())
                }
                Err(e) => failed(e),
            }
        }
        Request::Read { off, len } => {
            let Some(c) = conn else {
                return not_connected();
            };
            let mut buf = vec![0u8; len as usize];
            match c.read(&mut buf, off) {
                Ok(_) => Reply::Ok(buf),
                Err(e) => failed(e),
            }
        }
        Request::ReadObject { object, off, len } => {
            let Some(c) = conn else {
                return not_connected();
            };
            let mut buf = vec![0u8; len as usize];
            match c.read_object(&object, &mut buf, off) {
                Ok(n) => {
                    buf.truncate(n);
                    Reply::Ok(buf)
                }
                Err(e) => failed(e),
            }
        }
        Request::Write { off, data } => {
            let Some(c) = conn else {
                return not_connected();
            };
            match c.write(&data, off) {
                Ok(()) => Reply::Ok(Vec::new()),
                Err(e) => failed(e),
            }
        }
    }
}

fn not_connected() -> Reply {
    Reply::Err {
        errno: libc::ENOTCONN,
        msg: "the RADOS worker is not connected".into(),
    }
}
