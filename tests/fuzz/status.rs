//! The daemon's status file (src/status.rs): `<state_dir>/status`, read by
//! the plugin inside libvirtd (may this host lease? is that holder dead?),
//! the hook and the CLI.

use proptest::prelude::*;
use vmlease::config;
use vmlease::status::{NetView, PeerKind, PeerView, Status};

use crate::hosts::state;
use crate::mutate::{self, Input};
use crate::runner::{bounded, fuzz};

const KNOWN: &[&str] = &[
    "daemon_pid",
    "host_id",
    "boot_id",
    "incarnation",
    "written_ms",
    "last_renewal_ms",
    "state",
    "reason",
    "unsafe_no_watchdog",
    "observing_since_ms",
    "renew_interval_ms",
    "renew_fail_timeout_ms",
    "host_dead_timeout_ms",
    "network",
    "peer",
];

fn peer() -> impl Strategy<Value = PeerView> {
    (
        (any::<u16>(), any::<u32>(), any::<u64>()),
        prop_oneof![
            Just(PeerKind::Record),
            Just(PeerKind::Empty),
            Just(PeerKind::Corrupt)
        ],
        // "-" stands for an empty name or boot id: never written as such.
        "([^-].*)?",
        "([^-].*)?",
        any::<u64>(),
        proptest::option::of(state()),
        any::<u64>(),
    )
        .prop_map(
            |(
                (host_id, fingerprint, last_change_ms),
                kind,
                host_name,
                boot_id,
                counter,
                state,
                dead_timeout_ms,
            )| {
                PeerView {
                    host_id,
                    fingerprint,
                    last_change_ms,
                    kind,
                    host_name,
                    boot_id,
                    counter,
                    state,
                    dead_timeout_ms,
                    collision: String::new(),
                }
            },
        )
}

pub fn status() -> impl Strategy<Value = Status> {
    (
        (any::<u32>(), any::<u16>(), any::<String>(), any::<u64>()),
        (
            any::<u64>(),
            any::<u64>(),
            state(),
            any::<String>(),
            any::<bool>(),
        ),
        prop::array::uniform4(any::<u64>()),
        prop::collection::vec(
            (any::<String>(), any::<String>(), any::<String>()).prop_map(
                |(name, state, detail)| NetView {
                    name,
                    state,
                    detail,
                },
            ),
            0..3,
        ),
        prop::collection::vec(peer(), 0..4),
    )
        .prop_map(
            |(
                (daemon_pid, host_id, boot_id, incarnation),
                (written_ms, last_renewal_ms, state, reason, unw),
                t,
                networks,
                peers,
            )| {
                Status {
                    daemon_pid,
                    host_id,
                    boot_id,
                    incarnation,
                    written_ms,
                    last_renewal_ms,
                    state,
                    reason,
                    unsafe_no_watchdog: unw,
                    lockspace_dir: String::new(),
                    lockspace_uuid: String::new(),
                    allow_local_lockspace: false,
                    local_lockspace: String::new(),
                    observing_since_ms: t[0],
                    renew_interval_ms: t[1],
                    renew_fail_timeout_ms: t[2],
                    host_dead_timeout_ms: t[3],
                    networks,
                    peers,
                }
            },
        )
}

/// Uses a decoded status the way the plugin does: nothing may panic.
fn use_it(st: &Status, now: u64, slot: &[u8]) {
    let mut cfg = config::parse("host_id = 1\n", "fuzz").unwrap();
    cfg.host_id = Some(st.host_id.max(1));
    let _ = st.check_protected(&cfg, &st.boot_id, now, true);
    for p in &st.peers {
        let _ = st.observed_unchanged_ms(p.host_id, slot);
    }
    let _ = st.observed_unchanged_ms(1, slot);
}

#[test]
fn status_roundtrip() {
    fuzz("status_roundtrip", 2000, status(), |st| {
        prop_assert_eq!(Status::decode(&st.encode()), Ok(st));
        Ok(())
    });
}

#[test]
fn status_random_bytes() {
    fuzz(
        "status_random_bytes",
        2000,
        (mutate::random_bytes("vmlease-status v1"), any::<u64>()),
        |(data, now)| {
            if let Ok(st) = bounded("Status::decode", data.len(), || Status::decode(&data))? {
                use_it(&st, now, &data);
            }
            Ok(())
        },
    );
}

/// Damage: the original or an error (a status that says more than the
/// daemon wrote could let the plugin lease on an unprotected host).
/// Edited: error or exactly what the lines say (no number wrapped into
/// range: a peer host id of 65537 is not host 1).
#[test]
fn status_mutations() {
    fuzz(
        "status_mutations",
        2000,
        (status(), status(), mutate::input(), any::<u64>()),
        |(good, other, input, now)| {
            let bad = mutate::make(&good.encode(), &other.encode(), &input);
            let Ok(st) = bounded("Status::decode", bad.len(), || Status::decode(&bad))? else {
                return Ok(());
            };
            use_it(&st, now, &bad);
            match input {
                Input::Raw(_) => {
                    prop_assert!(
                        st == good || st == other,
                        "damaged status decoded as {:?}",
                        st
                    )
                }
                Input::Resealed(_) => prop_assert_eq!(
                    mutate::field_set(&st.encode(), KNOWN),
                    mutate::field_set(&bad, KNOWN),
                    "the decoded status does not say what the bytes say"
                ),
            }
            Ok(())
        },
    );
}
