//! `check-config` on a CephFS lockspace: reads the cluster's MDS settings
//! that decide how long a hung or partitioned client can hold up the other
//! hosts (docs/cephfs.md) and warns when they do not fit vmlease's timing.
//!
//! The settings come from the `ceph` CLI as this host's default client
//! (`CEPH_ARGS`, e.g. `--id vmlease -c /etc/ceph/ceph.conf`, selects
//! another); when it cannot be asked, that is a warning too, with the
//! commands to check by hand. Its answers are read as JSON
//! (`--format json`, parsed in [`answers`]), never scraped from its text.
#![forbid(unsafe_code)]

mod answers;

use std::time::{Duration, Instant};

use super::json::Json;
use crate::config::{secs, Timing};

/// One CephFS file system's session timers, in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSystem {
    pub name: String,
    pub session_timeout: f64,
    pub session_autoclose: f64,
}

/// The MDS settings vmlease's timing depends on, in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// 0: off (a client that keeps capabilities is never evicted for it).
    pub cap_revoke_eviction_timeout: f64,
    pub tick_interval: f64,
    pub blocklist_on_timeout: bool,
    /// An evicted client (e.g. a hung one, evicted for unreturned
    /// capabilities) is blocklisted: it cannot reconnect and write.
    pub blocklist_on_evict: bool,
    pub file_systems: Vec<FileSystem>,
}

/// Runs `ceph ARGS --format json` with a deadline; stdout, or why not.
fn ceph(args: &[&str], deadline: Instant) -> Result<String, String> {
    let args: Vec<&str> = args.iter().copied().chain(["--format", "json"]).collect();
    crate::storage_fence::ceph::run(&args, deadline)
}

/// Asks the cluster, within `timeout`.
pub fn query(timeout: Duration) -> Result<Settings, String> {
    let deadline = Instant::now() + timeout;
    let get = |name: &str| ceph(&["config", "get", "mds", name], deadline);
    let number = |name: &str| answers::config_number(&get(name)?, name);
    let flag = |name: &str| answers::config_bool(&get(name)?, name);
    let cap = number("mds_cap_revoke_eviction_timeout")?;
    let tick = number("mds_tick_interval")?;
    let blocklist = flag("mds_session_blocklist_on_timeout")?;
    let blocklist_evict = flag("mds_session_blocklist_on_evict")?;
    let mut file_systems = Vec::new();
    for name in answers::fs_names(&ceph(&["fs", "ls"], deadline)?)? {
        let out = ceph(&["fs", "get", &name], deadline)?;
        let (session_timeout, session_autoclose) = answers::session_timers(&out, &name)?;
        file_systems.push(FileSystem {
            name,
            session_timeout,
            session_autoclose,
        });
    }
    Ok(Settings {
        cap_revoke_eviction_timeout: cap,
        tick_interval: tick,
        blocklist_on_timeout: blocklist,
        blocklist_on_evict: blocklist_evict,
        file_systems,
    })
}

fn s(v: f64) -> String {
    secs((v * 1000.0).round() as u64)
}

/// What does not fit vmlease's timing (R, F, D). Pure: unit-tested.
/// With `rados` (`liveness_rados = true`) no MDS setting bears on the
/// renewals: a slow capability revoke only delays takeovers.
pub fn warnings(t: &Timing, c: &Settings, rados: bool) -> Vec<String> {
    let mut w = Vec::new();
    let (r, f, d) = (
        t.renew_interval as f64 / 1000.0,
        t.renew_fail_timeout as f64 / 1000.0,
        t.host_dead_timeout as f64 / 1000.0,
    );
    // A healthy host whose renewal waits for a hung client's capabilities
    // fences itself if the wait plus one renew interval reaches F.
    let budget = f - 2.0 * r;
    if rados {
        if c.cap_revoke_eviction_timeout <= 0.0 {
            w.push(
                "CephFS: mds_cap_revoke_eviction_timeout is 0 (off): renewals go through RADOS \
                 (liveness_rados) and do not wait for a hung host, but reading the lease records \
                 a hung host wrote does, so takeovers of its leases wait up to session_timeout"
                    .into(),
            );
        }
    } else if c.cap_revoke_eviction_timeout <= 0.0 {
        w.push(format!(
            "CephFS: mds_cap_revoke_eviction_timeout is 0 (off): a hung host keeps its capabilities \
             on the hosts table until its session is closed, and healthy hosts whose renewals wait \
             for it fence themselves after renew_fail_timeout ({}); set liveness_rados = true, or \
             set it to at most {} (renew_fail_timeout - 2 * renew_interval - mds_tick_interval {})",
            secs(t.renew_fail_timeout),
            s((budget - c.tick_interval).max(0.0)),
            s(c.tick_interval)
        ));
    } else if c.cap_revoke_eviction_timeout + c.tick_interval > budget {
        w.push(format!(
            "CephFS: mds_cap_revoke_eviction_timeout {} + mds_tick_interval {} exceeds \
             renew_fail_timeout - 2 * renew_interval = {}: a hung host can hold up healthy hosts' \
             renewals until they fence themselves",
            s(c.cap_revoke_eviction_timeout),
            s(c.tick_interval),
            s(budget)
        ));
    }
    if !c.blocklist_on_timeout {
        w.push(
            "CephFS: mds_session_blocklist_on_timeout is false: an evicted host could come back \
             and write without noticing; set it to true"
                .into(),
        );
    }
    if !c.blocklist_on_evict {
        w.push(
            "CephFS: mds_session_blocklist_on_evict is false: a hung host the MDS evicts (for \
             unreturned capabilities or by an operator) could reconnect and write after its \
             leases were taken over; set it to true"
                .into(),
        );
    }
    for fs in &c.file_systems {
        if fs.session_autoclose > d {
            w.push(format!(
                "CephFS {}: session_autoclose {} exceeds host_dead_timeout {}: the record locks of a \
                 dead host stay held until its session is closed, so takeovers of its leases wait \
                 (safely) up to {}",
                fs.name,
                s(fs.session_autoclose),
                secs(t.host_dead_timeout),
                s(fs.session_autoclose)
            ));
        }
        if fs.session_timeout > fs.session_autoclose {
            w.push(format!(
                "CephFS {}: session_timeout {} exceeds session_autoclose {}",
                fs.name,
                s(fs.session_timeout),
                s(fs.session_autoclose)
            ));
        }
    }
    w
}

pub fn json(r: &Result<Settings, String>) -> Json {
    match r {
        Ok(c) => Json::obj(vec![
            (
                "mds_cap_revoke_eviction_timeout_ms",
                Json::num((c.cap_revoke_eviction_timeout * 1000.0).round() as u64),
            ),
            (
                "mds_tick_interval_ms",
                Json::num((c.tick_interval * 1000.0).round() as u64),
            ),
            (
                "mds_session_blocklist_on_timeout",
                Json::Bool(c.blocklist_on_timeout),
            ),
            (
                "mds_session_blocklist_on_evict",
                Json::Bool(c.blocklist_on_evict),
            ),
            (
                "file_systems",
                Json::Arr(
                    c.file_systems
                        .iter()
                        .map(|f| {
                            Json::obj(vec![
                                ("name", Json::str(f.name.clone())),
                                (
                                    "session_timeout_ms",
                                    Json::num((f.session_timeout * 1000.0).round() as u64),
                                ),
                                (
                                    "session_autoclose_ms",
                                    Json::num((f.session_autoclose * 1000.0).round() as u64),
                                ),
                            ])
                        })
                        .collect(),
                ),
            ),
            ("error", Json::Null),
        ]),
        Err(e) => Json::obj(vec![("error", Json::str(e.clone()))]),
    }
}

/// One line for the text output.
pub fn describe(c: &Settings) -> String {
    let mut line = format!(
        "CephFS: mds_cap_revoke_eviction_timeout {}, mds_tick_interval {}, blocklist on timeout {}, on evict {}",
        s(c.cap_revoke_eviction_timeout),
        s(c.tick_interval),
        c.blocklist_on_timeout,
        c.blocklist_on_evict
    );
    for f in &c.file_systems {
        line.push_str(&format!(
            "; {}: session_timeout {}, session_autoclose {}",
            f.name,
            s(f.session_timeout),
            s(f.session_autoclose)
        ));
    }
    line
}

pub fn unknown_warning(why: &str) -> String {
    format!(
        "CephFS: could not read the cluster's MDS settings ({why}); check by hand that \
         mds_cap_revoke_eviction_timeout + mds_tick_interval < renew_fail_timeout - \
         2 * renew_interval and session_autoclose <= host_dead_timeout: \
         'ceph config get mds mds_cap_revoke_eviction_timeout', 'ceph fs get NAME' \
         (docs/cephfs.md)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(r: u64, f: u64, d: u64) -> Timing {
        Timing {
            renew_interval: r,
            renew_fail_timeout: f,
            kill_timeout: 1000,
            watchdog_timeout: 2000,
            host_dead_timeout: d,
            host_dead_derived: false,
        }
    }

    fn settings(cap: f64, tick: f64, autoclose: f64) -> Settings {
        Settings {
            cap_revoke_eviction_timeout: cap,
            tick_interval: tick,
            blocklist_on_timeout: true,
            blocklist_on_evict: true,
            file_systems: vec![FileSystem {
                name: "cephfs".into(),
                session_timeout: 30.0,
                session_autoclose: autoclose,
            }],
        }
    }

    #[test]
    fn ceph_defaults_do_not_fit_the_default_timing() {
        // Ceph's defaults: cap revoke off, tick 5 s, autoclose 300 s.
        let w = warnings(
            &timing(2000, 20000, 41000),
            &settings(0.0, 5.0, 300.0),
            false,
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("mds_cap_revoke_eviction_timeout is 0"),
            "{w:?}"
        );
        assert!(w[0].contains("at most 11s"), "{w:?}");
        assert!(w[1].contains("session_autoclose 300s exceeds host_dead_timeout 41s"));
        assert!(w[0].contains("set liveness_rados = true"), "{w:?}");
        // Through RADOS the renewals do not depend on the MDS: what is
        // left is the takeover delay.
        let w = warnings(
            &timing(2000, 20000, 41000),
            &settings(0.0, 5.0, 300.0),
            true,
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("do not wait for a hung host") && w[0].contains("takeovers"),
            "{w:?}"
        );
        assert!(!w[0].contains("fence themselves"), "{w:?}");
        assert!(warnings(
            &timing(2000, 20000, 41000),
            &settings(30.0, 5.0, 40.0),
            true
        )
        .is_empty());
    }

    #[test]
    fn a_fitting_cluster_gets_no_warning() {
        let t = timing(2000, 20000, 41000);
        assert!(warnings(&t, &settings(5.0, 5.0, 40.0), false).is_empty());
        // The boundary: cap + tick == F - 2R is fine, a bit more is not.
        assert!(warnings(&t, &settings(11.0, 5.0, 41.0), false).is_empty());
        let w = warnings(&t, &settings(11.5, 5.0, 41.0), false);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("exceeds renew_fail_timeout - 2 * renew_interval = 16s"));
    }

    #[test]
    fn blocklisting_off_and_inverted_session_timers_are_flagged() {
        let mut c = settings(1.0, 1.0, 20.0);
        c.blocklist_on_timeout = false;
        c.blocklist_on_evict = false;
        c.file_systems[0].session_timeout = 25.0;
        let w = warnings(&timing(500, 8000, 21000), &c, false);
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].contains("blocklist_on_timeout is false"));
        assert!(w[1].contains("mds_session_blocklist_on_evict is false"));
        assert!(w[2].contains("session_timeout 25s exceeds session_autoclose 20s"));
    }
}
