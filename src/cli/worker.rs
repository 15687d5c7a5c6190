//! The commands that read the lockspace (`status`, `hosts`, `leases`,
//! `can-evacuate`) and `storage-fence` answer within a deadline even when
//! the lockspace hangs:
//! they run in a worker ([`crate::detach`]), whose output is relayed as
//! soon as it has answered. A worker that gives no answer within the
//! command's deadline is killed (it dies when its I/O returns) and left
//! behind; the command answers "cannot tell" (exit 3) - or, for `status`,
//! what the local files say.
#![forbid(unsafe_code)]

use std::io::Write;

use super::help::{Command, CommandHelp};
use super::{exit, fail, status, Args, Opts};
use crate::config::Config;
use crate::detach::{Outcome, Worker};

/// The commands' worker: `VMLEASE_CLI_WORKER=1` in its environment.
pub const WORKER: Worker = Worker {
    env: "VMLEASE_CLI_WORKER",
    kill: true,
};

/// Time for the worker to start and load its config, beyond the I/O
/// deadlines it runs with.
const START_MS: u64 = 1000;

/// Commands run in a worker.
pub fn applies(command: Command) -> bool {
    matches!(
        command,
        Command::Status
            | Command::Hosts
            | Command::Leases
            | Command::CanEvacuate
            | Command::StorageFence
    )
}

/// `storage-fence`'s `--timeout` (seconds) in ms, as the command reads
/// it; its default when absent or not a number (the worker then refuses
/// the flag itself, at once).
fn fence_timeout_ms(args: &Args) -> u64 {
    use super::storage_fence::{secs_flag_ms, DEFAULT_TIMEOUT_MS};
    secs_flag_ms(args, "--timeout", DEFAULT_TIMEOUT_MS).unwrap_or(DEFAULT_TIMEOUT_MS)
}

/// The deadline of `command`, in ms, from the I/O deadline `io_timeout`
/// (docs/cli.md, "Deadlines"): the sum of the lockspace reads the answer
/// needs, each bounded by `io_timeout` (the listing of the lease records
/// by 4 of them), plus the worker's start.
pub fn deadline_ms(cfg: &Config, command: Command, args: &Args) -> u64 {
    let io = cfg.io_timeout;
    START_MS
        + match command {
            // This host's slot and the tracked processes' leases, in one
            // bounded read (plus 10 ms a lease record); on a fenced
            // host the storage-fence verdict (the monitors' copy: 2 s).
            Command::Status => io + 1000 + super::storage_fence::VERDICT_LOOKUP_MS,
            // Open (the lockspace's header) and the host table.
            Command::Hosts => 2 * io,
            // Open, the host table, the published addresses, the
            // verdict's write; the blocklist and the wait for its map
            // (`--timeout`), and two ceph commands of its own deadline
            // (the entry, the verdict's copy).
            Command::StorageFence => {
                let t = fence_timeout_ms(args);
                4 * io + t + 2 * super::storage_fence::ceph_timeout_ms(t)
            }
            // Open, the host table, the listing (4 io), the records.
            _ => 7 * io,
        }
}

/// Runs a command that reads the lockspace in a worker process (`args`:
/// the command line after the program name), so that the answer comes
/// within its deadline even when the lockspace hangs.
pub fn supervise(
    opts: &Opts,
    command: &CommandHelp,
    cfg: &Config,
    parsed: &Args,
    args: &[String],
) -> i32 {
    let deadline = deadline_ms(cfg, command.command, parsed);
    match WORKER.run(args, None, deadline) {
        Outcome::Answered {
            code,
            stdout,
            stderr,
        } => {
            let _ = std::io::stdout().write_all(&stdout);
            let _ = std::io::stderr().write_all(&stderr);
            code.unwrap_or(exit::UNKNOWN)
        }
        Outcome::Exited { status, .. } => fail(
            exit::UNKNOWN,
            format!("cannot tell: the worker ended without an answer ({status})"),
        ),
        Outcome::NoAnswer { pid, after_ms, .. } => {
            let why = format!(
                "no answer within {after_ms} ms (the deadline of 'vmlease {}'); its \
                 reader, process {pid}, is left behind",
                command.name
            );
            if command.command == Command::StorageFence {
                return fail(
                    exit::UNKNOWN,
                    format!(
                        "storage-fence: {why}; the blocklist may or may not have been added \
                         and no verdict is known to be written, so the host's leases stay \
                         held until host_dead_timeout (see 'ceph osd blocklist ls'; run it again)"
                    ),
                );
            }
            if command.command == Command::Status {
                // What this host's own files say, without the lockspace.
                return status::run_local(opts, why);
            }
            fail(
                exit::UNKNOWN,
                format!(
                    "cannot tell: the lockspace {} gave {why}",
                    cfg.lockspace_dir.display()
                ),
            )
        }
        Outcome::Failed(e) => fail(exit::UNKNOWN, format!("cannot tell: {e}")),
    }
}
