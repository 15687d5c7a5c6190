//! The daemon's Prometheus metrics, read back through the real
//! node_exporter (Debian's prometheus-node-exporter, textfile collector
//! pointed at the daemon's metrics_dir, listening on a loopback port).
//! The values must follow what happens: renewals counted, a storage probe
//! that fails, a peer gone silent, a storage cut that fences the host.
//! A metrics directory that cannot be written is logged, not fatal.
//!
//! Timings: see tests/support/daemons.rs.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::daemons::*;
use vmlease::clock::boottime_ms;

const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";
const UUID_A: [u8; 16] = [0xab; 16];

/// node_exporter on a free loopback port, reading only `dir`.
fn node_exporter(dir: &Path, log: &Path) -> (Proc, u16) {
    assert!(
        Path::new(NODE_EXPORTER).exists(),
        "{NODE_EXPORTER} is missing: install prometheus-node-exporter (scripts/setup-test-env.sh)"
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = fs::File::create(log).unwrap();
    let child = Command::new(NODE_EXPORTER)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--collector.disable-defaults")
        .arg("--collector.textfile")
        .arg(format!("--collector.textfile.directory={}", dir.display()))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    (
        Proc {
            child,
            what: "node_exporter".into(),
        },
        port,
    )
}

/// One scrape of /metrics: the body, or why not.
fn scrape(port: u16) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .map_err(|e| format!("read: {e}"))?;
    match resp.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") =>
        {
            Ok(body.to_string())
        }
        _ => Err(format!("bad response: {resp}")),
    }
}

/// The value of the sample `name` (with its labels exactly as written,
/// e.g. `vmlease_fences_total{reason="storage"}`).
fn value(body: &str, sample: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        let rest = l.strip_prefix(sample)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// Scrapes until `ok(value)` holds for `sample`; returns the value.
fn wait_metric(port: u16, sample: &str, timeout_ms: u64, ok: impl Fn(f64) -> bool) -> f64 {
    wait_until(
        &format!("{sample} through node_exporter"),
        timeout_ms,
        || {
            let body = scrape(port)?;
            match value(&body, sample) {
                Some(v) if ok(v) => Ok(v),
                Some(v) => Err(format!("{sample} = {v}")),
                None => Err(format!(
                    "no {sample} in the scrape:\n{}",
                    body.lines()
                        .filter(|l| l.starts_with("vmlease_") || l.starts_with("node_textfile"))
                        .collect::<Vec<_>>()
                        .join("\n")
                )),
            }
        },
    )
}

#[test]
fn metrics_read_back_through_node_exporter_follow_renewals_probes_peers_and_a_fence() {
    let _g = serial();
    let s = Scratch::new("metrics");
    let ls = lockspace(&s);
    let textfiles = s.0.join("textfiles");
    fs::create_dir_all(&textfiles).unwrap();

    // Host A sees the lockspace through a bind mount in its own mount
    // namespace (cut below); its storage network has one TCP probe, to a
    // listener of this test.
    let probe = TcpListener::bind("127.0.0.1:0").unwrap();
    let probe_port = probe.local_addr().unwrap().port();
    let a_view = s.0.join("a-view");
    fs::create_dir_all(&a_view).unwrap();
    let mut a = Host::new(
        &s,
        1,
        &a_view,
        &format!(
            "unsafe_no_watchdog = true\nmetrics_dir = \"{}\"\n\
             [storage]\nprobes = [ {{ type = \"tcp\", target = \"127.0.0.1:{probe_port}\" }} ]\n\
             timeout = 1\nprobe_timeout = 0.2\n",
            textfiles.display()
        ),
    );
    // Host B's metrics directory does not exist: logged, not fatal.
    let missing = s.0.join("no-such-dir");
    let mut b = Host::new(
        &s,
        2,
        &ls,
        &format!(
            "unsafe_no_watchdog = true\nmetrics_dir = \"{}\"\n",
            missing.display()
        ),
    );
    a.start_with_own_view(&ls, &a_view);
    b.start(&[]);
    b.wait_log("metrics: write metrics");
    b.wait_log("the daemon goes on without them");

    let (_ne, port) = node_exporter(&textfiles, &s.0.join("node_exporter.log"));
    let t0 = boottime_ms();
    let first = wait_metric(port, "vmlease_renewals_total", 10_000, |v| v >= 1.0);
    eprintln!(
        "first scrape with vmlease metrics after {} ms",
        boottime_ms() - t0
    );
    let body = scrape(port).unwrap();
    assert_eq!(
        value(&body, "node_textfile_scrape_error"),
        Some(0.0),
        "node_exporter could not parse vmlease.prom:\n{body}"
    );
    assert_eq!(
        value(
            &body,
            "vmlease_host_info{host_id=\"1\",host_name=\"host-1.test\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&body, "vmlease_renew_fail_timeout_seconds"),
        Some(1.5)
    );
    assert_eq!(value(&body, "vmlease_host_dead_timeout_seconds"), Some(4.0));
    assert_eq!(value(&body, "vmlease_fenced"), Some(0.0));
    // Renewals go on: the counter grows, the age stays below F, and
    // every renewal is in the histogram.
    let later = wait_metric(port, "vmlease_renewals_total", 5000, |v| v >= first + 5.0);
    let body = scrape(port).unwrap();
    let age = value(&body, "vmlease_last_renewal_age_seconds").unwrap();
    assert!(age < 1.5, "renewal age {age} s, F is 1.5 s");
    let count = value(&body, "vmlease_renewal_latency_seconds_count").unwrap();
    assert!(count >= later, "histogram count {count} < renewals {later}");
    assert_eq!(
        value(&body, "vmlease_renewal_latency_seconds_bucket{le=\"+Inf\"}"),
        Some(count)
    );
    eprintln!(
        "renewals {first} -> {later}; age {age} s; latency sum {:?} s over {count}",
        value(&body, "vmlease_renewal_latency_seconds_sum")
    );
    wait_metric(
        port,
        "vmlease_network_state{network=\"storage\",state=\"up\"}",
        5000,
        |v| v == 1.0,
    );
    wait_metric(
        port,
        "vmlease_peer_state{host_id=\"2\",host_name=\"host-2.test\",state=\"live\"}",
        5000,
        |v| v == 1.0,
    );

    // A leased stand-in QEMU on host A (its plugin side writes the real
    // lockspace path).
    let mut a_plugin = a.cfg.clone();
    a_plugin.lockspace_dir = ls.clone();
    let a_host = Host {
        cfg: a_plugin,
        daemon: None,
        ..Host::new(&s, 1, &a_view, "unsafe_no_watchdog = true\n")
    };
    let qa = standin_qemu();
    lease(&a_host, UUID_A, "web", &qa, Some("/images/web.qcow2")).unwrap();
    wait_metric(port, "vmlease_leased_processes", 5000, |v| v == 1.0);
    // The domain lease and the disk lease.
    wait_metric(port, "vmlease_leases", 5000, |v| v == 2.0);

    // Fault 1: the storage probe's listener goes away.
    drop(probe);
    let lost = wait_metric(
        port,
        "vmlease_network_state{network=\"storage\",state=\"lost\"}",
        8000,
        |v| v == 1.0,
    );
    assert_eq!(lost, 1.0);
    assert_eq!(
        value(
            &scrape(port).unwrap(),
            "vmlease_network_probes_up{network=\"storage\"}"
        ),
        Some(0.0)
    );

    // Fault 2: peer B stops (SIGSTOP): its silence grows past D.
    b.daemon.as_ref().unwrap().signal(libc::SIGSTOP);
    let silent = wait_metric(
        port,
        "vmlease_peer_silence_seconds{host_id=\"2\",host_name=\"host-2.test\"}",
        10_000,
        |v| v > 4.0,
    );
    eprintln!("peer B silent {silent} s through node_exporter");
    b.daemon.as_ref().unwrap().signal(libc::SIGCONT);

    // Fault 3: A's storage is cut: renewals fail, A fences after F and
    // kills its QEMU.
    let apid = a.daemon.as_ref().unwrap().pid();
    sh(&format!(
        "nsenter -t {apid} -m umount -l '{}'",
        a_view.display()
    ));
    wait_metric(port, "vmlease_fenced", 10_000, |v| v == 1.0);
    let body = scrape(port).unwrap();
    assert_eq!(
        value(&body, "vmlease_fences_total{reason=\"storage\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        value(&body, "vmlease_fence_kills_total"),
        Some(1.0),
        "{body}"
    );
    assert!(value(&body, "vmlease_renewal_failures_total").unwrap() >= 1.0);
    let age = value(&body, "vmlease_last_renewal_age_seconds").unwrap();
    assert!(age >= 1.5, "fenced with a renewal age of {age} s (< F)");
    wait_metric(port, "vmlease_leased_processes", 5000, |v| v == 0.0);
    wait_metric(port, "vmlease_leases", 5000, |v| v == 0.0);
    eprintln!(
        "fenced: renewal age {age} s, failures {:?}",
        value(&body, "vmlease_renewal_failures_total")
    );
    drop(qa);
    // B kept running all along despite its unwritable metrics directory.
    assert!(!b.daemon.as_mut().unwrap().exited(), "{}", b.log_text());
}

/// The plugin's metrics through a real libvirtd (tests/support/libvirt)
/// and the real node_exporter: a start on an unprotected host refused in
/// the pre-exec child, a start that acquires, and a start refused because
/// another domain holds its `<lease>`, each read back as
/// `vmlease_plugin_*` in the daemon's textfile.
mod real_libvirt {
    use super::*;
    use support::libvirt::{Cluster, Disk, Domain, Format, HostSpec, Lease};
    use support::util::text;

    fn conf(shared: &Path, textfiles: &Path) -> String {
        format!(
            "host_id = 1\nhost_name = \"host-a.test\"\nlockspace_dir = \"{}\"\nstate_dir = \"/run/vmlease\"\n\
             renew_interval = 0.5\nrenew_fail_timeout = 3\nkill_timeout = 1\nwatchdog_timeout = 2\n\
             host_dead_timeout = 7\nio_timeout = 1\nlock_timeout = 1\nunsafe_no_watchdog = true\n\
             allow_local_lockspace = true\nmetrics_dir = \"{}\"\n\
             reset_action = \"record\"\nreset_record_file = \"/run/vmlease/reset\"\n",
            shared.join("lockspace").display(),
            textfiles.display()
        )
    }

    fn refusals(port: u16, reason: &str, want: f64) {
        wait_metric(
            port,
            &format!("vmlease_plugin_refusals_total{{reason=\"{reason}\"}}"),
            10_000,
            |v| v == want,
        );
    }

    #[test]
    fn plugin_acquires_and_refusals_read_back_through_node_exporter() {
        let _g = serial();
        let c0 = Cluster::new("metrics-plugin");
        let shared = c0.shared_dir();
        let mut c = c0;
        let textfiles = shared.join("textfiles");
        fs::create_dir_all(&textfiles).unwrap();
        vmlease::lockspace::Lockspace::init(&shared.join("lockspace"), 16).unwrap();
        c.add_host(HostSpec::new("a").vmlease(&conf(&shared, &textfiles)));
        let a = c.host("a");
        let lease = Lease::new("ls", "shared-lease", "/dev/null");
        let img1 = a.create_image("web.qcow2", Format::Qcow2, 16);
        let img2 = a.create_image("web2.qcow2", Format::Qcow2, 16);
        let web = Domain::new("web")
            .tcg()
            .disk(Disk::new(&img1))
            .lease(lease.clone());
        let web2 = Domain::new("web2")
            .tcg()
            .disk(Disk::new(&img2))
            .lease(lease);

        // 1. No watchdog daemon: the plugin refuses in the pre-exec child
        // (no hook installed here). Counted in /run/vmlease.
        let o = a.create(&web);
        assert!(!o.status.success(), "started on an unprotected host");
        assert!(text(&o).contains("host not protected"), "{}", text(&o));
        let counted = vmlease::plugin::counters::load(&a.vmlease_state_dir()).unwrap();
        assert_eq!(
            counted.refusals,
            [1, 0, 0, 0, 0, 0],
            "counters after the refused start: {counted:?}"
        );

        // 2. The daemon runs (and writes the textfile): a start acquires.
        let _daemon = a.spawn_in_host(
            &[
                bin("vmlease-watchdog").to_str().unwrap(),
                "--config",
                "/etc/libvirt/qemu-vmlease.conf",
            ],
            &[],
        );
        let (_ne, port) = node_exporter(&textfiles, &c.scratch().join("node_exporter.log"));
        // The refusal made before the daemon started is there.
        refusals(port, "unprotected", 1.0);
        let mut cfg = vmlease::config::parse(&conf(&shared, &textfiles), "a.conf").unwrap();
        cfg.state_dir = a.vmlease_state_dir();
        wait_until("host a to be protected", 10_000, || {
            vmlease::status::protected_status(&cfg)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        a.create_ok(&web);
        let n = wait_metric(
            port,
            "vmlease_plugin_acquire_latency_seconds_count",
            10_000,
            |v| v == 1.0,
        );
        let body = scrape(port).unwrap();
        assert_eq!(
            value(&body, "node_textfile_scrape_error"),
            Some(0.0),
            "{body}"
        );
        let sum = value(&body, "vmlease_plugin_acquire_latency_seconds_sum").unwrap();
        assert!(sum > 0.0 && sum < 3.0, "acquire took {sum} s");
        assert_eq!(
            value(
                &body,
                "vmlease_plugin_acquire_latency_seconds_bucket{le=\"+Inf\"}"
            ),
            Some(n)
        );
        eprintln!("one acquire through libvirtd: {sum} s");

        // 3. web2 wants the lease web holds: refused in libvirtd.
        let o = a.create(&web2);
        assert!(!o.status.success(), "web2 started with web's lease");
        assert!(text(&o).contains("is leased"), "{}", text(&o));
        refusals(port, "leased", 1.0);
        let body = scrape(port).unwrap();
        assert_eq!(
            value(
                &body,
                "vmlease_plugin_refusals_total{reason=\"unprotected\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&body, "vmlease_plugin_acquire_latency_seconds_count"),
            Some(1.0),
            "a refused acquire is not in the latency histogram"
        );
        assert_eq!(value(&body, "vmlease_plugin_takeovers_total"), Some(0.0));
        a.destroy_ok("web");
    }
}
