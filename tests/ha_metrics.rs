//! vmlease-ha's `/metrics` ([ha] metrics_listen) scraped by a real
//! Prometheus (Debian's `prometheus`, a scrape config on loopback) and
//! read back through its HTTP query API, against a real etcd member and a
//! real watchdog daemon: the host leads and sees itself live; etcd goes
//! away and the etcd errors, `vmlease_ha_etcd_up` and the leadership
//! follow. libvirt is its test driver (`test:///default`, in virsh's own
//! process): no VM is involved.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::daemons::{bin, lockspace, serial, wait_until, Host, Scratch};
use support::etcd::{free_port, member};
use support::util::ProcGuard;

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// GET `path` from 127.0.0.1:`port`: the body of a 200, or why not.
fn get(port: u16, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .map_err(|e| format!("read: {e}"))?;
    match resp.split_once("\r\n\r\n") {
        Some((head, body)) if head.contains(" 200 ") => Ok(body.to_string()),
        _ => Err(format!("bad response: {resp}")),
    }
}

fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Percent-encodes a PromQL expression for a query string.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of the instant query `q` through Prometheus's HTTP API (one
/// series expected).
fn query(port: u16, q: &str) -> Result<f64, String> {
    let body = get(port, &format!("/api/v1/query?query={}", encode(q)))?;
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    let res = v["data"]["result"]
        .as_array()
        .ok_or_else(|| format!("no result: {body}"))?;
    match res.as_slice() {
        [one] => one["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no value: {body}")),
        _ => Err(format!("{} series for {q}: {body}", res.len())),
    }
}

fn wait_query(port: u16, q: &str, timeout_ms: u64, ok: impl Fn(f64) -> bool) -> f64 {
    wait_until(&format!("Prometheus: {q}"), timeout_ms, || {
        match query(port, q) {
            Ok(v) if ok(v) => Ok(v),
            Ok(v) => Err(format!("{q} = {v}")),
            Err(e) => Err(e),
        }
    })
}

fn prometheus(dir: &Path, target: u16) -> (ProcGuard, u16) {
    assert!(
        Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} is missing: install prometheus (scripts/setup-test-env.sh)"
    );
    let port = free_port();
    let conf = dir.join("prometheus.yml");
    fs::write(
        &conf,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n- job_name: vmlease-ha\n  static_configs:\n  - targets: ['127.0.0.1:{target}']\n"
        ),
    )
    .unwrap();
    let mut c = Command::new(PROMETHEUS);
    c.arg(format!("--config.file={}", conf.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    let g = ProcGuard::spawn_logged(&mut c, "prometheus", &dir.join("prometheus.log"));
    (g, port)
}

#[test]
fn prometheus_scrapes_vmlease_ha_and_reads_leadership_hosts_and_etcd_errors_back() {
    let _g = serial();
    let s = Scratch::new("ha-metrics");
    let ls = lockspace(&s);
    let (etcd, url) = member(&s.0);
    let mport = free_port();
    let mut h = Host::new(
        &s,
        1,
        &ls,
        &format!(
            "unsafe_no_watchdog = true\n[ha]\nendpoints = [\"{url}\"]\nhost_ttl = 2\ninterval = 0.5\n\
             request_timeout = 1\nmetrics_listen = \"127.0.0.1:{mport}\"\n"
        ),
    );
    h.start(&[]);
    let mut c = Command::new(bin("vmlease-ha"));
    c.arg("--config")
        .arg(&h.conf)
        .env("LIBVIRT_DEFAULT_URI", "test:///default");
    let ha_log = s.0.join("ha.log");
    let _ha = ProcGuard::spawn_logged(&mut c, "vmlease-ha", &ha_log);

    // The endpoint itself: this host leads and sees itself live.
    wait_until("vmlease-ha to lead (its /metrics)", 20_000, || {
        let body = get(mport, "/metrics").map_err(|e| {
            format!(
                "{e}; log: {}",
                fs::read_to_string(&ha_log).unwrap_or_default()
            )
        })?;
        match sample(&body, "vmlease_ha_leader") {
            Some(1.0) => Ok(()),
            v => Err(format!("vmlease_ha_leader = {v:?}")),
        }
    });

    // Through Prometheus.
    let (_prom, pport) = prometheus(&s.0, mport);
    wait_query(pport, "up{job=\"vmlease-ha\"}", 20_000, |v| v == 1.0);
    wait_query(pport, "vmlease_ha_leader", 10_000, |v| v == 1.0);
    wait_query(pport, "vmlease_ha_protected", 10_000, |v| v == 1.0);
    wait_query(pport, "vmlease_ha_hosts{state=\"live\"}", 10_000, |v| {
        v == 1.0
    });
    wait_query(pport, "vmlease_ha_etcd_up", 10_000, |v| v == 1.0);
    assert_eq!(query(pport, "vmlease_ha_etcd_errors_total"), Ok(0.0));
    assert_eq!(
        query(pport, "vmlease_ha_events_total{kind=\"recovery-failed\"}"),
        Ok(0.0)
    );

    // etcd goes away: the steps fail on etcd, the host stops leading.
    drop(etcd);
    let errors = wait_query(pport, "vmlease_ha_etcd_errors_total", 15_000, |v| v >= 1.0);
    wait_query(pport, "vmlease_ha_etcd_up", 10_000, |v| v == 0.0);
    wait_query(pport, "vmlease_ha_leader", 10_000, |v| v == 0.0);
    eprintln!("etcd gone: {errors} etcd error(s) seen through Prometheus");
    h.stop();
}

/// The example alert rules of docs/monitoring.md (every ```yaml block,
/// in order, as one rules file) load in Prometheus's own checker.
#[test]
fn the_documented_alert_rules_pass_promtool() {
    let doc = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/monitoring.md"))
        .unwrap();
    let mut rules = String::new();
    let mut blocks = 0;
    for part in doc.split("```yaml\n").skip(1) {
        rules.push_str(part.split("```").next().unwrap());
        blocks += 1;
    }
    assert!(blocks >= 2, "{blocks} yaml blocks in docs/monitoring.md");
    let s = Scratch::new("promtool");
    let f = s.0.join("rules.yml");
    fs::write(&f, &rules).unwrap();
    let o = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&f)
        .output()
        .expect("promtool (package prometheus, scripts/setup-test-env.sh)");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success() && out.contains("SUCCESS"),
        "{out}\n{rules}"
    );
    eprintln!("{}", out.trim());
}
