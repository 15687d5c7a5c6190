#!/bin/sh
# End-to-end storage-level fencing by vmlease-ha's controller: a real Ceph
# cluster and a real etcd member in the test network's switch namespace,
# two libvirtd hosts with the vmlease plugin, watchdog and vmlease-ha each,
# every host's lockspace on a ceph-fuse client of its own (in its network
# namespace: its one link carries storage and management). Host a runs an
# HA VM (its one lease, the domain lease, is on Ceph: storage-fenceable);
# its link is cut. Expected:
#  1. b's controller blocklists a through Ceph (the `storage-fenced`
#     event, the `IP:0/0` entry) and restarts the VM on b before a's last
#     renewal + D would have allowed it (rule 4), never before the verdict
#     (written once the blocklist is committed and delivered) exists and
#     without a refused start;
#  2. a's link back: a stays fenced, its Ceph writes are refused; `vmlease
#     clear-fence` removes the blocklist entry and asks for a remount, the
#     remount gives a usable client, a second `clear-fence` removes the
#     verdict, and a is protected again (a VM starts on it).
#
# Run as root (after `cargo build --release`):  sh tests/e2e/ha_storage_fence.sh
set -eu

top=$(cd "$(dirname "$0")/../.." && pwd)
PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
export PATH
VMH_DIR=${VMLEASE_E2E_SF_DIR:-/var/tmp/vmlease-e2e-sfence}
CEPH_DIR=$VMH_DIR.ceph
VMH_BIN="$top/target/release"
VMH_LIBDIR="$top/scripts/lib"
# The split-brain rig's CephFS timing (F well above the MDS's 1 s
# capability-revoke eviction plus its tick: a peer's renewal may wait that
# long for the cut host's capabilities), with a long D (30 s) so that a
# restart before it can only come from the storage fence (rule 5).
VMH_R=0.5 VMH_F=6 VMH_K=1 VMH_W=2
D_MS=30000
# shellcheck source=scripts/lib/vmhosts.sh
. "$top/scripts/lib/vmhosts.sh"

ETCD_ADDR=192.0.2.1
ETCD_URL="http://$ETCD_ADDR:2379"
CEPH_ADDR=192.0.2.2
PIDS=""
ceph_up=""

fail() {
    echo "FAIL: $*" >&2
    for n in a b; do
        echo "--- host $n: vmlease-ha.log (last 15 lines)" >&2
        tail -n 15 "$VMH_DIR/host-$n/ha.log" 2>/dev/null | sed 's/^/    /' >&2
        echo "--- host $n: watchdog.log (last 5 lines)" >&2
        tail -n 5 "$VMH_DIR/host-$n/watchdog.log" 2>/dev/null | sed 's/^/    /' >&2
    done
    exit 1
}
note() { printf '    %s\n' "$*"; }

stop_all() {
    set +e
    # shellcheck disable=SC2086 # a list of pids
    vmh_stop_pids $PIDS
    # The hosts (and their ceph-fuse clients) first, then the cluster.
    vmh_cleanup
    [ -z "$ceph_up" ] || sh "$top/tests/ceph/cluster.sh" down "$CEPH_DIR" >/dev/null 2>&1
    rm -rf "$CEPH_DIR" "$CEPH_DIR.log"
}

ceph_cli() { sh "$top/tests/ceph/cluster.sh" ceph "$CEPH_DIR" "$@"; }
etcdctl_sw() { vmh_etcdctl "$@"; }
running_on() { vmh_virsh "$1" domstate "$2" 2>/dev/null | grep -q '^running'; }
# start_wall_ms HOST NAME: when the domain's QEMU started, wall-clock ms.
start_wall_ms() {
    pid=$(vmh_qemu_pid "$1" "$2")
    s=$(awk -v hz="$(getconf CLK_TCK)" '{ printf "%d\n", $22 * 1000 / hz }' "/proc/$pid/stat")
    echo $(($(date +%s%3N) - $(vmh_now_ms) + s))
}
published() {
    j=$(vmh_vmlease b --json ha status) || return 1
    echo "$j" | grep -q '"host":"host-a.test","memory_kib":[0-9]*,"name":"sf1"' || { echo "sf1 not published on a: $j"; return 1; }
}
blocklisted() { ceph_cli osd blocklist ls 2>/dev/null | grep -q "^$(vmh_addr 1):0/0"; }
# rados_put HOST: a new Ceph client from HOST's network namespace writes.
rados_put() {
    vmh_in "$1" timeout 20 rados -c "$CEPH_DIR/ceph.conf" -p cephfs_data put "probe-$1" /etc/hostname
}
state_of() { sed -n 's/^state=//p' "$VMH_DIR/host-$1/state/status" 2>/dev/null; }

[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 2; }
[ -x "$VMH_BIN/vmlease-ha" ] || { echo "build first: cargo build --release" >&2; exit 2; }
command -v etcd >/dev/null || { echo "etcd missing: sh scripts/setup-test-env.sh" >&2; exit 2; }
trap stop_all EXIT
trap 'exit 1' INT TERM
t_begin=$(vmh_now_ms)
rm -rf "$CEPH_DIR"
# vmh_init's own lockspace is a local scratch one, unused: the hosts'
# lockspace is made on the CephFS below.
vmh_init
sw=$(vmh_switch)
ip -n "$sw" addr add "$ETCD_ADDR/24" dev br0
ip -n "$sw" addr add "$CEPH_ADDR/24" dev br0
ip -n "$sw" link set lo up

# Ceph: the cluster in the switch namespace, on the hosts' network only;
# an MDS that evicts a client holding capabilities others need after 1 s
# (as the split-brain rig's: docs/cephfs.md).
ceph_up=1
CEPH_NETNS=$sw CEPH_ADDR=$CEPH_ADDR CEPH_OWNER_PID=$$ sh "$top/tests/ceph/cluster.sh" up "$CEPH_DIR" >"$CEPH_DIR.log" 2>&1 ||
    fail "the Ceph cluster did not come up: $(tail -n 5 "$CEPH_DIR.log")"
ceph_cli config set mds mds_cap_revoke_eviction_timeout 1 >/dev/null
ceph_cli config set mds mds_tick_interval 1 >/dev/null
sh "$top/tests/ceph/cluster.sh" set-session "$CEPH_DIR" 30 30 >/dev/null
# The lockspace, made through a client in the switch namespace.
NETNS=$sw sh "$top/tests/ceph/cluster.sh" mount "$CEPH_DIR" sfinit "$CEPH_DIR/mnt" >/dev/null
mkdir -p "$CEPH_DIR/mnt/ls"
VMH_LOCKSPACE=$CEPH_DIR/mnt/ls
printf 'lockspace_dir = "%s"\nallow_local_lockspace = false\n' "$VMH_LOCKSPACE" >"$VMH_DIR/ceph-init.conf"
"$VMH_BIN/vmlease" --config "$VMH_DIR/ceph-init.conf" init >/dev/null
VMH_ALLOW_LOCAL=false
VMH_CEPH_CONF=$CEPH_DIR/ceph.conf VMH_CEPH_ROOT=/ls
# The ceph CLI of every vmlease and vmlease-ha process finds the cluster.
CEPH_ARGS="-c $CEPH_DIR/ceph.conf"
export VMH_CEPH_CONF VMH_CEPH_ROOT CEPH_ARGS

# etcd: one member in the switch namespace.
nsenter --net="/run/netns/$sw" etcd --name m1 --data-dir "$VMH_DIR/etcd" \
    --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster m1=http://127.0.0.1:2380 --initial-cluster-state new \
    --initial-cluster-token "vmlease-sf-$$" >"$VMH_DIR/etcd.log" 2>&1 &
PIDS="$PIDS $!"
vmh_wait "etcd to answer" 10000 etcdctl_sw endpoint health || fail "etcd did not start: $(tail -n 5 "$VMH_DIR/etcd.log")"

mkdir -p "$VMH_DIR/hooks"
printf '#!/bin/sh\n{ cat; echo; } >>%s/hook-events.jsonl\n' "$VMH_DIR" >"$VMH_DIR/hooks/record"
chmod 755 "$VMH_DIR/hooks/record"
# host_conf ID: the host's Ceph address, D, and [ha] with storage fencing
# after 3R + 1 s of observed silence (and the host gone from etcd).
host_conf() {
    cat <<EOC
host_dead_timeout = $((D_MS / 1000))
io_timeout = 2
storage_fence_addrs = ["$(vmh_addr "$1")"]
[ha]
endpoints = ["$ETCD_URL"]
host_ttl = 5
interval = 0.5
start_timeout = 20
storage_fence_after = 2.5
hooks_dir = "$VMH_DIR/hooks"
EOC
}
vmh_host_up a 1 "$(host_conf 1)" || fail "host a did not come up"
vmh_host_up b 2 "$(host_conf 2)" || fail "host b did not come up"
for n in a b; do
    nsenter -t "$(cat "$VMH_DIR/host-$n/anchor.pid")" -m -u -n \
        "$VMH_BIN/vmlease-ha" --config /etc/libvirt/qemu-vmlease.conf >"$VMH_DIR/host-$n/ha.log" 2>&1 &
    PIDS="$PIDS $!"
done
for p in $PIDS; do
    vmh_wait "vmlease-ha (pid $p) to run" 5000 sh -c "readlink /proc/$p/exe | grep -q -e vmlease-ha -e etcd" ||
        fail "pid $p is not vmlease-ha or etcd"
done

# sf1: an HA VM with no disk (its lease is the domain lease, which
# stands for RBD disks: on Ceph), defined on both hosts, running on a.
for n in a b; do
    vmh_domain sf1 00000071-0000-4000-8000-000000000071 >"$VMH_DIR/sf1.xml"
    vmh_virsh "$n" define "$VMH_DIR/sf1.xml" >/dev/null
done
vmh_vmlease a ha enable sf1 >/dev/null || fail "vmlease ha enable sf1"
vmh_virsh a start sf1 >/dev/null || fail "start sf1 on a"
vmh_wait "sf1 to be published in etcd as running on a" 15000 published || fail "not published"
# Rule 5 frees a VM started before its host's last renewal: one more.
started=$(vmh_now_ms)
vmh_wait "a renewal of host a after sf1 started" 5000 sh -c \
    "[ \"\$(sed -n 's/^last_renewal_ms=//p' '$VMH_DIR/host-a/state/status')\" -gt $started ]" || fail "host a does not renew"

# 1. The cut: host a's only link (storage and management).
pa=$(vmh_qemu_pid a sf1)
ip -n "$sw" link set "vs1-$VMH_TAG" down
cut=$(vmh_now_ms)
vmh_wait "sf1 to run on b" "$D_MS" running_on b sf1 || fail "sf1 was not restarted on b within D"
took=$(($(vmh_now_ms) - cut))
last=$(sed -n 's/^last_renewal_ms=//p' "$VMH_DIR/host-a/state/status")
[ "$((cut - last))" -lt 1000 ] || fail "host a's last renewal is $((cut - last)) ms before the cut"
started_b=$(start_wall_ms b sf1)
started_boot=$(($(vmh_now_ms) - ($(date +%s%3N) - started_b)))
[ "$((started_boot - last))" -lt "$D_MS" ] ||
    fail "sf1 started on b $((started_boot - last)) ms after a's last renewal: not before D ($D_MS ms)"
blocklisted || fail "no blocklist entry for $(vmh_addr 1): $(ceph_cli osd blocklist ls 2>&1)"
v="$VMH_LOCKSPACE/fences/host-1"
[ -f "$v" ] || fail "no storage-fence verdict $v: $(ls "$VMH_LOCKSPACE/fences" 2>&1)"
v_ms=$(stat -c %.3Y "$v" | tr -d .)
[ "$v_ms" -le "$started_b" ] || fail "sf1's QEMU on b started $((v_ms - started_b)) ms before the verdict was written"
grep -q '"kind":"storage-fenced"' "$VMH_DIR/hook-events.jsonl" ||
    fail "no storage-fenced event: $(cat "$VMH_DIR/hook-events.jsonl" 2>&1)"
refused=$(cat "$VMH_DIR"/host-*/ha.log | grep -c "could not start" || true)
[ "$refused" -eq 0 ] || fail "$refused start(s) failed: $(grep -h "could not start" "$VMH_DIR"/host-*/ha.log)"
note "cut -> sf1 running on b: $took ms; started $((started_boot - last)) ms after a's last renewal (D $D_MS ms), $((started_b - v_ms)) ms after the verdict"

# 2. Host a's link back: it fenced itself (renewals failed at F) and
# stays fenced; a new Ceph client from its address is refused.
vmh_wait "host a's QEMU (pid $pa) to be dead" 20000 sh -c "! kill -0 $pa 2>/dev/null || grep -q '^[0-9]* ([^)]*) Z' /proc/$pa/stat" ||
    fail "host a did not kill sf1"
ip -n "$sw" link set "vs1-$VMH_TAG" up
vmh_wait "host a to report fenced-clean" 15000 sh -c "grep -q '^state=fenced-clean$' '$VMH_DIR/host-a/state/status'" ||
    fail "host a is $(state_of a)"
if rados_put a >"$VMH_DIR/rados.out" 2>&1; then fail "a write from the blocklisted host a was accepted"; fi
note "rados put from host a while blocklisted: $(tail -n 1 "$VMH_DIR/rados.out")"
vmh_vmlease a status >"$VMH_DIR/status-a.txt" 2>&1 || true
grep -q "storage-fenced by host 2" "$VMH_DIR/status-a.txt" || fail "status on a: $(cat "$VMH_DIR/status-a.txt")"
rados_put b >/dev/null 2>&1 || fail "the control write from host b failed"
# clear-fence, first: the blocklist entry goes; the mount is the old,
# blocklisted client, so it asks for a remount.
if vmh_vmlease a clear-fence >"$VMH_DIR/clear1.out" 2>&1; then
    fail "clear-fence succeeded on a blocklisted mount: $(cat "$VMH_DIR/clear1.out")"
fi
grep -q "Remount it" "$VMH_DIR/clear1.out" || fail "clear-fence (1): $(cat "$VMH_DIR/clear1.out")"
if blocklisted; then fail "the blocklist entry is still there after clear-fence: $(cat "$VMH_DIR/clear1.out")"; fi
vmh_ctl a ceph-mount || fail "host a's remount"
vmh_in a ls /var/lib/vmlease/lockspace/fences >/dev/null || fail "host a's new client cannot read the lockspace"
vmh_vmlease a clear-fence >"$VMH_DIR/clear2.out" 2>&1 || fail "clear-fence (2): $(cat "$VMH_DIR/clear2.out")"
[ ! -e "$v" ] || fail "the verdict is still there: $(cat "$VMH_DIR/clear2.out")"
vmh_wait "host a to be protected again" 20000 vmh_protected a || fail "host a is $(state_of a): $(cat "$VMH_DIR/clear2.out")"
rados_put a >"$VMH_DIR/rados.out" 2>&1 || fail "host a's Ceph client is still refused: $(cat "$VMH_DIR/rados.out")"
vmh_domain sf2 00000072-0000-4000-8000-000000000072 >"$VMH_DIR/sf2.xml"
vmh_virsh a define "$VMH_DIR/sf2.xml" >/dev/null
vmh_virsh a start sf2 >/dev/null || fail "a VM does not start on host a after clear-fence"
note "clear-fence: blocklist removed, remounted, verdict removed, host a protected again (sf2 started on it)"
echo "ha_storage_fence: ok ($(($(vmh_now_ms) - t_begin)) ms)"
