//! The lock state string (src/state_string.rs): handed to libvirt on
//! pause and migration, carried in the domain XML to the destination and
//! handed back to Acquire there.

use proptest::prelude::*;
use vmlease::state_string::LockState;

use crate::runner::{bounded, fuzz};

fn state() -> impl Strategy<Value = LockState> {
    prop::collection::btree_map("[a-z0-9-]{1,72}", any::<u64>(), 0..6)
        .prop_map(|versions| LockState { versions })
}

/// Text near a valid state: the parts of valid states and junk, joined
/// with spaces (sometimes two, or a tab).
fn near_state() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        Just("vmlease1".to_string()),
        "[a-z0-9-]{0,20}:[0-9]{0,22}",
        "[a-z0-9-]{1,8}",
        "[+:A-Z./%<>&]{1,4}",
        Just(":".to_string()),
        Just("__LIBVIRT__DISKS__:abc:/x:0:5".to_string()),
        any::<String>(),
    ];
    (
        prop::collection::vec(part, 0..6),
        prop_oneof![Just(" "), Just("  "), Just("\t"), Just("\0")],
    )
        .prop_map(|(v, sep)| v.join(sep))
}

/// A valid state with one of its items given again, maybe with another
/// version (a damaged or forged state in the migration XML).
fn duplicated() -> impl Strategy<Value = String> {
    (
        state(),
        any::<proptest::sample::Index>(),
        any::<Option<u64>>(),
    )
        .prop_map(|(st, i, v)| {
            let mut s = st.encode();
            if !st.versions.is_empty() {
                let (k, old) = st.versions.iter().nth(i.index(st.versions.len())).unwrap();
                s.push_str(&format!(" {k}:{}", v.unwrap_or(*old)));
            }
            s
        })
}

#[test]
fn state_string_roundtrip() {
    fuzz("state_string_roundtrip", 3000, state(), |st| {
        let s = st.encode();
        prop_assert!(
            !s.contains(['<', '>', '&', '"', '\'']),
            "not XML-safe: {}",
            s
        );
        prop_assert_eq!(LockState::parse(&s).ok(), Some(st));
        Ok(())
    });
}

/// Anything parses to a state whose keys are safe file names (no path
/// traversal into the lockspace) and that encodes and parses to itself,
/// or is an error. A key given twice is an error: which version would
/// libvirt have meant?
#[test]
fn state_string_random() {
    fuzz(
        "state_string_random",
        4000,
        prop_oneof![any::<String>(), near_state(), duplicated()],
        |s| {
            let r = bounded("LockState::parse", s.len(), || LockState::parse(&s))?;
            if let Ok(st) = r {
                for k in st.versions.keys() {
                    prop_assert!(
                        !k.is_empty()
                            && k.bytes()
                                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'),
                        "unsafe key {:?}",
                        k
                    );
                }
                prop_assert_eq!(LockState::parse(&st.encode()).ok(), Some(st.clone()));
                let items = s.split_whitespace().skip(1).count();
                prop_assert_eq!(
                    items,
                    st.versions.len(),
                    "items dropped or merged in {:?}",
                    s
                );
            }
            Ok(())
        },
    );
}
