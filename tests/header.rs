//! The committed C header (include/vmlease.h) must be exactly what the
//! pinned cbindgen generates from src/ffi.rs, and must compile as C with
//! the struct layouts libvirt expects.
//!
//! Regenerate: VMLEASE_UPDATE_HEADER=1 cargo test --test header
//! (scripts/gen-header).

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn generate() -> String {
    let cfg = cbindgen::Config::from_file(root().join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_src(root().join("src/ffi.rs"))
        .with_config(cfg)
        .generate()
        .expect("cbindgen failed to generate the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn committed_header_matches_cbindgen() {
    let path = root().join("include/vmlease.h");
    let fresh = generate();
    if std::env::var_os("VMLEASE_UPDATE_HEADER").is_some() {
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != fresh {
        let first = committed
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(committed.lines().count().min(fresh.lines().count()));
        panic!(
            "include/vmlease.h is out of date (first difference at line {}):\n  committed: {:?}\n  generated: {:?}\n\
             run scripts/gen-header and commit the result",
            first + 1,
            committed.lines().nth(first),
            fresh.lines().nth(first)
        );
    }
}

#[test]
fn header_compiles_as_c_with_libvirts_layouts() {
    let dir = std::env::temp_dir().join(format!("vmlease-header-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("check.c");
    std::fs::write(
        &src,
        r#"#include <stddef.h>
#include "vmlease.h"
_Static_assert(sizeof(virLockDriver) == 72, "virLockDriver is 72 bytes");
_Static_assert(offsetof(virLockDriver, drvInit) == 8, "drvInit at 8");
_Static_assert(offsetof(virLockDriver, drvInquire) == 64, "drvInquire at 64");
_Static_assert(sizeof(virLockManager) == 16, "virLockManager is 16 bytes");
_Static_assert(sizeof(virLockManagerParam) == 32, "virLockManagerParam is 32 bytes");
_Static_assert(offsetof(virLockManagerParam, value) == 16, "value at 16");
_Static_assert(sizeof(virLockManagerParamValue) == 16, "the value union is 16 bytes");
_Static_assert(VIR_LOCK_MANAGER_VERSION == 1000000, "ABI version 1.0.0");
int main(void) { return virLockDriverImpl.version == VIR_LOCK_MANAGER_VERSION ? 0 : 1; }
"#,
    )
    .unwrap();
    let out = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Werror", "-fsyntax-only", "-I"])
        .arg(root().join("include"))
        .arg(&src)
        .output()
        .expect("cc");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "the header does not compile or has the wrong layouts:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
