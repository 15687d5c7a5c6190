use crate::config::parse;

fn err(text: &str) -> String {
    parse(text, "t.conf").unwrap_err().to_string()
}

#[test]
fn metrics_listen_is_off_by_default_and_must_be_an_address_and_port() {
    let base = "[ha]\nendpoints = [\"http://127.0.0.1:2379\"]\n";
    let c = parse(base, "t").unwrap().ha.unwrap();
    assert_eq!(c.metrics_listen, None);
    let c = parse(&format!("{base}metrics_listen = \"127.0.0.1:9478\"\n"), "t")
        .unwrap()
        .ha
        .unwrap();
    assert_eq!(c.metrics_listen, Some("127.0.0.1:9478".parse().unwrap()));
    let e = err(&format!("{base}metrics_listen = \"localhost\"\n"));
    assert!(
        e.contains("ha.metrics_listen") && e.contains(":3") && e.contains("'localhost'"),
        "{e}"
    );
}

#[test]
fn absent_section_means_no_recovery() {
    assert_eq!(parse("", "t").unwrap().ha, None);
}

#[test]
fn defaults_and_values() {
    let c = parse(
            "[ha]\nendpoints = [\"http://127.0.0.1:2379/\", \"http://10.0.0.2:2379\"]\nmax_attempts = 2\nretry_backoff = 0.5\n",
            "t",
        )
        .unwrap()
        .ha
        .unwrap();
    assert_eq!(
        c.endpoints,
        vec!["http://127.0.0.1:2379", "http://10.0.0.2:2379"]
    );
    assert_eq!(c.prefix, "/vmlease/");
    assert_eq!((c.max_attempts, c.retry_backoff), (2, 500));
    assert_eq!(
        (c.host_ttl, c.interval, c.max_starts_per_host),
        (10_000, 1_000, 4)
    );
    assert_eq!((c.crash_restarts, c.crash_window), (3, 600_000));
    assert_eq!((c.hooks_dir, c.hook_timeout), (None, 10_000));
    assert_eq!((c.event_ttl, c.max_events), (86_400_000, 1000));
    assert_eq!((c.migration_uri, c.migration_options), (None, vec![]));
}

#[test]
fn events_hooks_and_migration_keys() {
    let c = parse(
            "[ha]\nendpoints = [\"http://a:1\"]\nhooks_dir = \"/etc/vmlease/hooks.d\"\nhook_timeout = 3\n\
             event_ttl = 3600\nmax_events = 50\nmigration_uri = \"qemu+tls://b/system\"\n\
             migration_address = \"10.0.0.2\"\nmigration_options = [\"--unsafe\"]\n",
            "t",
        )
        .unwrap()
        .ha
        .unwrap();
    assert_eq!(c.hooks_dir.unwrap().to_str(), Some("/etc/vmlease/hooks.d"));
    assert_eq!(
        (c.hook_timeout, c.event_ttl, c.max_events),
        (3_000, 3_600_000, 50)
    );
    assert_eq!(c.migration_uri.as_deref(), Some("qemu+tls://b/system"));
    assert_eq!(c.migration_address.as_deref(), Some("10.0.0.2"));
    assert_eq!(c.migration_options, ["--unsafe"]);
    let e = err("[ha]\nendpoints = [\"http://a:1\"]\nhooks_dir = \"hooks\"\n");
    assert!(e.contains("t.conf:3") && e.contains("ha.hooks_dir"), "{e}");
    let e = err("[ha]\nendpoints = [\"http://a:1\"]\nmigration_options = [\"unsafe\"]\n");
    assert!(
        e.contains("t.conf:3") && e.contains("ha.migration_options"),
        "{e}"
    );
    let e = err("[ha]\nendpoints = [\"http://a:1\"]\nmax_events = 0\n");
    assert!(e.contains("t.conf:3") && e.contains("ha.max_events"), "{e}");
}

#[test]
fn crash_loop_keys() {
    let c = parse(
        "[ha]\nendpoints = [\"http://a:1\"]\ncrash_restarts = 5\ncrash_window = 60\n",
        "t",
    )
    .unwrap()
    .ha
    .unwrap();
    assert_eq!((c.crash_restarts, c.crash_window), (5, 60_000));
    let e = err("[ha]\nendpoints = [\"http://a:1\"]\ncrash_restarts = 0\n");
    assert!(
        e.contains("t.conf:3") && e.contains("ha.crash_restarts"),
        "{e}"
    );
}

#[test]
fn errors_name_key_and_line() {
    let e = err("host_id = 1\n[ha]\nendpoints = [\"127.0.0.1:2379\"]\n");
    assert!(e.contains("t.conf:3") && e.contains("ha.endpoints"), "{e}");
    let e = err("[ha]\nendpoints = [\"http://a:1\"]\nendpointz = 1\n");
    assert!(e.contains("t.conf:3") && e.contains("endpointz"), "{e}");
    let e = err("[ha]\nprefix = \"/x/\"\n");
    assert!(e.contains("ha.endpoints") && e.contains("required"), "{e}");
    let e = err("[ha]\nendpoints = [\"https://a:1\"]\n");
    assert!(e.contains("ha.ca_file"), "{e}");
    let e = err("[ha]\nendpoints = [\"https://a:1\"]\nca_file = \"/ca\"\ncert_file = \"/c\"\n");
    assert!(e.contains("t.conf:4") && e.contains("ha.key_file"), "{e}");
    let e = err("[ha]\nendpoints = [\"http://a:1\"]\nprefix = \"vmlease\"\n");
    assert!(e.contains("t.conf:3") && e.contains("ha.prefix"), "{e}");
    let e = err("[ha]\nendpoints = [\"http://a:1\"]\nmax_attempts = 0\n");
    assert!(
        e.contains("t.conf:3") && e.contains("ha.max_attempts"),
        "{e}"
    );
    let e = err("[ha]\nendpoints = [\"http://a:1\"]\nhost_ttl = 3\ninterval = 2\n");
    assert!(e.contains("t.conf:4") && e.contains("ha.interval"), "{e}");
    let e = err("[ha]\nendpoints = []\n");
    assert!(e.contains("t.conf:2") && e.contains("at least one"), "{e}");
}
