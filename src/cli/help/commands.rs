//! The manual's text: every command's name, synopsis, summary, full
//! description, options and arguments ([`CommandHelp`]), in the order of
//! `vmlease --help`.

use super::{Command, CommandHelp};

pub const COMMANDS: &[CommandHelp] = &[
    CommandHelp {
        command: Command::Status,
        name: "status",
        synopsis: "",
        summary: "this host: protection, watchdog, renewal, networks, fence, its leases",
        body: "\
Shows whether this host may run protected VMs now and, if not, why; the
vmlease-watchdog daemon's pid, state and the age of its last status (or
\"waiting for lockspace mount\" while its lockspace is not mounted, not on
a shared filesystem or not initialised); the lockspace it joined and its
UUID, with a WARNING while allow_local_lockspace is set; the age of the
last liveness renewal; each network's probe state (up, down,
lost, unknown, unmonitored); a fence in force; and every QEMU process this
host tracks, with each of its leases as the lockspace records it now (held,
not held, or unknown when the lockspace does not answer within io_timeout).

Exit status: 0 protected, 1 not protected, 2 configuration error.",
        flags: &[],
        positional: (0, 0),
    },
    CommandHelp {
        command: Command::Hosts,
        name: "hosts",
        synopsis: "",
        summary: "every host in the lockspace: state, silence, what a controller may do",
        body: "\
Lists every host with a liveness record in the lockspace: its id, name,
state (live, mgmt-isolated, service-isolated, fencing, fenced-clean,
leaving), for how long this host's watchdog has seen its record unchanged
(SILENT: a healthy host shows less than its renew_interval; \"-\" when the
record changed after the watchdog last looked, \"?\" without a watchdog
view on this host), the start of its boot id, and what an HA controller
may do with its VMs:

  this host                       the host you ask on
  live: do not evacuate           renewing (also mgmt-isolated and
                                  service-isolated: their VMs still run)
  fencing: wait                   killing its VMs after a fence
  not yet: safe in N s            silent, but not yet for host_dead_timeout
  dead: evacuate                  silent for at least host_dead_timeout
  no watchdog: silent N s         silent, but it runs without a hardware
                                  watchdog (unsafe_no_watchdog): no silence
                                  makes it safe (unless this host sets
                                  trust_unsafe_peers)
  fenced-clean: evacuate          killed its VMs and starts none
  left: evacuate                  its daemon stopped with no VM leased
  unknown                         no watchdog view on this host

A host silent for less than its renew_fail_timeout counts as renewing (a
renewal may just be due). 'vmlease can-evacuate HOST' is the authoritative
answer for one host: it also checks every lease that host holds.

Exit status: 0 listed, 2 configuration error, 3 lockspace unreachable
within io_timeout.",
        flags: &[],
        positional: (0, 0),
    },
    CommandHelp {
        command: Command::Leases,
        name: "leases",
        synopsis: "[--host HOST] [--domain UUID]",
        summary: "lease records and their holders",
        body: "\
Lists the lease records in the lockspace: the resource (a domain UUID, a
disk path, or LOCKSPACE/KEY of a <lease>), the mode (exclusive, shared,
free), the version (it changes on every change of ownership) and the
holders (host id, QEMU pid, domain name and UUID). --host (a host id or
name) and --domain keep the records that have a matching holder.

A record that cannot be decoded is listed as CORRUPT with the reason: it is
never treated as free, by the plugin or by this listing. Inspect it with
'vmlease dump FILE'.

A record that cannot be read at all (an I/O error) is listed as
UNREADABLE.

Exit status: 0 listed, 1 at least one CORRUPT record, 2 usage or
configuration error, 3 the lockspace or a record unreadable within its
deadline.",
        flags: &["--host", "--domain"],
        positional: (0, 0),
    },
    CommandHelp {
        command: Command::CanEvacuate,
        name: "can-evacuate",
        synopsis: "HOST",
        summary: "exit 0 only if restarting HOST's VMs elsewhere is split-brain safe now",
        body: "\
Answers whether restarting HOST's VMs on other hosts is split-brain safe
now, as seen from this host. HOST is a host id or the host name in its
liveness record. This is the signal an HA controller (Masakari, a Nova
evacuation script) waits for before it evacuates: poll it.

The rule, in this order:
 1. Every lease record must be readable. A CORRUPT record may be one of
    HOST's: the answer is \"cannot tell\".
 2. If HOST holds leases, it is safe exactly when every one of them may be
    taken over now under the takeover rules the plugin applies when
    another host acquires: HOST published fenced-clean or left cleanly;
    HOST's record shows another boot id than the lease (it rebooted); HOST
    is this host and that QEMU process is gone; or this host's watchdog has
    seen HOST's liveness record unchanged for at least host_dead_timeout
    (the larger of HOST's and this host's).
 3. If HOST holds no lease, vmlease protects none of its VMs. Knowing
    nothing about unleased VMs, it says yes only when HOST itself is known
    to be down: fenced-clean, left cleanly, or silent for at least
    host_dead_timeout. A renewing host (live, mgmt-isolated, fencing) is
    never safe to evacuate: its VMs may still run.
 4. A HOST whose liveness record says it runs with unsafe_no_watchdog is
    never safe by silence: nothing resets it when its daemon hangs. The
    answer is \"no\", with that reason; fenced-clean, left cleanly or a
    reboot still make it safe. trust_unsafe_peers = true in this host's
    configuration (tests and demos only) treats it like any other host.
 5. Anything else is \"not yet\", with the reason and, once HOST has stopped
    renewing, how long until it becomes safe if it stays silent.

Silence is measured by this host's vmlease-watchdog on this host's
monotonic clock, never by comparing timestamps other hosts wrote. Without a
watchdog daemon on this host only the rules that need no observation apply
(fenced-clean, left, rebooted); otherwise the answer is \"cannot tell\". A
host whose watchdog started observing later may need longer before its own
acquire succeeds: the plugin there decides for itself.

Exit status: 0 safe now, 1 not safe (yet), 2 usage or configuration error
(including an unknown HOST), 3 cannot tell (lockspace unreachable within
its deadline, a corrupt record, no watchdog view on this host).",
        flags: &[],
        positional: (1, 1),
    },
    CommandHelp {
        command: Command::CheckConfig,
        name: "check-config",
        synopsis: "",
        summary: "validate the configuration and print the fence timeline",
        body: "\
Loads and validates the configuration (unknown keys, types, ranges, and
the safety inequality host_dead_timeout > max(F + K, F + W) + 2R) and
prints the fence timeline derived from it, the warnings (no hardware
watchdog, trust_unsafe_peers, a recorded reset, no host_id,
allow_local_lockspace, a lockspace the daemon and init refuse: not on a
shared filesystem, NFS with local locks, a missing mount; a fence policy
that one probe target going down would trigger), and whether the lockspace
is reachable and initialised, its UUID and on which filesystem. The
lockspace line is information only: it does not change the exit status.

Exit status: 0 valid with host_id set, 1 valid but host_id not set (this
host cannot take leases), 2 invalid or missing file.",
        flags: &[],
        positional: (0, 0),
    },
    CommandHelp {
        command: Command::Init,
        name: "init",
        synopsis: "[--max-hosts N]",
        summary: "create the lockspace layout (once per lockspace)",
        body: "\
Creates the lockspace in lockspace_dir, once per lockspace: the VMLEASE
header with a new lockspace UUID, the host table (N slots of 512 bytes; N
defaults to 2000, the largest host id) and leases/. An initialised
lockspace is left alone, except that one made by an older vmlease gets its
UUID. The parent of lockspace_dir must exist, and lockspace_dir must pass
the daemon's rule: on a shared filesystem (CephFS, NFS with shared locks,
GlusterFS, GFS2, OCFS2, Lustre, CIFS), with no mount listed in /etc/fstab
missing above it; a missing mount or a local disk would protect nothing.
allow_local_lockspace = true accepts a local directory (tests and
single-host demos only), with a warning. Prints the filesystem and the
UUID.

Exit status: 0 created or already initialised, 1 failed, 2 usage or
configuration error, 3 no answer from storage within io_timeout.",
        flags: &["--max-hosts"],
        positional: (0, 0),
    },
    CommandHelp {
        command: Command::Release,
        name: "release",
        synopsis: "--domain UUID",
        summary: "admin: free this host's leases of a domain whose QEMU is gone",
        body: "\
Administrative release: removes this host's holders (this host id, this
boot) of the domain from every lease record, and the domain's entries from
this host's process registry. Refuses while a QEMU process of that domain
that holds or may hold its leases runs on this host: stop the domain
first. Rarely needed: the watchdog daemon and the qemu hook release the
leases of a QEMU that exits. Every release is logged to syslog.

Exit status: 0 released or nothing to release, 1 refused or failed, 2
usage or configuration error, 3 lockspace unreachable.",
        flags: &["--domain"],
        positional: (0, 0),
    },
    CommandHelp {
        command: Command::ClearFence,
        name: "clear-fence",
        synopsis: "",
        summary: "let a fenced host run protected VMs again once the cause is gone",
        body: "\
After a fence this host starts no protected VM until the cause is over and
an operator runs this command. It asks the watchdog daemon, which clears
the fence only when the cause is gone (renewals succeed, the network is
back), and waits up to 5 s for its answer.

Exit status: 0 cleared or not fenced, 1 not cleared (the cause persists or
no watchdog daemon runs), 2 configuration error.",
        flags: &[],
        positional: (0, 0),
    },
    CommandHelp {
        command: Command::StorageFence,
        name: "storage-fence",
        synopsis: "HOST",
        summary: "stop a silent host's writes with a Ceph blocklist; frees its leases",
        body: "\
Fences HOST at the storage layer: blocklists every storage address HOST
published (storage_fence_addrs in its configuration) with 'ceph osd
blocklist add IP:0/0 EXPIRE', waits until the committed OSD map holds
the entries and every up OSD (and --client-asok, this host's Ceph
client) has that map, then writes a storage-fenced verdict into the
lockspace. The verdict frees HOST's leases at once (takeover rule 5).

Refused, with nothing done, when HOST renewed less than --after ago as
observed by this host's watchdog daemon (default 3 renewals + 1 s: a
slow host is never blocklisted), publishes no storage address, or holds
a lease on storage that is not Ceph. If a step fails, no verdict is
written and HOST's leases wait for host_dead_timeout as usual.

Options: --expire SECS (entry lifetime, default a week; more than twice
HOST's host_dead_timeout), --after SECS, --timeout SECS (default 30),
--client-asok PATH. The ceph CLI runs as this host's default client
(CEPH_ARGS selects another). 'vmlease clear-fence' on HOST undoes it.

Exit status: 0 fenced, 1 refused or failed, 2 usage or configuration
error, 3 lockspace unreachable.",
        flags: &["--expire", "--after", "--timeout", "--client-asok"],
        positional: (1, 1),
    },
    CommandHelp {
        command: Command::Dump,
        name: "dump",
        synopsis: "FILE",
        summary: "decode and check a vmlease record, table, status or registry entry",
        body: "\
Decodes and checks one vmlease file: a lease record (leases/KEY), the host
table (hosts), the lockspace header (VMLEASE), the watchdog's status
(STATE_DIR/status) or a process registry entry (STATE_DIR/procs/*). Prints
its content and whether it is valid; --json prints the decoded fields.

Exit status: 0 valid, 1 corrupt or not a vmlease file, 2 unreadable.",
        flags: &[],
        positional: (1, 1),
    },
    CommandHelp {
        command: Command::Ha,
        name: "ha",
        synopsis: "status | enable DOMAIN [--priority N] | disable DOMAIN",
        summary: "recovery (vmlease-ha): what etcd holds; a domain's HA policy",
        body: "\
status: what vmlease-ha publishes in etcd (the [ha] section says where):
the leader, every present host with its watchdog state, protection and
capacity, every HA-managed VM with its host, policy and state, and the
recoveries in flight (state, target, attempt, last error).

enable DOMAIN: sets <vmlease:ha restart=\"always\" priority=\"N\"/> in the
domain's metadata (persistent, and live when it runs), through the local
libvirt: vmlease-ha restarts it elsewhere when its host fails. disable
DOMAIN: restart=\"never\" (still listed, never restarted).

Exit status: 0 done, 1 libvirt refused the change, 2 usage or
configuration error (no [ha] section), 3 etcd unreachable.",
        flags: &["--priority"],
        positional: (1, 2),
    },
    CommandHelp {
        command: Command::Events,
        name: "events",
        synopsis: "[--follow]",
        summary: "recovery events in etcd: hosts failed, fenced, VMs recovered, maintenance",
        body: "\
Prints the events vmlease-ha stored in etcd, oldest first, one a
line: time (UTC), kind, host, domain, reason. Kinds: host-failed,
host-fenced, host-evacuable, host-isolated, host-back, recovery-started,
attempt-failed, vm-recovered, recovery-failed, maintenance-entered,
maintenance-exited, vm-migrated, migration-failed, host-drained, and
from each host about its own VMs: vm-crashed, vm-restarted, vm-reset,
guest-failed (and recovery-failed for a crash loop). Events
stay [ha] event_ttl (default 24 h), at most [ha] max_events (1000).
--follow then waits for new ones (an etcd watch) until interrupted; with
--json each event is one JSON line.

Exit status: 0 done, 2 usage or configuration error (no [ha] section),
3 etcd unreachable.",
        flags: &["--follow"],
        positional: (0, 0),
    },
    CommandHelp {
        command: Command::Maintenance,
        name: "maintenance",
        synopsis: "enter|exit HOST [--wait]",
        summary: "take a host out of placement and drain its HA VMs by live migration",
        body: "\
enter HOST: vmlease-ha places nothing on HOST; HOST's agent has its
watchdog daemon disarm the network-policy fences (a lost management or
service network is reported, not fenced; a storage fence stays armed);
the controller live-migrates HOST's HA VMs (restart=\"always\") to
other hosts, one at a time. With --wait, prints the progress and returns
when HOST is drained (or a migration gave up).

exit HOST: HOST is a placement target again and its fences are armed
again (its agent removes the daemon's maintenance file at its next
step). With --wait, returns when the controller counts it a target.

Exit status: 0 done (drained, with --wait), 1 a migration gave up or the
wait timed out, 2 usage or configuration error, 3 etcd unreachable.",
        flags: &["--wait"],
        positional: (2, 2),
    },
    CommandHelp {
        command: Command::Hook,
        name: "hook",
        synopsis: "qemu NAME OPERATION SUB-OPERATION [EXTRA...]",
        summary: "the libvirt qemu hook (installed as /etc/libvirt/hooks/qemu.d/vmlease)",
        body: "\
The libvirt qemu hook, run by /etc/libvirt/hooks/qemu.d/vmlease with the
domain XML on stdin. It acts only while libvirt uses vmlease (lock_manager
= \"vmlease\" in /etc/libvirt/qemu.conf, or in the file VMLEASE_QEMU_CONF
names); otherwise every operation succeeds at once.

  prepare begin    refuse (exit 1) to start a domain on a host that is not
                   protected: no watchdog daemon, a hung or unhealthy one,
                   late renewals, the host fenced, the lockspace missing.
                   The one line on stderr is what virsh shows.
  migrate begin    the same on the destination of an incoming migration;
                   the XML is left unchanged (nothing on stdout).
  release end      release this host's leases of the stopped domain at
                   once (those of its QEMU processes that have exited).
                   Exit 0 even when that fails: libvirt ignores it, and the
                   watchdog daemon releases them later.
  reconnect begin  libvirtd restarted with the domain running: exit 1, so
                   that libvirt kills this QEMU, only when one of the
                   domain's leases now belongs to another host. Exit 0 when
                   they are still this QEMU's or released, and when the
                   lockspace does not answer in time: slow storage is no
                   reason to kill a VM (the watchdog fences if it is gone).
  anything else    exit 0 at once; an operation this version does not know
                   is named on stderr.

Every lockspace access has a deadline (io_timeout, plus lock_timeout for a
record lock), and the whole hook gives up after io_timeout + lock_timeout
+ 2 s with the safe status of its operation (refuse a start or migration,
keep a running VM): libvirt runs hooks under the domain lock with no
timeout. Malformed XML is reported on stderr; release and reconnect then
exit 0.

Exit status: 0 go on, 1 refuse (prepare, migrate) or kill (reconnect),
2 usage error.",
        flags: &[],
        positional: (2, usize::MAX),
    },
    CommandHelp {
        command: Command::Completion,
        name: "completion",
        synopsis: "bash | zsh",
        summary: "the shell completion script for bash or zsh",
        body: "\
Prints a completion script for bash or zsh, generated from this command
table: command names, each command's options, and file names after
--config. To load it in the running shell, or install it:

  source <(vmlease completion bash)
  vmlease completion bash > /usr/share/bash-completion/completions/vmlease
  vmlease completion zsh > /usr/share/zsh/vendor-completions/_vmlease

Exit status: 0 printed, 2 unknown shell.",
        flags: &[],
        positional: (1, 1),
    },
    CommandHelp {
        command: Command::Help,
        name: "help",
        synopsis: "[COMMAND|all]",
        summary: "this overview, the manual of one command, or all of it",
        body: "Prints the overview, the full description of COMMAND, or with
'all' the overview followed by every command's description.",
        flags: &[],
        positional: (0, 1),
    },
];
