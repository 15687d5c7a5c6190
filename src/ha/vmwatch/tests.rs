use super::*;

#[test]
fn parses_virsh_event_lines() {
    let l = "2026-12-06 23:15:12.105+0000: event 'lifecycle' for domain 'd1': Stopped Failed";
    assert_eq!(
        parse_event(l),
        Some(DomainEvent {
            domain: "d1".into(),
            kind: EventKind::Lifecycle {
                event: "Stopped".into(),
                detail: "Failed".into()
            }
        })
    );
    let l = "event 'lifecycle' for domain 'a': b': Shutdown Finished after guest request";
    let e = parse_event(l).unwrap();
    assert_eq!(e.domain, "a': b");
    assert_eq!(
        e.kind,
        EventKind::Lifecycle {
            event: "Shutdown".into(),
            detail: "Finished after guest request".into()
        }
    );
    let l = "event 'watchdog' for domain 'w': reset";
    assert_eq!(
        parse_event(l).unwrap().kind,
        EventKind::Watchdog {
            action: "reset".into()
        }
    );
    let l = "event 'reboot' for domain 'w'";
    assert_eq!(
        parse_event(l).unwrap(),
        DomainEvent {
            domain: "w".into(),
            kind: EventKind::Other {
                name: "reboot".into(),
                text: String::new()
            }
        }
    );
    assert_eq!(parse_event("event 'reboot' for domain 'w"), None);
    let l = "event 'agent-lifecycle' for domain 'w': state: 'connected' reason: 'channel event'";
    assert!(
        matches!(parse_event(l).unwrap().kind, EventKind::Other { name, .. } if name == "agent-lifecycle")
    );
    assert_eq!(parse_event("events received: 3"), None);
    assert_eq!(parse_event(""), None);
}

#[test]
fn only_a_dead_qemu_is_a_crash() {
    assert_eq!(meaning("Stopped", "Failed"), Meaning::CrashIfReasonSaysSo);
    assert_eq!(meaning("Stopped", "Crashed"), Meaning::Crash);
    for d in ["Shutdown", "Destroyed", "Saved", "Migrated", "Snapshot"] {
        assert_eq!(
            meaning("Stopped", d),
            Meaning::StoppedOnPurpose(d.into()),
            "{d}"
        );
    }
    assert_eq!(meaning("Started", "Booted"), Meaning::Started);
    assert_eq!(
        meaning("Crashed", "Panicked"),
        Meaning::GuestCrashed("Panicked".into())
    );
    assert_eq!(meaning("Resumed", "Unpaused"), Meaning::Nothing);
    assert!(reason_is_crash("shut off (crashed)\n"));
    assert!(!reason_is_crash("shut off (failed)"));
    assert!(!reason_is_crash("shut off (destroyed)"));
    assert!(!reason_is_crash("running (booted)"));
}

#[test]
fn a_crash_loop_gives_up_after_n_restarts_in_the_window() {
    let lim = CrashLimits {
        max_restarts: 3,
        window_ms: 60_000,
    };
    let mut h = CrashHistory::default();
    assert_eq!(h.on_crash("u", 0, lim), CrashStep::Restart { n: 1 });
    assert_eq!(h.on_crash("u", 10_000, lim), CrashStep::Restart { n: 2 });
    assert_eq!(
        h.on_crash("other", 10_000, lim),
        CrashStep::Restart { n: 1 }
    );
    assert_eq!(h.on_crash("u", 20_000, lim), CrashStep::Restart { n: 3 });
    assert_eq!(h.on_crash("u", 30_000, lim), CrashStep::GiveUp { n: 3 });
    assert_eq!(h.on_crash("u", 31_000, lim), CrashStep::GiveUp { n: 3 });
    // The first restart leaves the window: one more is allowed.
    assert_eq!(h.on_crash("u", 60_000, lim), CrashStep::Restart { n: 3 });
    h.forget("u");
    assert_eq!(h.on_crash("u", 61_000, lim), CrashStep::Restart { n: 1 });
}

const XML: &str = "<domain><name>g</name><uuid>aaaaaaaa-0000-4000-8000-000000000001</uuid>\
    <metadata><vmlease:ha xmlns:vmlease=\"http://vmlease.org/xmlns/ha/1\" restart=\"always\" ATTRS/></metadata>\
    <memory unit='KiB'>65536</memory><vcpu>1</vcpu></domain>";

#[test]
fn heartbeat_settings() {
    let x = |a: &str| XML.replace("ATTRS", a);
    assert_eq!(heartbeat(&x("")), Ok(None));
    assert_eq!(heartbeat("<domain/>"), Ok(None));
    assert_eq!(
        heartbeat(&x("heartbeat=\"guest-agent\" timeout=\"30\"")),
        Ok(Some(Heartbeat { timeout_ms: 30_000 }))
    );
    assert_eq!(
        heartbeat(&x("heartbeat='guest-agent' timeout='4.5'")),
        Ok(Some(Heartbeat { timeout_ms: 4_500 }))
    );
    for (a, want) in [
        ("heartbeat=\"guest-agent\"", "needs timeout"),
        ("timeout=\"30\"", "needs heartbeat"),
        ("heartbeat=\"ping\" timeout=\"30\"", "heartbeat=\"ping\""),
        ("heartbeat=\"guest-agent\" timeout=\"1\"", "timeout=\"1\""),
        (
            "heartbeat=\"guest-agent\" timeout=\"soon\"",
            "timeout=\"soon\"",
        ),
        ("heartbeat=\"guest-agent\" timeout=\"-5\"", "timeout=\"-5\""),
    ] {
        let e = heartbeat(&x(a)).unwrap_err();
        assert!(e.contains(want), "{a}: {e}");
    }
    // The policy itself still parses with the new attributes.
    let d = policy::parse(&x("heartbeat=\"guest-agent\" timeout=\"30\"")).unwrap();
    assert!(d.policy.is_some());
    assert_eq!(ping_timeout_s(Heartbeat { timeout_ms: 3_000 }), 1);
    assert_eq!(ping_timeout_s(Heartbeat { timeout_ms: 9_000 }), 3);
    assert_eq!(
        ping_timeout_s(Heartbeat {
            timeout_ms: 600_000
        }),
        5
    );
}

#[test]
fn a_silent_guest_is_reset_after_its_timeout_counted_from_its_last_answer() {
    let hb = Heartbeat { timeout_ms: 10_000 };
    let mut h = Heartbeats::default();
    let mut watch = BTreeMap::new();
    watch.insert("g".to_string(), hb);
    h.watch(&watch, 1_000);
    h.answered("g", 10_000);
    assert!(h.due(19_999).is_empty());
    // Answering: never due, however long.
    for t in (20_000..200_000).step_by(1_000) {
        h.answered("g", t - 500);
        assert!(h.due(t).is_empty(), "reset at {t} while answering");
    }
    // Silent for the timeout (last answer at 198 500): reset, once.
    assert!(h.due(208_499).is_empty());
    assert_eq!(h.due(208_500), vec![("g".to_string(), 10_000)]);
    assert!(h.due(209_501).is_empty());
    // Watching it again (still running) keeps its timer.
    h.answered("g", 210_000);
    h.watch(&watch, 215_000);
    assert_eq!(h.due(220_000).len(), 1);
}

#[test]
fn a_booting_guest_is_not_reset_before_its_agent_answered_once() {
    let hb = Heartbeat { timeout_ms: 10_000 };
    let mut h = Heartbeats::default();
    let mut watch = BTreeMap::new();
    watch.insert("g".to_string(), hb);
    h.watch(&watch, 0);
    // A boot far longer than the timeout: told once, never reset.
    assert!(h.slow_boots(9_999).is_empty());
    assert_eq!(h.slow_boots(10_000), vec![("g".to_string(), 10_000)]);
    assert!(h.slow_boots(50_000).is_empty());
    assert!(h.due(1_000_000).is_empty());
    // The agent is up: armed from its first answer.
    h.answered("g", 1_000_000);
    assert!(h.due(1_009_999).is_empty());
    assert_eq!(h.due(1_010_000).len(), 1);
    // After the reset: booting again (its grace), however long it takes.
    assert!(h.due(1_500_000).is_empty());
    assert_eq!(h.slow_boots(1_500_000).len(), 1);
    h.answered("g", 1_500_000);
    // A reboot by the guest itself (libvirt's reboot event): disarmed too.
    h.restart("g", 1_505_000);
    assert!(h.due(1_600_000).is_empty());
    // Gone: dropped; back: booting.
    h.watch(&BTreeMap::new(), 1_600_000);
    assert_eq!(h.watched().count(), 0);
    h.watch(&watch, 1_700_000);
    assert!(h.due(1_800_000).is_empty());
}
