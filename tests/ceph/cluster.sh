#!/bin/sh
# A real Ceph cluster with a CephFS for the tests, built from nothing under
# one scratch directory: one mon, one mgr, one OSD (memstore by default),
# one MDS. No cephadm, no systemd, nothing in /etc/ceph, /var/lib/ceph or
# /var/log/ceph: every daemon runs in the foreground in the background of
# this script, is recorded in DIR/pids and is stopped by pid.
#
#   cluster.sh up DIR                       build and start, wait until CephFS
#                                           is usable; writes DIR/ceph.conf
#   cluster.sh down DIR                     stop everything by pid (mounts first)
#   cluster.sh mount DIR CLIENT MNT [ARGS]  ceph-fuse as client.CLIENT (its own
#                                           MDS session); prints its pid
#   cluster.sh umount DIR MNT [hard]        unmount, also a hung or dead mount;
#                                           "hard": abort, kill, lazy-unmount
#                                           without trying a clean unmount
#   cluster.sh evict DIR CLIENT             MDS eviction (and blocklist) of
#                                           client.CLIENT
#   cluster.sh set-session DIR TIMEOUT AUTOCLOSE
#                                           ceph fs set session_timeout/autoclose
#   cluster.sh ceph DIR ARGS...             the ceph CLI against this cluster
#
# DIR/pids has one line per process started, append-only:
#   PID STARTTIME KIND NAME [MOUNTPOINT FUSE_CONN MOUNT_NS]
# KIND is daemon, fuse or watch; STARTTIME (field 22 of /proc/PID/stat)
# guards against a reused pid. A line whose process is gone is just history.
#
# Environment for `up`:
#   CEPH_NETNS=NAME     run every daemon (and the ceph CLI) in the network
#                       namespace /run/netns/NAME, made by the caller
#   CEPH_ADDR=A.B.C.D   the address the daemons bind (default 127.0.0.1; with
#                       CEPH_NETNS an address of NAME's, e.g. a bridge's)
#   CEPH_OSD_STORE      memstore (default; RAM, fast) or bluestore (a 4 GiB
#                       sparse file under DIR)
#   CEPH_CONF_EXTRA     lines appended to [global] of ceph.conf
#   CEPH_OWNER_PID      when this process is gone, a watcher brings the
#                       cluster down (a test killed before its cleanup ran)
#   CEPH_UP_TIMEOUT     seconds `up` may take in all (default 90)
# Environment for `mount`:
#   NETNS=NAME          run ceph-fuse in the network namespace NAME, so a
#                       host's storage link can be cut; the cluster must then
#                       be reachable from there (CEPH_NETNS/CEPH_ADDR mode)
#   MNTNS=PATH          mount in that mount namespace (e.g. /proc/PID/ns/mnt
#                       of a test host), MNT being a path inside it
#
# ceph-fuse runs under `nsenter --net`, not `ip netns exec`: the latter also
# unshares a private mount namespace, and the FUSE mount would be invisible
# to everyone else.
set -eu

PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
# The ceph CLI is Python and needs Debian's python3 modules, not a venv's.
unset CEPH_ARGS CEPH_CONF PYTHONPATH PYTHONHOME VIRTUAL_ENV

FS_NAME=cephfs

die() {
    echo "cluster.sh: $*" >&2
    exit 1
}

usage() {
    sed -n '2,/^set -eu$/p' "$0" | sed -e '/^set -eu$/d' -e 's/^# \{0,1\}//' >&2
    exit 2
}

now_ms() { date +%s%3N; }

elapsed() { # START_MS: seconds since, with one decimal
    e=$(($(now_ms) - $1))
    echo "$((e / 1000)).$((e % 1000 / 100))"
}

# ------------------------------------------------------------ processes

starttime() { # PID: field 22 of /proc/PID/stat, empty when gone
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    echo "${s##*) }" | cut -d' ' -f20
}

proc_state() { # PID: the one-letter state, empty when gone
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    echo "${s##*) }" | cut -d' ' -f1
}

# PID START: the process still runs (zombies count as gone: PID 1 here
# reaps late) and is the one recorded (not a reused pid).
alive() {
    [ -n "$2" ] || return 1
    st=$(proc_state "$1")
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ] &&
        [ "$(starttime "$1")" = "$2" ]
}

record() { # PID KIND NAME [EXTRA...]
    p=$1
    shift
    echo "$p $(starttime "$p") $*" >>"$dir/pids"
}

# KIND: "PID START NAME REST" of each recorded process of that kind that is
# still alive.
live() {
    [ -f "$dir/pids" ] || return 0
    while read -r p s k rest; do
        [ "$k" = "$1" ] || continue
        [ "$p" != "$$" ] || continue
        if alive "$p" "$s"; then echo "$p $s $rest"; fi
    done <"$dir/pids"
}

# SECONDS PID START [PID START...]: waits (bounded) until every process is
# gone; fails when some still run.
wait_gone() {
    limit=$(($(now_ms) + $1 * 1000))
    shift
    list="$*"
    while :; do
        any=
        # shellcheck disable=SC2086 # PID START pairs
        set -- $list
        while [ $# -ge 2 ]; do
            if alive "$1" "$2"; then any=1; fi
            shift 2
        done
        [ -n "$any" ] || return 0
        [ "$(now_ms)" -lt "$limit" ] || return 1
        sleep 0.05
    done
}

# ------------------------------------------------------------ namespaces

load_env() {
    [ -f "$dir/cluster.env" ] || die "$dir is not a cluster made by cluster.sh up"
    # shellcheck source=/dev/null
    . "$dir/cluster.env"
}

in_ns() { # CMD...: in the cluster's network namespace, if it has one
    if [ -n "$ceph_netns" ]; then
        nsenter --net="/run/netns/$ceph_netns" -- "$@"
    else
        "$@"
    fi
}

ceph_() {
    in_ns timeout 60 ceph -c "$conf" --connect-timeout 30 "$@"
}

in_mntns() { # MNTNS CMD...: in that mount namespace ("-" for ours)
    ns=$1
    shift
    if [ "$ns" = - ]; then "$@"; else nsenter --mount="$ns" -- "$@"; fi
}

# MNTNS MNT PID: the FUSE connection number (the device minor) of the ceph-fuse
# mount at MNT in that mount namespace, empty when none.
fuse_conn() { # MNTNS MNT PID (of a process in that mount namespace)
    if [ "$1" = - ]; then mi=/proc/self/mountinfo; else mi=/proc/$3/mountinfo; fi
    awk -v m="$2" '$5 == m {
        for (i = 7; i <= NF; i++) if ($i == "-") break
        if ($(i + 1) == "fuse.ceph-fuse") { split($3, d, ":"); c = d[2] }
    } END { if (c != "") print c }' "$mi" 2>/dev/null || true
}

is_mounted() { # MNTNS MNT: a ceph-fuse mount is at MNT
    # shellcheck disable=SC2016 # awk's own $5
    in_mntns "$1" awk -v m="$2" '$5 == m && / - fuse.ceph-fuse / { f = 1 }
        END { exit !f }' /proc/self/mountinfo
}

fusectl() { # the fusectl filesystem, mounted if it is not
    c=/sys/fs/fuse/connections
    if ! awk -v m="$c" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; then
        mount -t fusectl fusectl "$c" 2>/dev/null || true
    fi
    echo "$c"
}

# ------------------------------------------------------------ unmounting

# PID START MNT CONN MNTNS: the hard way, for a hung or dead client: abort
# the FUSE connection (every waiter gets ENOTCONN, even one in D state),
# kill ceph-fuse, lazy-unmount. A plain umount of a hung mount hangs.
hard_umount() {
    if [ -n "$4" ] && [ "$4" != - ]; then
        a="$(fusectl)/$4/abort"
        if [ -w "$a" ]; then echo 1 >"$a" 2>/dev/null || true; fi
    fi
    if alive "$1" "$2"; then
        kill -CONT "$1" 2>/dev/null || true
        kill -KILL "$1" 2>/dev/null || true
    fi
    if [ "$5" = - ] || [ -e "$5" ]; then
        in_mntns "$5" umount -l "$3" 2>/dev/null || true
    fi
    wait_gone 10 "$1" "$2" || echo "cluster.sh: ceph-fuse $1 on $3 did not go" >&2
}

# PID START MNT CONN MNTNS: unmount; when the client is healthy, cleanly
# (ceph-fuse flushes and closes its MDS session, so its capabilities and
# locks go at once), otherwise the hard way.
umount_one() {
    st=$(proc_state "$1")
    case "$st" in
    S | R)
        if in_mntns "$5" timeout 10 umount "$3" 2>/dev/null &&
            wait_gone "${CEPH_UMOUNT_GRACE:-10}" "$1" "$2"; then
            return 0
        fi
        ;;
    esac
    hard_umount "$@"
}

# ------------------------------------------------------------ up

pick_ports() { # sets p1 (msgr1) and p2 (msgr2): two free ports below the
    # ephemeral range, not used by any socket in any state (a TIME_WAIT
    # socket fools a check of listeners only)
    while :; do
        r=$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')
        p1=$((13000 + r % 19000))
        p2=$((p1 + 1))
        if ! port_used "$p1" && ! port_used "$p2"; then return 0; fi
    done
}

port_used() {
    h=$(printf ':%04X' "$1")
    in_ns cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
        awk -v h="$h" 'substr($2, length($2) - 4) == h || substr($3, length($3) - 4) == h { f = 1 }
            END { exit !f }'
}

port_listening() {
    h=$(printf ':%04X' "$1")
    in_ns cat /proc/net/tcp 2>/dev/null |
        awk -v h="$h" 'substr($2, length($2) - 4) == h && $4 == "0A" { f = 1 } END { exit !f }'
}

start_bg() { # NAME CMD...: in the cluster's netns, in the background
    name=$1
    shift
    if [ -n "$ceph_netns" ]; then
        nsenter --net="/run/netns/$ceph_netns" -- "$@" </dev/null >>"$dir/log/$name.out" 2>&1 &
    else
        "$@" </dev/null >>"$dir/log/$name.out" 2>&1 &
    fi
    record "$!" daemon "$name"
}

daemon_pid() { # NAME: the pid of that live daemon, empty if none
    live daemon | awk -v n="$1" '$3 == n { print $1 " " $2 }'
}

log_tails() {
    for f in "$dir"/log/*.out "$dir"/log/mon.a.log "$dir"/log/mds.a.log; do
        [ -s "$f" ] || continue
        echo "--- $f" >&2
        tail -n "${1:-15}" "$f" >&2
    done
}

fail_up() {
    echo "cluster.sh: up failed: $*" >&2
    log_tails 20
    sh "$0" down "$dir" >&2 || true
    exit 1
}

check_deadline() { # WHAT
    [ "$(now_ms)" -lt "$deadline" ] || fail_up "timed out after ${up_timeout}s waiting for $1"
}

# WHAT CMD...: polls CMD until it succeeds, within the deadline of `up`,
# failing early when a daemon died.
wait_for() {
    what=$1
    shift
    until "$@" >/dev/null 2>&1; do
        for n in mon mgr osd mds; do
            if grep -q " daemon $n\$" "$dir/pids" && [ -z "$(daemon_pid "$n")" ]; then
                fail_up "the $n died while waiting for $what"
            fi
        done
        check_deadline "$what"
        sleep 0.1
    done
}

write_conf() {
    cat >"$conf" <<EOF
# Made by tests/ceph/cluster.sh; everything lives under $dir.
[global]
fsid = $fsid
mon host = [v2:$addr:$p2,v1:$addr:$p1]
public addr = $addr
cluster addr = $addr
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
mon warn on insecure global id reclaim allowed = false
keyring = $dir/keyring
run dir = $dir/run
crash dir = $dir/crash
log file = $dir/log/\$name.log
log to stderr = false
err to stderr = true
mon cluster log file = $dir/log/cluster.\$channel.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
# A test mon store is tiny: a nearly full shared disk (under 1% free,
# which rounds to 0%) must not stop the mon (-1: never).
mon data avail warn = 1
mon data avail crit = -1
osd objectstore = $store
memstore device bytes = 2147483648
bluestore block path = $dir/osd.0.bluestore
bluestore block create = true
bluestore block size = 4294967296
bluestore block db create = false
bluestore block wal create = false
bluestore fsck on mkfs = false
bluestore debug enforce settings = ssd
osd check max object name len on startup = false
osd mon shutdown timeout = 2
$extra
[mon.a]
mon data = $dir/mon.a
[mgr.x]
mgr data = $dir/mgr.x
[osd.0]
osd data = $dir/osd.0
[mds.a]
mds data = $dir/mds.a
EOF
}

# Starts the mon on fresh ports; retries when another process took them
# between the check and the bind.
start_mon() {
    tries=0
    while :; do
        tries=$((tries + 1))
        pick_ports
        write_conf
        rm -rf "$dir/mon.a"
        mkdir -p "$dir/mon.a"
        monmaptool --create --clobber --fsid "$fsid" --addv a "[v2:$addr:$p2,v1:$addr:$p1]" \
            "$dir/monmap" >>"$dir/log/mkfs.out" 2>&1 || fail_up "monmaptool failed"
        ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/keyring" \
            >>"$dir/log/mkfs.out" 2>&1 || fail_up "ceph-mon --mkfs failed"
        start_bg mon ceph-mon -f -c "$conf" -i a
        mon=$(daemon_pid mon)
        while :; do
            if port_listening "$p2" && port_listening "$p1"; then return 0; fi
            # shellcheck disable=SC2086
            if [ -z "$mon" ] || ! alive $mon; then break; fi
            check_deadline "the mon to listen on $addr:$p2"
            sleep 0.05
        done
        [ "$tries" -lt 5 ] || fail_up "the mon did not start ($tries tries)"
        echo "cluster.sh: the mon did not start on ports $p1/$p2, trying others" >&2
    done
}

osd_up() { ceph_ osd stat | grep -q ' 1 up'; }
mds_active() { ceph_ mds stat | grep -q 'up:active'; }
# A write to the data pool completes: its PGs are active.
data_pool_writable() {
    in_ns timeout 20 rados -c "$conf" -p cephfs_data put .probe "$conf" &&
        in_ns timeout 20 rados -c "$conf" -p cephfs_data rm .probe
}

watch_owner() { # DIR OWNER_PID OWNER_START: down once the owner is gone
    while alive "$2" "$3"; do sleep 1; done
    echo "cluster.sh: owner $2 is gone; bringing the cluster down" >&2
    exec sh "$0" down "$1"
}

cmd_up() {
    t0=$(now_ms)
    up_timeout=${CEPH_UP_TIMEOUT:-90}
    deadline=$((t0 + up_timeout * 1000))
    ceph_netns=${CEPH_NETNS:-}
    addr=${CEPH_ADDR:-127.0.0.1}
    store=${CEPH_OSD_STORE:-memstore}
    extra=${CEPH_CONF_EXTRA:-}
    case "$ceph_netns" in *[!A-Za-z0-9_.-]*) die "bad CEPH_NETNS '$ceph_netns'" ;; esac
    case "$addr" in *[!0-9.]* | '') die "bad CEPH_ADDR '$addr' (IPv4 only)" ;; esac
    case "$store" in memstore | bluestore) ;; *) die "CEPH_OSD_STORE is memstore or bluestore" ;; esac
    if [ -n "$ceph_netns" ] && [ ! -e "/run/netns/$ceph_netns" ]; then
        die "no network namespace $ceph_netns"
    fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd -P)
    conf=$dir/ceph.conf
    [ -z "$(live daemon)" ] || die "a cluster is already running in $dir"
    rm -rf "$dir/log" "$dir/run" "$dir/crash" "$dir/mon.a" "$dir/mgr.x" "$dir/osd.0" \
        "$dir/mds.a" "$dir/osd.0.bluestore"
    mkdir -p "$dir/log" "$dir/run" "$dir/crash" "$dir/mgr.x" "$dir/osd.0" "$dir/mds.a" "$dir/mnt"
    if [ -f "$dir/pids" ]; then mv "$dir/pids" "$dir/pids.old"; fi
    : >"$dir/pids"
    printf 'ceph_netns=%s\naddr=%s\n' "$ceph_netns" "$addr" >"$dir/cluster.env"

    if [ -n "${CEPH_OWNER_PID:-}" ]; then
        os=$(starttime "$CEPH_OWNER_PID")
        [ -n "$os" ] || die "CEPH_OWNER_PID $CEPH_OWNER_PID does not run"
        sh "$0" _watch "$dir" "$CEPH_OWNER_PID" "$os" </dev/null >>"$dir/log/watch.out" 2>&1 &
        record "$!" watch owner
    fi

    fsid=$(cat /proc/sys/kernel/random/uuid)
    ceph-authtool --create-keyring "$dir/keyring" --gen-key -n mon. --cap mon 'allow *' \
        >>"$dir/log/mkfs.out" 2>&1 || fail_up "ceph-authtool failed"
    start_mon
    echo "cluster.sh: mon on $addr:$p2 (v2) and $addr:$p1 (v1) after $(elapsed "$t0") s" >&2

    start_bg mgr ceph-mgr -f -c "$conf" -i x
    uuid=$(cat /proc/sys/kernel/random/uuid)
    id=$(ceph_ osd new "$uuid") || fail_up "ceph osd new failed"
    [ "$id" = 0 ] || fail_up "ceph osd new gave id '$id', not 0"
    in_ns ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$uuid" >>"$dir/log/mkfs.out" 2>&1 ||
        fail_up "ceph-osd --mkfs failed"
    start_bg osd ceph-osd -f -c "$conf" -i 0
    # The pools and the file system need no OSD up yet; the MDS does.
    ceph_ osd pool create cephfs_metadata >>"$dir/log/admin.out" 2>&1 ||
        fail_up "creating the metadata pool failed"
    ceph_ osd pool create cephfs_data >>"$dir/log/admin.out" 2>&1 ||
        fail_up "creating the data pool failed"
    ceph_ fs new "$FS_NAME" cephfs_metadata cephfs_data >>"$dir/log/admin.out" 2>&1 ||
        fail_up "ceph fs new failed"
    start_bg mds ceph-mds -f -c "$conf" -i a
    wait_for "the OSD to be up" osd_up
    echo "cluster.sh: OSD up after $(elapsed "$t0") s" >&2
    wait_for "an active MDS" mds_active
    wait_for "a write to the data pool" data_pool_writable
    echo "cluster.sh: up in $(elapsed "$t0") s ($store OSD; conf $conf)" >&2
}

# ------------------------------------------------------------ down

cmd_down() {
    t0=$(now_ms)
    [ -f "$dir/pids" ] || return 0
    dir=$(cd "$dir" && pwd -P)
    # The watcher first (unless it is us, bringing the cluster down).
    # shellcheck disable=SC2046
    set -- $(live watch | awk '{ print $1 "_" $2 }')
    for w in "$@"; do
        kill -TERM "${w%_*}" 2>/dev/null || true
    done
    # Mounts next, the hard way: the cluster goes anyway, and a clean
    # unmount could wait for daemons that are stopped.
    live fuse | while read -r fp fs _ m c ns; do
        hard_umount "$fp" "$fs" "$m" "$c" "$ns"
    done
    # ceph-fuse mounts under DIR that were not recorded (or whose ceph-fuse
    # is gone): lazy-unmount them too.
    awk -v d="$dir/" '/ - fuse.ceph-fuse / && index($5, d) == 1 { print $3 " " $5 }' \
        /proc/self/mountinfo | while read -r dev m; do
        a="$(fusectl)/${dev#*:}/abort"
        if [ -w "$a" ]; then echo 1 >"$a" 2>/dev/null || true; fi
        umount -l "$m" 2>/dev/null || true
    done
    # The daemons: the MDS first (it flushes its journal to the OSD), the
    # mon last (an OSD told to stop tells the mon and waits for an answer).
    for group in mds 'osd|mgr' '.*'; do
        # shellcheck disable=SC2046
        stop_daemons $(live daemon | awk -v g="^($group)\$" '$3 ~ g { print $1 "_" $2 }')
    done
    echo "cluster.sh: down in $(elapsed "$t0") s" >&2
}

# PID_START...: SIGCONT (a stopped daemon never acts on SIGTERM), SIGTERM,
# a bounded wait, SIGKILL, a bounded wait.
stop_daemons() {
    procs=
    for d in "$@"; do
        kill -CONT "${d%_*}" 2>/dev/null || true
        procs="$procs ${d%_*} ${d#*_}"
    done
    for d in "$@"; do kill -TERM "${d%_*}" 2>/dev/null || true; done
    # shellcheck disable=SC2086
    if ! wait_gone "${CEPH_STOP_GRACE:-3}" $procs; then
        echo "cluster.sh: still running ${CEPH_STOP_GRACE:-3} s after SIGTERM: $*; SIGKILL" >&2
        for d in "$@"; do
            if alive "${d%_*}" "${d#*_}"; then kill -KILL "${d%_*}" 2>/dev/null || true; fi
        done
        # shellcheck disable=SC2086
        wait_gone 10 $procs || die "daemons survived SIGKILL: $(live daemon)"
    fi
}

# ------------------------------------------------------------ mount

cmd_mount() {
    client=$1 mnt=$2
    shift 2
    case "$client" in '' | *[!A-Za-z0-9_.-]*) die "bad client name '$client'" ;; esac
    case "$mnt" in /*) ;; *) mnt=$(pwd -P)/$mnt ;; esac
    case "$mnt" in *[[:space:]]*) die "no white space in a mountpoint, please" ;; esac
    netns=${NETNS:-}
    mntns=${MNTNS:--}
    nsargs=
    if [ -n "$netns" ]; then
        [ -e "/run/netns/$netns" ] || die "no network namespace $netns"
        nsargs="--net=/run/netns/$netns"
    fi
    if [ "$mntns" != - ]; then
        [ -e "$mntns" ] || die "no mount namespace $mntns"
        nsargs="$nsargs --mount=$mntns"
    fi
    if [ -n "$(live fuse | awk -v m="$mnt" '$4 == m')" ]; then
        die "$mnt is already mounted by this cluster"
    fi
    # A dead mount left there (mkdir -p fails on it): away with it.
    # shellcheck disable=SC2016 # awk's own $5
    if in_mntns "$mntns" awk -v m="$mnt" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; then
        in_mntns "$mntns" umount -l "$mnt" 2>/dev/null || true
    fi
    in_mntns "$mntns" mkdir -p "$mnt"
    log=$dir/log/fuse-$client.out
    # shellcheck disable=SC2086 # nsargs: zero to two options
    nsenter $nsargs -- ceph-fuse -f -c "$conf" --id "$client" "$mnt" "$@" </dev/null >>"$log" 2>&1 &
    fpid=$!
    fst=$(starttime "$fpid")
    limit=$(($(now_ms) + ${CEPH_MOUNT_TIMEOUT:-30} * 1000))
    conn=
    while :; do
        if ! alive "$fpid" "$fst"; then
            tail -n 20 "$log" >&2
            die "ceph-fuse for client.$client exited before mounting $mnt"
        fi
        conn=$(fuse_conn "$mntns" "$mnt" "$fpid")
        if [ -n "$conn" ] && in_mntns "$mntns" timeout 10 stat "$mnt" >/dev/null 2>&1; then
            break
        fi
        if [ "$(now_ms)" -ge "$limit" ]; then
            echo "$fpid $fst fuse $client $mnt ${conn:--} $mntns" >>"$dir/pids"
            tail -n 20 "$log" >&2
            hard_umount "$fpid" "$fst" "$mnt" "${conn:--}" "$mntns"
            die "ceph-fuse for client.$client did not mount $mnt within ${CEPH_MOUNT_TIMEOUT:-30}s"
        fi
        sleep 0.05
    done
    echo "$fpid $fst fuse $client $mnt $conn $mntns" >>"$dir/pids"
    echo "$fpid"
}

cmd_umount() {
    mnt=$1 how=${2:-}
    case "$mnt" in /*) ;; *) mnt=$(pwd -P)/$mnt ;; esac
    found=$(live fuse | awk -v m="$mnt" '$4 == m { print; exit }')
    if [ -n "$found" ]; then
        # shellcheck disable=SC2086 # PID START CLIENT MNT CONN MNTNS
        set -- $found
        if [ "$how" = hard ]; then
            hard_umount "$1" "$2" "$4" "$5" "$6"
        else
            umount_one "$1" "$2" "$4" "$5" "$6"
        fi
        return 0
    fi
    # ceph-fuse is gone (killed): only a dead mount may be left.
    last=$(awk -v m="$mnt" '$3 == "fuse" && $5 == m { l = $0 } END { print l }' "$dir/pids")
    ns=-
    if [ -n "$last" ]; then
        # shellcheck disable=SC2086
        set -- $last
        ns=$7
    fi
    if [ "$ns" = - ] || [ -e "$ns" ]; then
        in_mntns "$ns" umount -l "$mnt" 2>/dev/null || true
    fi
}

# ------------------------------------------------------------ main

[ $# -ge 2 ] || usage
cmd=$1
dir=$2
shift 2
conf=$dir/ceph.conf
case "$cmd" in
up)
    [ $# -eq 0 ] || usage
    cmd_up
    ;;
down)
    [ $# -eq 0 ] || usage
    cmd_down
    ;;
mount)
    [ $# -ge 2 ] || usage
    load_env
    cmd_mount "$@"
    ;;
umount)
    [ $# -eq 1 ] || { [ $# -eq 2 ] && [ "$2" = hard ]; } || usage
    cmd_umount "$@"
    ;;
evict)
    [ $# -eq 1 ] || usage
    load_env
    ceph_ tell mds.a client evict "client_metadata.entity_id=$1" >&2
    ;;
set-session)
    [ $# -eq 2 ] || usage
    load_env
    ceph_ fs set "$FS_NAME" session_timeout "$1" >&2
    ceph_ fs set "$FS_NAME" session_autoclose "$2" >&2
    ;;
ceph)
    load_env
    ceph_ "$@"
    ;;
_watch)
    watch_owner "$dir" "$@"
    ;;
*) usage ;;
esac
