//! What the lockspace says about this host and the leases of its tracked
//! processes, read with one deadline for `vmlease status`.

use crate::config::Config;
use crate::deadline;
use crate::error::{Error, Result};
use crate::hosts::Slot;
use crate::lease::Holder;
use crate::lockspace::Lockspace;
use crate::registry::Entry;
use crate::status::Status;

/// One lease of a tracked process, as the lockspace records it now.
#[derive(Clone)]
pub(super) struct LeaseState {
    pub(super) key: String,
    pub(super) resource: String,
    /// "held", "not-held", "other-holder", "corrupt" or "unknown".
    pub(super) state: &'static str,
    pub(super) version: Option<u64>,
    pub(super) detail: String,
}

/// What the lockspace says about this host, read with one deadline.
pub(super) struct Shared {
    pub(super) host_name: Option<String>,
    pub(super) host_state: Option<String>,
    pub(super) leases: Vec<Vec<LeaseState>>,
}

pub(super) fn resource_text(key: &str, resource: &str) -> String {
    let kind = key.split('-').next().unwrap_or("");
    match kind {
        "domain" | "disk" | "lease" => format!("{kind} {resource}"),
        _ => resource.to_string(),
    }
}

/// `me`: this host's id; without one only the lockspace is checked (the
/// registry is empty then: nothing can be leased).
pub(super) fn read_shared(
    cfg: &Config,
    me: Option<u16>,
    boot: &str,
    entries: &[Entry],
) -> Result<Shared> {
    let dir = cfg.lockspace_dir.clone();
    let keys: Vec<(Entry, Vec<(String, String)>)> = entries
        .iter()
        .map(|e| (e.clone(), e.keys.clone()))
        .collect();
    let n: usize = keys.iter().map(|(_, k)| k.len()).sum();
    let boot = boot.to_string();
    let my_name = cfg
        .host_name
        .clone()
        .unwrap_or_else(crate::process::hostname);
    let refused = crate::collision::load_refusal(&cfg.state_dir);
    let joined = Status::read(&cfg.state_dir)
        .ok()
        .flatten()
        .is_some_and(|st| st.boot_id == boot && st.last_renewal_ms > 0);
    deadline::run(
        cfg.io_timeout + n as u64 * 10,
        "read this host's leases",
        &dir.clone(),
        move || {
            let ls = Lockspace::open(&dir)?;
            let own = me.map(|id| ls.read_host(id)).transpose()?;
            let not_ours = own
                .as_ref()
                .and_then(|s| crate::collision::not_ours(s, &my_name, &boot, joined))
                .or(refused);
            let (host_name, host_state) = match own {
                Some(Slot::Record(r)) => (
                    Some(r.host_name),
                    Some(match not_ours {
                        Some(c) => format!("COLLISION: {c}"),
                        None => r.state.to_string(),
                    }),
                ),
                Some(Slot::Corrupt(why)) => (None, Some(format!("corrupt ({why})"))),
                Some(Slot::Empty) | None => (None, None),
            };
            let me = me.unwrap_or(0);
            let leases = keys
                .into_iter()
                .map(|(e, keys)| {
                    let me = Holder {
                        host_id: me,
                        boot_id: boot.clone(),
                        pid: e.proc_id.pid,
                        pid_start: e.proc_id.start,
                        domain_uuid: e.domain_uuid.clone(),
                        domain_name: e.domain_name.clone(),
                    };
                    keys.into_iter()
                        .map(|(key, resource)| lease_state(&ls, key, resource, &me))
                        .collect()
                })
                .collect();
            Ok(Shared {
                host_name,
                host_state,
                leases,
            })
        },
    )
}

fn lease_state(ls: &Lockspace, key: String, resource: String, me: &Holder) -> LeaseState {
    let (state, version, detail) = match ls.read_lease(&key, &resource) {
        Ok(r) if r.holders.iter().any(|h| h.same_process(me)) => {
            ("held", Some(r.version), String::new())
        }
        Ok(r) => match r.holders.first() {
            Some(h) => ("other-holder", Some(r.version), h.to_string()),
            None => ("not-held", Some(r.version), String::new()),
        },
        Err(e @ Error::Corrupt { .. }) => ("corrupt", None, e.to_string()),
        Err(e) => ("unknown", None, e.to_string()),
    };
    LeaseState {
        key,
        resource,
        state,
        version,
        detail,
    }
}
