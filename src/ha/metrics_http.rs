//! `vmlease-ha`'s `/metrics` listener (`[ha] metrics_listen`): a std
//! `TcpListener` on one thread that answers each `GET /metrics` with the
//! text the main loop rendered last. One connection at a time, each with
//! a short deadline: a slow or hostile client delays only the next
//! scrape, never the agent or the controller (they only swap the text
//! under a mutex). Never part of the fence path: the watchdog daemon and
//! the plugin have no listener.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request's head larger than this is refused.
const MAX_REQUEST: usize = 8192;
/// Deadline of each read and write on a connection.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The content type of the Prometheus text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The last rendered text, shared by the main loop and the listener.
#[derive(Clone, Default)]
pub struct Text(Arc<Mutex<String>>);

impl Text {
    pub fn set(&self, t: String) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }
    fn get(&self) -> String {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Binds `addr` and serves `text` from a thread; the bound address (a
/// port 0 becomes the one the kernel chose).
pub fn serve(addr: SocketAddr, text: Text) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(addr)?;
    let bound = l.local_addr()?;
    std::thread::Builder::new()
        .name("vmlease-ha-metrics".into())
        .spawn(move || {
            for conn in l.incoming() {
                match conn {
                    Ok(s) => {
                        if let Err(e) = answer(s, &text) {
                            log::debug!("vmlease-ha: metrics: {e}");
                        }
                    }
                    Err(e) => {
                        log::warn!("vmlease-ha: metrics: accept: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(bound)
}

/// What to answer to a request head: status line and body.
pub fn respond(head: &str, text: &str) -> (&'static str, String) {
    let first = head.lines().next().unwrap_or("");
    let mut parts = first.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") | ("HEAD", "/metrics") => ("200 OK", text.to_string()),
        ("GET", _) | ("HEAD", _) => ("404 Not Found", "only /metrics here\n".into()),
        _ => ("405 Method Not Allowed", "GET /metrics\n".into()),
    }
}

fn answer(mut s: TcpStream, text: &Text) -> std::io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            s.write_all(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n",
            )?;
            return Ok(());
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let (status, body) = respond(&head, &text.get());
    let head_only = head.starts_with("HEAD ");
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    s.write_all(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, req: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        r
    }

    #[test]
    fn serves_the_last_text_on_get_metrics_only() {
        let t = Text::default();
        t.set("a 1\n".into());
        let addr = serve("127.0.0.1:0".parse().unwrap(), t.clone()).unwrap();
        let r = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Type: text/plain; version=0.0.4"), "{r}");
        assert!(r.ends_with("\r\n\r\na 1\n"), "{r}");
        t.set("a 2\n".into());
        assert!(get(addr, "GET /metrics?x=1 HTTP/1.0\r\n\r\n").ends_with("a 2\n"));
        assert!(get(addr, "GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(addr, "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    }

    #[test]
    fn a_client_that_sends_nothing_does_not_stop_the_next_scrape_forever() {
        let t = Text::default();
        t.set("a 1\n".into());
        let addr = serve("127.0.0.1:0".parse().unwrap(), t).unwrap();
        let _silent = TcpStream::connect(addr).unwrap();
        let t0 = std::time::Instant::now();
        let r = get(addr, "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(r.ends_with("a 1\n"), "{r}");
        let took = t0.elapsed();
        assert!(took <= IO_TIMEOUT + Duration::from_secs(3), "took {took:?}");
    }
}
