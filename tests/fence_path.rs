//! The fence path stays small: the watchdog daemon and the lock plugin
//! never link the etcd/HTTP/TLS client that vmlease-ha uses (SPEC section
//! 6). Checked on the built files' symbol tables (`nm`): code linked from
//! `ureq`, `rustls` or vmlease's own etcd client has symbols named for
//! them. (The raw bytes are no guide: debug info keeps the names of code
//! the linker dropped.) vmlease-ha itself must show them, or the check
//! would prove nothing.

use std::path::PathBuf;
use std::process::Command;

/// What the HTTP/etcd client's code leaves in a binary.
const MARKERS: &[&str] = &["ureq", "rustls", "4etcd4Etcd"];

/// The markers among the names of the symbols the file defines.
fn found(path: &PathBuf) -> Vec<&'static str> {
    let out = Command::new("nm")
        .arg("--defined-only")
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("nm {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "nm {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let syms = String::from_utf8_lossy(&out.stdout);
    assert!(
        syms.lines().count() > 100,
        "{} has no symbol table",
        path.display()
    );
    MARKERS
        .iter()
        .copied()
        .filter(|m| syms.contains(m))
        .collect()
}

#[test]
fn the_watchdog_and_the_plugin_do_not_link_the_etcd_client() {
    let ha = PathBuf::from(env!("CARGO_BIN_EXE_vmlease-ha"));
    assert_eq!(
        found(&ha),
        MARKERS,
        "{} should contain every marker: the check is blind otherwise",
        ha.display()
    );
    let watchdog = PathBuf::from(env!("CARGO_BIN_EXE_vmlease-watchdog"));
    let plugin = watchdog.with_file_name("libvmlease.so");
    for f in [watchdog, plugin] {
        assert!(f.exists(), "{} is not built", f.display());
        let got = found(&f);
        assert!(
            got.is_empty(),
            "{} links the etcd/HTTP client: found {got:?}",
            f.display()
        );
    }
}
