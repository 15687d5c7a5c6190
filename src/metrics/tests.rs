use super::*;

pub(super) fn snap() -> Snapshot {
    Snapshot {
        host_id: 3,
        host_name: "h\"3".into(),
        state: HostState::Live,
        fenced: false,
        renewal_age_ms: 250,
        renew_interval_ms: 2000,
        renew_fail_timeout_ms: 30_000,
        host_dead_timeout_ms: 60_000,
        watchdog_timeout_ms: 10_000,
        unsafe_no_watchdog: false,
        maintenance: false,
        leased_processes: 2,
        leases: 3,
        counters: Counters::default(),
        networks: vec![NetSample {
            name: "storage",
            state: "down".into(),
            probes_up: 0,
            probes: 1,
        }],
        peers: vec![PeerSample {
            host_id: 7,
            host_name: "b".into(),
            published: "live".into(),
            silent_ms: 1500,
            dead_timeout_ms: 60_000,
        }],
    }
}

#[test]
fn histogram_buckets_are_cumulative_and_inclusive() {
    let mut s = snap();
    for ms in [0, 1, 2, 3, 7000] {
        s.counters.renewal_latency.observe(ms);
    }
    let t = render(&s);
    assert!(t.contains("vmlease_renewal_latency_seconds_bucket{le=\"0.001\"} 2\n"));
    assert!(t.contains("vmlease_renewal_latency_seconds_bucket{le=\"0.002\"} 3\n"));
    assert!(t.contains("vmlease_renewal_latency_seconds_bucket{le=\"0.005\"} 4\n"));
    assert!(t.contains("vmlease_renewal_latency_seconds_bucket{le=\"5\"} 4\n"));
    assert!(t.contains("vmlease_renewal_latency_seconds_bucket{le=\"+Inf\"} 5\n"));
    assert!(t.contains("vmlease_renewal_latency_seconds_sum 7.006\n"));
    assert!(t.contains("vmlease_renewal_latency_seconds_count 5\n"));
}

#[test]
fn states_and_labels() {
    let mut s = snap();
    s.counters.fences[0] = 1;
    let t = render(&s);
    assert!(t.contains("vmlease_host_info{host_id=\"3\",host_name=\"h\\\"3\"} 1\n"));
    assert!(t.contains("vmlease_host_state{state=\"live\"} 1\n"));
    assert!(t.contains("vmlease_host_state{state=\"fencing\"} 0\n"));
    assert!(t.contains("vmlease_fences_total{reason=\"storage\"} 1\n"));
    assert!(t.contains("vmlease_network_state{network=\"storage\",state=\"down\"} 1\n"));
    assert!(t.contains("vmlease_network_state{network=\"storage\",state=\"up\"} 0\n"));
    assert!(t.contains("vmlease_peer_silence_seconds{host_id=\"7\",host_name=\"b\"} 1.5\n"));
    assert!(t.contains("vmlease_last_renewal_age_seconds 0.25\n"));
    assert!(t.contains("vmlease_leased_processes 2\n"));
    assert!(t.contains("vmlease_leases 3\n"));
}

#[test]
fn plugin_counters_render_as_a_histogram_refusals_by_reason_and_takeovers() {
    let mut c = crate::plugin::counters::PluginCounters::default();
    c.latency.observe(30);
    c.refusals[1] = 4;
    c.takeovers = 2;
    let t = render_plugin(&c);
    assert!(t.contains("vmlease_plugin_acquire_latency_seconds_bucket{le=\"0.025\"} 0\n"));
    assert!(t.contains("vmlease_plugin_acquire_latency_seconds_bucket{le=\"0.05\"} 1\n"));
    assert!(t.contains("vmlease_plugin_acquire_latency_seconds_count 1\n"));
    assert!(t.contains("vmlease_plugin_refusals_total{reason=\"leased\"} 4\n"));
    assert!(t.contains("vmlease_plugin_refusals_total{reason=\"unprotected\"} 0\n"));
    assert!(t.contains("vmlease_plugin_takeovers_total 2\n"));
}

#[test]
fn every_sample_has_a_type_line_and_no_name_repeats_its_header() {
    let t = render(&snap()) + &render_plugin(&Default::default());
    let mut typed: Vec<&str> = Vec::new();
    for l in t.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            assert!(!typed.contains(&name), "{name} typed twice");
            typed.push(name);
        } else if !l.starts_with('#') {
            let name = l.split(['{', ' ']).next().unwrap();
            let base = name
                .strip_suffix("_bucket")
                .or_else(|| name.strip_suffix("_sum"))
                .or_else(|| name.strip_suffix("_count"))
                .unwrap_or(name);
            assert!(
                typed.contains(&name) || typed.contains(&base),
                "{name} has no TYPE"
            );
        }
    }
}
