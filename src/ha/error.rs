//! The error of the recovery layer: etcd, libvirt (virsh) and the records.
#![forbid(unsafe_code)]

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// No endpoint answered, or etcd refused the request.
    Etcd { op: String, reason: String },
    /// A virsh command failed.
    Libvirt { op: String, reason: String },
    /// A value in etcd that does not decode (named by key).
    Corrupt { key: String, reason: String },
    /// Configuration or set-up (TLS files, missing `[ha]`).
    Setup(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Etcd { op, reason } => write!(f, "etcd {op}: {reason}"),
            Error::Libvirt { op, reason } => write!(f, "libvirt {op}: {reason}"),
            Error::Corrupt { key, reason } => write!(f, "etcd value {key}: {reason}"),
            Error::Setup(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
