#!/bin/sh
# End-to-end tests with the real thing: two libvirtd 9.0 hosts loading
# vmlease.so from qemu.conf, real QEMU processes, the vmlease-watchdog of
# each host, and real faults. Each scenario asserts what the user sees and
# what the lockspace holds; a failure names the host, domain and lease.
#
# Run as root (after `cargo build --release`):  sh tests/e2e/run.sh [SCENARIO...]
set -eu

top=$(cd "$(dirname "$0")/../.." && pwd)
PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
export PATH
VMH_DIR=${VMLEASE_E2E_DIR:-/var/tmp/vmlease-e2e}
VMH_BIN="$top/target/release"
VMH_LIBDIR="$top/scripts/lib"
# Small test timing that keeps the safety inequality: D = 4 s.
VMH_R=0.2 VMH_F=1.5 VMH_K=0.5 VMH_W=1
D_MS=4000
# shellcheck source=scripts/lib/vmhosts.sh
. "$top/scripts/lib/vmhosts.sh"

passed=0 failed=0 failures=""
note() { printf '    %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; return 1; }

# --- helpers ---------------------------------------------------------------
uuid_of() { printf '%08x-0000-4000-8000-%012x' "$1" "$1"; }
define_on() { # HOST NAME UUID DISK...
    h=$1; shift
    vmh_domain "$@" >"$VMH_DIR/$1.xml"
    vmh_virsh "$h" define "$VMH_DIR/$1.xml" >/dev/null
}
start_on() { vmh_virsh "$1" start "$2" >"$VMH_DIR/last.out" 2>&1; }
running_on() { vmh_virsh "$1" domstate "$2" 2>/dev/null | grep -q '^running'; }
holders() { vmh_holders "$1"; }
held_by() { # KEY HOST PID
    got=$(holders "$1")
    [ "$got" = "$2 $3" ] || { echo "lease $1 held by [$got], expected [$2 $3]"; return 1; }
}
free_lease() {
    got=$(holders "$1")
    [ -z "$got" ] || { echo "lease $1 still held by [$got]"; return 1; }
}
qemu_gone() { ! kill -0 "$1" 2>/dev/null || [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" = Z ]; }
out_has() { grep -q "$1" "$VMH_DIR/last.out" || fail "expected '$1' in: $(cat "$VMH_DIR/last.out")"; }
undefine_all() {
    for h in a b; do
        for d in $(vmh_virsh "$h" list --all --name 2>/dev/null); do
            vmh_virsh "$h" destroy "$d" >/dev/null 2>&1 || true
            vmh_virsh "$h" undefine "$d" >/dev/null 2>&1 || true
        done
    done
}

# --- scenarios -------------------------------------------------------------

s1_same_uuid_refused() {
    u=$(uuid_of 1)
    vmh_image a s1.qcow2; vmh_image b s1.qcow2
    define_on a s1 "$u" s1.qcow2; define_on b s1 "$u" s1.qcow2
    start_on a s1 || fail "host a: s1 did not start: $(cat "$VMH_DIR/last.out")"
    pa=$(vmh_qemu_pid a s1)
    held_by "domain-$u" 1 "$pa"
    ! start_on b s1 || fail "host b started s1 while host a runs it"
    out_has "vmlease: .*host 1 (host-a.test) for domain 's1'"
    held_by "domain-$u" 1 "$pa"
    note "refused on b: $(grep -o 'vmlease:.*' "$VMH_DIR/last.out" | cut -c1-110)..."
}

s2_shared_and_readonly_disks() {
    vmh_image a s2.qcow2; vmh_image b s2.qcow2
    define_on a s2a "$(uuid_of 21)" s2.qcow2
    define_on b s2b "$(uuid_of 22)" s2.qcow2
    start_on a s2a || fail "host a: s2a did not start: $(cat "$VMH_DIR/last.out")"
    ! start_on b s2b || fail "host b started s2b on a disk that s2a writes on host a"
    out_has "vmlease: disk /var/lib/libvirt/images/s2.qcow2 is leased: held by host 1 (host-a.test) for domain 's2a'"
    vmh_image a s2-shared.raw raw; vmh_image b s2-shared.raw raw
    vmh_image a s2-ro.raw raw; vmh_image b s2-ro.raw raw
    define_on a s2c "$(uuid_of 23)" s2-shared.raw:shared s2-ro.raw:ro
    define_on b s2d "$(uuid_of 24)" s2-shared.raw:shared s2-ro.raw:ro
    start_on a s2c || fail "host a: s2c did not start: $(cat "$VMH_DIR/last.out")"
    start_on b s2d || fail "host b: s2d did not start with a <shareable/> disk: $(cat "$VMH_DIR/last.out")"
    k=$(vmh_disk_key /var/lib/libvirt/images/s2-shared.raw)
    grep -q '^mode=shared$' "$(vmh_lease "$k")" || fail "shareable disk lease $k is not shared"
    [ "$(holders "$k" | wc -l)" -eq 2 ] || fail "shareable disk lease $k: holders [$(holders "$k")]"
    ro=$(vmh_disk_key /var/lib/libvirt/images/s2-ro.raw)
    [ ! -e "$(vmh_lease "$ro")" ] || fail "read-only disk got a lease record $ro"
}

s3_stop_paths_release_within_1s() {
    u=$(uuid_of 3)
    vmh_image a s3.qcow2; vmh_image b s3.qcow2
    define_on a s3 "$u" s3.qcow2; define_on b s3 "$u" s3.qcow2
    for how in destroy qemu-quit kill-9; do
        start_on a s3 || fail "host a: s3 did not start: $(cat "$VMH_DIR/last.out")"
        pa=$(vmh_qemu_pid a s3)
        t0=$(vmh_now_ms)
        case "$how" in
            destroy) vmh_virsh a destroy s3 >/dev/null ;;
            qemu-quit) vmh_virsh a qemu-monitor-command s3 --hmp quit >/dev/null 2>&1 || true ;;
            kill-9) kill -9 "$pa" ;;
        esac
        vmh_wait "the leases of s3 ($how on host a, pid $pa) to be released" 1000 free_lease "domain-$u" ||
            fail "$how: not released within 1 s"
        took=$(($(vmh_now_ms) - t0))
        vmh_wait "host a to notice s3 stopped" 5000 sh -c "! $(command -v virsh) -q -c '$(vmh_uri a)' domstate s3 | grep -q running"
        start_on b s3 || fail "$how: host b could not start s3: $(cat "$VMH_DIR/last.out")"
        note "$how on host a: leases free after $took ms, host b started s3"
        vmh_virsh b destroy s3 >/dev/null
        vmh_wait "s3's lease to be free again" 2000 free_lease "domain-$u"
    done
}

s4_suspend_resume() {
    u=$(uuid_of 4)
    vmh_image a s4.qcow2; vmh_image b s4.qcow2
    define_on a s4 "$u" s4.qcow2; define_on b s4 "$u" s4.qcow2
    start_on a s4 || fail "host a: s4 did not start"
    pa=$(vmh_qemu_pid a s4)
    v1=$(sed -n 's/^version=//p' "$(vmh_lease "domain-$u")")
    vmh_virsh a suspend s4 >/dev/null
    free_lease "domain-$u"
    vmh_virsh a resume s4 >/dev/null
    held_by "domain-$u" 1 "$pa"
    v2=$(sed -n 's/^version=//p' "$(vmh_lease "domain-$u")")
    [ "$v2" -eq $((v1 + 1)) ] || fail "version after resume is $v2, expected $((v1 + 1))"
    # Paused again; B takes the VM and stops it: A's resume must fail.
    vmh_virsh a suspend s4 >/dev/null
    start_on b s4 || fail "host b could not start s4 while a's copy is paused: $(cat "$VMH_DIR/last.out")"
    vmh_virsh b destroy s4 >/dev/null
    vmh_wait "b's lease on s4 to be released" 2000 free_lease "domain-$u"
    if vmh_virsh a resume s4 >"$VMH_DIR/last.out" 2>&1; then
        fail "host a resumed s4 although host b owned it in between"
    fi
    out_has "vmlease: .*lease version is .*another owner held it in between"
    vmh_virsh a domstate s4 | grep -q paused || fail "s4 on a is not paused after the refused resume"
    free_lease "domain-$u"
    note "resume after a takeover refused: $(grep -o 'vmlease:.*' "$VMH_DIR/last.out" | cut -c1-100)"
}

s5_hotplug() {
    u=$(uuid_of 5)
    vmh_image a s5.qcow2; vmh_image a s5-hot.qcow2; vmh_image a s5-b.qcow2; vmh_image b s5-b.qcow2
    define_on a s5 "$u" s5.qcow2
    start_on a s5 || fail "host a: s5 did not start"
    pa=$(vmh_qemu_pid a s5)
    hot=$(vmh_disk_key /var/lib/libvirt/images/s5-hot.qcow2)
    vmh_virsh a attach-disk s5 /var/lib/libvirt/images/s5-hot.qcow2 sdb --targetbus scsi --driver qemu --subdriver qcow2 --live >/dev/null ||
        fail "attach-disk failed"
    held_by "$hot" 1 "$pa"
    vmh_virsh a detach-disk s5 sdb --live >/dev/null || fail "detach-disk failed"
    vmh_wait "the hot-unplugged disk lease $hot to be free" 5000 free_lease "$hot"
    held_by "domain-$u" 1 "$pa"
    # A disk leased by host b cannot be hot-plugged on host a.
    define_on b s5b "$(uuid_of 51)" s5-b.qcow2
    start_on b s5b || fail "host b: s5b did not start"
    if vmh_virsh a attach-disk s5 /var/lib/libvirt/images/s5-b.qcow2 sdc --targetbus scsi --driver qemu --subdriver qcow2 --live >"$VMH_DIR/last.out" 2>&1; then
        fail "host a hot-plugged a disk that host b's s5b writes"
    fi
    out_has "vmlease: disk /var/lib/libvirt/images/s5-b.qcow2 is leased: held by host 2 (host-b.test) for domain 's5b'"
}

s6_libvirtd_restart() {
    u=$(uuid_of 6)
    vmh_image a s6.qcow2
    define_on a s6 "$u" s6.qcow2
    start_on a s6 || fail "host a: s6 did not start"
    pa=$(vmh_qemu_pid a s6)
    vmh_ctl a libvirtd-stop
    vmh_ctl a libvirtd-start
    vmh_wait "libvirtd on host a to come back" 15000 vmh_virsh a hostname
    running_on a s6 || fail "s6 is not running after the libvirtd restart"
    [ "$(vmh_qemu_pid a s6)" = "$pa" ] || fail "s6 has a new QEMU after the restart"
    held_by "domain-$u" 1 "$pa"
}

s7_live_migration() {
    u=$(uuid_of 7)
    vmh_image a s7.qcow2; vmh_image b s7.qcow2
    define_on a s7 "$u" s7.qcow2
    start_on a s7 || fail "host a: s7 did not start"
    pa=$(vmh_qemu_pid a s7)
    v1=$(sed -n 's/^version=//p' "$(vmh_lease "domain-$u")")
    # A failed migration (destination unprotected) leaves the leases with A.
    vmh_ctl b watchdog-stop
    port=$((49152 + $$ % 1000))
    baddr=$(vmh_host_addr b)
    if vmh_virsh a migrate --live --unsafe s7 "$(vmh_uri b)" --migrateuri "tcp://$baddr:$port" >"$VMH_DIR/last.out" 2>&1; then
        fail "migration to an unprotected host succeeded"
    fi
    out_has "vmlease"
    running_on a s7 || fail "s7 is not running on host a after the failed migration"
    held_by "domain-$u" 1 "$pa"
    vmh_ctl b watchdog-start
    vmh_wait "host b to be protected again" 10000 vmh_protected b
    t0=$(vmh_now_ms)
    vmh_virsh a migrate --live --unsafe s7 "$(vmh_uri b)" --migrateuri "tcp://$baddr:$((port + 1))" >"$VMH_DIR/last.out" 2>&1 ||
        fail "migration a -> b failed: $(cat "$VMH_DIR/last.out")"
    running_on b s7 || fail "s7 is not running on host b after the migration"
    pb=$(vmh_qemu_pid b s7)
    held_by "domain-$u" 2 "$pb"
    v2=$(sed -n 's/^version=//p' "$(vmh_lease "domain-$u")")
    [ "$v2" -gt "$v1" ] || fail "lease version did not advance on handover ($v1 -> $v2)"
    note "migrated a -> b over $(vmh_host_addr a) -> $baddr (the hosts' own network namespaces) in $(($(vmh_now_ms) - t0)) ms; domain lease version $v1 -> $v2, holder host 2 pid $pb"
}

s8_unprotected_host_refuses() {
    vmh_image b s8.qcow2
    define_on b s8 "$(uuid_of 8)" s8.qcow2
    vmh_ctl b watchdog-stop
    # The hook's prepare refuses first...
    ! start_on b s8 || fail "host b started s8 without its watchdog"
    out_has "Hook script execution failed.*vmlease: refusing to start 's8': host not protected: the vmlease-watchdog daemon is not running"
    # ...and without the hook the plugin itself refuses (in QEMU's pre-exec child).
    chmod -x "$VMH_DIR/host-b/etc/hooks/qemu.d/vmlease"
    kill -HUP "$(cat "$VMH_DIR/host-b/run/libvirtd.pid")"
    vmh_wait "libvirtd on host b to reload" 10000 vmh_virsh b hostname
    ! start_on b s8 || fail "host b started s8 without its watchdog (no hook)"
    out_has "Process exited prior to exec: vmlease: host not protected: the vmlease-watchdog daemon is not running"
    chmod +x "$VMH_DIR/host-b/etc/hooks/qemu.d/vmlease"
    kill -HUP "$(cat "$VMH_DIR/host-b/run/libvirtd.pid")"
    vmh_wait "libvirtd on host b to reload" 10000 vmh_virsh b hostname
    vmh_ctl b watchdog-start
    vmh_wait "host b to be protected again" 10000 vmh_protected b
    start_on b s8 || fail "host b: s8 did not start once protected: $(cat "$VMH_DIR/last.out")"
}

s10_reconnect_after_takeover_kills_qemu() {
    u=$(uuid_of 10)
    vmh_image a s10.qcow2; vmh_image b s10.qcow2
    define_on a s10 "$u" s10.qcow2; define_on b s10 "$u" s10.qcow2
    start_on a s10 || fail "host a: s10 did not start"
    pa=$(vmh_qemu_pid a s10)
    # A's watchdog hangs and libvirtd is down: B takes the VM over after D.
    vmh_ctl a libvirtd-stop
    kill -STOP "$(cat "$VMH_DIR/host-a/watchdog.pid")"
    t0=$(vmh_now_ms)
    while ! start_on b s10; do
        [ $(($(vmh_now_ms) - t0)) -lt 10000 ] || { kill -CONT "$(cat "$VMH_DIR/host-a/watchdog.pid")"; fail "b never took s10: $(cat "$VMH_DIR/last.out")"; }
        sleep 0.1
    done
    held_by "domain-$u" 2 "$(vmh_qemu_pid b s10)"
    # Control: without the hook, libvirtd comes back and keeps the stale
    # QEMU (libvirt never asks the lock manager on reconnect).
    chmod -x "$VMH_DIR/host-a/etc/hooks/qemu.d/vmlease"
    vmh_ctl a libvirtd-start
    vmh_wait "libvirtd on host a" 15000 vmh_virsh a hostname
    running_on a s10 || fail "without the hook, libvirt on a did not keep s10"
    qemu_gone "$pa" && fail "a's QEMU died without the hook"
    vmh_ctl a libvirtd-stop
    # With the hook, reconnect sees the lease now names host b and libvirt
    # kills the stale QEMU.
    chmod +x "$VMH_DIR/host-a/etc/hooks/qemu.d/vmlease"
    vmh_ctl a libvirtd-start
    vmh_wait "libvirt on host a to kill its stale QEMU $pa" 15000 qemu_gone "$pa" ||
        { kill -CONT "$(cat "$VMH_DIR/host-a/watchdog.pid")"; fail "host a's stale s10 QEMU survived the reconnect"; }
    # A's watchdog wakes up long past renew_fail_timeout: it fences itself
    # and stays fenced until the operator clears it.
    kill -CONT "$(cat "$VMH_DIR/host-a/watchdog.pid")"
    vmh_wait "host a to report fenced-clean" 5000 grep -q '^state=fenced-clean$' "$VMH_DIR/host-a/state/status"
    vmh_vmlease a clear-fence >/dev/null || fail "clear-fence on host a failed"
    vmh_wait "host a to be protected again" 5000 vmh_protected a
    vmh_wait "libvirtd on host a" 10000 vmh_virsh a hostname
    note "b took s10 over $(($(vmh_now_ms) - t0)) ms after a's watchdog hung; a's stale QEMU was killed on reconnect"
}

s11_on_lockfailure() {
    # restart and ignore are refused at start, poweroff and pause start
    # (pause acts as poweroff: s9 shows the fence killing such a domain).
    for act in restart ignore; do
        vmh_image a "s11$act.qcow2"
        VMH_ON_LOCKFAILURE=$act define_on a "s11$act" "$(uuid_of "11$(printf %s "$act" | wc -c)")" "s11$act.qcow2"
        if start_on a "s11$act"; then
            fail "host a started s11$act with <on_lockfailure>$act"
        fi
        out_has "<on_lockfailure>$act</on_lockfailure> is"
        note "$act refused: $(grep -o 'vmlease:.*' "$VMH_DIR/last.out" | cut -c1-100)..."
    done
    for act in poweroff pause; do
        vmh_image a "s11$act.qcow2"
        VMH_ON_LOCKFAILURE=$act define_on a "s11$act" "$(uuid_of "11$(printf %s "$act" | wc -c)")" "s11$act.qcow2"
        start_on a "s11$act" || fail "host a: s11$act did not start: $(cat "$VMH_DIR/last.out")"
        vmh_virsh a destroy "s11$act" >/dev/null
    done
}

s9_storage_fence() {
    u=$(uuid_of 9)
    vmh_image a s9.qcow2; vmh_image b s9.qcow2
    define_on a s9 "$u" s9.qcow2; define_on b s9 "$u" s9.qcow2
    start_on a s9 || fail "host a: s9 did not start"
    pa=$(vmh_qemu_pid a s9)
    # A second domain asks to be paused on lock failure: killed as well.
    vmh_image a s9p.qcow2
    VMH_ON_LOCKFAILURE=pause define_on a s9p "$(uuid_of 99)" s9p.qcow2
    start_on a s9p || fail "host a: s9p did not start: $(cat "$VMH_DIR/last.out")"
    pp=$(vmh_qemu_pid a s9p)
    vmh_in a umount -l /var/lib/vmlease/lockspace
    cut=$(vmh_now_ms)
    vmh_wait "host a to kill s9's QEMU (pid $pa) after its storage was cut" 6000 qemu_gone "$pa" ||
        fail "host a did not fence"
    vmh_wait "host a to kill s9p's QEMU (pid $pp, on_lockfailure pause)" 2000 qemu_gone "$pp" ||
        fail "host a left s9p (on_lockfailure pause) running: $(vmh_virsh a domstate s9p 2>&1)"
    killed=$(($(vmh_now_ms) - cut))
    last=$(sed -n 's/^last_renewal_ms=//p' "$VMH_DIR/host-a/state/status")
    [ "$((cut - last))" -lt 1000 ] || fail "host a's last renewal is $((cut - last)) ms before the cut"
    while ! start_on b s9; do
        [ $(($(vmh_now_ms) - cut)) -lt 15000 ] || fail "host b never took s9 over: $(cat "$VMH_DIR/last.out")"
        sleep 0.1
    done
    took=$(vmh_now_ms)
    [ "$took" -ge $((last + D_MS)) ] ||
        fail "host b took s9 over $((took - last)) ms after a's last renewal, before D = $D_MS ms"
    note "storage cut on a: QEMU killed after $killed ms, b started s9 $((took - last)) ms after a's last renewal (D = $D_MS ms)"
}

# --- runner ----------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 2; }
[ -x "$VMH_BIN/vmlease-watchdog" ] || { echo "build first: cargo build --release" >&2; exit 2; }
trap vmh_cleanup EXIT
trap 'exit 1' INT TERM
vmh_init
vmh_host_up a 1
vmh_host_up b 2

all="s1_same_uuid_refused s2_shared_and_readonly_disks s3_stop_paths_release_within_1s s4_suspend_resume
s5_hotplug s6_libvirtd_restart s7_live_migration s8_unprotected_host_refuses s10_reconnect_after_takeover_kills_qemu
s11_on_lockfailure s9_storage_fence"
list=${*:-$all}
for s in $list; do
    t0=$(vmh_now_ms)
    echo "--- $s"
    # Not in an 'if': set -e must stay active inside the scenario.
    set +e
    (
        set -e
        $s
    )
    rc=$?
    set -e
    if [ "$rc" -eq 0 ]; then
        passed=$((passed + 1))
        echo "PASS $s ($(($(vmh_now_ms) - t0)) ms)"
    else
        failed=$((failed + 1))
        failures="$failures $s"
        echo "FAIL $s ($(($(vmh_now_ms) - t0)) ms)"
        tail -n 15 "$VMH_DIR/host-a/watchdog.log" "$VMH_DIR/host-b/watchdog.log" 2>/dev/null | sed 's/^/    /'
    fi
    undefine_all
done
[ -z "$failures" ] || echo "failed:$failures"
echo "e2e: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
