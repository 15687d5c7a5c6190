//! Storage calls with a deadline. A hung CephFS leaves a thread stuck in
//! the kernel; the caller gets `Error::Timeout` and goes on. The stuck
//! thread is abandoned (it finishes or dies with the process).
//!
//! Never use this in the pre-exec child of libvirtd, which must not start
//! threads; nothing there touches the lockspace.
#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use crate::error::{Error, Result};

pub fn run<T, F>(timeout_ms: u64, op: &'static str, path: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("vmlease-io".into())
        .spawn(move || {
            let _ = tx.send(f());
        });
    if let Err(e) = spawned {
        return Err(Error::io(op, path, e));
    }
    match rx.recv_timeout(Duration::from_millis(timeout_ms)) {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout {
            op,
            path: path.to_path_buf(),
            after_ms: timeout_ms,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_value_or_times_out() {
        let p = Path::new("/x");
        assert_eq!(run(1000, "op", p, || Ok(5)).unwrap(), 5);
        let e = run(50, "read lease", p, || {
            std::thread::sleep(Duration::from_secs(2));
            Ok(())
        })
        .unwrap_err();
        assert!(e
            .to_string()
            .contains("read lease /x: no answer from storage after 50 ms"));
    }
}
