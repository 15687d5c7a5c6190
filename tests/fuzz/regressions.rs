//! Every failure the fuzz targets found, as a plain test with the shrunk
//! input (proptest's own seeds are in tests/fuzz/regressions/*.txt and
//! replayed first by each target). docs/fuzzing.md tells each story.

use vmlease::codec;
use vmlease::config;
use vmlease::hosts::{self, HostRecord, HostState, Slot, SLOT_SIZE};
use vmlease::lease::LeaseRecord;
use vmlease::state_string::LockState;
use vmlease::status::Status;

use crate::mutate::{lines_of, reseal};
use crate::runner::bounded;

/// host_slot_roundtrip: the config accepted a 64-byte host name that
/// encodes to 192 bytes, and the daemon's first renewal panicked with
/// "host record exceeds its slot".
#[test]
fn a_host_name_the_config_accepts_fits_the_slot() {
    let name = "\u{e9}".repeat(32);
    let text = format!("host_id = 1\nhost_name = \"{name}\"\n");
    match config::parse(&text, "fuzz") {
        Err(e) => assert!(e.to_string().contains("host_name"), "{e}"),
        Ok(cfg) => {
            let r = HostRecord {
                host_id: 1,
                host_name: cfg.host_name.clone().unwrap(),
                boot_id: "0b6f5b8e-8f2c-4b59-9d7c-7a1e3a0d9c11".into(),
                incarnation: u64::MAX,
                counter: u64::MAX,
                state: HostState::ServiceIsolated,
                timing: cfg.timing,
                unsafe_no_watchdog: false,
                mono_ms: u64::MAX,
                wall: u64::MAX,
            };
            let data = std::panic::catch_unwind(|| r.encode())
                .expect("encoding the record of an accepted host name panicked");
            assert_eq!(data.len(), SLOT_SIZE);
        }
    }
}

/// lease_mutations, host_slot_mutations: a field given twice was read
/// once (the first copy) and the second silently ignored.
#[test]
fn a_field_given_twice_is_an_error() {
    let mut r = LeaseRecord::free("k", "r");
    r.version = 3;
    let mut lines = lines_of(&r.encode());
    lines.push("version=4".into());
    let e = LeaseRecord::decode(&reseal(&lines)).unwrap_err();
    assert!(e.contains("'version' appears more than once"), "{e}");
    let mut lines = lines_of(&r.encode());
    lines.insert(1, "key=other".into());
    assert!(LeaseRecord::decode(&reseal(&lines)).is_err());
    let f = codec::parse(&reseal(&["m".into(), "a=1".into(), "a=2".into()]), "m").unwrap();
    assert!(f.req("a").is_err());
}

/// state_string_random: "vmlease1 a:0 a:5" parsed as a:5 (the last copy
/// won), so a damaged state could name a version the source never held.
#[test]
fn a_lock_state_naming_a_key_twice_is_an_error() {
    assert!(LockState::parse("vmlease1 a:0 a:0").is_err());
    assert!(LockState::parse("vmlease1 disk-a:1 disk-a:2").is_err());
}

/// status_mutations: numbers out of range wrapped around: a peer line for
/// host 65537 read as host 1, a daemon pid of 2^32 + 1 as pid 1.
#[test]
fn status_numbers_out_of_range_are_errors() {
    let st = Status {
        daemon_pid: 1,
        host_id: 1,
        boot_id: "b".into(),
        incarnation: 1,
        written_ms: 5,
        last_renewal_ms: 5,
        state: HostState::Live,
        reason: String::new(),
        unsafe_no_watchdog: false,
        lockspace_dir: String::new(),
        lockspace_uuid: String::new(),
        allow_local_lockspace: false,
        local_lockspace: String::new(),
        observing_since_ms: 1,
        renew_interval_ms: 200,
        renew_fail_timeout_ms: 1500,
        host_dead_timeout_ms: 4000,
        networks: vec![],
        peers: vec![],
    };
    for (find, replace) in [
        ("host_id=1", "host_id=65537"),
        ("daemon_pid=1", "daemon_pid=4294967297"),
    ] {
        let lines: Vec<String> = lines_of(&st.encode())
            .into_iter()
            .map(|l| if l == find { replace.to_string() } else { l })
            .collect();
        let r = Status::decode(&reseal(&lines));
        assert!(r.is_err(), "{replace} decoded as {r:?}");
    }
    let mut lines = lines_of(&st.encode());
    lines.push("peer=65537 00000000 0 record - - 0 live 4000".into());
    let r = Status::decode(&reseal(&lines));
    assert!(r.is_err(), "peer 65537 decoded as {r:?}");
}

/// host_table (huge lengths): a table of more than 65535 slots (a 32 MiB
/// file given to `vmlease dump`) overflowed the u16 host id: a panic in
/// a debug build, slot 65536 read as host 0 in a release build.
#[test]
fn a_table_past_the_largest_host_id_decodes() {
    let mut table = vec![0u8; (u16::MAX as usize + 2) * SLOT_SIZE];
    let last = table.len() - SLOT_SIZE;
    table[last] = b'x';
    let slots = bounded("decode_table", table.len(), || {
        std::panic::catch_unwind(|| hosts::decode_table(&table))
    })
    .unwrap()
    .expect("decode_table panicked");
    assert_eq!(slots.len(), u16::MAX as usize + 2);
    assert_eq!(slots[u16::MAX as usize], Slot::Empty);
    assert!(matches!(slots[u16::MAX as usize + 1], Slot::Corrupt(_)));
}

/// hook_xml_huge_inputs: a <name> of 1 MiB of '&' took 64 s to unescape
/// (a search for ';' over the whole rest at every '&').
#[test]
fn a_name_full_of_ampersands_parses_in_linear_time() {
    let u = "c7a5fdbd-edaf-9455-926a-d65c16db1809";
    let xml = format!(
        "<domain><uuid>{u}</uuid><name>{}</name></domain>",
        "&".repeat(1 << 20)
    );
    let d = bounded("xml::parse", xml.len(), || vmlease::hook::xml::parse(&xml))
        .unwrap()
        .unwrap();
    assert_eq!(d.name.map(|n| n.len()), Some(1 << 20));
}

/// engine_damaged_lease_record: a record (resealed) with version
/// 18446744073709551615 made acquire panic with "attempt to add with
/// overflow" (debug) or wrap the version to 0 (release), so an old
/// handover state could match again.
#[test]
fn a_lease_version_at_its_largest_is_refused() {
    let (_t, ls) = crate::engine::lockspace("maxver");
    let res = vmlease::resource::Resource::disk("/images/a.qcow2", false);
    let mut rec = LeaseRecord::free(&res.key(), &res.name);
    rec.version = u64::MAX;
    ls.write_lease(&rec, 2).unwrap();
    let eng = crate::engine::engine(&ls, None);
    let me = crate::engine::holder(1, 1);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eng.acquire(&res, &me, None)
    }))
    .expect("acquire panicked");
    assert!(r.is_err(), "{r:?}");
    assert_eq!(ls.read_lease(&res.key(), "").unwrap().version, u64::MAX);
}

/// codec_value_escapes (bench/fuzz-long): "%+a" decoded as the byte 0x0a,
/// since from_str_radix takes a sign; an escape is exactly two hex digits.
#[test]
fn an_escape_with_a_sign_is_an_error() {
    assert!(codec::decode("%+a").is_err());
    assert!(codec::decode("%-1").is_err());
    assert_eq!(codec::decode("%0a"), Ok("\n".into()));
}
