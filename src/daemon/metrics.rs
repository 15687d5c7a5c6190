//! The daemon's metrics thread: renders each snapshot the main loop hands
//! it and replaces `metrics_dir/vmlease.prom` atomically (a temporary file
//! in the same directory, then rename), so node_exporter never reads half
//! a file.
//!
//! The plugin's counters (`state_dir/plugin-metrics`, written by the
//! plugin inside libvirtd) are read here, on this thread, and appended.
//!
//! The main loop only `try_send`s into a one-slot channel: a slow or hung
//! metrics directory drops snapshots, it never delays a renewal, a pet or
//! a fence. A failed write is logged (once per distinct error), never
//! fatal.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};

use log::{info, warn};

use crate::metrics::{render, render_plugin, Snapshot, FILE_NAME};
use crate::plugin::counters;

/// The metrics thread's stack: its work is shallow (formatting into a
/// heap string, one file write), and every page of it is locked in memory
/// with the rest of the daemon (mlockall).
const STACK: usize = 64 * 1024;

pub struct MetricsWriter {
    tx: SyncSender<Snapshot>,
}

impl MetricsWriter {
    /// Starts the thread that writes into `dir`, with the plugin's
    /// counters from `state_dir`.
    pub fn spawn(dir: PathBuf, state_dir: PathBuf) -> std::io::Result<MetricsWriter> {
        let (tx, rx) = sync_channel::<Snapshot>(1);
        std::thread::Builder::new()
            .name("vmlease-metrics".into())
            .stack_size(STACK)
            .spawn(move || {
                let mut last_err = String::new();
                let mut last_plugin_err = String::new();
                for snap in rx {
                    let mut text = render(&snap);
                    match counters::load(&state_dir) {
                        Ok(c) => {
                            text.push_str(&render_plugin(&c));
                            last_plugin_err.clear();
                        }
                        Err(e) => {
                            // Left out until the plugin rewrites it.
                            let msg = e.to_string();
                            if msg != last_plugin_err {
                                warn!("metrics: {msg}: the plugin's metrics are left out");
                                last_plugin_err = msg;
                            }
                        }
                    }
                    match write_atomic(&dir, &text) {
                        Ok(()) if !last_err.is_empty() => {
                            info!("metrics: writing {} again", dir.join(FILE_NAME).display());
                            last_err.clear();
                        }
                        Ok(()) => {}
                        Err(e) => {
                            let msg = e.to_string();
                            if msg != last_err {
                                warn!("metrics: {msg} (the daemon goes on without them)");
                                last_err = msg;
                            }
                        }
                    }
                }
            })?;
        Ok(MetricsWriter { tx })
    }

    /// Hands a snapshot to the thread; drops it when the thread is still
    /// busy with the previous one. Never blocks.
    pub fn offer(&self, snap: Snapshot) {
        match self.tx.try_send(snap) {
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Writes `text` to `dir/vmlease.prom` through a temporary file and a
/// rename (node_exporter reads only `*.prom`: the temporary name is not
/// one).
pub fn write_atomic(dir: &Path, text: &str) -> std::result::Result<(), crate::Error> {
    let path = dir.join(FILE_NAME);
    crate::lockspace::write_atomic_unsynced(&path, text.as_bytes()).map_err(|e| match e {
        crate::Error::Io { source, .. } => crate::Error::io("write metrics", &path, source),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_is_an_error_naming_the_file() {
        let e = write_atomic(Path::new("/nonexistent/vmlease-metrics"), "x 1\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("/nonexistent/vmlease-metrics/vmlease.prom"),
            "{e}"
        );
    }

    #[test]
    fn a_hung_metrics_directory_never_blocks_the_loop() {
        // The temporary file is a FIFO nobody reads: the metrics thread
        // hangs in its open(), as on a hung filesystem.
        let d = std::env::temp_dir().join(format!("vmlease-metrics-hung-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let tmp = d.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
        let st = std::process::Command::new("mkfifo")
            .arg(&tmp)
            .status()
            .unwrap();
        assert!(st.success());
        let w = MetricsWriter::spawn(d.clone(), d.join("state")).unwrap();
        let start = std::time::Instant::now();
        for _ in 0..1000 {
            w.offer(crate::metrics::sample());
        }
        let took = start.elapsed();
        assert!(took.as_millis() < 200, "1000 offers took {took:?}");
        assert!(!d.join(FILE_NAME).exists());
        // Unblock the thread: a reader opens the FIFO.
        use std::os::unix::fs::OpenOptionsExt;
        let _r = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&tmp)
            .unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !d.join(FILE_NAME).exists() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(
            d.join(FILE_NAME).exists(),
            "the thread never wrote after the stall"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let d = std::env::temp_dir().join(format!("vmlease-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        write_atomic(&d, "a 1\n").unwrap();
        write_atomic(&d, "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(d.join(FILE_NAME)).unwrap(), "a 2\n");
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
