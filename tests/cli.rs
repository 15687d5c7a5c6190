//! The `vmlease` command against live multi-host lockspaces: real watchdog
//! daemons (tests/support/daemons.rs), stand-in QEMUs leased through the
//! plugin's own code, real faults (a storage cut, a management fence) for
//! `can-evacuate`, and a lockspace that never answers. The hook has its
//! own suite (tests/hook.rs).
//!
//! Every command runs with a time bound: a CLI that hangs fails the test
//! with its output instead of hanging it. Every `--json` output is parsed
//! and each of its keys must be documented in docs/cli.md.

mod support;

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::daemons::*;
use vmlease::clock::boottime_ms;
use vmlease::hosts::HostState;
use vmlease::resource::{format_uuid, Resource};

const UUID_A: [u8; 16] = [0xaa; 16];
const UUID_B: [u8; 16] = [0xbb; 16];

/// Runs `vmlease ARGS` (no stdin), killing it after `limit_ms`.
fn vmlease_within(limit_ms: u64, args: &[&str]) -> (Output, u64) {
    let start = boottime_ms();
    let mut child = Command::new(bin("vmlease"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drained while it runs: a large output must not block it.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if boottime_ms() - start > limit_ms {
            let _ = child.kill();
            let _ = child.wait();
            let (o, e) = (out_t.join().unwrap(), err_t.join().unwrap());
            panic!(
                "vmlease {args:?} still ran after {limit_ms} ms; output so far: {}{}",
                String::from_utf8_lossy(&o),
                String::from_utf8_lossy(&e)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let took = boottime_ms() - start;
    (
        Output {
            status,
            stdout: out_t.join().unwrap(),
            stderr: err_t.join().unwrap(),
        },
        took,
    )
}

fn vmlease(conf: &Path, args: &[&str]) -> Output {
    let mut all = vec!["--config", conf.to_str().unwrap()];
    all.extend_from_slice(args);
    vmlease_within(20_000, &all).0
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn docs() -> String {
    fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md")).unwrap()
}

/// Parses `--json` output: one line, valid JSON, every key documented in
/// docs/cli.md.
fn json(o: &Output) -> json::Value {
    let s = stdout(o);
    assert_eq!(s.lines().count(), 1, "--json prints one line: {}", text(o));
    let v = json::parse(s.trim_end()).unwrap_or_else(|e| panic!("invalid JSON ({e}): {s}"));
    // Compact, in the order written, with the documented escapes.
    assert_eq!(json::render(&v), s.trim_end(), "--json formatting changed");
    fn walk(v: &json::Value, docs: &str) {
        match v {
            json::Value::Obj(kv) => {
                for (k, x) in kv {
                    assert!(
                        docs.contains(&format!("`{k}`")),
                        "JSON key {k:?} is not in docs/cli.md"
                    );
                    walk(x, docs);
                }
            }
            json::Value::Arr(xs) => xs.iter().for_each(|x| walk(x, docs)),
            _ => {}
        }
    }
    walk(&v, &docs());
    v
}

// ------------------------------------------------------------- the manual

#[test]
fn help_documents_every_command_and_docs_follow_it() {
    let (o, _) = vmlease_within(5000, &["--help"]);
    assert_eq!(code(&o), 0);
    let overview = stdout(&o);
    let docs = docs();
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let docs_flat = squash(&docs);
    for c in vmlease::cli::help::COMMANDS {
        let head = format!("{} {}", c.name, c.synopsis);
        let head = head.trim_end();
        assert!(
            overview.contains(&format!("  {head}")),
            "the overview lacks {}: {overview}",
            c.name
        );
        for argv in [vec!["help", c.name], vec![c.name, "--help"]] {
            let (o, _) = vmlease_within(5000, &argv);
            assert_eq!(code(&o), 0, "{argv:?}: {}", text(&o));
            assert!(stdout(&o).starts_with("usage: vmlease"), "{}", text(&o));
            assert!(stdout(&o).contains(c.body.lines().next().unwrap()));
        }
        // docs/cli.md has a section per command with its exit status.
        assert!(
            docs.contains(&format!("## {head}\n")),
            "docs/cli.md has no heading '## {head}'"
        );
        if let Some(exit) = c.body.split("Exit status:").nth(1) {
            let want = squash(&format!("Exit status:{exit}"));
            assert!(
                docs_flat.contains(&want),
                "docs/cli.md does not give {}'s exit status as the manual does: {want}",
                c.name
            );
        }
    }
}

#[test]
fn usage_errors_exit_2_with_the_synopsis() {
    for (argv, want) in [
        (&["frobnicate"][..], "unknown command 'frobnicate'"),
        (
            &["leases", "--hots", "1"][..],
            "usage: vmlease [--config FILE] [--json] leases",
        ),
        (&["can-evacuate"][..], "can-evacuate needs more arguments"),
        (&["hosts", "extra"][..], "unexpected argument 'extra'"),
        (&["release"][..], "release needs --domain UUID"),
        (
            &["release", "--domain", "nope"][..],
            "--domain takes a UUID",
        ),
        (
            &["init", "--max-hosts", "0"][..],
            "--max-hosts must be between 1 and 2000",
        ),
        (&[][..], "no command given"),
    ] {
        let (o, _) = vmlease_within(5000, argv);
        assert_eq!(code(&o), 2, "{argv:?}: {}", text(&o));
        assert!(text(&o).contains(want), "{argv:?}: {}", text(&o));
    }
}

// ------------------------------------------------------ setup commands

#[test]
fn check_config_reports_timeline_lockspace_and_errors() {
    let _g = serial();
    let s = Scratch::new("cli-cc");
    let ls = lockspace(&s);
    let a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    let o = vmlease(&a.conf, &["check-config"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("latest possible write by this host"), "{t}");
    assert!(
        t.contains(&format!(
            "lockspace {}: initialised, 16 host slots on ",
            ls.display()
        )),
        "{t}"
    );
    assert!(t.contains("warning: unsafe_no_watchdog = true"), "{t}");
    let j = json(&vmlease(&a.conf, &["--json", "check-config"]));
    assert_eq!(j.get("host_dead_timeout_ms").num(), 4000);
    assert_eq!(j.get("lockspace").get("state").str(), "ok");

    let bad = s.0.join("bad.conf");
    fs::write(&bad, "host_id = 1\nkill_timeout = \"soon\"\n").unwrap();
    let o = vmlease(&bad, &["check-config"]);
    assert_eq!(code(&o), 2);
    assert!(text(&o).contains("bad.conf:2"), "{}", text(&o));
    fs::write(
        &bad,
        format!(
            "renew_interval = 1\nlockspace_dir = \"{}/nowhere\"\n",
            s.0.display()
        ),
    )
    .unwrap();
    let o = vmlease(&bad, &["check-config"]);
    assert_eq!(code(&o), 1, "no host_id: {}", text(&o));
    assert!(text(&o).contains("host_id is not set"), "{}", text(&o));
    assert!(text(&o).contains("missing: lockspace"), "{}", text(&o));
    let o = vmlease(&s.0.join("missing.conf"), &["check-config"]);
    assert_eq!(code(&o), 2);
}

#[test]
fn init_creates_once_and_refuses_without_the_parent() {
    let _g = serial();
    let s = Scratch::new("cli-init");
    let conf = |dir: &Path| {
        let c = s.0.join("init.conf");
        fs::write(
            &c,
            format!(
                "host_id = 1\nlockspace_dir = \"{}\"\nallow_local_lockspace = true\n",
                dir.display()
            ),
        )
        .unwrap();
        c
    };
    let c = conf(&s.0.join("ls"));
    let o = vmlease(&c, &["init", "--max-hosts", "8"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(
        text(&o).contains("initialised lockspace") && text(&o).contains("(8 host slots)"),
        "{}",
        text(&o)
    );
    let j = json(&vmlease(&c, &["--json", "init"]));
    assert_eq!(j.get("created"), &json::Value::Bool(false));
    assert_eq!(j.get("max_hosts").num(), 8);
    assert!(!j.get("filesystem").get("type").str().is_empty());
    let o = vmlease(&c, &["init", "--max-hosts", "16"]);
    assert_eq!(code(&o), 0);
    assert!(
        text(&o).contains("already initialised (8 host slots)"),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains("--max-hosts 16 is ignored"),
        "{}",
        text(&o)
    );

    // An unmounted shared filesystem: init must not create a local one.
    let c = conf(&s.0.join("not-mounted/vmlease"));
    let o = vmlease(&c, &["init"]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(
        text(&o).contains("is the shared filesystem mounted?"),
        "{}",
        text(&o)
    );
    assert!(!s.0.join("not-mounted").exists());
}

// ------------------------------------------------- the cluster, live

#[test]
fn status_hosts_and_leases_on_a_live_cluster() {
    let _g = serial();
    let s = Scratch::new("cli-live");
    let ls = lockspace(&s);
    let mut a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    let mut b = Host::new(&s, 2, &ls, "unsafe_no_watchdog = true\n");
    let o = vmlease(&a.conf, &["status"]);
    assert_eq!(code(&o), 1, "no daemon yet: {}", text(&o));
    assert!(text(&o).contains("protected:   NO"), "{}", text(&o));
    let o = vmlease(&b.conf, &["hosts"]);
    assert_eq!(code(&o), 0);
    assert!(text(&o).contains("no host has joined"), "{}", text(&o));
    a.start(&[]);
    b.start(&[]);
    let q = standin_qemu();
    lease(&a, UUID_A, "web", &q, Some("/images/web.qcow2")).unwrap();

    let o = vmlease(&a.conf, &["status"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("host:        1 (host-1.test)"), "{t}");
    assert!(t.contains("protected:   yes"), "{t}");
    assert!(t.contains("fence:       none"), "{t}");
    assert!(
        t.contains("disk /images/web.qcow2") && t.contains("held (version 1)"),
        "{t}"
    );
    let j = json(&vmlease(&a.conf, &["--json", "status"]));
    assert_eq!(j.get("protected"), &json::Value::Bool(true));
    assert_eq!(j.get("host_name").str(), "host-1.test");
    let p = &j.get("processes").arr()[0];
    assert_eq!(p.get("alive"), &json::Value::Bool(true));
    assert_eq!(p.get("lease_records").arr().len(), 2);
    for l in p.get("lease_records").arr() {
        assert_eq!(l.get("state").str(), "held", "{l:?}");
    }
    // The package's maintainer scripts grep for these (compact JSON).
    let raw = stdout(&vmlease(&a.conf, &["--json", "status"]));
    assert!(
        raw.contains("\"alive\":true") && raw.contains("\"daemon\":{"),
        "{raw}"
    );

    let o = vmlease(&b.conf, &["hosts"]);
    assert_eq!(code(&o), 0);
    let t = text(&o);
    let header = t.lines().next().unwrap();
    assert!(header.starts_with("ID  NAME"), "{t}");
    let row1 = t.lines().find(|l| l.contains("host-1.test")).unwrap();
    assert!(row1.contains("live: do not evacuate"), "{t}");
    // Aligned: every column starts where its header does; a renewing
    // host's conclusion is its published state.
    assert_eq!(row1.find("live"), header.find("STATE"), "{t}");
    assert_eq!(
        row1[header.find("PUBLISHED").unwrap()..].split(' ').next(),
        Some("live"),
        "{t}"
    );
    assert!(t.contains("host-2.test") && t.contains("this host"), "{t}");
    let j = json(&vmlease(&b.conf, &["--json", "hosts"]));
    let h1 = j
        .arr()
        .iter()
        .find(|h| h.get("host_id").num() == 1)
        .unwrap();
    assert_eq!(h1.get("verdict").str(), "alive");
    assert_eq!(h1.get("state").str(), "live");
    assert_eq!(h1.get("concluded_state").str(), "live");
    assert_eq!(h1.get("observed"), &json::Value::Bool(true));

    let o = vmlease(&b.conf, &["leases", "--host", "1"]);
    let t = text(&o);
    assert_eq!(code(&o), 0, "{t}");
    assert!(
        t.contains("/images/web.qcow2") && t.contains(&format!("host 1 pid {}", q.pid())),
        "{t}"
    );
    let o = vmlease(&b.conf, &["leases", "--host", "host-1.test"]);
    assert_eq!(text(&o).lines().count(), 3, "{}", text(&o));
    let uuid = format_uuid(&UUID_A);
    let o = vmlease(&b.conf, &["leases", "--domain", &uuid.to_uppercase()]);
    assert_eq!(text(&o).lines().count(), 3, "{}", text(&o));
    let o = vmlease(&b.conf, &["leases", "--host", "2"]);
    assert!(text(&o).contains("no lease records"), "{}", text(&o));
    let o = vmlease(&b.conf, &["leases", "--host", "nosuch"]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    let j = json(&vmlease(&b.conf, &["--json", "leases"]));
    assert_eq!(j.arr().len(), 2);
    let h = &j.arr()[0].get("holders").arr()[0];
    assert_eq!(h.get("pid").num(), q.pid() as i128);
    assert_eq!(h.get("domain_name").str(), "web");

    // A corrupt record: listed as CORRUPT, never free; fails the listing,
    // makes can-evacuate say "cannot tell", and dump names the damage.
    let disk = Resource::disk("/images/web.qcow2", false);
    let path = ls.join("leases").join(disk.key());
    let good = fs::read(&path).unwrap();
    fs::write(&path, &good[..good.len() - 5]).unwrap();
    let o = vmlease(&b.conf, &["leases"]);
    assert_eq!(code(&o), 1);
    assert!(
        text(&o).contains("CORRUPT") && text(&o).contains("never treated as free"),
        "{}",
        text(&o)
    );
    let o = vmlease(&b.conf, &["can-evacuate", "1"]);
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert!(
        text(&o).contains("cannot tell: 1 lease record(s) cannot be read"),
        "{}",
        text(&o)
    );
    let o = vmlease(&b.conf, &["dump", path.to_str().unwrap()]);
    assert_eq!(code(&o), 1);
    assert!(text(&o).contains("CORRUPT lease record"), "{}", text(&o));
    fs::write(&path, &good).unwrap();
    let o = vmlease(&b.conf, &["dump", path.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(
        text(&o).contains("resource: /images/web.qcow2") && text(&o).contains("valid lease record")
    );
    for (f, kind) in [
        (ls.join("hosts"), "host table"),
        (ls.join("VMLEASE"), "lockspace header"),
        (a.cfg.state_dir.join("status"), "status"),
    ] {
        let j = json(&vmlease(&b.conf, &["--json", "dump", f.to_str().unwrap()]));
        assert_eq!(j.get("kind").str(), kind);
    }
}

/// can-evacuate across a storage fence: A loses its lockspace, kills its
/// QEMU, but cannot publish anything; B says "not yet" (with the time
/// left) until it has seen A silent for D, then "yes" - never before.
#[test]
fn can_evacuate_answers_not_yet_then_yes_across_a_storage_fence() {
    let _g = serial();
    let s = Scratch::new("cli-evac");
    let ls = lockspace(&s);
    let a_view = s.0.join("a-view");
    fs::create_dir_all(&a_view).unwrap();
    let mut a = Host::new(&s, 1, &a_view, "unsafe_no_watchdog = true\n");
    let mut b = Host::new(
        &s,
        2,
        &ls,
        "unsafe_no_watchdog = true\ntrust_unsafe_peers = true\n",
    );
    a.start_with_own_view(&ls, &a_view);
    b.start(&[]);
    let mut a_plugin = Host::new(&s, 1, &a_view, "unsafe_no_watchdog = true\n");
    a_plugin.cfg.lockspace_dir = ls.clone();
    let mut q = standin_qemu();
    lease(&a_plugin, UUID_A, "web", &q, None).unwrap();

    // Never "yes" while A renews; "its host is alive" once B's daemon has
    // seen A's record change (right after B's start it has seen it once,
    // and counts from that read).
    wait_until("B's can-evacuate to call host 1 alive", 3000, || {
        let o = vmlease(&b.conf, &["can-evacuate", "host-1.test"]);
        assert_eq!(code(&o), 1, "{}", text(&o));
        assert!(
            text(&o).contains("not yet: 1 of 1 lease(s) of host 1 (host-1.test) are held"),
            "{}",
            text(&o)
        );
        if text(&o).contains("its host is alive") {
            Ok(())
        } else {
            Err(text(&o))
        }
    });
    let o = vmlease(&b.conf, &["can-evacuate", "nosuchhost"]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(
        text(&o).contains("no host named 'nosuchhost'"),
        "{}",
        text(&o)
    );

    let apid = a.daemon.as_ref().unwrap().pid();
    sh(&format!(
        "nsenter -t {apid} -m umount -l '{}'",
        a_view.display()
    ));
    let a_last = wait_until("A's renewals to stop", 3000, || {
        let st = a.status();
        if boottime_ms() - st.last_renewal_ms > 3 * R {
            Ok(st.last_renewal_ms)
        } else {
            Err("renewing".into())
        }
    });
    let mut safe_in = Vec::new();
    let yes = wait_until("can-evacuate to say yes", D + 5000, || {
        let o = vmlease(&b.conf, &["--json", "can-evacuate", "1"]);
        let j = json(&o);
        match code(&o) {
            0 => Ok((boottime_ms(), j)),
            1 => {
                if let json::Value::Num(ms) = j.get("safe_in_ms") {
                    safe_in.push(*ms);
                }
                Err(j.get("answer").str().to_string())
            }
            c => Err(format!("exit {c}: {}", text(&o))),
        }
    });
    assert!(
        yes.0 >= a_last + D,
        "yes {} ms after A's last renewal, before D",
        yes.0 - a_last
    );
    assert!(
        !safe_in.is_empty() && safe_in.windows(2).all(|w| w[1] <= w[0]) && safe_in[0] <= D as i128,
        "the 'not yet' answers must count down to D: {safe_in:?}"
    );
    let answer = yes.1.get("answer").str();
    assert!(
        answer.starts_with("yes: all 1 lease(s) of host 1 (host-1.test) may be taken over now"),
        "{answer}"
    );
    assert!(answer.contains("observed unchanged"), "{answer}");
    assert_eq!(yes.1.get("leases_takeable").num(), 1);
    assert!(q.exited(), "A fenced its QEMU long before");
    let o = vmlease(&b.conf, &["hosts"]);
    assert!(text(&o).contains("dead: evacuate"), "{}", text(&o));
    // STATE says what B concludes (dead), PUBLISHED what A wrote last.
    let t = text(&o);
    let header = t.lines().next().unwrap();
    let row1 = t.lines().find(|l| l.contains("host-1.test")).unwrap();
    let col = |h: &str| row1[header.find(h).unwrap()..].split(' ').next().unwrap();
    assert_eq!((col("STATE"), col("PUBLISHED")), ("dead", "live"), "{t}");
    let j = json(&vmlease(&b.conf, &["--json", "hosts"]));
    let h1 = j
        .arr()
        .iter()
        .find(|h| h.get("host_id").num() == 1)
        .unwrap();
    assert_eq!(h1.get("concluded_state").str(), "dead");
    assert_eq!(h1.get("state").str(), "live");
    // The same view without trust_unsafe_peers: A runs without a hardware
    // watchdog, so its silence proves nothing, however long.
    let strict = s.0.join("b-strict.conf");
    let conf = fs::read_to_string(&b.conf).unwrap();
    fs::write(&strict, conf.replace("trust_unsafe_peers = true\n", "")).unwrap();
    let o = vmlease(&strict, &["can-evacuate", "1"]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(
        stdout(&o).starts_with("no: host 1 (host-1.test) is silent")
            && text(&o).contains("unsafe_no_watchdog"),
        "{}",
        text(&o)
    );
    let o = vmlease(&strict, &["hosts"]);
    assert!(text(&o).contains("no watchdog: silent"), "{}", text(&o));
}

/// can-evacuate across a management fence: A keeps renewing while its
/// management network is up ("not yet": its VMs run), then loses it, kills
/// its VMs, releases their leases and publishes fenced-clean: "yes" at
/// once, long before D, without waiting for silence.
#[test]
fn can_evacuate_says_yes_at_once_when_a_host_publishes_fenced_clean() {
    let _g = serial();
    let s = Scratch::new("cli-evac-mgmt");
    let ls = lockspace(&s);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let extra = format!(
        "unsafe_no_watchdog = true\n[management]\nprobes = [ {{ type = \"tcp\", target = \"127.0.0.1:{port}\" }} ]\n\
         timeout = 1\nprobe_timeout = 0.3\npolicy = \"fence\"\n"
    );
    let mut a = Host::new(&s, 1, &ls, &extra);
    let mut b = Host::new(&s, 2, &ls, "unsafe_no_watchdog = true\n");
    a.start(&[]);
    b.start(&[]);
    wait_until("A's management network to be up", 3000, || {
        let st = a.status();
        match st.networks.iter().find(|n| n.name == "management") {
            Some(n) if n.state == "up" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let mut q = standin_qemu();
    lease(&a, UUID_B, "db", &q, None).unwrap();
    // "Renewing" needs a renewal of A between B's daemon's last table
    // read and this command's read: it depends on the two hosts' renewal
    // phases, so ask until one falls in between (always "no" meanwhile).
    wait_until("can-evacuate to say A renews", 2000, || {
        let o = vmlease(&b.conf, &["can-evacuate", "1"]);
        assert_eq!(code(&o), 1, "{}", text(&o));
        if text(&o).contains("its host is alive (state live, renewing)") {
            Ok(())
        } else {
            Err(text(&o))
        }
    });

    drop(listener);
    let cut = boottime_ms();
    let yes = wait_until("can-evacuate to say yes after A's fence", 5000, || {
        let o = vmlease(&b.conf, &["can-evacuate", "1"]);
        if code(&o) == 0 {
            Ok((boottime_ms(), text(&o)))
        } else {
            Err(text(&o))
        }
    });
    eprintln!(
        "management lost -> can-evacuate yes after {} ms",
        yes.0 - cut
    );
    assert!(
        yes.0 - cut < D,
        "yes only after {} ms: a fenced-clean host needs no D",
        yes.0 - cut
    );
    assert!(q.exited(), "A's fence killed its QEMU");
    assert!(
        yes.1.contains("fenced-clean") || yes.1.contains("holds no lease and is down"),
        "{}",
        yes.1
    );
    assert_eq!(a.status().state, HostState::FencedClean);
    let o = vmlease(&b.conf, &["hosts"]);
    assert!(text(&o).contains("fenced-clean: evacuate"), "{}", text(&o));
    let o = vmlease(&a.conf, &["status"]);
    assert_eq!(code(&o), 1, "a fenced host is not protected: {}", text(&o));
    assert!(
        text(&o).contains("fence:       management network lost"),
        "{}",
        text(&o)
    );
}

#[test]
fn admin_release_refuses_a_running_qemu_and_frees_a_dead_one() {
    let _g = serial();
    let s = Scratch::new("cli-release");
    let ls = lockspace(&s);
    let mut a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    a.start(&[]);
    let q = standin_qemu();
    lease(&a, UUID_A, "web", &q, Some("/images/web.qcow2")).unwrap();
    let uuid = format_uuid(&UUID_A);
    let o = vmlease(&a.conf, &["release", "--domain", &uuid]);
    assert_eq!(code(&o), 1);
    assert!(text(&o).contains("runs on this host"), "{}", text(&o));
    // With the daemon frozen nothing releases on its own.
    a.daemon.as_ref().unwrap().signal(libc::SIGSTOP);
    drop(q);
    let dom = Resource::domain(&uuid);
    let disk = Resource::disk("/images/web.qcow2", false);
    assert_eq!(holders(&ls, &dom).len(), 1);
    let o = vmlease(&a.conf, &["--json", "release", "--domain", &uuid]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let j = json(&o);
    assert_eq!(j.get("released").arr().len(), 2);
    assert_eq!(j.get("registry_entries_removed").num(), 1);
    assert!(holders(&ls, &dom).is_empty() && holders(&ls, &disk).is_empty());
    let o = vmlease(&a.conf, &["release", "--domain", &uuid]);
    assert_eq!(code(&o), 0);
    assert!(text(&o).contains("no lease of domain"), "{}", text(&o));
    a.daemon.as_ref().unwrap().signal(libc::SIGCONT);
}

/// A lockspace that never answers (its files are FIFOs nobody writes):
/// every command gives up after its deadline with exit 3, it never hangs.
#[test]
fn a_hung_lockspace_gives_cannot_tell_not_a_hang() {
    let _g = serial();
    let s = Scratch::new("cli-hung");
    let ls = lockspace(&s);
    let mut a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    let mut b = Host::new(&s, 2, &ls, "unsafe_no_watchdog = true\n");
    a.start(&[]);
    b.start(&[]);
    let q = standin_qemu();
    lease(&a, UUID_A, "web", &q, None).unwrap();
    // Freeze A's daemon (it would fence on the hung storage) and B's.
    a.daemon.as_ref().unwrap().signal(libc::SIGSTOP);
    b.daemon.as_ref().unwrap().signal(libc::SIGSTOP);
    let io = b.cfg.io_timeout;
    let key = Resource::domain(&format_uuid(&UUID_A)).key();
    let record = ls.join("leases").join(&key);
    let saved = fs::read(&record).unwrap();
    fs::remove_file(&record).unwrap();
    sh(&format!("mkfifo '{}'", record.display()));
    let conf = b.conf.to_str().unwrap();
    for argv in [
        &["--config", conf, "leases"][..],
        &["--config", conf, "can-evacuate", "1"][..],
    ] {
        let (o, took) = vmlease_within(10 * io + 5000, argv);
        assert_eq!(code(&o), 3, "{argv:?}: {}", text(&o));
        assert!(
            text(&o).contains("no answer from storage"),
            "{argv:?}: {}",
            text(&o)
        );
        eprintln!("{argv:?}: gave up after {took} ms");
    }
    let (o, _) = vmlease_within(
        10 * io + 5000,
        &["--config", a.conf.to_str().unwrap(), "status"],
    );
    assert!(text(&o).contains("no answer from storage"), "{}", text(&o));
    fs::remove_file(&record).unwrap();
    fs::write(&record, &saved).unwrap();

    let hosts = ls.join("hosts");
    let table = fs::read(&hosts).unwrap();
    fs::remove_file(&hosts).unwrap();
    sh(&format!("mkfifo '{}'", hosts.display()));
    for argv in [
        &["--config", conf, "hosts"][..],
        &["--config", conf, "can-evacuate", "1"][..],
    ] {
        let (o, took) = vmlease_within(10 * io + 5000, argv);
        assert_eq!(code(&o), 3, "{argv:?}: {}", text(&o));
        assert!(
            took < io + 2000,
            "{argv:?} took {took} ms with io_timeout {io} ms"
        );
    }
    fs::remove_file(&hosts).unwrap();
    fs::write(&hosts, &table).unwrap();
    a.daemon.as_ref().unwrap().signal(libc::SIGCONT);
    b.daemon.as_ref().unwrap().signal(libc::SIGCONT);
}

/// The `--json` output of every command that has one, on a live
/// two-host cluster, keeps the keys, their order and the value types
/// recorded in tests/cli-json-shapes.txt (and its formatting: [`json`]).
/// Values differ from run to run; their shapes must not. Record again
/// with VMLEASE_UPDATE_JSON_SHAPES=1 after a deliberate schema change
/// (and update docs/cli.md).
#[test]
fn json_outputs_keep_their_keys_order_and_types() {
    let _g = serial();
    let s = Scratch::new("cli-shapes");
    let ls = lockspace(&s);
    let mut a = Host::new(&s, 1, &ls, "unsafe_no_watchdog = true\n");
    let mut b = Host::new(&s, 2, &ls, "unsafe_no_watchdog = true\n");
    a.start(&[]);
    b.start(&[]);
    let q = standin_qemu();
    lease(&a, UUID_A, "web", &q, Some("/images/web.qcow2")).unwrap();
    let uuid = format_uuid(&UUID_A);
    let disk = ls
        .join("leases")
        .join(Resource::disk("/images/web.qcow2", false).key());
    let file = |p: &Path| p.to_str().unwrap().to_string();
    let mut got = String::new();
    let mut record = |name: &str, conf: &Path, args: &[String]| {
        let mut argv = vec!["--json"];
        argv.extend(args.iter().map(String::as_str));
        let o = vmlease(conf, &argv);
        let j = json(&o);
        got.push_str(&format!(
            "{name} (exit {}): {}\n",
            code(&o),
            json::shape(&j)
        ));
    };
    let arg = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    record("check-config", &a.conf, &arg(&["check-config"]));
    record("init", &a.conf, &arg(&["init"]));
    record("status", &a.conf, &arg(&["status"]));
    record("hosts", &b.conf, &arg(&["hosts"]));
    record("leases", &b.conf, &arg(&["leases"]));
    record("can-evacuate", &b.conf, &arg(&["can-evacuate", "1"]));
    record("clear-fence", &a.conf, &arg(&["clear-fence"]));
    record("dump lease", &b.conf, &arg(&["dump", &file(&disk)]));
    record(
        "dump hosts",
        &b.conf,
        &arg(&["dump", &file(&ls.join("hosts"))]),
    );
    let header = file(&ls.join("VMLEASE"));
    record("dump header", &b.conf, &arg(&["dump", &header]));
    let status = file(&a.cfg.state_dir.join("status"));
    record("dump status", &b.conf, &arg(&["dump", &status]));
    // An admin release of a dead QEMU's leases (its daemon frozen, so that
    // it does not release them first).
    a.daemon.as_ref().unwrap().signal(libc::SIGSTOP);
    drop(q);
    record("release", &a.conf, &arg(&["release", "--domain", &uuid]));
    a.daemon.as_ref().unwrap().signal(libc::SIGCONT);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cli-json-shapes.txt");
    if std::env::var_os("VMLEASE_UPDATE_JSON_SHAPES").is_some() {
        fs::write(&path, &got).unwrap();
    }
    let want = fs::read_to_string(&path).unwrap_or_default();
    for (w, g) in want.lines().zip(got.lines()) {
        assert!(
            json::same_shape(g, w),
            "--json output changed shape\n     got: {g}\nrecorded: {w}"
        );
    }
    assert_eq!(
        got.lines().count(),
        want.lines().count(),
        "{}: one line per output\n{got}",
        path.display()
    );
}

/// A minimal JSON reader, enough to check the `--json` outputs.
mod json {
    #[derive(Debug, Clone, PartialEq)]
    pub enum Value {
        Null,
        Bool(bool),
        Num(i128),
        Str(String),
        Arr(Vec<Value>),
        Obj(Vec<(String, Value)>),
    }

    impl Value {
        pub fn get(&self, k: &str) -> &Value {
            match self {
                Value::Obj(v) => v
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, x)| x)
                    .unwrap_or_else(|| panic!("no key {k:?} in {self:?}")),
                _ => panic!("not an object: {self:?}"),
            }
        }
        pub fn num(&self) -> i128 {
            match self {
                Value::Num(n) => *n,
                _ => panic!("not a number: {self:?}"),
            }
        }
        pub fn str(&self) -> &str {
            match self {
                Value::Str(s) => s,
                _ => panic!("not a string: {self:?}"),
            }
        }
        pub fn arr(&self) -> &[Value] {
            match self {
                Value::Arr(v) => v,
                _ => panic!("not an array: {self:?}"),
            }
        }
    }

    /// Compact JSON, objects in their order; strings escaped as
    /// `--json` documents it (RFC 8259's short escapes, other control
    /// characters as lower-case \u00XX, everything else as UTF-8).
    pub fn render(v: &Value) -> String {
        match v {
            Value::Null => "null".into(),
            Value::Bool(b) => b.to_string(),
            Value::Num(n) => n.to_string(),
            Value::Str(s) => quote(s),
            Value::Arr(xs) => format!("[{}]", xs.iter().map(render).collect::<Vec<_>>().join(",")),
            Value::Obj(kv) => format!(
                "{{{}}}",
                kv.iter()
                    .map(|(k, x)| format!("{}:{}", quote(k), render(x)))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }

    fn quote(s: &str) -> String {
        let mut out = String::from('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    /// The keys in order and the type of each value, without the values.
    pub fn shape(v: &Value) -> String {
        match v {
            Value::Null => "null".into(),
            Value::Bool(_) => "bool".into(),
            Value::Num(_) => "num".into(),
            Value::Str(_) => "str".into(),
            Value::Arr(xs) => format!("[{}]", xs.iter().map(shape).collect::<Vec<_>>().join(",")),
            Value::Obj(kv) => format!(
                "{{{}}}",
                kv.iter()
                    .map(|(k, x)| format!("{k}:{}", shape(x)))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }

    /// Two shapes match token by token; `null` matches any scalar type
    /// (an optional value: `silent_for_ms` is null or a number depending
    /// on when the table was read).
    pub fn same_shape(a: &str, b: &str) -> bool {
        let tokens = |s: &str| -> Vec<String> {
            let mut out = Vec::new();
            let mut word = String::new();
            for c in s.chars() {
                if "{}[],:".contains(c) {
                    if !word.is_empty() {
                        out.push(std::mem::take(&mut word));
                    }
                    out.push(c.to_string());
                } else {
                    word.push(c);
                }
            }
            out.push(word);
            out
        };
        let scalar = |t: &str| matches!(t, "null" | "num" | "str" | "bool");
        let (ta, tb) = (tokens(a), tokens(b));
        ta.len() == tb.len()
            && ta
                .iter()
                .zip(&tb)
                .all(|(x, y)| x == y || (scalar(x) && scalar(y) && (x == "null" || y == "null")))
    }

    pub fn parse(s: &str) -> Result<Value, String> {
        let mut p = P {
            b: s.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        if p.i != p.b.len() {
            return Err(format!("trailing data at {}", p.i));
        }
        Ok(v)
    }

    struct P<'a> {
        b: &'a [u8],
        i: usize,
    }

    impl P<'_> {
        fn peek(&self) -> Option<u8> {
            self.b.get(self.i).copied()
        }

        fn eat(&mut self, lit: &str) -> Result<(), String> {
            if self.b[self.i..].starts_with(lit.as_bytes()) {
                self.i += lit.len();
                Ok(())
            } else {
                Err(format!("expected {lit} at {}", self.i))
            }
        }

        fn value(&mut self) -> Result<Value, String> {
            match self.peek().ok_or("unexpected end")? {
                b'n' => self.eat("null").map(|_| Value::Null),
                b't' => self.eat("true").map(|_| Value::Bool(true)),
                b'f' => self.eat("false").map(|_| Value::Bool(false)),
                b'"' => self.string().map(Value::Str),
                b'[' => {
                    self.i += 1;
                    let mut v = Vec::new();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                        return Ok(Value::Arr(v));
                    }
                    loop {
                        v.push(self.value()?);
                        match self.peek() {
                            Some(b',') => self.i += 1,
                            Some(b']') => {
                                self.i += 1;
                                return Ok(Value::Arr(v));
                            }
                            _ => return Err(format!("bad array at {}", self.i)),
                        }
                    }
                }
                b'{' => {
                    self.i += 1;
                    let mut v = Vec::new();
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                        return Ok(Value::Obj(v));
                    }
                    loop {
                        let k = self.string()?;
                        self.eat(":")?;
                        if v.iter().any(|(n, _)| *n == k) {
                            return Err(format!("duplicate key {k}"));
                        }
                        v.push((k, self.value()?));
                        match self.peek() {
                            Some(b',') => self.i += 1,
                            Some(b'}') => {
                                self.i += 1;
                                return Ok(Value::Obj(v));
                            }
                            _ => return Err(format!("bad object at {}", self.i)),
                        }
                    }
                }
                _ => {
                    let start = self.i;
                    while matches!(self.peek(), Some(b'-' | b'0'..=b'9')) {
                        self.i += 1;
                    }
                    std::str::from_utf8(&self.b[start..self.i])
                        .unwrap()
                        .parse()
                        .map(Value::Num)
                        .map_err(|_| format!("bad value at {start}"))
                }
            }
        }

        fn string(&mut self) -> Result<String, String> {
            self.eat("\"")?;
            let mut out = String::new();
            loop {
                let c = self.peek().ok_or("unterminated string")?;
                self.i += 1;
                match c {
                    b'"' => return Ok(out),
                    b'\\' => {
                        let e = self.peek().ok_or("bad escape")?;
                        self.i += 1;
                        match e {
                            b'n' => out.push('\n'),
                            b'b' => out.push('\u{8}'),
                            b'f' => out.push('\u{c}'),
                            b'r' => out.push('\r'),
                            b't' => out.push('\t'),
                            b'"' => out.push('"'),
                            b'\\' => out.push('\\'),
                            b'u' => {
                                let h = std::str::from_utf8(&self.b[self.i..self.i + 4])
                                    .map_err(|_| "bad \\u escape")?;
                                let c = u32::from_str_radix(h, 16)
                                    .ok()
                                    .and_then(char::from_u32)
                                    .ok_or("bad \\u escape")?;
                                out.push(c);
                                self.i += 4;
                            }
                            _ => return Err("bad escape".into()),
                        }
                    }
                    c if c < 0x20 => return Err("control character in string".into()),
                    _ => {
                        // Copy the whole UTF-8 sequence.
                        let start = self.i - 1;
                        let len = match c {
                            0xf0..=0xff => 4,
                            0xe0..=0xef => 3,
                            0xc0..=0xdf => 2,
                            _ => 1,
                        };
                        self.i = start + len;
                        out.push_str(
                            std::str::from_utf8(&self.b[start..self.i]).map_err(|_| "bad UTF-8")?,
                        );
                    }
                }
            }
        }
    }
}
