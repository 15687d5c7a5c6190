//! The on-disk text encoding shared by every lockspace record: a magic line,
//! `key=value` lines with percent-encoded values, and a final `crc=` line
//! that covers every byte before it. Text keeps records readable with `cat`
//! and `vmlease dump`; the checksum makes a torn or damaged record an error
//! instead of a silent "free".
#![forbid(unsafe_code)]

use crate::checksum::crc32c;

/// Builds one record.
#[derive(Debug)]
pub struct Writer {
    buf: String,
}

impl Writer {
    pub fn new(magic: &str) -> Self {
        let mut buf = String::with_capacity(512);
        buf.push_str(magic);
        buf.push('\n');
        Writer { buf }
    }

    pub fn field(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Self {
        let v = value.to_string();
        self.buf.push_str(key);
        self.buf.push('=');
        self.buf.push_str(&encode(&v));
        self.buf.push('\n');
        self
    }

    /// Finishes the record with its checksum line.
    pub fn finish(mut self) -> Vec<u8> {
        let crc = crc32c(self.buf.as_bytes());
        self.buf.push_str(&format!("crc={crc:08x}\n"));
        self.buf.into_bytes()
    }
}

/// A parsed record: the fields in order (keys may repeat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    pub fields: Vec<(String, String)>,
}

impl Fields {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A field that must appear exactly once: a second copy (a writer's
    /// bug, a damaged or forged record) is an error, never silently
    /// ignored.
    pub fn req<'a>(&'a self, key: &'a str) -> Result<&'a str, String> {
        let mut all = self.all(key);
        let v = all.next().ok_or_else(|| format!("missing field '{key}'"))?;
        if all.next().is_some() {
            return Err(format!("field '{key}' appears more than once"));
        }
        Ok(v)
    }

    pub fn req_u64(&self, key: &str) -> Result<u64, String> {
        let v = self.req(key)?;
        v.parse::<u64>()
            .map_err(|_| format!("field '{key}' is not a number: '{v}'"))
    }
}

/// Parses `data` (trailing NUL padding allowed) as a record with `magic`.
/// Any damage - wrong magic, bad checksum, bad syntax - is an error string.
pub fn parse(data: &[u8], magic: &str) -> Result<Fields, String> {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    if data[end..].iter().any(|&b| b != 0) {
        return Err("garbage after the end of the record".into());
    }
    let data = &data[..end];
    let text = std::str::from_utf8(data).map_err(|_| "not UTF-8 text".to_string())?;
    let crc_pos = text
        .rfind("crc=")
        .ok_or_else(|| "no checksum line (truncated record?)".to_string())?;
    if crc_pos != 0 && !text[..crc_pos].ends_with('\n') {
        return Err("checksum line is not at the start of a line".into());
    }
    let crc_line = text[crc_pos..].trim_end_matches('\n');
    if text[crc_pos..].matches('\n').count() != 1 || !text.ends_with('\n') {
        return Err("record does not end right after its checksum line".into());
    }
    let want = u32::from_str_radix(&crc_line[4..], 16)
        .map_err(|_| format!("bad checksum line '{crc_line}'"))?;
    let got = crc32c(&text.as_bytes()[..crc_pos]);
    if want != got {
        return Err(format!(
            "checksum mismatch (stored {want:08x}, computed {got:08x})"
        ));
    }
    let mut lines = text[..crc_pos].lines();
    match lines.next() {
        Some(m) if m == magic => {}
        Some(m) => return Err(format!("wrong magic '{m}', expected '{magic}'")),
        None => return Err("empty record".into()),
    }
    let mut fields = Vec::new();
    for line in lines {
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line without '=': '{line}'"))?;
        fields.push((k.to_string(), decode(v)?));
    }
    Ok(Fields { fields })
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._:/@+-,".contains(&b)
}

/// Percent-encodes everything but a conservative set of plain bytes.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if is_plain(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .ok_or_else(|| format!("truncated escape in '{s}'"))?;
                // Two hex digits: from_str_radix alone also takes "+F".
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("bad escape in '{s}'"));
                }
                out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad escape in '{s}'"))?);
                i += 3;
            }
            b if is_plain(b) => {
                out.push(b);
                i += 1;
            }
            b => return Err(format!("unexpected byte 0x{b:02x} in value '{s}'")),
        }
    }
    String::from_utf8(out).map_err(|_| format!("value is not UTF-8: '{s}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_with_odd_values() {
        let mut w = Writer::new("vmlease-test v1");
        w.field("name", "a b=c%d\n<>&é").field("n", 42);
        let data = w.finish();
        let f = parse(&data, "vmlease-test v1").unwrap();
        assert_eq!(f.get("name"), Some("a b=c%d\n<>&é"));
        assert_eq!(f.req_u64("n"), Ok(42));
    }

    #[test]
    fn padding_is_accepted_but_not_garbage() {
        let mut w = Writer::new("m");
        w.field("k", "v");
        let mut data = w.finish();
        data.resize(512, 0);
        assert!(parse(&data, "m").is_ok());
        data[300] = b'x';
        assert!(parse(&data, "m").unwrap_err().contains("garbage"));
    }

    #[test]
    fn an_escape_is_two_hex_digits() {
        assert_eq!(decode("%2f%2F"), Ok("//".into()));
        for bad in ["%+F", "%-1", "%G0", "%4", "%"] {
            assert!(decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_required_field_given_twice_is_an_error() {
        let mut w = Writer::new("m");
        w.field("k", "1").field("k", "2");
        let f = parse(&w.finish(), "m").unwrap();
        assert_eq!(f.req("k"), Err("field 'k' appears more than once".into()));
        assert_eq!(f.all("k").count(), 2);
    }

    #[test]
    fn every_damage_is_an_error() {
        let mut w = Writer::new("m");
        w.field("k", "value");
        let good = w.finish();
        // Flip each byte in turn: never parses as a valid record.
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(parse(&bad, "m").is_err(), "flip at {i} accepted");
        }
        // Truncation at every length.
        for n in 0..good.len() {
            assert!(
                parse(&good[..n], "m").is_err(),
                "truncation at {n} accepted"
            );
        }
        assert!(parse(&good, "other").is_err());
    }
}
