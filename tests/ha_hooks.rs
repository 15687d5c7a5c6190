//! The example notification hooks (hooks/ha/): run by vmlease-ha's own hook
//! runner against a small HTTP listener on loopback standing in for the
//! Masakari and Nova APIs. Each request is checked against what those APIs
//! document:
//!
//! - Masakari `POST /v1/notifications`: the request schema of
//!   masakari/api/openstack/ha/schemas/notifications.py and payload.py -
//!   `notification` with exactly `type` (COMPUTE_HOST), `hostname`,
//!   `generated_time` (date-time) and `payload` with `event`
//!   (STARTED|STOPPED, required), `host_status` (NORMAL|UNKNOWN),
//!   `cluster_status` (ONLINE|OFFLINE), nothing else; `X-Auth-Token`.
//! - Nova: microversion 2.53+, `GET /os-services?binary=nova-compute&host=H`
//!   then `PUT /os-services/{service_id}` with `{"forced_down": bool}`;
//!   2.11-2.52, `PUT /os-services/force-down` with `host`, `binary`,
//!   `forced_down`; the microversion in the `OpenStack-API-Version` header.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use vmlease::ha::events::{kind, Event};
use vmlease::ha::hooks::run_all;

#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: String,
}

const SERVICE_ID: &str = "e81d66a4-ddd3-4aba-8a84-171d1cb4d339";

/// Listens on 127.0.0.1 (a free port); records every request and answers
/// as the APIs would (the service list for GET /os-services).
fn listener() -> (String, Arc<Mutex<Vec<Request>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = seen.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (method, path) = (
                parts.next().unwrap_or("").to_string(),
                parts.next().unwrap_or("").to_string(),
            );
            let mut headers = BTreeMap::new();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            let n: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; n];
            let _ = r.read_exact(&mut body);
            let answer = if method == "GET" && path.contains("/os-services?") {
                format!(
                    r#"{{"services": [{{"id": "{SERVICE_ID}", "binary": "nova-compute", "host": "host-a.test", "state": "down", "status": "enabled", "forced_down": false, "zone": "nova"}}]}}"#
                )
            } else {
                r#"{"ok": true}"#.to_string()
            };
            rec.lock().unwrap().push(Request {
                method,
                path,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (url, seen)
}

/// A hooks directory holding one example hook and its settings.
fn hooks_dir(hook: &str, settings: &str) -> (PathBuf, PathBuf) {
    let d = std::env::temp_dir().join(format!("vmlease-ha-hooks-{}-{hook}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("hooks.d")).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("hooks/ha")
        .join(hook);
    std::fs::copy(&src, d.join("hooks.d").join(hook)).unwrap();
    let env = d.join("openstack.env");
    std::fs::write(&env, settings).unwrap();
    (d, env)
}

fn run(dir: &Path, env_file: &Path, e: &Event) {
    // The hooks read their settings file from this variable; the hook
    // runner passes our environment on.
    std::env::set_var("VMLEASE_OPENSTACK_ENV", env_file);
    let out = run_all(&dir.join("hooks.d"), e, Duration::from_secs(10));
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!((out[0].code, out[0].timed_out), (Some(0), false), "{out:?}");
}

fn ev(k: &str) -> Event {
    // 2026-12-07T00:02:03.456Z
    Event::host(k, 1_796_601_723_456, "host-a.test", "test")
}

fn json(r: &Request) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{r:?}: not JSON: {e}"))
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}

/// `generated_time` must be a JSON-schema date-time (RFC 3339).
fn is_date_time(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && (s.ends_with('Z') || s[19..].contains('+') || s[19..].contains('-'))
        && s[..4].parse::<u32>().is_ok()
}

// One test: the hooks read VMLEASE_OPENSTACK_ENV from the process
// environment, which parallel tests would share.
#[test]
fn example_hooks_send_what_masakari_and_nova_document() {
    let (url, seen) = listener();

    // Masakari.
    let (d, env) = hooks_dir(
        "masakari-notify",
        &format!("MASAKARI_URL={url}/v1\nOS_TOKEN=tok-masakari\n"),
    );
    for k in [kind::HOST_FAILED, kind::VM_RECOVERED, kind::HOST_BACK] {
        run(&d, &env, &ev(k));
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "only host-evacuable notifies Masakari"
    );
    run(&d, &env, &ev(kind::HOST_EVACUABLE));
    let reqs = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let r = &reqs[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/v1/notifications")
    );
    assert_eq!(
        r.headers.get("x-auth-token").map(String::as_str),
        Some("tok-masakari")
    );
    assert!(r.headers["content-type"].starts_with("application/json"));
    let b = json(r);
    assert_eq!(keys(&b), ["notification"], "additionalProperties: false");
    let n = &b["notification"];
    assert_eq!(
        keys(n),
        ["generated_time", "hostname", "payload", "type"],
        "required, and nothing else"
    );
    assert_eq!(n["type"], "COMPUTE_HOST");
    assert_eq!(n["hostname"], "host-a.test");
    let t = n["generated_time"].as_str().unwrap();
    assert!(is_date_time(t), "generated_time {t:?}");
    assert_eq!(t, "2026-12-07T00:02:03.456Z");
    let p = &n["payload"];
    assert_eq!(keys(p), ["cluster_status", "event", "host_status"]);
    assert!(["STARTED", "STOPPED"].contains(&p["event"].as_str().unwrap()));
    assert_eq!(p["event"], "STOPPED");
    // Masakari's engine acts on a STOPPED host only with host_status NORMAL.
    assert_eq!(p["host_status"], "NORMAL");
    assert_eq!(p["cluster_status"], "OFFLINE");
    let _ = std::fs::remove_dir_all(&d);

    // Nova, microversion 2.53 (the default).
    let (d, env) = hooks_dir(
        "nova-force-down",
        &format!("NOVA_URL={url}/v2.1\nOS_TOKEN=tok-nova\n"),
    );
    run(&d, &env, &ev(kind::HOST_FAILED));
    assert!(
        seen.lock().unwrap().is_empty(),
        "host-failed is not yet safe"
    );
    run(&d, &env, &ev(kind::HOST_EVACUABLE));
    let reqs = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(
        reqs[0].path,
        "/v2.1/os-services?binary=nova-compute&host=host-a.test"
    );
    for r in &reqs {
        assert_eq!(
            r.headers.get("x-auth-token").map(String::as_str),
            Some("tok-nova")
        );
        assert_eq!(
            r.headers.get("openstack-api-version").map(String::as_str),
            Some("compute 2.53")
        );
    }
    assert_eq!(
        (reqs[1].method.as_str(), reqs[1].path.as_str()),
        ("PUT", format!("/v2.1/os-services/{SERVICE_ID}").as_str())
    );
    assert_eq!(json(&reqs[1]), serde_json::json!({"forced_down": true}));
    run(&d, &env, &ev(kind::HOST_BACK));
    let reqs = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(json(&reqs[1]), serde_json::json!({"forced_down": false}));
    let _ = std::fs::remove_dir_all(&d);

    // Nova, microversion 2.11: PUT /os-services/force-down.
    let (d, env) = hooks_dir(
        "nova-force-down",
        &format!("NOVA_URL={url}/v2.1\nOS_TOKEN=tok-nova\nNOVA_API_VERSION=2.11\n"),
    );
    run(&d, &env, &ev(kind::HOST_EVACUABLE));
    let reqs = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let r = &reqs[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("PUT", "/v2.1/os-services/force-down")
    );
    assert_eq!(
        r.headers
            .get("x-openstack-nova-api-version")
            .map(String::as_str),
        Some("2.11")
    );
    assert_eq!(
        json(r),
        serde_json::json!({"host": "host-a.test", "binary": "nova-compute", "forced_down": true})
    );
    let _ = std::fs::remove_dir_all(&d);
}
