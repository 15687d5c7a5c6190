//! The core error type: every variant names the operation, the path or
//! resource, and the cause. Converted once at each edge (plugin: -1 plus a
//! libvirt error; binaries: an exit code).
#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug)]
pub enum Error {
    /// An I/O operation on a path failed.
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A storage operation did not finish within its deadline.
    Timeout {
        op: &'static str,
        path: PathBuf,
        after_ms: u64,
    },
    /// A storage call was not started because an earlier one of this
    /// process, abandoned at its deadline, is still stuck.
    Stuck {
        op: &'static str,
        path: PathBuf,
        earlier: String,
        for_ms: u64,
    },
    /// A lease was not written: its caller gave up or its QEMU exited
    /// while the call waited for storage.
    Abandoned { resource: String, why: String },
    /// The configuration file is invalid (parse or validation).
    Config(String),
    /// A record on disk failed its checksum or could not be parsed. Never
    /// treated as free.
    Corrupt { path: PathBuf, reason: String },
    /// The lockspace directory is missing or not initialised.
    Lockspace { path: PathBuf, reason: String },
    /// The resource is held by someone else and may not be taken over.
    Busy { resource: String, reason: String },
    /// This host may not take leases now (watchdog down, fenced, ...).
    Unprotected(String),
    /// A caller passed something invalid (NULL, garbage, wrong flags).
    Invalid(String),
    /// A bug inside vmlease (a panic caught at the FFI boundary).
    Internal(String),
    /// The lease version did not match the state handed over (someone else
    /// owned the resource in between).
    VersionMismatch {
        resource: String,
        expected: u64,
        found: u64,
    },
}

impl Error {
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True for errors that mean "someone else holds it".
    pub fn is_busy(&self) -> bool {
        matches!(self, Error::Busy { .. } | Error::VersionMismatch { .. })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { op, path, source } => {
                write!(f, "{op} {}: {source}", path.display())
            }
            Error::Timeout { op, path, after_ms } => write!(
                f,
                "{op} {}: no answer from storage after {after_ms} ms (hung lockspace?)",
                path.display()
            ),
            Error::Stuck {
                op,
                path,
                earlier,
                for_ms,
            } => write!(
                f,
                "{op} {}: not started: an earlier call ({earlier}) has been stuck for {} ms (hung lockspace?); \
                 no new storage call starts in this process until it ends",
                path.display(),
                for_ms
            ),
            Error::Abandoned { resource, why } => write!(f, "{resource}: not leased: {why}"),
            Error::Config(msg) => write!(f, "{msg}"),
            Error::Corrupt { path, reason } => write!(
                f,
                "corrupt lease record {}: {reason} (refusing to treat it as free; inspect it with 'vmlease dump')",
                path.display()
            ),
            Error::Lockspace { path, reason } => {
                write!(f, "lockspace {}: {reason}", path.display())
            }
            Error::Busy { resource, reason } => write!(f, "{resource} is leased: {reason}"),
            Error::Unprotected(msg) => write!(f, "host not protected: {msg}"),
            Error::Invalid(msg) => write!(f, "invalid argument: {msg}"),
            Error::Internal(msg) => write!(f, "internal error: {msg}"),
            Error::VersionMismatch {
                resource,
                expected,
                found,
            } => write!(
                f,
                "{resource}: lease version is {found}, expected {expected}: another owner held it in between"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
