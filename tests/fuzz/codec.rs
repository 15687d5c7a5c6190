//! The record codec (src/codec.rs): the `key=value` text with a CRC-32C
//! line that every lockspace record, registry entry and status uses.

use proptest::prelude::*;
use vmlease::codec::{self, Writer};

use crate::mutate::{self, damage};
use crate::runner::{bounded, fuzz};

const MAGIC: &str = "vmlease-fuzz v1";

fn fields() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(("[a-z_]{1,12}", any::<String>()), 0..8)
}

fn encode(fields: &[(String, String)]) -> Vec<u8> {
    let mut w = Writer::new(MAGIC);
    for (k, v) in fields {
        w.field(k, v);
    }
    w.finish()
}

#[test]
fn codec_random_bytes() {
    fuzz(
        "codec_random_bytes",
        4000,
        mutate::random_bytes(MAGIC),
        |data| {
            let r = bounded("codec::parse", data.len(), || codec::parse(&data, MAGIC))?;
            if let Ok(f) = r {
                // Whatever parses re-encodes to a record that parses the same.
                let again = codec::parse(&encode(&f.fields), MAGIC);
                prop_assert_eq!(again, Ok(f));
            }
            Ok(())
        },
    );
}

/// A value that decodes re-encodes to one that decodes the same, and
/// every escape in it is '%' and exactly two hex digits (no sign, no
/// shorter form).
#[test]
fn codec_value_escapes() {
    let input = prop_oneof!["[ -~]{0,64}", "([a-z]|%[0-9A-Fa-f+-]{0,2}){0,16}"];
    fuzz("codec_value_escapes", 4000, input, |s| {
        if let Ok(v) = bounded("codec::decode", s.len(), || codec::decode(&s))? {
            prop_assert_eq!(codec::decode(&codec::encode(&v)), Ok(v));
            for (i, _) in s.match_indices('%') {
                let hex = s.get(i + 1..i + 3).unwrap_or("");
                prop_assert!(
                    hex.len() == 2 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
                    "escape {:?} accepted in {:?}",
                    hex,
                    s
                );
            }
        }
        Ok(())
    });
}

#[test]
fn codec_roundtrip() {
    fuzz("codec_roundtrip", 4000, fields(), |fields| {
        let data = encode(&fields);
        let f = codec::parse(&data, MAGIC).map_err(TestCaseError::fail)?;
        prop_assert_eq!(f.fields, fields);
        Ok(())
    });
}

#[test]
fn codec_damage_is_detected() {
    fuzz(
        "codec_damage_is_detected",
        4000,
        (fields(), fields(), prop::collection::vec(damage(), 1..4)),
        |(fields, other, ds)| {
            let good = encode(&fields);
            let other = encode(&other);
            let bad = ds
                .iter()
                .fold(good.clone(), |acc, d| mutate::apply_damage(&acc, &other, d));
            let r = bounded("codec::parse", bad.len(), || codec::parse(&bad, MAGIC))?;
            if let Ok(f) = r {
                // Only an unchanged record, or (torn write) the other one
                // whole, may parse.
                let o = codec::parse(&other, MAGIC).unwrap();
                prop_assert!(
                    f.fields == fields || f == o,
                    "damaged record parsed as {:?}",
                    f
                );
            }
            Ok(())
        },
    );
}
