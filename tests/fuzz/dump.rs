//! `vmlease dump FILE` (src/cli/dump.rs): detects what any file is and
//! decodes it. Run as the real binary, since a panic or a crash must show
//! as what it is: the exit code is 0 (valid) or 1 (corrupt or unknown,
//! with the reason on stderr), never a panic (101) or a signal, and it
//! ends in bounded time.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use vmlease::codec::Writer;
use vmlease::hosts::SLOT_SIZE;

use crate::mutate;
use crate::runner::fuzz;

/// (kind the dump must name, valid bytes) of every format dump knows.
fn valid_file() -> impl Strategy<Value = (&'static str, Vec<u8>)> {
    prop_oneof![
        crate::lease::record().prop_map(|r| ("valid lease record", r.encode())),
        crate::status::status().prop_map(|s| ("valid watchdog status", s.encode())),
        (1u16..=4)
            .prop_flat_map(crate::hosts::record)
            .prop_map(|r| {
                let mut t = vec![0u8; 4 * SLOT_SIZE];
                let at = (r.host_id as usize - 1) * SLOT_SIZE;
                t[at..at + SLOT_SIZE].copy_from_slice(&r.encode());
                ("valid host table", t)
            }),
        (1u32..=2000).prop_map(|n| {
            let mut w = Writer::new("vmlease-lockspace v1");
            w.field("max_hosts", n).field("slot_size", SLOT_SIZE);
            ("valid lockspace header", w.finish())
        }),
        (any::<u32>(), any::<u64>(), any::<String>()).prop_map(|(pid, start, name)| {
            let mut e = vmlease::registry::Entry::new(
                vmlease::process::ProcId { pid, start },
                "c7a5fdbd-edaf-9455-926a-d65c16db1809",
                &name,
            );
            e.keys = vec![("disk-a".into(), "/a b".into())];
            ("valid registry entry", e.encode())
        }),
    ]
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `vmlease dump` on `path`, killing it after 10 s.
fn dump(path: &Path, json: bool) -> Result<Run, String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmlease"));
    if json {
        cmd.arg("--json");
    }
    let mut child = cmd
        .arg("dump")
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn vmlease: {e}"))?;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let mut stderr = String::new();
    let _ = err.read_to_string(&mut stderr);
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break st;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "vmlease dump {} ran for more than 10 s",
                path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let stdout = t.join().unwrap_or_default();
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = status.signal() {
        return Err(format!(
            "vmlease dump died of signal {sig}; stderr: {stderr}"
        ));
    }
    Ok(Run {
        code: status.code(),
        stdout,
        stderr,
    })
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vmlease-fuzz-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn dump_detects_and_survives_anything() {
    let dir = scratch("dump");
    let path = dir.join("file");
    let input = prop_oneof![
        3 => (valid_file(), valid_file(), mutate::input(), prop::collection::vec(mutate::damage(), 1..4))
            .prop_map(|((_, g), (_, o), i, raw)| {
                // A host table has no lines to edit: damage it raw.
                let i = if g.first() == Some(&0) { mutate::Input::Raw(raw) } else { i };
                (None, mutate::make(&g, &o, &i))
            }),
        1 => valid_file().prop_map(|(kind, v)| (Some(kind), v)),
        1 => mutate::random_bytes("vmlease-lease v1").prop_map(|v| (None, v)),
        1 => (1usize..64).prop_map(|n| (None, vec![0u8; n * SLOT_SIZE])),
    ];
    fuzz(
        "dump_detects_and_survives_anything",
        300,
        (input, any::<bool>()),
        |((kind, data), json)| {
            std::fs::write(&path, &data).unwrap();
            let r = dump(&path, json).map_err(TestCaseError::fail)?;
            let what = format!(
                "exit {:?}\nstdout: {}\nstderr: {}",
                r.code, r.stdout, r.stderr
            );
            match r.code {
                Some(0) => {}
                Some(1) => prop_assert!(
                    r.stderr.contains("CORRUPT") || r.stderr.contains("not a vmlease file"),
                    "exit 1 without a reason: {}",
                    what
                ),
                _ => return Err(TestCaseError::fail(format!("unexpected exit: {what}"))),
            }
            if let Some(kind) = kind {
                prop_assert_eq!(r.code, Some(0), "{}", what);
                if json {
                    prop_assert!(r.stdout.trim_start().starts_with('{'), "{}", what);
                } else {
                    prop_assert!(
                        r.stdout.contains(kind),
                        "not detected as {}: {}",
                        kind,
                        what
                    );
                }
            }
            Ok(())
        },
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A file of more than 65535 slots (32 MiB): a table, decoded to its end.
#[test]
fn dump_a_table_past_the_largest_host_id() {
    let dir = scratch("dump-big");
    let path = dir.join("big");
    let mut data = vec![0u8; (u16::MAX as usize + 2) * SLOT_SIZE];
    let last = data.len() - 1;
    data[last] = 1;
    std::fs::write(&path, &data).unwrap();
    let r = dump(&path, false).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        r.code,
        Some(1),
        "stdout: {}\nstderr: {}",
        &r.stdout[..r.stdout.len().min(300)],
        r.stderr
    );
    assert!(r.stdout.contains("65537"), "the last slot is listed");
    assert!(r.stderr.contains("CORRUPT"), "{}", r.stderr);
}
