//! The `ceph` CLI's answers that `check-config` reads, asked for with
//! `--format json` and parsed into the few fields it needs (serde ignores
//! the rest). Samples captured from a real cluster (Ceph 16.2.15) are in
//! tests/ceph/json/ and parsed by the tests below.
#![forbid(unsafe_code)]

use serde::Deserialize;

use crate::storage_fence::ceph::parse;

/// One entry of `ceph fs ls --format json` (an array, `[]` when there is
/// no file system).
#[derive(Deserialize)]
struct FsLsEntry {
    name: String,
}

/// The file system names in `ceph fs ls --format json`.
pub fn fs_names(out: &str) -> Result<Vec<String>, String> {
    let entries: Vec<FsLsEntry> = parse(out, "ceph fs ls")?;
    Ok(entries.into_iter().map(|e| e.name).collect())
}

/// `ceph fs get NAME --format json`: `{"mdsmap": {...}, "id": N}`.
#[derive(Deserialize)]
struct FsGet {
    mdsmap: MdsMap,
}

#[derive(Deserialize)]
struct MdsMap {
    session_timeout: f64,
    session_autoclose: f64,
}

/// `(session_timeout, session_autoclose)` in seconds from `ceph fs get
/// NAME --format json`.
pub fn session_timers(out: &str, name: &str) -> Result<(f64, f64), String> {
    let g: FsGet = parse(out, &format!("ceph fs get {name}"))?;
    Ok((g.mdsmap.session_timeout, g.mdsmap.session_autoclose))
}

/// The value of `ceph config get WHO KEY --format json`. Pacific prints
/// the bare value even in JSON mode (`5.000000`, `true`: a JSON number
/// and a JSON bool for the options read here); a string is accepted too.
#[derive(Deserialize)]
#[serde(untagged)]
enum ConfigValue {
    Bool(bool),
    Num(f64),
    Str(String),
}

fn config_value(out: &str, key: &str) -> Result<ConfigValue, String> {
    parse(out, &format!("ceph config get mds {key}"))
}

/// A number (seconds) option's value.
pub fn config_number(out: &str, key: &str) -> Result<f64, String> {
    match config_value(out, key)? {
        ConfigValue::Num(n) => Ok(n),
        ConfigValue::Str(s) => s.trim().parse().map_err(|_| not_a(key, "number", &s)),
        ConfigValue::Bool(b) => Err(not_a(key, "number", &b.to_string())),
    }
}

/// A boolean option's value.
pub fn config_bool(out: &str, key: &str) -> Result<bool, String> {
    match config_value(out, key)? {
        ConfigValue::Bool(b) => Ok(b),
        ConfigValue::Str(s) => s.trim().parse().map_err(|_| not_a(key, "boolean", &s)),
        ConfigValue::Num(n) => Err(not_a(key, "boolean", &n.to_string())),
    }
}

fn not_a(key: &str, kind: &str, got: &str) -> String {
    format!("ceph config get mds {key}: not a {kind}: {got:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::storage_fence::ceph::sample;

    #[test]
    fn reads_the_answers_of_a_real_cluster() {
        assert_eq!(fs_names(&sample("fs-ls.json")).unwrap(), ["cephfs"]);
        assert!(fs_names(&sample("fs-ls-none.json")).unwrap().is_empty());
        assert_eq!(
            session_timers(&sample("fs-get.json"), "cephfs").unwrap(),
            (60.0, 300.0)
        );
        let n = config_number(
            &sample("config-get-number.json"),
            "mds_cap_revoke_eviction_timeout",
        );
        assert_eq!(n, Ok(6.5));
        let b = config_bool(
            &sample("config-get-bool.json"),
            "mds_session_blocklist_on_evict",
        );
        assert_eq!(b, Ok(true));
        // Releases that quote the value.
        assert_eq!(config_number("\"5.000000\"\n", "k"), Ok(5.0));
        assert_eq!(config_bool("\"false\"", "k"), Ok(false));
    }

    #[test]
    fn a_malformed_or_incomplete_answer_is_a_clear_error() {
        let e = session_timers(r#"{"mdsmap":{"session_timeout":60},"id":1}"#, "cephfs");
        let e = e.unwrap_err();
        assert!(
            e.starts_with(
                "ceph fs get cephfs: unreadable answer: missing field `session_autoclose`"
            ),
            "{e}"
        );
        let e = session_timers("Error ENOENT: filesystem 'x' not found", "x").unwrap_err();
        assert!(e.starts_with("ceph fs get x: unreadable answer: "), "{e}");
        // The text output `ceph fs ls` gave before `--format json`.
        let e =
            fs_names("name: cephfs, metadata pool: cephfs_metadata, data pools: [cephfs_data ]")
                .unwrap_err();
        assert!(e.starts_with("ceph fs ls: unreadable answer: "), "{e}");
        let e = fs_names(r#"[{"metadata_pool":"m"}]"#).unwrap_err();
        assert!(e.contains("missing field `name`"), "{e}");
        assert_eq!(
            config_number("true", "mds_tick_interval"),
            Err("ceph config get mds mds_tick_interval: not a number: \"true\"".into())
        );
        assert_eq!(
            config_bool("\"yes\"", "mds_session_blocklist_on_evict"),
            Err(
                "ceph config get mds mds_session_blocklist_on_evict: not a boolean: \"yes\"".into()
            )
        );
        let e = config_number("", "mds_tick_interval").unwrap_err();
        assert!(
            e.starts_with("ceph config get mds mds_tick_interval: unreadable answer: "),
            "{e}"
        );
    }
}
