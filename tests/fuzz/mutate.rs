//! Inputs for the decoders: random bytes, raw damage of a valid encoding
//! (what storage or a torn write does: truncation, bit flips, bytes set,
//! inserted or deleted, a torn mix of two versions), and structured edits
//! of a valid record that are then given a correct checksum again (what a
//! buggy or hostile writer, or a newer version, produces: duplicated,
//! missing and swapped fields, huge numbers, huge lengths, NUL bytes,
//! non-UTF-8, bad escapes).

use proptest::prelude::*;
use proptest::sample::Index;

use vmlease::checksum::crc32c;

/// Random bytes, sometimes starting with a record's magic line so that
/// the parser gets past its first check.
pub fn random_bytes(magic: &'static str) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..1024),
        prop::collection::vec(any::<u8>(), 0..1024).prop_map(move |mut v| {
            let mut out = format!("{magic}\n").into_bytes();
            out.append(&mut v);
            out
        }),
    ]
}

/// One raw damage of an encoding.
#[derive(Debug, Clone)]
pub enum Damage {
    Truncate(Index),
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    /// A torn write: the first bytes of another encoding over this one.
    Torn(Index),
}

pub fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<Index>().prop_map(Damage::Truncate),
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Damage::FlipBit(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Damage::SetByte(i, b)),
        (
            any::<Index>(),
            prop_oneof![
                Just(vec![0u8]),
                Just(vec![0xff]),
                Just(vec![0xc3]),
                Just(b"\n".to_vec()),
                Just(b"=".to_vec()),
                Just(b"crc=".to_vec()),
                prop::collection::vec(any::<u8>(), 1..16),
            ]
        )
            .prop_map(|(i, b)| Damage::Insert(i, b)),
        (any::<Index>(), 1usize..64).prop_map(|(i, n)| Damage::Delete(i, n)),
        any::<Index>().prop_map(Damage::Torn),
    ]
}

/// Applies raw damage to `data`; `other` is the encoding a torn write
/// mixes in. May return the input unchanged (e.g. a truncation inside
/// padding): the property is then "decodes to the original".
pub fn apply_damage(data: &[u8], other: &[u8], d: &Damage) -> Vec<u8> {
    let mut v = data.to_vec();
    match d {
        Damage::Truncate(i) => v.truncate(i.index(data.len().max(1))),
        Damage::FlipBit(i, b) if !v.is_empty() => {
            let at = i.index(v.len());
            v[at] ^= 1 << b;
        }
        Damage::SetByte(i, b) if !v.is_empty() => {
            let at = i.index(v.len());
            v[at] = *b;
        }
        Damage::Insert(i, bytes) => {
            let at = i.index(v.len() + 1);
            v.splice(at..at, bytes.iter().copied());
        }
        Damage::Delete(i, n) if !v.is_empty() => {
            let at = i.index(v.len());
            let end = (at + n).min(v.len());
            v.drain(at..end);
        }
        Damage::Torn(i) => {
            let at = i.index(other.len().max(1)).min(other.len());
            let mut t = other[..at].to_vec();
            if at < v.len() {
                t.extend_from_slice(&v[at..]);
            }
            v = t;
        }
        _ => {}
    }
    v
}

/// A value that is likely to break a field: huge and negative numbers,
/// numbers with signs and leading zeros, empty, NUL, non-UTF-8, bad
/// escapes, spaces, separators and very long strings.
pub fn nasty_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("0".into()),
        Just("-1".into()),
        Just("+1".into()),
        Just("007".into()),
        Just("65536".into()),
        Just("65537".into()),
        Just("4294967296".into()),
        Just("18446744073709551615".into()),
        Just("18446744073709551616".into()),
        Just("99999999999999999999999999999999".into()),
        Just("%00".into()),
        Just("%FF".into()),
        Just("%C3".into()),
        Just("%".into()),
        Just("%4".into()),
        Just("%G0".into()),
        Just("%+F".into()),
        Just("%20".into()),
        Just("a b".into()),
        Just("a=b".into()),
        Just("free".into()),
        Just("exclusive".into()),
        Just("shared".into()),
        Just("fenced-clean".into()),
        Just("leaving".into()),
        Just("-".into()),
        (1usize..70_000).prop_map(|n| "x".repeat(n)),
        (1usize..2_000).prop_map(|n| "%25".repeat(n)),
        "[ -~]{0,40}",
        any::<u64>().prop_map(|n| n.to_string()),
        any::<String>().prop_map(|s| vmlease::codec::encode(&s)),
    ]
}

/// One structured edit of a record's lines (before the checksum).
#[derive(Debug, Clone)]
pub enum Edit {
    Duplicate(Index),
    Remove(Index),
    SwapLines(Index, Index),
    /// Keeps both keys, swaps their values.
    SwapValues(Index, Index),
    SetValue(Index, String),
    /// Adds `key=value`, the key taken from another line or made up.
    Insert(Index, Option<Index>, String),
    /// A holder/peer/network/key line with one space-separated part
    /// replaced, added or removed.
    SetPart(Index, Index, String),
    AddPart(Index, String),
    DropPart(Index, Index),
}

pub fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<Index>().prop_map(Edit::Duplicate),
        any::<Index>().prop_map(Edit::Remove),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::SwapValues(a, b)),
        (any::<Index>(), nasty_value()).prop_map(|(i, v)| Edit::SetValue(i, v)),
        (any::<Index>(), any::<Option<Index>>(), nasty_value())
            .prop_map(|(i, k, v)| Edit::Insert(i, k, v)),
        (any::<Index>(), any::<Index>(), nasty_value())
            .prop_map(|(i, p, v)| Edit::SetPart(i, p, v)),
        (any::<Index>(), nasty_value()).prop_map(|(i, v)| Edit::AddPart(i, v)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, p)| Edit::DropPart(i, p)),
    ]
}

/// The lines of a record before its checksum line (magic first), from a
/// valid encoding (NUL padding and the checksum line dropped).
pub fn lines_of(encoded: &[u8]) -> Vec<String> {
    let end = encoded
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(encoded.len());
    let text = std::str::from_utf8(&encoded[..end]).expect("a valid encoding is UTF-8");
    let crc = text.rfind("crc=").expect("a valid encoding has a checksum");
    text[..crc].lines().map(str::to_string).collect()
}

/// Applies edits to the field lines (the magic line stays first).
pub fn apply_edits(lines: &[String], edits: &[Edit]) -> Vec<String> {
    let mut v: Vec<String> = lines[1..].to_vec();
    for e in edits {
        let n = v.len();
        match e {
            Edit::Duplicate(i) if n > 0 => {
                let l = v[i.index(n)].clone();
                v.push(l);
            }
            Edit::Remove(i) if n > 0 => {
                v.remove(i.index(n));
            }
            Edit::SwapLines(a, b) if n > 0 => v.swap(a.index(n), b.index(n)),
            Edit::SwapValues(a, b) if n > 0 => {
                let (a, b) = (a.index(n), b.index(n));
                let (ka, va) = split(&v[a]);
                let (kb, vb) = split(&v[b]);
                v[a] = format!("{ka}={vb}");
                v[b] = format!("{kb}={va}");
            }
            Edit::SetValue(i, val) if n > 0 => {
                let i = i.index(n);
                let (k, _) = split(&v[i]);
                v[i] = format!("{k}={val}");
            }
            Edit::Insert(i, key, val) => {
                let k = match key {
                    Some(k) if n > 0 => split(&v[k.index(n)]).0,
                    _ => "unknown_field".to_string(),
                };
                v.insert(i.index(n + 1), format!("{k}={val}"));
            }
            Edit::SetPart(i, p, val) if n > 0 => {
                let i = i.index(n);
                let (k, old) = split(&v[i]);
                let mut parts: Vec<String> = old.split(' ').map(str::to_string).collect();
                let p = p.index(parts.len());
                parts[p] = val.clone();
                v[i] = format!("{k}={}", parts.join(" "));
            }
            Edit::AddPart(i, val) if n > 0 => {
                let i = i.index(n);
                v[i] = format!("{} {val}", v[i]);
            }
            Edit::DropPart(i, p) if n > 0 => {
                let i = i.index(n);
                let (k, old) = split(&v[i]);
                let mut parts: Vec<&str> = old.split(' ').collect();
                parts.remove(p.index(parts.len()));
                v[i] = format!("{k}={}", parts.join(" "));
            }
            _ => {}
        }
    }
    let mut out = vec![lines[0].clone()];
    out.append(&mut v);
    out
}

fn split(line: &str) -> (String, String) {
    match line.split_once('=') {
        Some((k, v)) => (k.to_string(), v.to_string()),
        None => (line.to_string(), String::new()),
    }
}

/// Gives edited lines a correct checksum line again, so the decoder gets
/// past the checksum to the fields.
pub fn reseal(lines: &[String]) -> Vec<u8> {
    let mut body = String::new();
    for l in lines {
        body.push_str(l);
        body.push('\n');
    }
    let crc = crc32c(body.as_bytes());
    body.push_str(&format!("crc={crc:08x}\n"));
    body.into_bytes()
}

/// A damaged or edited input and how it was made (for the failure report).
#[derive(Debug, Clone)]
pub enum Input {
    Raw(Vec<Damage>),
    Resealed(Vec<Edit>),
}

pub fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        prop::collection::vec(damage(), 1..4).prop_map(Input::Raw),
        prop::collection::vec(edit(), 1..4).prop_map(Input::Resealed),
    ]
}

/// Makes the bytes for `input` from the valid encoding `good` (and
/// `other`, another valid encoding for torn writes).
pub fn make(good: &[u8], other: &[u8], input: &Input) -> Vec<u8> {
    match input {
        Input::Raw(ds) => ds
            .iter()
            .fold(good.to_vec(), |acc, d| apply_damage(&acc, other, d)),
        Input::Resealed(es) => reseal(&apply_edits(&lines_of(good), es)),
    }
}

/// The fields of a record as a sorted list of `key=value` lines, keeping
/// only the keys its decoder knows (the magic line included): two records
/// with the same list carry the same information. Unknown keys are
/// ignored by every decoder by design (a field that changes the meaning
/// of a record needs a new magic, which every decoder refuses).
pub fn field_set(encoded: &[u8], known: &[&str]) -> Option<Vec<String>> {
    let end = encoded
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(encoded.len());
    let text = std::str::from_utf8(&encoded[..end]).ok()?;
    let crc = text.rfind("crc=")?;
    let mut v: Vec<String> = text[..crc]
        .lines()
        .enumerate()
        .filter(|(i, l)| {
            *i == 0
                || known
                    .iter()
                    .any(|k| l.split_once('=').map(|p| p.0) == Some(k))
        })
        .map(|(_, l)| normalize(l))
        .collect();
    v.sort();
    Some(v)
}

/// One line with every space-separated part of its value in its canonical
/// spelling: numbers without sign or leading zeros, escapes in upper case,
/// flags as 0 or 1 (`+1`, `%2f` and a flag of 2 are accepted and mean `1`,
/// `%2F` and 1).
fn normalize(line: &str) -> String {
    let Some((k, v)) = line.split_once('=') else {
        return line.to_string();
    };
    // A flag is read as "not zero".
    if k == "unsafe_no_watchdog" {
        return format!(
            "{k}={}",
            u8::from(v.parse::<u64>().map(|n| n != 0).unwrap_or(true))
        );
    }
    let parts: Vec<String> = v
        .split(' ')
        .map(|p| match (p.parse::<u64>(), vmlease::codec::decode(p)) {
            (Ok(n), _) => n.to_string(),
            (_, Ok(d)) => vmlease::codec::encode(&d),
            _ => p.to_string(),
        })
        .collect();
    format!("{k}={}", parts.join(" "))
}
