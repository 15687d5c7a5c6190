#!/bin/sh
# Recovery under stacked faults: a three-member etcd cluster (Debian's
# etcd-server) in the test network's switch namespace, four libvirtd hosts
# (a-d) with the vmlease plugin, watchdog and vmlease-ha each, real QEMU.
#
# 1. The leader killed mid-recovery: b leads; a's storage is cut; the
#    moment b has assigned a's HA VM k1 to a target (the recovery record
#    says "assigned"), b's vmlease-ha gets SIGKILL. A new leader is elected
#    and finishes the recovery: k1 runs once (one QEMU process, one start
#    by the agents, one lease holder), and a second copy started by hand on
#    another host is refused by the lock plugin.
# 2. etcd quorum lost (two of three members stopped), then b's storage
#    cut: b fences by itself (the fence path needs no etcd), the VMs on
#    c and d keep running, nobody decides or starts anything; when the
#    members come back, the recovery of b's HA VM q1 completes, once.
# 3. Corrupt values: garbage in a live host's key and in a VM's key become
#    events naming the key; no host is reported failed, nothing is
#    recovered, no vmlease-ha exits; the host's agent writes its record
#    again.
#
# Run as root (after `cargo build --release`):  sh tests/e2e/ha-faults.sh
set -eu

top=$(cd "$(dirname "$0")/../.." && pwd)
PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
export PATH
VMH_DIR=${VMLEASE_E2E_HAF_DIR:-/var/tmp/vmlease-e2e-ha-faults}
VMH_BIN="$top/target/release"
VMH_LIBDIR="$top/scripts/lib"
# The e2e suite's small timing (D = 4 s), which keeps the inequality.
VMH_R=0.2 VMH_F=1.5 VMH_K=0.5 VMH_W=1
D_MS=4000
# shellcheck source=scripts/lib/vmhosts.sh
. "$top/scripts/lib/vmhosts.sh"

P=/vmlease/
ETCD_ADDR=192.0.2.1
# Member i: client port 2279 + 100 i, peer port 2280 + 100 i.
ETCD_URLS="http://$ETCD_ADDR:2379 http://$ETCD_ADDR:2479 http://$ETCD_ADDR:2579"
PIDS=""

fail() {
    echo "FAIL: $*" >&2
    for n in a b c d; do
        echo "--- host $n: vmlease-ha.log (last 15 lines)" >&2
        tail -n 15 "$VMH_DIR/host-$n/ha.log" 2>/dev/null | sed 's/^/    /' >&2
    done
    exit 1
}
note() { printf '    %s\n' "$*"; }

stop_all() {
    set +e
    # shellcheck disable=SC2086 # a list of pids
    vmh_stop_pids $PIDS
    vmh_cleanup
    # shellcheck disable=SC2086 # a list of pids
    vmh_report_survivors ha-faults.sh $PIDS
}

# etcd_start I: member I (1-3) in the switch namespace; its pid in E<I>.
etcd_start() {
    c=$((2279 + 100 * $1)) p=$((2280 + 100 * $1))
    nsenter --net="/run/netns/$(vmh_switch)" etcd --name "m$1" --data-dir "$VMH_DIR/etcd$1" \
        --listen-client-urls "http://$ETCD_ADDR:$c" --advertise-client-urls "http://$ETCD_ADDR:$c" \
        --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
        --initial-cluster m1=http://127.0.0.1:2380,m2=http://127.0.0.1:2480,m3=http://127.0.0.1:2580 \
        --initial-cluster-state new --initial-cluster-token "vmlease-ha-faults-$$" >>"$VMH_DIR/etcd$1.log" 2>&1 &
    eval "E$1=\$!"
    PIDS="$PIDS $!"
}
# etcd_stop I: stops member I and waits until it is gone.
etcd_stop() {
    eval "p=\$E$1"
    kill "$p"
    vmh_wait "etcd member $1 (pid $p) to exit" 10000 sh -c "! kill -0 $p 2>/dev/null" || fail "etcd member $1 did not stop"
}
etcdctl_sw() {
    ip netns exec "$(vmh_switch)" env ETCDCTL_API=3 etcdctl --dial-timeout=1s --command-timeout=2s \
        --endpoints="$(echo "$ETCD_URLS" | tr ' ' ',')" "$@"
}
leader() { etcdctl_sw get --print-value-only "${P}leader"; }
leader_is() {
    l=$(leader) || return 1
    [ "$l" = "$1" ] || { echo "leader: [$l]"; return 1; }
}
leader_not() {
    l=$(leader) || return 1
    if [ -z "$l" ] || [ "$l" = "$1" ]; then echo "leader: [$l]"; return 1; fi
}
# same_pid HOST NAME PID: NAME still runs on HOST as PID.
same_pid() {
    [ "$(vmh_qemu_pid "$1" "$2" 2>/dev/null)" = "$3" ] || return 1
    kill -0 "$3" 2>/dev/null
}
status_json() { vmh_vmlease "$1" --json ha status; }
running_on() { vmh_virsh "$1" domstate "$2" 2>/dev/null | grep -q '^running'; }
not_running_on() { ! running_on "$@"; }
# where NAME: the hosts it runs on.
where() {
    w=""
    for n in a b c d; do
        if running_on "$n" "$1"; then w="$w $n"; fi
    done
    echo "${w# }"
}
# qemus NAME: how many QEMU processes on the machine run guest NAME.
qemus() { pgrep -f -- "-name guest=$1," | wc -l; }
# published NAME HOST...: etcd has NAME running on host HOST.
published() {
    j=$(status_json c) || return 1
    echo "$j" | grep -q "\"host\":\"host-$2.test\",\"memory_kib\":[0-9]*,\"name\":\"$1\",\"priority\":[0-9]*,\"restart\":\"always\",\"state\":\"running\"" ||
        { echo "$1 not published as running on $2: $j"; return 1; }
}
no_recoveries() {
    r=$(etcdctl_sw get --prefix --keys-only "${P}recovery/") || return 1
    [ -z "$r" ] || { echo "recovery records: $r"; return 1; }
}
# recovered NAME: runs on exactly one host, and no recovery is in flight.
recovered() {
    w=$(where "$1")
    [ "$(echo "$w" | wc -w)" -eq 1 ] || { echo "$1 runs on [$w]"; return 1; }
    no_recoveries
}
starts() { cat "$VMH_DIR"/host-*/ha.log | grep -c "started '$1'" || true; }
start_ms() {
    pid=$(vmh_qemu_pid "$1" "$2")
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%d\n", $22 * 1000 / hz }' "/proc/$pid/stat"
}
# ha_start HOST: vmlease-ha on HOST (nsenter execs it: $! is vmlease-ha).
ha_start() {
    nsenter -t "$(cat "$VMH_DIR/host-$1/anchor.pid")" -m -u -n \
        "$VMH_BIN/vmlease-ha" --config /etc/libvirt/qemu-vmlease.conf >>"$VMH_DIR/host-$1/ha.log" 2>&1 &
    eval "HA_$1=\$!"
    PIDS="$PIDS $!"
}
ha_alive() {
    for n in "$@"; do
        eval "p=\$HA_$n"
        # shellcheck disable=SC2154 # set through eval
        vmh_wait "vmlease-ha on $n (pid $p) to run" 5000 sh -c "readlink /proc/$p/exe | grep -q vmlease-ha" ||
            fail "vmlease-ha on $n (pid $p) is gone: $(tail -n 5 "$VMH_DIR/host-$n/ha.log")"
    done
}
# The lock plugin's refusal of a second copy of NAME on HOST.
second_copy_refused() {
    vmh_virsh "$2" define "$VMH_DIR/$1.xml" >/dev/null || fail "define $1 on $2"
    if vmh_virsh "$2" start "$1" >"$VMH_DIR/second.out" 2>&1; then
        fail "a second copy of $1 started on $2 (runs on [$(where "$1")])"
    fi
    grep -q "vmlease: .*is leased: held by host" "$VMH_DIR/second.out" ||
        fail "the start of a second copy of $1 on $2 failed, but not by the plugin: $(cat "$VMH_DIR/second.out")"
    vmh_virsh "$2" undefine "$1" >/dev/null || fail "undefine $1 on $2"
    note "second copy of $1 on $2 refused: $(grep -o 'vmlease:.*' "$VMH_DIR/second.out" | cut -c1-100)..."
}

[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 2; }
[ -x "$VMH_BIN/vmlease-ha" ] || { echo "build first: cargo build --release" >&2; exit 2; }
command -v etcd >/dev/null || { echo "etcd missing: sh scripts/setup-test-env.sh" >&2; exit 2; }
trap stop_all EXIT
trap 'exit 1' INT TERM
t_begin=$(vmh_now_ms)
vmh_init

ip -n "$(vmh_switch)" addr add "$ETCD_ADDR/24" dev br0
ip -n "$(vmh_switch)" link set lo up
for i in 1 2 3; do etcd_start "$i"; done
vmh_wait "the etcd cluster to answer" 15000 etcdctl_sw endpoint health ||
    fail "etcd did not start: $(tail -n 3 "$VMH_DIR"/etcd*.log)"

ha_conf() {
    cat <<EOC
[ha]
endpoints = [$(echo "$ETCD_URLS" | sed 's/[^ ]*/"&"/g; s/ /, /g')]
host_ttl = 5
interval = 0.5
max_starts_per_host = 2
max_attempts = 3
retry_backoff = 1
start_timeout = 20
EOC
}
vmh_host_up a 1 "$(ha_conf)"
vmh_host_up b 2 "$(ha_conf)"
vmh_host_up c 3 "$(ha_conf)"
vmh_host_up d 4 "$(ha_conf)"
# b first, so that it leads; then the others.
ha_start b
vmh_wait "b to lead" 15000 leader_is host-b.test || fail "b did not become the leader"
for n in a c d; do ha_start "$n"; done
ha_alive a b c d

# HA VMs: k1 on a, q1 on b, keep on d (their images on every host, the
# same path as on shared storage). c runs nothing: it has the most free
# memory, so k1's recovery goes to c, not to the leader b.
i=0
for v in k1 q1 keep; do
    i=$((i + 1))
    for n in a b c d; do vmh_image "$n" "$v.qcow2"; done
    vmh_domain "$v" "$(printf '%08x-0000-4000-8000-%012x' "$((200 + i))" "$i")" "$v.qcow2" >"$VMH_DIR/$v.xml"
done
for x in "k1 a" "q1 b" "keep d"; do
    # shellcheck disable=SC2086 # two words
    set -- $x
    vmh_virsh "$2" define "$VMH_DIR/$1.xml" >/dev/null || fail "define $1 on $2"
    vmh_vmlease "$2" ha enable "$1" >/dev/null || fail "vmlease ha enable $1"
    # (a loaded machine can delay a renewal past what the plugin accepts
    # for a moment: the start is refused then, and tried again)
    vmh_wait "$1 to start on $2" 10000 vmh_virsh "$2" start "$1" || fail "start $1 on $2"
done
for x in "k1 a" "q1 b" "keep d"; do
    # shellcheck disable=SC2086 # two words
    vmh_wait "$x to be published" 15000 published $x || fail "not published"
done
setup_ms=$(($(vmh_now_ms) - t_begin))

# --- 1. The leader killed mid-recovery.
t1=$(vmh_now_ms)
ip netns exec "$(vmh_switch)" env ETCDCTL_API=3 etcdctl --endpoints="http://$ETCD_ADDR:2379" \
    watch --prefix "${P}recovery/" >"$VMH_DIR/recovery.watch" 2>&1 &
watcher=$!
PIDS="$PIDS $watcher"
pa=$(vmh_qemu_pid a k1)
vmh_in a umount -l /var/lib/vmlease/lockspace
cut=$(vmh_now_ms)
vmh_wait "b to assign k1's start" 30000 grep -q '"state":"assigned"' "$VMH_DIR/recovery.watch" ||
    fail "no assignment: $(cat "$VMH_DIR/recovery.watch")"
# shellcheck disable=SC2154 # set by ha_start
kill -9 "$HA_b"
killed=$(vmh_now_ms)
cp "$VMH_DIR/recovery.watch" "$VMH_DIR/at-kill.watch"
# Mid-recovery: assigned, not completed (the record not deleted, k1 not
# reported recovered by b).
if grep -q '^DELETE' "$VMH_DIR/at-kill.watch" || grep -q "recovered 'k1'" "$VMH_DIR/host-b/ha.log"; then
    fail "the recovery was complete before b was killed: $(cat "$VMH_DIR/at-kill.watch")"
fi
target=$(sed -n 's/.*"target":"host-\([a-d]\)\.test".*/\1/p' "$VMH_DIR/at-kill.watch" | head -n 1)
[ "$target" = c ] || fail "k1 was assigned to [$target], expected c (most free memory): $(cat "$VMH_DIR/at-kill.watch")"
kill -0 "$pa" 2>/dev/null && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$pa/stat" 2>/dev/null &&
    fail "k1 still runs on a (pid $pa) when its start elsewhere was assigned"
vmh_wait "a new leader" 20000 leader_not host-b.test || fail "no new leader"
new_leader=$(leader)
leader_ms=$(($(vmh_now_ms) - killed))
vmh_wait "k1's recovery to complete" 30000 recovered k1 || fail "k1 was not recovered"
done_ms=$(($(vmh_now_ms) - killed))
[ "$(where k1)" = c ] || fail "k1 runs on [$(where k1)]"
[ "$(qemus k1)" -eq 1 ] || fail "$(qemus k1) QEMU processes run k1"
[ "$(starts k1)" -eq 1 ] || fail "k1 was started $(starts k1) times by the agents: $(grep -h "'k1'" "$VMH_DIR"/host-*/ha.log)"
h=$(vmh_holders "domain-$(vmh_virsh c domuuid k1)")
[ "$h" = "3 $(vmh_qemu_pid c k1)" ] || fail "k1's domain lease is held by [$h]"
grep -q "vm-recovered host=host-a.test domain=k1" "$VMH_DIR/host-$(echo "$new_leader" | cut -c6)/ha.log" ||
    fail "the new leader $new_leader did not report k1 recovered"
second_copy_refused k1 d
# b's own VM: b is protected (its watchdog renews), only its vmlease-ha
# died: q1 stays where it is.
running_on b q1 || fail "q1 stopped on b"
[ "$(qemus q1)" -eq 1 ] || fail "$(qemus q1) QEMU processes run q1"
# systemd restarts it (Restart=on-failure): b is a candidate again.
ha_start b
vmh_wait "b to publish again" 15000 published q1 b || fail "b did not come back"
note "leader b killed $((killed - cut)) ms after a's storage cut (k1 assigned to c); new leader $new_leader after $leader_ms ms; k1 runs on c $done_ms ms after the kill; one QEMU, one start"
echo "PASS ha_leader_killed_mid_recovery ($(($(vmh_now_ms) - t1)) ms)"

# --- 2. etcd quorum lost.
t2=$(vmh_now_ms)
pk1=$(vmh_qemu_pid c k1)
pkeep=$(vmh_qemu_pid d keep)
etcd_stop 2
etcd_stop 3
if ip netns exec "$(vmh_switch)" env ETCDCTL_API=3 etcdctl --endpoints="http://$ETCD_ADDR:2379" \
    --command-timeout=2s put "${P}probe" x >"$VMH_DIR/probe.out" 2>&1; then
    fail "a put succeeded with two of three members down"
fi
pq=$(vmh_qemu_pid b q1)
n_starts=$(cat "$VMH_DIR"/host-*/ha.log | grep -c "started '" || true)
vmh_in b umount -l /var/lib/vmlease/lockspace
cut2=$(vmh_now_ms)
vmh_wait "b to kill q1's QEMU (pid $pq) without etcd" 6000 sh -c "! kill -0 $pq 2>/dev/null || grep -q '^[0-9]* ([^)]*) Z' /proc/$pq/stat" ||
    fail "host b did not fence"
# libvirt on b reports q1 running until it has reaped the QEMU: wait for
# that, so that the checks below see starts elsewhere, not b's lag.
vmh_wait "b's libvirt to see q1 stopped" 10000 not_running_on b q1 ||
    fail "q1 still reported running on b after its QEMU (pid $pq) died: $(vmh_virsh b domstate q1 --reason 2>&1)"
last=$(sed -n 's/^last_renewal_ms=//p' "$VMH_DIR/host-b/state/status")
# Long past the safe time (D after b's last renewal) and the usual
# recovery time: nothing is decided, nothing is started, the other VMs
# run on.
window=$((D_MS + 8000))
while [ $(($(vmh_now_ms) - cut2)) -lt "$window" ]; do
    [ "$(cat "$VMH_DIR"/host-*/ha.log | grep -c "started '" || true)" -eq "$n_starts" ] ||
        fail "a start without quorum: $(grep -h "started '" "$VMH_DIR"/host-*/ha.log)"
    w=$(where q1)
    [ -z "$w" ] || fail "q1 runs on [$w] without quorum"
    same_pid c k1 "$pk1" || fail "k1 (pid $pk1) stopped on c without quorum"
    same_pid d keep "$pkeep" || fail "keep (pid $pkeep) stopped on d without quorum"
    for n in c d; do vmh_protected "$n" || fail "host $n is not protected without quorum: $(cat "$VMH_DIR/host-$n/state/status")"; done
    sleep 0.2
done
ha_alive a b c d
back=$(vmh_now_ms)
etcd_start 2
etcd_start 3
vmh_wait "quorum to return" 15000 etcdctl_sw put "${P}probe" x || fail "quorum did not return: $(tail -n 3 "$VMH_DIR"/etcd*.log)"
quorum_ms=$(($(vmh_now_ms) - back))
vmh_wait "q1's recovery to complete" 40000 recovered q1 || fail "q1 was not recovered after quorum returned"
rec_ms=$(($(vmh_now_ms) - back))
w=$(where q1)
[ "$(qemus q1)" -eq 1 ] || fail "$(qemus q1) QEMU processes run q1"
[ "$(starts q1)" -eq 1 ] || fail "q1 was started $(starts q1) times"
s=$(start_ms "$w" q1)
[ "$s" -ge "$back" ] || fail "q1's QEMU started $((back - s)) ms before quorum returned"
[ "$s" -ge $((last + D_MS)) ] || fail "q1 started before b's last renewal + D"
hstate() { sed -n 's/^state=//p' "$VMH_DIR/host-$1/state/status"; }
same_pid c k1 "$pk1" || fail "k1 was restarted (host c: $(hstate c))"
same_pid d keep "$pkeep" || fail "keep was restarted (host d: $(hstate d); its log: $(tail -n 3 "$VMH_DIR/host-d/watchdog.log"))"
note "quorum lost for $((back - cut2)) ms after b's storage cut: no decision, k1 and keep ran on; quorum back in $quorum_ms ms; q1 runs on $w $rec_ms ms after the members restarted"
echo "PASS ha_quorum_loss_no_decisions_then_recovery ($(($(vmh_now_ms) - t2)) ms)"

# --- 3. Corrupt values in a live host's key and in a VM's key.
t3=$(vmh_now_ms)
# The live host whose key gets garbage is not the leader: a leader's agent
# checks its own record in the step before its controller reads etcd, so
# garbage in the leader's own key may be rewritten before any controller
# reads it (no event then; nothing is decided on it either).
ch=d
if [ "$(leader)" = host-d.test ]; then ch=c; fi
ku=$(vmh_virsh d domuuid keep)
etcdctl_sw put "${P}hosts/host-$ch.test" 'garbage{' >/dev/null
etcdctl_sw put "${P}vms/$ku" 'not json' >/dev/null
events_have() {
    vmh_vmlease c events >"$VMH_DIR/events3.txt" 2>&1 || return 1
    for k in "hosts/host-$ch.test" "vms/$ku"; do
        grep -q "corrupt-value.*${P}$k" "$VMH_DIR/events3.txt" || { echo "no corrupt-value event for $k: $(cat "$VMH_DIR/events3.txt")"; return 1; }
    done
}
vmh_wait "events naming the corrupt keys" 10000 events_have || fail "no events"
vmh_vmlease c ha status >"$VMH_DIR/status3.txt" 2>&1 || true
grep -q "corrupt: ${P}hosts/host-$ch.test" "$VMH_DIR/status3.txt" || fail "ha status: $(cat "$VMH_DIR/status3.txt")"
host_repaired() { etcdctl_sw get --print-value-only "${P}hosts/host-$ch.test" | grep -q "\"name\":\"host-$ch.test\""; }
vmh_wait "$ch's agent to write its host record again" 15000 host_repaired || fail "$ch's record stays corrupt"
ha_alive a b c d
if grep -q "host-failed host=host-$ch.test" "$VMH_DIR/events3.txt"; then fail "$ch reported failed: $(cat "$VMH_DIR/events3.txt")"; fi
same_pid d keep "$pkeep" || fail "keep was moved or restarted"
[ "$(qemus keep)" -eq 1 ] || fail "$(qemus keep) QEMU processes run keep"
no_recoveries || fail "a recovery was decided on a corrupt value"
[ "$(grep -c "corrupt-value.*${P}vms/$ku" "$VMH_DIR/events3.txt")" -eq 1 ] || fail "the corrupt VM key was reported more than once: $(cat "$VMH_DIR/events3.txt")"
note "$(grep -m1 "corrupt-value.*hosts/" "$VMH_DIR/events3.txt" | cut -c1-150)"
# Detection to decision: a value written to etcd -> the leader's event
# about it (its time_ms), five times.
event_ms() { # UUID: the time_ms of the corrupt-value event about it
    vmh_vmlease c --json events | grep "\"kind\":\"corrupt-value\".*\"uuid\":\"$1\"" |
        sed -n 's/.*"time_ms":\([0-9]*\).*/\1/p' | grep . || { echo "no event about $1"; return 1; }
}
lat=""
for i in 1 2 3 4 5; do
    t=$(date +%s%3N)
    etcdctl_sw put "${P}vms/probe-$i" 'garbage' >/dev/null
    vmh_wait "the corrupt-value event about probe-$i" 5000 event_ms "probe-$i" || fail "no event"
    lat="$lat $(($(event_ms "probe-$i") - t))"
done
etcdctl_sw del --prefix "${P}vms/probe-" >/dev/null
note "a value written -> the leader's decision (event time), ms:$lat"
echo "PASS ha_corrupt_values_are_events ($(($(vmh_now_ms) - t3)) ms)"
note "set-up $setup_ms ms; total $(($(vmh_now_ms) - t_begin)) ms"
