//! Registry entries (src/registry.rs): `<state_dir>/procs/<pid>-<start>`,
//! written by the plugin in libvirtd and its pre-exec child, read by the
//! daemon (which kills and releases by them) and by the plugin.

use proptest::prelude::*;
use vmlease::process::ProcId;
use vmlease::registry::{Entry, Intent};

use crate::mutate::{self, Input};
use crate::runner::{bounded, fuzz};

const KNOWN: &[&str] = &[
    "pid",
    "pid_start",
    "domain_uuid",
    "domain_name",
    "key",
    "released",
];

fn entry() -> impl Strategy<Value = Entry> {
    (
        (any::<u32>(), any::<u64>(), any::<String>(), any::<String>()),
        prop::collection::vec((any::<String>(), any::<String>()), 0..4),
        prop::collection::vec(("[a-z0-9-]{1,40}", any::<u64>()), 0..3),
        prop::collection::vec(("[a-z0-9-]{1,40}", any::<u64>()), 0..3),
        prop::collection::vec((any::<u64>(), any::<u32>(), any::<u64>()), 0..3),
    )
        .prop_map(
            |((pid, start, domain_uuid, domain_name), keys, released, acquired, acquiring)| {
                let mut e = Entry::new(ProcId { pid, start }, &domain_uuid, &domain_name);
                e.keys = keys;
                e.released = released;
                e.acquired = acquired;
                e.acquiring = acquiring
                    .into_iter()
                    .map(|(id, pid, start)| Intent {
                        id,
                        caller: ProcId { pid, start },
                    })
                    .collect();
                e
            },
        )
}

#[test]
fn registry_roundtrip() {
    fuzz("registry_roundtrip", 2000, entry(), |e| {
        prop_assert_eq!(Entry::decode(&e.encode()), Ok(e));
        Ok(())
    });
}

#[test]
fn registry_random_bytes() {
    fuzz(
        "registry_random_bytes",
        2000,
        mutate::random_bytes("vmlease-proc v1"),
        |data| {
            bounded("Entry::decode", data.len(), || Entry::decode(&data))?.ok();
            Ok(())
        },
    );
}

/// Damage: the original entry or an error (a registry that under-lists
/// would let a leased QEMU escape the fence). Edited: error or exactly
/// what the lines say.
#[test]
fn registry_mutations() {
    fuzz(
        "registry_mutations",
        2000,
        (entry(), entry(), mutate::input()),
        |(good, other, input)| {
            let bad = mutate::make(&good.encode(), &other.encode(), &input);
            let Ok(e) = bounded("Entry::decode", bad.len(), || Entry::decode(&bad))? else {
                return Ok(());
            };
            match input {
                Input::Raw(_) => {
                    prop_assert!(e == good || e == other, "damaged entry decoded as {:?}", e)
                }
                Input::Resealed(_) => prop_assert_eq!(
                    mutate::field_set(&e.encode(), KNOWN),
                    mutate::field_set(&bad, KNOWN),
                    "the decoded entry does not say what the bytes say"
                ),
            }
            Ok(())
        },
    );
}
