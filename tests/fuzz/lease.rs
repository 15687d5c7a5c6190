//! Lease records (src/lease.rs): written by every host on shared storage.

use proptest::prelude::*;
use vmlease::lease::{Holder, LeaseRecord, Mode};

use crate::mutate::{self, Input};
use crate::runner::{bounded, fuzz};

pub fn holder() -> impl Strategy<Value = Holder> {
    (
        1u16..=2000,
        any::<String>(),
        any::<u32>(),
        any::<u64>(),
        any::<String>(),
        any::<String>(),
    )
        .prop_map(
            |(host_id, boot_id, pid, pid_start, domain_uuid, domain_name)| Holder {
                host_id,
                boot_id,
                pid,
                pid_start,
                domain_uuid,
                domain_name,
            },
        )
}

/// A valid record: the holders agree with the mode.
pub fn record() -> impl Strategy<Value = LeaseRecord> {
    (
        "[a-z0-9-]{1,80}",
        any::<String>(),
        any::<u64>(),
        prop_oneof![
            Just(None),
            Just(Some(Mode::Exclusive)),
            Just(Some(Mode::Shared))
        ],
        prop::collection::vec(holder(), 1..4),
    )
        .prop_map(|(key, resource, version, mode, mut holders)| {
            match mode {
                None => holders.clear(),
                Some(Mode::Exclusive) => holders.truncate(1),
                Some(Mode::Shared) => {}
            }
            LeaseRecord {
                key,
                resource,
                version,
                mode,
                holders,
            }
        })
}

const KNOWN: &[&str] = &["key", "resource", "version", "mode", "holder"];

/// What every decoded record must satisfy.
pub fn consistent(r: &LeaseRecord) -> Result<(), TestCaseError> {
    match (r.mode, r.holders.len()) {
        (None, 0) | (Some(Mode::Shared), 1..) | (Some(Mode::Exclusive), 1) => {}
        (m, n) => return Err(TestCaseError::fail(format!("{m:?} lease with {n} holders"))),
    }
    for h in &r.holders {
        prop_assert!(
            (1..=2000).contains(&h.host_id),
            "holder host id {}",
            h.host_id
        );
    }
    Ok(())
}

#[test]
fn lease_roundtrip() {
    fuzz("lease_roundtrip", 3000, record(), |r| {
        let data = r.encode();
        prop_assert_eq!(LeaseRecord::decode(&data), Ok(r));
        Ok(())
    });
}

#[test]
fn lease_random_bytes() {
    fuzz(
        "lease_random_bytes",
        3000,
        mutate::random_bytes("vmlease-lease v1"),
        |data| {
            if let Ok(r) = bounded("LeaseRecord::decode", data.len(), || {
                LeaseRecord::decode(&data)
            })? {
                consistent(&r)?;
            }
            Ok(())
        },
    );
}

/// Raw damage decodes to the original (or, torn, the other version) or is
/// an error; an edited record given a valid checksum is an error or
/// decodes to exactly what its lines say: nothing dropped (a duplicated
/// field read once), nothing invented, nothing wrapped.
#[test]
fn lease_mutations() {
    fuzz(
        "lease_mutations",
        3000,
        (record(), record(), mutate::input()),
        |(good, other, input)| {
            let (g, o) = (good.encode(), other.encode());
            let bad = mutate::make(&g, &o, &input);
            let r = bounded("LeaseRecord::decode", bad.len(), || {
                LeaseRecord::decode(&bad)
            })?;
            let Ok(r) = r else { return Ok(()) };
            consistent(&r)?;
            match input {
                Input::Raw(_) => {
                    prop_assert!(r == good || r == other, "damaged record decoded as {:?}", r)
                }
                Input::Resealed(_) => prop_assert_eq!(
                    mutate::field_set(&r.encode(), KNOWN),
                    mutate::field_set(&bad, KNOWN),
                    "the decoded record does not say what the bytes say"
                ),
            }
            Ok(())
        },
    );
}
