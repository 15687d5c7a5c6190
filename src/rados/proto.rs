//! The pipe protocol between the daemon and its RADOS worker
//! ([`super::worker`]). Sans-IO apart from [`read_frame`]: every message
//! is a frame, a little-endian `u32` length and that many bytes of body.
//! The daemon sends one request and waits (with its deadline) for its one
//! reply; it never sends the next before the reply came, and a worker
//! that misses the deadline is killed, so replies need no ids.
//!
//! Request bodies: `C` connect (`u64` timeout in ms, then the
//! configuration path, the client id, the pool, the namespace and the
//! object, each a `u32` length and its bytes); `R` read (`u64` offset,
//! `u32` length); `B` read of another object of the same pool and
//! namespace (`u64` offset, `u32` length, then the object's name; the
//! reply holds only the bytes that exist); `W` write (`u64` offset, then
//! the data). Reply bodies:
//! `O` then the data (empty but for a read), or `E`, an `i32` errno and
//! the message in UTF-8.
#![forbid(unsafe_code)]

use std::io::Read;

/// No frame is larger: the largest is a read reply of the whole host
/// table (2,000 slots of 512 bytes).
pub const MAX_FRAME: usize = 16 << 20;

/// errno of a connect reply when librados cannot be loaded (a
/// configuration problem, not a storage one: the daemon exits 1).
pub const ELIBACC: i32 = libc::ELIBACC;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Connect {
        timeout_ms: u64,
        conf: String,
        client_id: String,
        pool: String,
        namespace: String,
        object: String,
    },
    Read {
        off: u64,
        len: u32,
    },
    /// Another object of the connected pool and namespace (a small file
    /// of the lockspace read around the MDS).
    ReadObject {
        object: String,
        off: u64,
        len: u32,
    },
    Write {
        off: u64,
        data: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok(Vec<u8>),
    Err { errno: i32, msg: String },
}

fn framed(body: Vec<u8>) -> Vec<u8> {
    let mut f = (body.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&body);
    f
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u32).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

/// The frame of a request.
pub fn encode_request(r: &Request) -> Vec<u8> {
    let mut b = Vec::new();
    match r {
        Request::Connect {
            timeout_ms,
            conf,
            client_id,
            pool,
            namespace,
            object,
        } => {
            b.push(b'C');
            b.extend_from_slice(&timeout_ms.to_le_bytes());
            for s in [conf, client_id, pool, namespace, object] {
                put_str(&mut b, s);
            }
        }
        Request::Read { off, len } => {
            b.push(b'R');
            b.extend_from_slice(&off.to_le_bytes());
            b.extend_from_slice(&len.to_le_bytes());
        }
        Request::ReadObject { object, off, len } => {
            b.push(b'B');
            b.extend_from_slice(&off.to_le_bytes());
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(object.as_bytes());
        }
        Request::Write { off, data } => {
            b.push(b'W');
            b.extend_from_slice(&off.to_le_bytes());
            b.extend_from_slice(data);
        }
    }
    framed(b)
}

/// The frame of a reply.
pub fn encode_reply(r: &Reply) -> Vec<u8> {
    let mut b = Vec::new();
    match r {
        Reply::Ok(data) => {
            b.push(b'O');
            b.extend_from_slice(data);
        }
        Reply::Err { errno, msg } => {
            b.push(b'E');
            b.extend_from_slice(&errno.to_le_bytes());
            b.extend_from_slice(msg.as_bytes());
        }
    }
    framed(b)
}

/// Reads a body off the front of a frame's body.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!(
                "truncated message ({} bytes left, {n} wanted)",
                self.0.len()
            ));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn str(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "a string is not UTF-8".to_string())
    }
    fn end(&self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(format!("{} bytes after the message", self.0.len()))
        }
    }
}

pub fn decode_request(body: &[u8]) -> Result<Request, String> {
    let (&tag, rest) = body.split_first().ok_or("empty request")?;
    let mut c = Cursor(rest);
    let r = match tag {
        b'C' => Request::Connect {
            timeout_ms: c.u64()?,
            conf: c.str()?,
            client_id: c.str()?,
            pool: c.str()?,
            namespace: c.str()?,
            object: c.str()?,
        },
        b'R' => Request::Read {
            off: c.u64()?,
            len: c.u32()?,
        },
        b'B' => {
            let off = c.u64()?;
            let len = c.u32()?;
            let object = String::from_utf8(c.0.to_vec())
                .map_err(|_| "an object name is not UTF-8".to_string())?;
            c.0 = &[];
            Request::ReadObject { object, off, len }
        }
        b'W' => {
            let off = c.u64()?;
            let data = c.0.to_vec();
            c.0 = &[];
            Request::Write { off, data }
        }
        t => return Err(format!("unknown request {t:#04x}")),
    };
    c.end()?;
    Ok(r)
}

pub fn decode_reply(body: &[u8]) -> Result<Reply, String> {
    match body.split_first() {
        Some((b'O', data)) => Ok(Reply::Ok(data.to_vec())),
        Some((b'E', rest)) => {
            let mut c = Cursor(rest);
            let errno = c.u32()? as i32;
            let msg = String::from_utf8_lossy(c.0).into_owned();
            Ok(Reply::Err { errno, msg })
        }
        Some((t, _)) => Err(format!("unknown reply {t:#04x}")),
        None => Err("empty reply".into()),
    }
}

/// One frame's body; `None` at a clean end of the stream (before a frame).
pub fn read_frame(r: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..])? {
            0 if got == 0 => return Ok(None),
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes (at most {MAX_FRAME})"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(frame: &[u8]) -> Vec<u8> {
        read_frame(&mut &frame[..]).unwrap().unwrap()
    }

    #[test]
    fn requests_and_replies_round_trip() {
        for r in [
            Request::Connect {
                timeout_ms: 5000,
                conf: "/etc/ceph/ceph.conf".into(),
                client_id: "admin".into(),
                pool: "cephfs_data".into(),
                namespace: String::new(),
                object: "10000000000.00000000".into(),
            },
            Request::Read {
                off: 512,
                len: 1_024_000,
            },
            Request::ReadObject {
                object: "10000000001.00000000".into(),
                off: 0,
                len: 4096,
            },
            Request::Write {
                off: u64::MAX,
                data: vec![7; 512],
            },
            Request::Write {
                off: 0,
                data: vec![],
            },
        ] {
            assert_eq!(decode_request(&body(&encode_request(&r))), Ok(r));
        }
        for r in [
            Reply::Ok(vec![1, 2, 3]),
            Reply::Ok(vec![]),
            Reply::Err {
                errno: libc::ETIMEDOUT,
                msg: "rados read x: Connection timed out".into(),
            },
        ] {
            assert_eq!(decode_reply(&body(&encode_reply(&r))), Ok(r));
        }
    }

    #[test]
    fn bad_messages_are_refused() {
        assert!(decode_request(&[]).is_err());
        assert!(decode_request(b"X")
            .unwrap_err()
            .contains("unknown request"));
        // A read without its length; a read with bytes after it.
        assert!(decode_request(&[b'R', 0, 0, 0, 0, 0, 0, 0, 0])
            .unwrap_err()
            .contains("truncated"));
        let mut r = body(&encode_request(&Request::Read { off: 1, len: 2 }));
        r.push(0);
        assert!(decode_request(&r)
            .unwrap_err()
            .contains("after the message"));
        // A connect whose string length runs past the end.
        let mut c = vec![b'C'];
        c.extend_from_slice(&0u64.to_le_bytes());
        c.extend_from_slice(&100u32.to_le_bytes());
        c.extend_from_slice(b"short");
        assert!(decode_request(&c).unwrap_err().contains("truncated"));
        assert!(decode_reply(b"E\x01").is_err());
        assert!(decode_reply(b"").is_err());
    }

    #[test]
    fn frames_end_cleanly_or_not_at_all() {
        assert_eq!(read_frame(&mut &[][..]).unwrap(), None);
        // Half a length; a length with half its body.
        assert!(read_frame(&mut &[1u8, 0][..]).is_err());
        assert!(read_frame(&mut &[4u8, 0, 0, 0, b'O'][..]).is_err());
        let huge = ((MAX_FRAME + 1) as u32).to_le_bytes();
        let e = read_frame(&mut &huge[..]).unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
        // Two frames back to back.
        let mut two = encode_reply(&Reply::Ok(vec![1]));
        two.extend(encode_reply(&Reply::Ok(vec![2])));
        let mut r = &two[..];
        assert_eq!(read_frame(&mut r).unwrap(), Some(b"O\x01".to_vec()));
        assert_eq!(read_frame(&mut r).unwrap(), Some(b"O\x02".to_vec()));
        assert_eq!(read_frame(&mut r).unwrap(), None);
    }
}
