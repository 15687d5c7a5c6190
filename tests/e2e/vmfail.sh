#!/bin/sh
# VM-level failures under vmlease-ha: one etcd member, one libvirtd host
# with the vmlease plugin, watchdog and vmlease-ha, real QEMU.
#
# - kill -9 of an HA VM's QEMU: running again on the same host within a
#   few seconds, the domain lease held by the new QEMU alone and taken
#   exactly once more (one owner at a time); vm-crashed and vm-restarted
#   events in etcd;
# - virsh destroy, and virsh shutdown (the guest powers off): not
#   restarted;
# - a crash loop (QEMU killed right after each start): recovery-failed
#   after [ha] crash_restarts restarts, with its event;
# - guest heartbeat: a guest whose agent starts later than its timeout is
#   not reset while booting, nor while answering (two timeouts); when its
#   agent freezes it is reset after the timeout, not before (same QEMU,
#   a vm-reset event), and not again during its reboot.
#
# The guest of the shutdown and heartbeat cases is Debian's kernel with a
# busybox initramfs (tests/e2e/agent-guest); a busybox script on the
# org.qemu.guest_agent.0 virtio-serial port stands in for qemu-ga
# (guest-sync, guest-ping, guest-shutdown answered as qemu-ga does; the
# test's vmlease-test-hang freezes it). The
# rest is real: libvirtd, QEMU (TCG for the guest), virtio-serial, libvirt's
# agent protocol and lifecycle events.
#
# Run as root (after `cargo build --release`):  sh tests/e2e/vmfail.sh
# VMFAIL_BENCH=N: instead of cases 2-4, time kill -> running N more times
# and print the median (bench/vm-crash-restart).
set -eu

top=$(cd "$(dirname "$0")/../.." && pwd)
PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
export PATH
VMH_DIR=${VMLEASE_E2E_VMFAIL_DIR:-/var/tmp/vmlease-e2e-vmfail}
VMH_BIN="$top/target/release"
VMH_LIBDIR="$top/scripts/lib"
VMH_R=0.2 VMH_F=1.5 VMH_K=0.5 VMH_W=1
GUEST_CACHE=/var/cache/vmlease-test
HB_TIMEOUT=15
AGENT_DELAY=$((HB_TIMEOUT + 5))
CRASH_RESTARTS=3
BENCH=${VMFAIL_BENCH:-0}
if [ "$BENCH" -gt 0 ]; then CRASH_RESTARTS=$((BENCH + 1)); fi
# shellcheck source=scripts/lib/vmhosts.sh
. "$top/scripts/lib/vmhosts.sh"

ETCD_ADDR=192.0.2.1
ETCD_URL="http://$ETCD_ADDR:2379"
PIDS=""

fail() {
    echo "FAIL: $*" >&2
    echo "--- vmlease-ha.log (last 25 lines)" >&2
    tail -n 25 "$VMH_DIR/host-a/ha.log" 2>/dev/null | sed 's/^/    /' >&2
    exit 1
}
note() { printf '    %s\n' "$*"; }

stop_all() {
    set +e
    # shellcheck disable=SC2086 # a list of pids
    vmh_stop_pids $PIDS
    vmh_cleanup
    # shellcheck disable=SC2086 # a list of pids
    vmh_report_survivors vmfail.sh $PIDS
}

etcdctl_sw() { vmh_etcdctl "$@"; }
status_json() { vmh_vmlease a --json ha status; }
state_of() { vmh_virsh a domstate "$1" 2>/dev/null; }
running() { state_of "$1" | grep -q '^running'; }
# A QEMU of NAME other than pid OLD runs (and libvirt says running).
new_qemu() {
    running "$1" || { echo "$1: $(state_of "$1")"; return 1; }
    p=$(vmh_qemu_pid a "$1" 2>/dev/null) || return 1
    [ "$p" != "$2" ] && kill -0 "$p" 2>/dev/null
}
logged() { grep -q -- "$1" "$VMH_DIR/host-a/ha.log" || { echo "not in ha.log: $1"; return 1; }; }
count_log() { grep -c -- "$1" "$VMH_DIR/host-a/ha.log" || true; }
# ev KIND NAME: how the event KIND about domain NAME on host-a reads.
ev() { echo "$1 host=host-a.test domain=$2 ("; }
# stored KIND NAME [N]: etcd holds at least N (1) such events (vmlease events).
stored() {
    n=$(vmh_vmlease a events | grep -c -- "$(ev "$1" "$2")") || true
    [ "$n" -ge "${3:-1}" ] || { echo "$n '$1' events about $2 in vmlease events"; return 1; }
}
version_of() { sed -n 's/^version=//p' "$(vmh_lease "$1")"; }
published_running() {
    status_json | grep -q "\"name\":\"$1\",\"priority\":[-0-9]*,\"restart\":\"always\",\"state\":\"running\"" ||
        { echo "$1 not published as running: $(status_json)"; return 1; }
}
published_state() {
    status_json | grep -q "\"name\":\"$1\",\"priority\":[-0-9]*,\"restart\":\"always\",\"state\":\"$2\"" ||
        { echo "$1 not published as $2: $(status_json)"; return 1; }
}
agent_answers() { vmh_virsh a qemu-agent-command --timeout 2 "$1" '{"execute":"guest-ping"}' >/dev/null; }
serial_boots() { grep -c 'VMLEASE-GUEST boot' "$VMH_DIR/host-a/log/qemu/$1.serial" 2>/dev/null || echo 0; }
boots_at_least() { [ "$(serial_boots "$1")" -ge "$2" ] || { echo "boots: $(serial_boots "$1")"; return 1; }; }

# kill_to_running NAME: kill -9 its QEMU; prints ms until a new QEMU runs.
kill_to_running() {
    old=$(vmh_qemu_pid a "$1")
    t0=$(vmh_now_ms)
    kill -9 "$old"
    vmh_wait "$1 to run again after kill -9 of its QEMU (pid $old)" 15000 new_qemu "$1" "$old" >&2 || return 1
    echo $(($(vmh_now_ms) - t0))
}

# guest_xml NAME UUID [CMDLINE]: the guest with the agent channel and a
# serial log.
guest_xml() {
    cat <<EOX
<domain type='qemu'>
  <name>$1</name>
  <uuid>$2</uuid>
  <memory unit='MiB'>192</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$VMH_DIR/guest/vmlinuz</kernel><initrd>$VMH_DIR/guest/initrd.gz</initrd>
    <cmdline>console=ttyS0 quiet panic=-1${3:+ $3}</cmdline></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot>
  <devices>
    <serial type='file'><source path='/var/log/libvirt/qemu/$1.serial' append='on'/><target port='0'/></serial>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  </devices>
</domain>
EOX
}

[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 2; }
[ -x "$VMH_BIN/vmlease-ha" ] || { echo "build first: cargo build --release" >&2; exit 2; }
command -v etcd >/dev/null || { echo "etcd missing: sh scripts/setup-test-env.sh" >&2; exit 2; }
trap stop_all EXIT
trap 'exit 1' INT TERM
t_begin=$(vmh_now_ms)
vmh_init
sh "$top/tests/e2e/agent-guest/build.sh" "$GUEST_CACHE" "$VMH_DIR/guest" ||
    fail "building the guest (Debian's kernel and busybox-static from the archive)"

ip -n "$(vmh_switch)" addr add "$ETCD_ADDR/24" dev br0
ip -n "$(vmh_switch)" link set lo up
nsenter --net="/run/netns/$(vmh_switch)" etcd --name m1 --data-dir "$VMH_DIR/etcd" \
    --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster m1=http://127.0.0.1:2380 --initial-cluster-state new \
    --initial-cluster-token "vmlease-vmfail-$$" >"$VMH_DIR/etcd.log" 2>&1 &
PIDS="$PIDS $!"
vmh_wait "etcd to answer" 10000 etcdctl_sw endpoint health || fail "etcd did not start: $(tail -n 5 "$VMH_DIR/etcd.log")"

vmh_host_up a 1 "[ha]
endpoints = [\"$ETCD_URL\"]
host_ttl = 5
interval = 0.5
max_attempts = 3
retry_backoff = 1
start_timeout = 20
crash_restarts = $CRASH_RESTARTS
crash_window = 120"
nsenter -t "$(cat "$VMH_DIR/host-a/anchor.pid")" -m -u -n \
    "$VMH_BIN/vmlease-ha" --config /etc/libvirt/qemu-vmlease.conf >"$VMH_DIR/host-a/ha.log" 2>&1 &
PIDS="$PIDS $!"
vmh_wait "vmlease-ha to watch libvirt's events" 10000 logged "watching libvirt's domain events" || fail "vmlease-ha did not start"

# HA VMs without an OS (kill, destroy, crash loop) and the guest (shutdown,
# heartbeat).
i=0
for v in crash dest loop; do
    i=$((i + 1))
    vmh_image a "$v.qcow2"
    vmh_domain "$v" "$(printf '%08x-0000-4000-8000-%012x' "$((200 + i))" "$i")" "$v.qcow2" >"$VMH_DIR/$v.xml"
    vmh_virsh a define "$VMH_DIR/$v.xml" >/dev/null
    vmh_vmlease a ha enable "$v" >/dev/null || fail "vmlease ha enable $v"
done
for v in guest1 guest2; do
    i=$((i + 1))
    # guest2's agent starts AGENT_DELAY s into each boot (a boot longer
    # than its heartbeat timeout).
    extra=""
    [ "$v" = guest1 ] || extra="vmlease.agent_delay=$AGENT_DELAY"
    guest_xml "$v" "$(printf '%08x-0000-4000-8000-%012x' "$((200 + i))" "$i")" "$extra" >"$VMH_DIR/$v.xml"
    vmh_virsh a define "$VMH_DIR/$v.xml" >/dev/null
done
vmh_vmlease a ha enable guest1 >/dev/null || fail "vmlease ha enable guest1"
# guest2 has a heartbeat (set as an operator would, with virsh metadata).
vmh_virsh a metadata guest2 --config --uri http://vmlease.org/xmlns/ha/1 --key vmlease \
    --set "<ha restart=\"always\" priority=\"0\" heartbeat=\"guest-agent\" timeout=\"$HB_TIMEOUT\"/>" ||
    fail "set guest2's metadata"
for v in crash dest loop guest1 guest2; do
    vmh_virsh a start "$v" >/dev/null || fail "start $v"
done
t_guest2=$(vmh_now_ms)
for v in crash dest loop guest1 guest2; do
    vmh_wait "$v to be published as running" 15000 published_running "$v" || fail "not published"
done

# 1. kill -9: running again on the same host; one owner at a time.
u=$(vmh_virsh a domuuid crash)
v0=$(version_of "domain-$u")
[ "$(vmh_holders "domain-$u")" = "1 $(vmh_qemu_pid a crash)" ] || fail "crash's lease before: [$(vmh_holders "domain-$u")]"
took=$(kill_to_running crash) || fail "crash was not restarted"
[ "$(vmh_holders "domain-$u")" = "1 $(vmh_qemu_pid a crash)" ] ||
    fail "crash's domain lease is held by [$(vmh_holders "domain-$u")], expected [1 $(vmh_qemu_pid a crash)] alone"
v1=$(version_of "domain-$u")
[ "$v1" -eq $((v0 + 1)) ] || fail "crash's domain lease version went $v0 -> $v1: expected one acquisition"
vmh_wait "the restart event" 5000 logged "$(ev vm-restarted crash)" || fail "no event"
[ "$(count_log "$(ev vm-crashed crash)")" -eq 1 ] || fail "crash was handled $(count_log "$(ev vm-crashed crash)") times"
vmh_wait "the crash and restart events in etcd" 5000 stored vm-crashed crash || fail "no stored event"
stored vm-restarted crash || fail "no stored restart event"
vmh_wait "crash to be published as running again" 5000 published_running crash || fail "crash's record"
note "kill -9 -> running again on the same host: $took ms (lease version $v0 -> $v1, one holder)"
echo "PASS vmfail_kill9_restarts_on_the_same_host"

if [ "$BENCH" -gt 0 ]; then
    all=""
    n=0
    while [ "$n" -lt "$BENCH" ]; do
        t=$(kill_to_running crash) || fail "crash was not restarted (run $((n + 1)))"
        [ "$(vmh_holders "domain-$u")" = "1 $(vmh_qemu_pid a crash)" ] || fail "two holders: [$(vmh_holders "domain-$u")]"
        all="$all $t"
        n=$((n + 1))
    done
    sorted=$(echo "$all" | tr ' ' '\n' | sed '/^$/d' | sort -n | tr '\n' ' ')
    # shellcheck disable=SC2086 # the numbers split on purpose
    median=$(echo $sorted | awk '{ if (NF % 2) print $((NF + 1) / 2); else print int(($(NF / 2) + $(NF / 2 + 1)) / 2) }')
    echo "kill -9 -> running on the same host, $BENCH runs (ms, sorted): $sorted"
    echo "median: $median ms"
    exit 0
fi

# 2. A crash loop: QEMU killed right after each start. The first
# CRASH_RESTARTS kills are restarted; the next is recovery-failed.
u=$(vmh_virsh a domuuid loop)
k=0
while [ "$k" -lt "$CRASH_RESTARTS" ]; do
    kill_to_running loop >/dev/null || fail "loop was not restarted after kill $((k + 1))"
    k=$((k + 1))
done
last=$(vmh_qemu_pid a loop)
kill -9 "$last"
vmh_wait "loop's crash loop to end recovery-failed" 10000 logged "$(ev recovery-failed loop)$u): crash loop" || fail "no recovery-failed"
vmh_wait "loop's crash loop in etcd's events" 5000 stored recovery-failed loop || fail "no stored event"
stored vm-restarted loop "$CRASH_RESTARTS" || fail "loop's restart events"
recfailed() { status_json | grep -q "\"name\":\"loop\",[^}]*\"state\":\"recovery-failed\"" || { status_json; return 1; }; }
vmh_wait "etcd to hold loop's recovery-failed" 5000 recfailed || fail "loop's recovery record"
vmh_wait "loop to be marked crashed in etcd" 5000 published_state loop crashed || fail "loop's record"
vmh_virsh a domstate --reason loop | grep -q '^shut off (crashed)' || fail "loop is $(vmh_virsh a domstate --reason loop)"
[ "$(count_log "$(ev vm-restarted loop)")" -eq "$CRASH_RESTARTS" ] ||
    fail "loop was restarted $(count_log "$(ev vm-restarted loop)") times, expected $CRASH_RESTARTS"
note "crash loop: $CRASH_RESTARTS restarts, then $(grep -o "recovery-failed host=.*" "$VMH_DIR/host-a/ha.log")"
echo "PASS vmfail_crash_loop_ends_recovery_failed"

# 3. virsh destroy and a shutdown (the guest powers off): not restarted.
vmh_virsh a destroy dest >/dev/null || fail "virsh destroy dest"
vmh_wait "the destroy to be seen" 5000 logged "'dest' stopped on host-a.test on purpose (libvirt: Stopped Destroyed)" || fail "no event"
vmh_wait "guest1's agent to answer (booted)" 30000 agent_answers guest1 || fail "guest1's agent stand-in never answered"
vmh_virsh a shutdown --mode agent guest1 >/dev/null || fail "virsh shutdown --mode agent guest1"
vmh_wait "the shutdown to be seen" 15000 logged "'guest1' stopped on host-a.test on purpose (libvirt: Stopped Shutdown)" || fail "no event"
for v in dest guest1; do
    vmh_wait "$v to be marked stopped in etcd" 5000 published_state "$v" stopped || fail "$v's record"
    state_of "$v" | grep -q '^shut off' || fail "$v is $(state_of "$v")"
    [ "$(count_log "$(ev vm-crashed "$v")")" -eq 0 ] || fail "a stop on purpose was undone: $(grep "'$v'" "$VMH_DIR/host-a/ha.log")"
done
echo "PASS vmfail_destroy_and_shutdown_are_not_undone"

# 4. Guest heartbeat. guest2's agent starts AGENT_DELAY s (more than its
# timeout) into each boot: vmlease-ha arms the heartbeat at its first
# answer, not before (no reset while booting).
hb_log() { count_log "the guest agent of 'guest2' $1"; }
resets() { count_log "$(ev vm-reset guest2)"; }
no_reset() { [ "$(resets)" -eq 0 ] || fail "guest2 was reset while its agent answered or booted: $(grep "$(ev vm-reset guest2)" "$VMH_DIR/host-a/ha.log")"; }
armed() { [ "$(hb_log answers)" -ge "$1" ] || { echo "answers logged: $(hb_log answers)"; return 1; }; }
vmh_wait "vmlease-ha to get guest2's first answer" $((AGENT_DELAY * 1000 + 60000)) armed 1 || fail "guest2's agent never answered vmlease-ha"
t_armed=$(vmh_now_ms)
no_reset
[ "$(hb_log "has not answered since its (re)start")" -ge 1 ] || fail "guest2's boot was not longer than its timeout"
note "heartbeat: guest2's agent answered $((t_armed - t_guest2)) ms after its start (agent ${AGENT_DELAY} s late, timeout ${HB_TIMEOUT} s): not reset while booting"
# Answering: not reset over two timeouts (proving an absence takes time).
window_over() { [ "$(vmh_now_ms)" -ge "$1" ] || { echo "$(resets) resets so far"; return 1; }; }
vmh_wait "two heartbeat timeouts of answers" $((HB_TIMEOUT * 2000 + 5000)) window_over $((t_armed + HB_TIMEOUT * 2000)) || fail "window"
no_reset
agent_answers guest2 || fail "guest2's agent does not answer the test"
t_hang=$(vmh_now_ms)
note "heartbeat: 0 resets of answering guest2 over $((t_hang - t_armed)) ms armed ($((t_hang - t_guest2)) ms since its start)"

# The agent hangs (freezes itself): reset after the timeout, not before.
p0=$(vmh_qemu_pid a guest2)
b0=$(serial_boots guest2)
vmh_virsh a qemu-agent-command --timeout 2 guest2 '{"execute":"vmlease-test-hang"}' >/dev/null || fail "hang command"
t0=$(vmh_now_ms)
reset_seen() { [ "$(resets)" -ge 1 ] || { echo "resets: $(resets)"; return 1; }; }
vmh_wait "vmlease-ha to reset guest2" $((HB_TIMEOUT * 1000 + 15000)) reset_seen || fail "guest2 was not reset"
dt=$(($(vmh_now_ms) - t0))
# The last answer came at most ~1 s (one ping) before the hang.
[ "$dt" -ge $((HB_TIMEOUT * 1000 - 1500)) ] || fail "guest2 was reset $dt ms after its agent hung, before its timeout ${HB_TIMEOUT} s"
[ "$(vmh_qemu_pid a guest2)" = "$p0" ] || fail "guest2's QEMU changed: a reset keeps it"
vmh_wait "the reset in etcd's events" 5000 stored vm-reset guest2 || fail "no stored event"
# Its reboot (the agent again AGENT_DELAY s late) is its boot grace.
vmh_wait "guest2 to boot again" 30000 boots_at_least guest2 $((b0 + 1)) || fail "no second boot"
vmh_wait "vmlease-ha to get guest2's answers again" $((AGENT_DELAY * 1000 + 60000)) armed 2 || fail "guest2's agent is silent after the reset"
t_back=$(vmh_now_ms)
[ "$(resets)" -eq 1 ] || fail "guest2 was reset $(resets) times: $(grep "$(ev vm-reset guest2)" "$VMH_DIR/host-a/ha.log")"
[ "$(hb_log "has not answered since its (re)start")" -ge 2 ] || fail "guest2's reboot was not longer than its timeout"
note "heartbeat: the agent hung; reset $dt ms later (timeout ${HB_TIMEOUT} s), same QEMU; rebooted and answering $((t_back - t0 - dt)) ms after the reset, not reset again while booting"
echo "PASS vmfail_silent_guest_agent_is_reset"
echo "PASS vmfail ($(($(vmh_now_ms) - t_begin)) ms)"
