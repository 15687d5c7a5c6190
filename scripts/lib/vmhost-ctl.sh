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
    *) echo "vmhost-ctl: unknown action $action" >&2; exit 2 ;;
esac
