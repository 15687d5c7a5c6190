//! A small blocking etcd v3 client over etcd's JSON gateway (`/v3/kv/*`,
//! `/v3/lease/*`; keys and values base64): one HTTP/1.1 request per call
//! through `ureq`, TLS with client certificates through rustls. Chosen
//! over the gRPC `etcd-client` crate because the agent's loop is
//! synchronous and small, and tokio + tonic + protoc would be a build
//! dependency of the whole package for a handful of calls. Endpoints are
//! tried in order from the last one that answered.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

use super::error::{Error, Result};
use crate::config::HaConfig;

/// One key-value pair as etcd returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub lease: i64,
}

/// A comparison of a transaction.
pub enum Cmp<'a> {
    /// The key does not exist.
    Absent(&'a str),
    /// The key's value is exactly this.
    Value(&'a str, &'a [u8]),
    /// The key was last modified at this revision (0: absent).
    ModRevision(&'a str, i64),
}

/// An operation of a transaction.
pub enum Op<'a> {
    Put {
        key: &'a str,
        value: &'a [u8],
        lease: i64,
    },
    Delete(&'a str),
    /// Every key in [key, end).
    DeleteRange(&'a str, &'a [u8]),
}

/// A clone shares the connections and the TLS set-up (a start's thread
/// reports through one).
#[derive(Clone)]
pub struct Etcd {
    agent: ureq::Agent,
    /// Without a read timeout, for watch streams.
    stream_agent: ureq::Agent,
    endpoints: Vec<String>,
    current: Cell<usize>,
}

/// What a watch delivers: a key put (with its value) or deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(Kv),
    Delete(String),
}

fn b64(s: &[u8]) -> String {
    B64.encode(s)
}

/// The end of the range of every key starting with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn num(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

impl Etcd {
    pub fn new(cfg: &HaConfig) -> Result<Etcd> {
        let connect = Duration::from_millis(cfg.request_timeout.min(1_000));
        let mut b = ureq::AgentBuilder::new()
            .timeout_connect(connect)
            .timeout(Duration::from_millis(cfg.request_timeout));
        let mut sb = ureq::AgentBuilder::new().timeout_connect(connect);
        if let Some(ca) = &cfg.ca_file {
            let tls = Arc::new(tls_config(
                ca,
                cfg.cert_file.as_deref().zip(cfg.key_file.as_deref()),
            )?);
            b = b.tls_config(tls.clone());
            sb = sb.tls_config(tls);
        }
        Ok(Etcd {
            agent: b.build(),
            stream_agent: sb.build(),
            endpoints: cfg.endpoints.clone(),
            current: Cell::new(0),
        })
    }

    /// POSTs `body` to `path`; on a transport error tries the next endpoint.
    fn call(&self, op: &str, path: &str, body: Value) -> Result<Value> {
        let n = self.endpoints.len();
        let mut last = String::new();
        for i in 0..n {
            let at = (self.current.get() + i) % n;
            let url = format!("{}{path}", self.endpoints[at]);
            match self.agent.post(&url).send_string(&body.to_string()) {
                Ok(resp) => {
                    self.current.set(at);
                    let text = resp.into_string().map_err(|e| Error::Etcd {
                        op: op.into(),
                        reason: format!("{url}: {e}"),
                    })?;
                    return serde_json::from_str(&text).map_err(|e| Error::Etcd {
                        op: op.into(),
                        reason: format!(
                            "{url}: bad answer ({e}): {}",
                            text.chars().take(200).collect::<String>()
                        ),
                    });
                }
                Err(ureq::Error::Status(code, resp)) => {
                    // etcd answered: an error of the request (quorum lost
                    // shows up here as a timeout error), not of the endpoint.
                    let text = resp.into_string().unwrap_or_default();
                    last = format!(
                        "{url}: HTTP {code}: {}",
                        text.chars().take(300).collect::<String>()
                    );
                    if code < 500 {
                        break;
                    }
                }
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(Error::Etcd {
            op: op.into(),
            reason: last,
        })
    }

    fn kvs(v: &Value) -> Vec<Kv> {
        v.get("kvs")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|kv| {
                        let key = B64.decode(kv.get("key")?.as_str()?).ok()?;
                        let value = kv
                            .get("value")
                            .and_then(Value::as_str)
                            .map(|s| B64.decode(s).unwrap_or_default())
                            .unwrap_or_default();
                        Some(Kv {
                            key: String::from_utf8_lossy(&key).into_owned(),
                            value,
                            mod_revision: num(kv.get("mod_revision").unwrap_or(&Value::Null)),
                            lease: num(kv.get("lease").unwrap_or(&Value::Null)),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every key under `prefix`.
    pub fn list(&self, prefix: &str) -> Result<Vec<Kv>> {
        let v = self.call(
            &format!("range {prefix}*"),
            "/v3/kv/range",
            json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix))}),
        )?;
        Ok(Self::kvs(&v))
    }

    /// Every key in [key, end).
    pub fn range(&self, key: &str, end: &[u8]) -> Result<Vec<Kv>> {
        let v = self.call(
            &format!("range {key}.."),
            "/v3/kv/range",
            json!({"key": b64(key.as_bytes()), "range_end": b64(end)}),
        )?;
        Ok(Self::kvs(&v))
    }

    /// Every key under `prefix`, and the store's revision they are from.
    pub fn list_at(&self, prefix: &str) -> Result<(Vec<Kv>, i64)> {
        let v = self.call(
            &format!("range {prefix}*"),
            "/v3/kv/range",
            json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix))}),
        )?;
        let rev = num(v.pointer("/header/revision").unwrap_or(&Value::Null));
        Ok((Self::kvs(&v), rev))
    }

    /// The store's revision now (from a count-only range of `prefix`: a
    /// few bytes whatever the prefix holds).
    pub fn revision(&self, prefix: &str) -> Result<i64> {
        let v = self.call(
            &format!("revision {prefix}*"),
            "/v3/kv/range",
            json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix)),
                   "count_only": true}),
        )?;
        Ok(num(v.pointer("/header/revision").unwrap_or(&Value::Null)))
    }

    /// How many keys start with `prefix`, and the first `limit` of them.
    pub fn first_keys(&self, prefix: &str, limit: usize) -> Result<(i64, Vec<String>)> {
        let v = self.call(
            &format!("keys {prefix}*"),
            "/v3/kv/range",
            json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix)),
                   "keys_only": true, "limit": limit.to_string()}),
        )?;
        let count = num(v.get("count").unwrap_or(&Value::Null));
        Ok((count, Self::kvs(&v).into_iter().map(|kv| kv.key).collect()))
    }

    /// Watches every key under `prefix` from revision `from` on, calling
    /// `f` for each change until it returns false or the stream ends
    /// (then an error: the caller reconnects from the last revision it saw
    /// + 1). Returns the revision of the change `f` stopped at.
    pub fn watch(
        &self,
        prefix: &str,
        from: i64,
        mut f: impl FnMut(WatchEvent, i64) -> bool,
    ) -> Result<i64> {
        use std::io::BufRead;
        let op = format!("watch {prefix}*");
        let body = json!({"create_request": {
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix)),
            "start_revision": from.to_string(),
        }});
        let url = format!("{}/v3/watch", self.endpoints[self.current.get()]);
        let err = |reason: String| Error::Etcd {
            op: op.clone(),
            reason: format!("{url}: {reason}"),
        };
        let resp = self
            .stream_agent
            .post(&url)
            .send_string(&body.to_string())
            .map_err(|e| err(e.to_string()))?;
        let reader = std::io::BufReader::new(resp.into_reader());
        for line in reader.lines() {
            let line = line.map_err(|e| err(e.to_string()))?;
            if line.trim().is_empty() {
                continue;
            }
            let v: Value =
                serde_json::from_str(&line).map_err(|e| err(format!("bad answer ({e})")))?;
            let r = v.get("result").unwrap_or(&v);
            if let Some(e) = v.get("error") {
                return Err(err(e.to_string()));
            }
            if r.get("canceled").and_then(Value::as_bool) == Some(true) {
                return Err(err(format!("canceled: {r}")));
            }
            for ev in r
                .get("events")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let kvs =
                    Self::kvs(&json!({"kvs": [ev.get("kv").cloned().unwrap_or(Value::Null)]}));
                let Some(kv) = kvs.into_iter().next() else {
                    continue;
                };
                let rev = kv.mod_revision;
                let we = if ev.get("type").and_then(Value::as_str) == Some("DELETE") {
                    WatchEvent::Delete(kv.key)
                } else {
                    WatchEvent::Put(kv)
                };
                if !f(we, rev) {
                    return Ok(rev);
                }
            }
        }
        Err(err("the stream ended".into()))
    }

    pub fn get(&self, key: &str) -> Result<Option<Kv>> {
        let v = self.call(
            &format!("get {key}"),
            "/v3/kv/range",
            json!({"key": b64(key.as_bytes())}),
        )?;
        Ok(Self::kvs(&v).into_iter().next())
    }

    pub fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<()> {
        self.call(
            &format!("put {key}"),
            "/v3/kv/put",
            json!({"key": b64(key.as_bytes()), "value": b64(value), "lease": lease.to_string()}),
        )?;
        Ok(())
    }

    /// A transaction: `ops` run only if every comparison holds. Returns
    /// whether they ran.
    pub fn txn(&self, what: &str, cmps: &[Cmp], ops: &[Op]) -> Result<bool> {
        let compare: Vec<Value> = cmps
            .iter()
            .map(|c| match c {
                Cmp::Absent(k) => json!({"key": b64(k.as_bytes()), "result": "EQUAL", "target": "CREATE", "create_revision": "0"}),
                Cmp::Value(k, v) => json!({"key": b64(k.as_bytes()), "result": "EQUAL", "target": "VALUE", "value": b64(v)}),
                Cmp::ModRevision(k, r) => json!({"key": b64(k.as_bytes()), "result": "EQUAL", "target": "MOD", "mod_revision": r.to_string()}),
            })
            .collect();
        let success: Vec<Value> = ops
            .iter()
            .map(|o| match o {
                Op::Put { key, value, lease } => json!({"request_put": {"key": b64(key.as_bytes()), "value": b64(value), "lease": lease.to_string()}}),
                Op::Delete(k) => json!({"request_delete_range": {"key": b64(k.as_bytes())}}),
                Op::DeleteRange(k, end) => json!({"request_delete_range": {"key": b64(k.as_bytes()), "range_end": b64(end)}}),
            })
            .collect();
        let v = self.call(
            what,
            "/v3/kv/txn",
            json!({"compare": compare, "success": success}),
        )?;
        Ok(v.get("succeeded").and_then(Value::as_bool).unwrap_or(false))
    }

    /// A new lease of `ttl_s` seconds; its id.
    pub fn grant(&self, ttl_s: u64) -> Result<i64> {
        let v = self.call(
            "lease grant",
            "/v3/lease/grant",
            json!({"TTL": ttl_s.to_string()}),
        )?;
        match num(v.get("ID").unwrap_or(&Value::Null)) {
            0 => Err(Error::Etcd {
                op: "lease grant".into(),
                reason: format!("no lease id in {v}"),
            }),
            id => Ok(id),
        }
    }

    /// Renews a lease; its remaining TTL in seconds (0: it has expired).
    pub fn keepalive(&self, id: i64) -> Result<i64> {
        let v = self.call(
            "lease keepalive",
            "/v3/lease/keepalive",
            json!({"ID": id.to_string()}),
        )?;
        let r = v.get("result").unwrap_or(&v);
        Ok(num(r.get("TTL").unwrap_or(&Value::Null)))
    }

    pub fn revoke(&self, id: i64) -> Result<()> {
        self.call(
            "lease revoke",
            "/v3/lease/revoke",
            json!({"ID": id.to_string()}),
        )?;
        Ok(())
    }
}

fn tls_config(
    ca: &std::path::Path,
    client: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pem_err = |p: &std::path::Path, e: &dyn std::fmt::Display| {
        Error::Setup(format!("read {}: {e}", p.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| pem_err(ca, &e))? {
        roots
            .add(c.map_err(|e| pem_err(ca, &e))?)
            .map_err(|e| pem_err(ca, &e))?;
    }
    // The crate's one provider (ring), safe default protocol versions.
    let b = rustls::ClientConfig::builder().with_root_certificates(roots);
    match client {
        None => Ok(b.with_no_client_auth()),
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .map_err(|e| pem_err(cert, &e))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| pem_err(cert, &e))?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, &e))?;
            b.with_client_auth_cert(certs, key_der).map_err(|e| {
                Error::Setup(format!("TLS client certificate {}: {e}", cert.display()))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_every_prefixed_one() {
        assert_eq!(prefix_end("/vmlease/"), b"/vmlease0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn numbers_come_as_strings_or_numbers() {
        assert_eq!(num(&json!("5986869731122316295")), 5986869731122316295);
        assert_eq!(num(&json!(7)), 7);
        assert_eq!(num(&Value::Null), 0);
    }
}
