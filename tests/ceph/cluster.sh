#!/bin/sh
# A real Ceph cluster on loopback for the tests: one mon, one mgr, one OSD
# (memstore), one MDS and a CephFS, all under one scratch directory, every
# daemon in the foreground of this script's background and tracked by pid.
#
#   cluster.sh up DIR                    build and start; DIR/ceph.conf
#   cluster.sh mount DIR CLIENT MNT      ceph-fuse as client.CLIENT (own session)
#   cluster.sh umount DIR MNT            also for a hung mount
#   cluster.sh down DIR                  stop everything by pid
set -eu
PATH="/usr/sbin:/usr/bin:/sbin:/bin"
export PATH
cmd=$1 dir=$2
conf="$dir/ceph.conf"
ceph_() { timeout 30 ceph -c "$conf" "$@"; }

start_bg() { # NAME CMD...: runs CMD in the background, records its pid
    name=$1; shift
    "$@" >>"$dir/log/$name.out" 2>&1 &
    echo "$! $name" >>"$dir/pids"
}

wait_for() { # WHAT SECONDS CMD...
    what=$1 limit=$2; shift 2
    i=0
    until "$@" >/dev/null 2>&1; do
        i=$((i + 1))
        if [ "$i" -gt $((limit * 5)) ]; then
            echo "cluster: timed out after ${limit}s waiting for $what" >&2
            tail -n 5 "$dir"/log/*.out >&2 2>/dev/null || true
            return 1
        fi
        sleep 0.2
    done
}

mds_active() { ceph_ mds stat | grep -q 'up:active'; }
osd_up() { ceph_ osd stat | grep -q '1 up'; }

case "$cmd" in
up)
    mkdir -p "$dir/log" "$dir/run" "$dir/mon.a" "$dir/mgr.x" "$dir/osd.0" "$dir/mds.a"
    : >"$dir/pids"
    fsid=$(cat /proc/sys/kernel/random/uuid)
    p1=$((20000 + $$ % 10000))
    p2=$((p1 + 1))
    cat >"$conf" <<EOC
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$p2,v1:127.0.0.1:$p1]
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
osd pool default pg autoscale mode = off
osd objectstore = memstore
memstore device bytes = 1073741824
run dir = $dir/run
admin socket = $dir/run/\$name.asok
log file = $dir/log/\$name.log
pid file = $dir/run/\$name.pid
ms bind ipv6 = false
# A client that does not give back the capabilities another client needs
# (a hung or partitioned host) is evicted and blocklisted after 1 s, so it
# cannot stall the other hosts' lockspace I/O: see docs/cephfs.md.
mds cap revoke eviction timeout = 1
[mon.a]
mon data = $dir/mon.a
[mgr.x]
mgr data = $dir/mgr.x
[osd.0]
osd data = $dir/osd.0
[mds.a]
mds data = $dir/mds.a
EOC
    ceph-authtool --create-keyring "$dir/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$p2,v1:127.0.0.1:$p1]" "$dir/monmap" >/dev/null
    ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/keyring" >"$dir/log/mkfs.out" 2>&1
    start_bg mon ceph-mon -f -c "$conf" -i a
    wait_for "the monitor" 30 ceph_ mon stat
    start_bg mgr ceph-mgr -f -c "$conf" -i x
    uuid=$(cat /proc/sys/kernel/random/uuid)
    id=$(ceph_ osd new "$uuid")
    ceph-osd -c "$conf" -i "$id" --mkfs --osd-uuid "$uuid" >>"$dir/log/mkfs.out" 2>&1
    start_bg osd ceph-osd -f -c "$conf" -i "$id"
    wait_for "the OSD" 60 osd_up
    ceph_ osd pool create cephfs_metadata 8 >/dev/null 2>&1
    ceph_ osd pool create cephfs_data 8 >/dev/null 2>&1
    ceph_ fs new cephfs cephfs_metadata cephfs_data >/dev/null 2>&1
    start_bg mds ceph-mds -f -c "$conf" -i a
    wait_for "an active MDS" 60 mds_active
    ;;
mount)
    client=$3 mnt=$4
    mkdir -p "$mnt"
    start_bg "fuse-$client" ceph-fuse -f -c "$conf" --id "$client" "$mnt"
    wait_for "ceph-fuse of client.$client on $mnt" 30 sh -c "grep -q ' $mnt fuse' /proc/mounts && ls '$mnt'"
    ;;
umount)
    mnt=$3
    minor=$(awk -v m="$mnt" '$5 == m { split($3, a, ":"); print a[2] }' /proc/self/mountinfo | head -n 1)
    if [ -n "$minor" ] && [ -w "/sys/fs/fuse/connections/$minor/abort" ]; then
        echo 1 >"/sys/fs/fuse/connections/$minor/abort"
    fi
    umount -l "$mnt" 2>/dev/null || true
    ;;
down)
    [ -f "$dir/pids" ] || exit 0
    awk '$2 ~ /^fuse-/ { print $1 }' "$dir/pids" | while read -r p; do kill -CONT "$p" 2>/dev/null || true; done
    awk '$3 == "fuse.ceph-fuse" { print $2 }' /proc/mounts | while read -r m; do
        case "$m" in "$dir"/*) sh "$0" umount "$dir" "$m" ;; esac
    done
    while read -r p _; do kill -CONT "$p" 2>/dev/null || true; kill -TERM "$p" 2>/dev/null || true; done <"$dir/pids"
    i=0
    while [ "$i" -lt 50 ]; do
        alive=0
        while read -r p _; do kill -0 "$p" 2>/dev/null && alive=1; done <"$dir/pids"
        [ "$alive" -eq 0 ] && break
        sleep 0.1
        i=$((i + 1))
    done
    while read -r p _; do kill -KILL "$p" 2>/dev/null || true; done <"$dir/pids"
    : >"$dir/pids"
    ;;
*)
    echo "usage: cluster.sh up|mount|umount|down DIR ..." >&2
    exit 2
    ;;
esac
