//! Just enough XML to find a domain's `<uuid>` and `<name>` in the XML
//! libvirt writes to a hook's stdin: the root must be `<domain>`, and only
//! its direct children count (a `<uuid>` inside `<metadata>`, a comment or
//! CDATA is not the domain's). Anything malformed is an error that says
//! what is wrong; nothing here panics on any input.
#![forbid(unsafe_code)]

/// What the hook needs from the domain XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainXml {
    /// Lower case, checked to be a UUID.
    pub uuid: String,
    pub name: Option<String>,
}

/// Parses the domain XML.
pub fn parse(xml: &str) -> Result<DomainXml, String> {
    if xml.trim().is_empty() {
        return Err("no domain XML on stdin".into());
    }
    let mut s = Scanner { s: xml, i: 0 };
    // The prolog: declaration, comments, doctype, whitespace.
    loop {
        s.skip_ws();
        if s.rest().starts_with("<?") {
            s.skip_past("?>", "processing instruction")?;
        } else if s.rest().starts_with("<!--") {
            s.skip_past("-->", "comment")?;
        } else if s.rest().starts_with("<!") {
            s.skip_past(">", "declaration")?;
        } else {
            break;
        }
    }
    if !s.rest().starts_with('<') {
        return Err("the input is not XML (no <domain> element)".into());
    }
    let root = s.start_tag()?;
    if root.name != "domain" {
        return Err(format!("the root element is <{}>, not <domain>", root.name));
    }
    if root.empty {
        return Err("the domain XML has no <uuid>".into());
    }
    let mut uuid: Option<String> = None;
    let mut name: Option<String> = None;
    // Direct children of <domain>, until </domain>.
    loop {
        let text_end = s.rest().find('<').ok_or("unterminated <domain> element")?;
        s.i += text_end;
        let r = s.rest();
        if r.starts_with("<!--") {
            s.skip_past("-->", "comment")?;
        } else if r.starts_with("<![CDATA[") {
            s.skip_past("]]>", "CDATA section")?;
        } else if r.starts_with("<?") {
            s.skip_past("?>", "processing instruction")?;
        } else if r.starts_with("</") {
            let end = s.end_tag()?;
            if end != "domain" {
                return Err(format!("</{end}> closes <domain>"));
            }
            break;
        } else {
            let tag = s.start_tag()?;
            let text = if tag.empty {
                String::new()
            } else {
                s.element_text(&tag.name)?
            };
            match tag.name.as_str() {
                "uuid" if uuid.is_none() => uuid = Some(text),
                "uuid" => return Err("the domain XML has two <uuid> elements".into()),
                "name" if name.is_none() => name = Some(unescape(text.trim())),
                _ => {}
            }
        }
    }
    let raw = uuid.ok_or("the domain XML has no <uuid>")?;
    let u = raw.trim().to_ascii_lowercase();
    if !crate::resource::is_uuid(&u) {
        let shown: String = u.chars().take(40).collect();
        return Err(format!("<uuid> '{shown}' is not a UUID"));
    }
    Ok(DomainXml { uuid: u, name })
}

struct Tag {
    name: String,
    empty: bool,
}

struct Scanner<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Scanner<'a> {
    fn rest(&self) -> &'a str {
        &self.s[self.i..]
    }

    fn skip_ws(&mut self) {
        let r = self.rest();
        self.i += r.len() - r.trim_start().len();
    }

    fn skip_past(&mut self, end: &str, what: &str) -> Result<(), String> {
        match self.rest().find(end) {
            Some(p) => {
                self.i += p + end.len();
                Ok(())
            }
            None => Err(format!("unterminated {what}")),
        }
    }

    /// `<name attr='v' ...>` or `<name .../>`; quotes may hold `>`.
    fn start_tag(&mut self) -> Result<Tag, String> {
        let r = self.rest();
        debug_assert!(r.starts_with('<'));
        let name_len = r[1..]
            .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
            .ok_or_else(|| {
                let name: String = r[1..].chars().take(40).collect();
                format!("unterminated <{name}> tag")
            })?;
        let name = r[1..1 + name_len].to_string();
        if name.is_empty() {
            return Err("a tag without a name".into());
        }
        let mut quote: Option<char> = None;
        let attrs_at = 1 + name_len;
        for (rel, c) in r[attrs_at..].char_indices() {
            let off = attrs_at + rel;
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '<') => return Err(format!("'<' inside the <{name}> tag")),
                (None, '>') => {
                    let empty = r[..off].ends_with('/');
                    self.i += off + 1;
                    return Ok(Tag { name, empty });
                }
                (None, _) => {}
            }
        }
        Err(format!("unterminated <{name}> tag"))
    }

    /// `</name>`; returns the name.
    fn end_tag(&mut self) -> Result<String, String> {
        let r = self.rest();
        let close = r.find('>').ok_or("unterminated end tag")?;
        let name = r[2..close].trim().to_string();
        self.i += close + 1;
        Ok(name)
    }

    /// The text content of an element whose start tag was just read,
    /// skipping nested elements; leaves the scanner after its end tag.
    fn element_text(&mut self, name: &str) -> Result<String, String> {
        let mut text = String::new();
        let mut depth = 1usize;
        loop {
            let r = self.rest();
            let lt = r
                .find('<')
                .ok_or_else(|| format!("unterminated <{name}> element"))?;
            if depth == 1 {
                text.push_str(&r[..lt]);
            }
            self.i += lt;
            let r = self.rest();
            if r.starts_with("<!--") {
                self.skip_past("-->", "comment")?;
            } else if let Some(body) = r.strip_prefix("<![CDATA[") {
                let end = body.find("]]>").ok_or("unterminated CDATA section")?;
                if depth == 1 {
                    text.push_str(&body[..end]);
                }
                self.i += 9 + end + 3;
            } else if r.starts_with("<?") {
                self.skip_past("?>", "processing instruction")?;
            } else if r.starts_with("</") {
                let end = self.end_tag()?;
                depth -= 1;
                if depth == 0 {
                    if end != name {
                        return Err(format!("</{end}> closes <{name}>"));
                    }
                    return Ok(text);
                }
            } else {
                let tag = self.start_tag()?;
                if !tag.empty {
                    depth += 1;
                }
            }
        }
    }
}

/// The five predefined entities and numeric references (for names).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp..];
        // Look for the ';' among the next few bytes only: searching the
        // whole rest for every '&' took quadratic time (a minute for a
        // name of 1 MiB of '&').
        let Some(semi) = tail.bytes().take(11).position(|b| b == b';') else {
            out.push('&');
            rest = &tail[1..];
            continue;
        };
        let ent = &tail[1..semi];
        let c = match ent {
            "lt" => Some('<'),
            "gt" => Some('>'),
            "amp" => Some('&'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e if e.starts_with("#x") => u32::from_str_radix(&e[2..], 16)
                .ok()
                .and_then(char::from_u32),
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &tail[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "c7a5fdbd-edaf-9455-926a-d65c16db1809";

    fn libvirt_xml() -> String {
        String::from(
            "<domain type='kvm' id='3'>\n  <name>web &amp; db</name>\n  <uuid>C7A5FDBD-EDAF-9455-926A-D65C16DB1809</uuid>\n  \
             <metadata>\n    <app:x xmlns:app='urn:x'><uuid>00000000-0000-0000-0000-000000000000</uuid></app:x>\n  </metadata>\n  \
             <memory unit='KiB'>65536</memory>\n  <devices>\n    <disk type='file' device='disk'>\n      \
             <source file='/images/a&gt;b.qcow2'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n  </devices>\n\
             <seclabel type='none' model='none'/>\n</domain>\n"
        )
    }

    #[test]
    fn finds_the_domain_uuid_and_name() {
        let d = parse(&libvirt_xml()).unwrap();
        assert_eq!(d.uuid, UUID);
        assert_eq!(d.name.as_deref(), Some("web & db"));
        let with_prolog = format!(
            "<?xml version='1.0'?>\n<!-- hi <uuid>x</uuid> -->\n{}",
            libvirt_xml()
        );
        assert_eq!(parse(&with_prolog).unwrap().uuid, UUID);
    }

    #[test]
    fn only_a_direct_child_counts() {
        let xml = "<domain><metadata><uuid>00000000-0000-0000-0000-000000000000</uuid></metadata>\
                   <!-- <uuid>11111111-1111-1111-1111-111111111111</uuid> -->\
                   <uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid></domain>";
        assert_eq!(parse(xml).unwrap().uuid, UUID);
        let xml = "<domain><description><![CDATA[<uuid>11111111-1111-1111-1111-111111111111</uuid>]]></description>\
                   <uuid> c7a5fdbd-edaf-9455-926a-d65c16db1809 </uuid></domain>";
        assert_eq!(parse(xml).unwrap().uuid, UUID);
    }

    #[test]
    fn malformed_input_is_a_clear_error() {
        for (xml, want) in [
            ("", "no domain XML on stdin"),
            ("garbage", "not XML"),
            ("<network><uuid>x</uuid></network>", "root element is <network>"),
            ("<domain/>", "no <uuid>"),
            ("<domain><name>x</name></domain>", "no <uuid>"),
            ("<domain><uuid>nope</uuid></domain>", "'nope' is not a UUID"),
            ("<domain><uuid>c7a5", "unterminated <uuid>"),
            ("<domain><uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid>", "unterminated <domain>"),
            ("<domain><uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</name></domain>", "</name> closes <uuid>"),
            ("<domain type='kvm", "unterminated <domain> tag"),
            ("<!-- x", "unterminated comment"),
            (
                "<domain><uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid><uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid></domain>",
                "two <uuid>",
            ),
        ] {
            let e = parse(xml).unwrap_err();
            assert!(e.contains(want), "{xml:?}: {e}");
        }
    }

    #[test]
    fn never_panics_on_truncations() {
        let xml = libvirt_xml();
        for cut in 0..xml.len() {
            if xml.is_char_boundary(cut) {
                let _ = parse(&xml[..cut]);
            }
        }
        assert_eq!(unescape("a&lt;b&#x41;&#66;&bogus;&"), "a<bAB&bogus;&");
    }

    #[test]
    fn unescaping_takes_linear_time() {
        // 1 MiB of '&' without ';' took a minute when every '&' searched
        // the whole rest for its ';'.
        let start = std::time::Instant::now();
        let s = "&".repeat(1 << 20);
        assert_eq!(unescape(&s), s);
        assert_eq!(unescape("&amp;&am&#x3b;"), "&&am;");
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }
}
