//! Host slots (src/hosts.rs): each host writes its 512-byte slot of the
//! shared `hosts` table; every other host decodes it.

use proptest::prelude::*;
use vmlease::config::Timing;
use vmlease::hosts::{self, HostRecord, HostState, Slot, SLOT_SIZE};

use crate::mutate::{self, Input};
use crate::runner::{bounded, fuzz};

pub fn state() -> impl Strategy<Value = HostState> {
    prop_oneof![
        Just(HostState::Live),
        Just(HostState::MgmtIsolated),
        Just(HostState::ServiceIsolated),
        Just(HostState::Fencing),
        Just(HostState::FencedClean),
        Just(HostState::Leaving),
    ]
}

/// A host name the config accepts (hosts::check_host_name), any script.
pub fn host_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9.-]{1,64}",
        any::<String>().prop_map(|s| {
            let mut n: String = s
                .chars()
                .filter(|c| !c.is_control() && !c.is_whitespace())
                .collect();
            while n.len() > 64 || hosts::check_host_name(&n).is_err() && !n.is_empty() {
                n.pop();
            }
            if n.is_empty() {
                n.push('h');
            }
            n
        }),
    ]
}

pub fn record(host_id: u16) -> impl Strategy<Value = HostRecord> {
    (
        host_name(),
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        any::<u64>(),
        any::<u64>(),
        state(),
        // Timings as the config allows them: up to 86400 s, D derived.
        prop::array::uniform5(1u64..=345_600_000),
        any::<bool>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            move |(
                host_name,
                boot_id,
                incarnation,
                counter,
                state,
                t,
                unsafe_no_watchdog,
                mono_ms,
                wall,
            )| {
                HostRecord {
                    host_id,
                    host_name,
                    boot_id,
                    incarnation,
                    counter,
                    state,
                    timing: Timing {
                        renew_interval: t[0],
                        renew_fail_timeout: t[1],
                        kill_timeout: t[2],
                        watchdog_timeout: t[3],
                        host_dead_timeout: t[4],
                        host_dead_derived: false,
                    },
                    unsafe_no_watchdog,
                    mono_ms,
                    wall,
                }
            },
        )
}

const KNOWN: &[&str] = &[
    "host_id",
    "host_name",
    "boot_id",
    "incarnation",
    "counter",
    "state",
    "renew_interval_ms",
    "renew_fail_timeout_ms",
    "kill_timeout_ms",
    "watchdog_timeout_ms",
    "host_dead_timeout_ms",
    "unsafe_no_watchdog",
    "mono_ms",
    "wall",
];

#[test]
fn host_slot_roundtrip() {
    fuzz(
        "host_slot_roundtrip",
        3000,
        (1u16..=2000).prop_flat_map(record),
        |r| {
            let data = std::panic::catch_unwind(|| r.encode())
                .map_err(|_| TestCaseError::fail("encoding a valid host record panicked"))?;
            prop_assert_eq!(data.len(), SLOT_SIZE);
            prop_assert_eq!(hosts::decode_slot(r.host_id, &data), Slot::Record(r));
            Ok(())
        },
    );
}

#[test]
fn host_slot_random_bytes() {
    fuzz(
        "host_slot_random_bytes",
        3000,
        (1u16..=2000, mutate::random_bytes("vmlease-host v1")),
        |(id, data)| {
            let s = bounded("decode_slot", data.len(), || hosts::decode_slot(id, &data))?;
            if let Slot::Record(r) = s {
                prop_assert_eq!(r.host_id, id);
            }
            Ok(())
        },
    );
}

/// Raw damage: the original record, or an error (or an empty slot, when
/// nothing but zeros is left: a never-written slot, which the takeover
/// rule treats as silent, never as free). Edited and resealed: an error
/// or exactly what the lines say.
#[test]
fn host_slot_mutations() {
    fuzz(
        "host_slot_mutations",
        3000,
        (record(7), record(7), mutate::input()),
        |(good, other, input)| {
            let (g, o) = (good.encode(), other.encode());
            let mut bad = mutate::make(&g, &o, &input);
            if matches!(input, Input::Resealed(_)) {
                // What a read of the slot returns: exactly its 512 bytes.
                bad.resize(SLOT_SIZE, 0);
            }
            let s = bounded("decode_slot", bad.len(), || hosts::decode_slot(7, &bad))?;
            let Slot::Record(r) = s else { return Ok(()) };
            match input {
                Input::Raw(_) => {
                    prop_assert!(r == good || r == other, "damaged slot decoded as {:?}", r)
                }
                Input::Resealed(_) => prop_assert_eq!(
                    mutate::field_set(&r.encode(), KNOWN),
                    mutate::field_set(&bad, KNOWN),
                    "the decoded slot does not say what the bytes say"
                ),
            }
            Ok(())
        },
    );
}

/// A whole table of any length decodes slot by slot without a panic,
/// slot i naming host i + 1.
#[test]
fn host_table_random() {
    fuzz(
        "host_table_random",
        1000,
        prop::collection::vec(
            prop_oneof![
                Just(vec![0u8; SLOT_SIZE]),
                record(3).prop_map(|r| r.encode()),
                prop::collection::vec(any::<u8>(), 0..SLOT_SIZE),
            ],
            0..8,
        ),
        |chunks| {
            let table: Vec<u8> = chunks.concat();
            let slots = bounded("decode_table", table.len(), || hosts::decode_table(&table))?;
            prop_assert_eq!(slots.len(), table.len().div_ceil(SLOT_SIZE));
            for (i, s) in slots.iter().enumerate() {
                if let Slot::Record(r) = s {
                    prop_assert_eq!(r.host_id as usize, i + 1);
                }
            }
            Ok(())
        },
    );
}
