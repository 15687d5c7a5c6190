//! The can-evacuate verdict on a whole host (`vmlease hosts`, `evacuate`,
//! the recovery controller): may its VMs be restarted elsewhere, from its
//! liveness record and this host's observation alone, without looking at
//! any lease. The per-lease rule is [`super::Judge`]; this is its
//! host-level counterpart and follows the same rules 1, 2 and 4.
#![forbid(unsafe_code)]

use crate::config::secs;
use crate::hosts::HostState;

/// How long this host has seen a slot unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    /// Seen to change since the daemon's last observation: renewing.
    Renewing,
    /// Unchanged for this long, up to the table read.
    Silent(u64),
    /// No watchdog view on this host.
    Unknown,
}

/// What a controller may do about a host's VMs, from its liveness record
/// and this host's observation alone (no leases).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostVerdict {
    ThisHost,
    /// Renewing (or fencing): its VMs may run; do not evacuate. The state
    /// as published ("live", "mgmt-isolated", "fencing", ...).
    Alive(String),
    /// Known to be down: restarting its VMs elsewhere is safe. Why.
    Safe(String),
    /// Silent for `silent` ms, not yet for its host_dead_timeout `dead`.
    NotYet {
        silent: u64,
        dead: u64,
    },
    /// No watchdog view here: cannot measure silence.
    Unknown(String),
    /// Silent for `silent` ms, but it runs without a hardware watchdog
    /// (`unsafe_no_watchdog`): nothing resets it if its daemon hangs, so
    /// no length of silence makes it safe (unless `trust_unsafe_peers`).
    Unwatched {
        silent: u64,
    },
    /// Two machines use its host id (who): nothing its slot says can be
    /// trusted for one of them; evacuate nothing.
    Collision(String),
}

impl HostVerdict {
    pub fn word(&self) -> &'static str {
        match self {
            HostVerdict::ThisHost => "this-host",
            HostVerdict::Alive(_) => "alive",
            HostVerdict::Safe(_) => "safe",
            HostVerdict::NotYet { .. } => "not-yet",
            HostVerdict::Unknown(_) => "unknown",
            HostVerdict::Unwatched { .. } => "no-watchdog",
            HostVerdict::Collision(_) => "collision",
        }
    }

    /// Milliseconds until safe, for a silent host.
    pub fn safe_in(&self) -> Option<u64> {
        match self {
            HostVerdict::NotYet { silent, dead } => Some(dead - silent),
            _ => None,
        }
    }

    /// The facts, without advice (for sentences).
    pub fn reason(&self) -> String {
        match self {
            HostVerdict::ThisHost => "this host".into(),
            HostVerdict::Alive(s) => format!("{s}, renewing"),
            HostVerdict::Safe(w) | HostVerdict::Unknown(w) => w.clone(),
            HostVerdict::Collision(w) => format!("host id collision: {w}"),
            HostVerdict::NotYet { silent, dead } => format!(
                "silent {} of host_dead_timeout {}",
                secs(*silent),
                secs(*dead)
            ),
            HostVerdict::Unwatched { silent } => format!(
                "silent {}, without a hardware watchdog (unsafe_no_watchdog = true): nothing \
                 resets it if its daemon hangs, so its silence proves nothing",
                secs(*silent)
            ),
        }
    }

    /// What `hosts` shows: the facts and what a controller may do.
    pub fn text(&self) -> String {
        match self {
            HostVerdict::ThisHost => "this host".into(),
            HostVerdict::Alive(s) if s == "live" => "live: do not evacuate".into(),
            HostVerdict::Alive(s) if s == "fencing" => "fencing: wait".into(),
            HostVerdict::Alive(s) => format!("{s}: its VMs still run; do not evacuate"),
            HostVerdict::Safe(w) => match w.split_once(' ') {
                Some((head, rest)) => format!("{head}: evacuate {rest}"),
                None => format!("{w}: evacuate"),
            },
            HostVerdict::NotYet { silent, dead } => format!(
                "not yet: silent {} of host_dead_timeout {}; safe in {}",
                secs(*silent),
                secs(*dead),
                secs(dead - silent)
            ),
            HostVerdict::Unknown(w) => format!("unknown: {w}"),
            HostVerdict::Unwatched { silent } => format!(
                "no watchdog: silent {}; do not evacuate until fenced-clean or rebooted",
                secs(*silent)
            ),
            HostVerdict::Collision(w) => format!("host id collision: do not evacuate ({w})"),
        }
    }
}

/// What the verdict is decided from, gathered by the caller.
#[derive(Debug, Clone)]
pub struct HostFacts<'a> {
    /// A host id collision known here (who), if any.
    pub collision: Option<String>,
    /// The state its liveness record publishes (None: damaged or absent).
    pub state: Option<HostState>,
    /// It is this host's own id.
    pub this_host: bool,
    /// Its record's renew_fail_timeout (0 without a record).
    pub renew_fail_ms: u64,
    /// Its host_dead_timeout as this host applies it.
    pub dead_ms: u64,
    pub silence: Silence,
    /// Why this host has no (or an old) watchdog view, for messages.
    pub view_note: Option<&'a str>,
    /// It runs without a hardware watchdog and this host does not trust
    /// such peers (`trust_unsafe_peers` off).
    pub unwatched: bool,
}

/// The verdict: a collision first, then a published fenced-clean or
/// leaving, then this host, then silence against its timeouts.
pub fn verdict(f: &HostFacts) -> HostVerdict {
    if let Some(c) = &f.collision {
        return HostVerdict::Collision(c.clone());
    }
    match f.state {
        Some(HostState::FencedClean) => return HostVerdict::Safe("fenced-clean".into()),
        Some(HostState::Leaving) => return HostVerdict::Safe("left".into()),
        _ => {}
    }
    if f.this_host {
        return HostVerdict::ThisHost;
    }
    let alive = || {
        HostVerdict::Alive(match f.state {
            Some(s) => s.to_string(),
            None => "damaged record that changed recently".into(),
        })
    };
    let dead = f.dead_ms;
    match f.silence {
        Silence::Unknown => HostVerdict::Unknown(
            f.view_note
                .unwrap_or("no watchdog view on this host")
                .to_string(),
        ),
        Silence::Renewing => alive(),
        Silence::Silent(ms) if ms < f.renew_fail_ms => alive(),
        Silence::Silent(ms) if f.unwatched => HostVerdict::Unwatched { silent: ms },
        Silence::Silent(ms) if ms >= dead => HostVerdict::Safe(format!(
            "dead (silent {} >= host_dead_timeout {})",
            secs(ms),
            secs(dead)
        )),
        Silence::Silent(ms) => HostVerdict::NotYet { silent: ms, dead },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(silence: Silence) -> HostFacts<'static> {
        HostFacts {
            collision: None,
            state: Some(HostState::Live),
            this_host: false,
            renew_fail_ms: 10_000,
            dead_ms: 60_000,
            silence,
            view_note: None,
            unwatched: false,
        }
    }

    #[test]
    fn silence_against_the_timeouts() {
        let v = |s| verdict(&facts(s));
        assert_eq!(v(Silence::Renewing), HostVerdict::Alive("live".into()));
        assert_eq!(v(Silence::Silent(9_999)), HostVerdict::Alive("live".into()));
        assert_eq!(
            v(Silence::Silent(10_000)),
            HostVerdict::NotYet {
                silent: 10_000,
                dead: 60_000
            }
        );
        assert_eq!(v(Silence::Silent(60_000)).word(), "safe");
        assert_eq!(v(Silence::Unknown).word(), "unknown");
    }

    #[test]
    fn what_overrides_silence() {
        let unwatched = HostFacts {
            unwatched: true,
            ..facts(Silence::Silent(600_000))
        };
        assert_eq!(
            verdict(&unwatched),
            HostVerdict::Unwatched { silent: 600_000 }
        );
        let fenced = HostFacts {
            state: Some(HostState::FencedClean),
            ..facts(Silence::Renewing)
        };
        assert_eq!(verdict(&fenced), HostVerdict::Safe("fenced-clean".into()));
        let collided = HostFacts {
            collision: Some("two boots".into()),
            ..fenced
        };
        assert_eq!(verdict(&collided).word(), "collision");
        let me = HostFacts {
            this_host: true,
            ..facts(Silence::Silent(600_000))
        };
        assert_eq!(verdict(&me), HostVerdict::ThisHost);
    }
}
