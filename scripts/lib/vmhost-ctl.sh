#!/bin/sh
# Starts and stops one host's daemons; runs inside the host's namespaces.
# Usage: vmhost-ctl.sh ACTION HOSTDIR BINDIR
set -eu
action=$1 h=$2 bin=$3
pidof_file() { [ -f "$1" ] && cat "$1"; }
stop_pid() {
    p=$(pidof_file "$1") || return 0
    kill "$p" 2>/dev/null || return 0
    i=0
    while kill -0 "$p" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
    kill -9 "$p" 2>/dev/null || true
    rm -f "$1"
}
case "$action" in
    watchdog-start)
        "$bin/vmlease-watchdog" --config /etc/libvirt/qemu-vmlease.conf >>"$h/watchdog.log" 2>&1 &
        echo $! >"$h/watchdog.pid"
        ;;
    watchdog-stop) stop_pid "$h/watchdog.pid" ;;
    watchdog-kill) kill -9 "$(cat "$h/watchdog.pid")" ;;
    libvirtd-start)
        LIBVIRT_LOCK_MANAGER_PLUGIN_DIR="$h/plugins" libvirtd -d -p /run/libvirt/libvirtd.pid
        ;;
    libvirtd-stop) stop_pid /run/libvirt/libvirtd.pid ;;
    ceph-mount)
        # The lockspace through a CephFS client of this host's own, in its
        # network namespace (VMH_CEPH_CONF: the cluster's ceph.conf;
        # VMH_CEPH_ROOT: the lockspace's CephFS directory). Again: a new
        # client in place of the old one (a blocklisted client stays
        # fenced), as an operator's remount.
        m=/var/lib/vmlease/lockspace
        if p=$(pidof_file "$h/ceph-fuse.pid"); then kill -9 "$p" 2>/dev/null || true; fi
        umount -l "$m" 2>/dev/null || true
        ceph-fuse -f -c "$VMH_CEPH_CONF" --id "$(hostname -s)" -r "${VMH_CEPH_ROOT:-/}" "$m" </dev/null >>"$h/ceph-fuse.log" 2>&1 &
        echo $! >"$h/ceph-fuse.pid"
        i=0
        # shellcheck disable=SC2016 # awk's own $5
        until awk -v m="$m" '$5 == m && / - fuse.ceph-fuse / { f = 1 } END { exit !f }' /proc/self/mountinfo &&
            timeout 10 stat "$m" >/dev/null 2>&1; do
            if [ "$i" -ge 600 ]; then
                echo "vmhost-ctl: ceph-fuse did not mount $m within 30 s" >&2
                tail -n 5 "$h/ceph-fuse.log" >&2
                exit 1
            fi
            sleep 0.05
            i=$((i + 1))
        done
        ;;
    *) echo "vmhost-ctl: unknown action $action" >&2; exit 2 ;;
esac
