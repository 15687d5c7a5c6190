//! The domain XML libvirt writes to the hook's stdin (src/hook/xml.rs):
//! only the root `<domain>`'s own `<uuid>` and `<name>` count.

use proptest::prelude::*;
use proptest::sample::Index;
use vmlease::hook::xml;

use crate::runner::{bounded, fuzz};

fn uuid() -> impl Strategy<Value = String> {
    "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Children of `<domain>` that must not be mistaken for its uuid or name:
/// nested uuids, comments, CDATA, processing instructions, attributes
/// with `>` in quotes.
fn decoy() -> impl Strategy<Value = String> {
    prop_oneof![
        uuid().prop_map(|u| format!("<metadata><app:x xmlns:app='urn:x'><uuid>{u}</uuid><name>n</name></app:x></metadata>")),
        uuid().prop_map(|u| format!("<!-- <uuid>{u}</uuid> -->")),
        uuid().prop_map(|u| format!("<description><![CDATA[<uuid>{u}</uuid>]]></description>")),
        Just("<?pi <uuid>x</uuid> ?>".to_string()),
        Just("<memory unit='KiB'>65536</memory>".to_string()),
        Just("<devices><disk type='file' device='disk'><source file='/a&gt;b.qcow2'/></disk></devices>".to_string()),
        Just("<seclabel type='none' model='a>b'/>".to_string()),
        "[ \n\t]{0,3}",
    ]
}

/// A domain XML as libvirt writes it, with its uuid and name.
fn domain() -> impl Strategy<Value = (String, String, String)> {
    (
        uuid(),
        "[^\u{0}-\u{1f}]{1,40}".prop_filter("not blank", |n| !n.trim().is_empty()),
        prop::collection::vec(decoy(), 0..5),
        any::<Index>(),
        any::<Index>(),
        any::<bool>(),
    )
        .prop_map(|(u, name, decoys, ui, ni, prolog)| {
            let mut children = decoys;
            let n = children.len();
            children.insert(ui.index(n + 1), format!("<uuid>{u}</uuid>"));
            let n = children.len();
            children.insert(ni.index(n + 1), format!("<name>{}</name>", escape(&name)));
            let head = if prolog {
                "<?xml version='1.0'?>\n<!-- x -->\n"
            } else {
                ""
            };
            let xml = format!(
                "{head}<domain type='kvm' id='3'>\n{}\n</domain>\n",
                children.join("\n  ")
            );
            (xml, u.to_ascii_lowercase(), name)
        })
}

#[test]
fn hook_xml_valid_domains() {
    fuzz(
        "hook_xml_valid_domains",
        2000,
        domain(),
        |(xml, uuid, name)| {
            let d = xml::parse(&xml).map_err(|e| TestCaseError::fail(format!("{e}: {xml}")))?;
            prop_assert_eq!(d.uuid, uuid);
            prop_assert_eq!(d.name.as_deref(), Some(name.trim()));
            Ok(())
        },
    );
}

/// Any text, and valid domains truncated, with bytes replaced or
/// inserted: no panic, bounded time, and a result is a real UUID.
#[test]
fn hook_xml_mutations() {
    let input = prop_oneof![
        any::<String>(),
        "[<>/!?\\[\\]a-z'\"= -]{0,200}",
        (domain(), any::<Index>()).prop_map(|((x, _, _), i)| {
            let mut cut = i.index(x.len() + 1);
            while !x.is_char_boundary(cut) {
                cut -= 1;
            }
            x[..cut].to_string()
        }),
        (domain(), any::<Index>(), "[<>/!?\\[\\]&;'\"-]{1,3}").prop_map(|((x, _, _), i, junk)| {
            let mut at = i.index(x.len() + 1);
            while !x.is_char_boundary(at) {
                at -= 1;
            }
            format!("{}{junk}{}", &x[..at], &x[at..])
        }),
    ];
    fuzz("hook_xml_mutations", 3000, input, |s| {
        if let Ok(d) = bounded("xml::parse", s.len(), || xml::parse(&s))? {
            prop_assert!(vmlease::resource::is_uuid(&d.uuid), "uuid {:?}", d.uuid);
            prop_assert_eq!(d.uuid.to_ascii_lowercase(), d.uuid.clone());
        }
        Ok(())
    });
}

/// Huge inputs in one piece: deep nesting, a long name full of `&`, long
/// runs of `<`: linear time, memory bounded by the input.
#[test]
fn hook_xml_huge_inputs() {
    let u = "c7a5fdbd-edaf-9455-926a-d65c16db1809";
    let n = 1 << 20;
    let cases = [
        format!(
            "<domain><uuid>{u}</uuid><name>{}</name></domain>",
            "&".repeat(n)
        ),
        format!(
            "<domain><uuid>{u}</uuid><name>{}</name></domain>",
            "&#x".repeat(n / 3)
        ),
        format!(
            "<domain><uuid>{u}</uuid><x>{}</x></domain>",
            "<a>".repeat(n / 3)
        ),
        format!("<domain><uuid>{u}</uuid>{}", "<!--".repeat(n / 4)),
        format!("<domain>{}", "<".repeat(n)),
        "<".repeat(n),
        format!("<domain {}>", "'".repeat(n)),
    ];
    for c in &cases {
        let r = bounded("xml::parse", c.len(), || xml::parse(c));
        assert!(r.is_ok(), "{}: {:?}", &c[..60], r.err());
    }
}
