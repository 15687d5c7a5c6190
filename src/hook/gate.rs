//! Is vmlease libvirt's lock manager on this host? The package installs
//! the hook before anyone enables the plugin (`lock_manager = "vmlease"`
//! in qemu.conf, see packaging): until then the hook has nothing to
//! protect and must not refuse starts. Where the plugin is enabled, it
//! refuses unprotected starts itself as well (in QEMU's pre-exec child);
//! the hook only says so earlier and more clearly, and checks reconnects.
#![forbid(unsafe_code)]

use std::path::PathBuf;

/// libvirt's QEMU driver configuration.
pub const QEMU_CONF: &str = "/etc/libvirt/qemu.conf";

/// qemu.conf, or the file `VMLEASE_QEMU_CONF` names (tests; the hook
/// script passes it on from /etc/libvirt/hooks/vmlease.env).
pub fn qemu_conf_path() -> PathBuf {
    std::env::var_os("VMLEASE_QEMU_CONF")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(QEMU_CONF))
}

/// Whether qemu.conf selects vmlease. A file that exists but cannot be
/// read counts as yes: the hook then enforces rather than guesses.
pub fn vmlease_enabled() -> (bool, String) {
    let path = qemu_conf_path();
    match std::fs::read_to_string(&path) {
        Ok(text) => match lock_manager(&text) {
            Some(m) if m == "vmlease" => (true, String::new()),
            Some(m) => (
                false,
                format!("{} sets lock_manager = \"{m}\"", path.display()),
            ),
            None => (false, format!("{} sets no lock_manager", path.display())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (false, format!("{} does not exist", path.display()))
        }
        Err(e) => (
            true,
            format!("cannot read {} ({e}); enforcing", path.display()),
        ),
    }
}

/// The value of the last `lock_manager = "..."` setting (libvirt's conf
/// syntax: `#` comments, double or single quoted strings).
pub fn lock_manager(text: &str) -> Option<String> {
    let mut found = None;
    for line in text.lines() {
        let line = line.trim_start();
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() != "lock_manager" {
            continue;
        }
        let v = value.trim_start();
        let parsed = match v.chars().next() {
            Some(q @ ('"' | '\'')) => v[1..].find(q).map(|end| v[1..1 + end].to_string()),
            _ => None,
        };
        if let Some(p) = parsed {
            found = Some(p);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_last_setting() {
        assert_eq!(
            lock_manager("lock_manager = \"vmlease\"\n").as_deref(),
            Some("vmlease")
        );
        assert_eq!(
            lock_manager("#lock_manager = \"vmlease\"\nuser = \"root\"\n"),
            None
        );
        assert_eq!(
            lock_manager("lock_manager='lockd'   # comment\n  lock_manager = \"vmlease\"\n")
                .as_deref(),
            Some("vmlease")
        );
        assert_eq!(
            lock_manager("lock_manager = \"vmlease\"\nlock_manager = \"sanlock\"\n").as_deref(),
            Some("sanlock")
        );
        assert_eq!(
            lock_manager("lock_manager_x = \"vmlease\"\nlock_manager = vmlease\n"),
            None
        );
    }
}
