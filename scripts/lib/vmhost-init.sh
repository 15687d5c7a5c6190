#!/bin/sh
# Runs inside a new mount + UTS namespace (see vmhosts.sh): makes libvirt's
# directories and vmlease's state private to this "host", shares only the
# lockspace, and starts virtlogd, vmlease-watchdog and libvirtd.
# Usage: vmhost-init.sh NAME HOSTDIR BINDIR LOCKSPACE
set -eu
name=$1 h=$2 bin=$3 ls=$4
hostname "host-$name.test"
# /run/netns is a shared mount: drop it here, or this host would pin every
# other test network namespace.
umount -l /run/netns 2>/dev/null || true
for d in /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt /etc/libvirt /run/vmlease /var/lib/vmlease/lockspace; do
    [ -d "$d" ] || mkdir -p "$d"
done
mount --bind "$h/run" /run/libvirt
mount --bind "$h/lib" /var/lib/libvirt
mount --bind "$h/log" /var/log/libvirt
mount --bind "$h/cache" /var/cache/libvirt
mount --bind "$h/etc" /etc/libvirt
mount --bind "$h/state" /run/vmlease
if [ -n "${VMH_CEPH_CONF:-}" ]; then
    # The lockspace on a CephFS client of this host's own (vmhosts.sh).
    sh "$(dirname "$0")/vmhost-ctl.sh" ceph-mount "$h" "$bin"
else
    mount --bind "$ls" /var/lib/vmlease/lockspace
fi
# A host "rebooted" by vmh_host_boot has a boot id of its own.
if [ -f "$h/boot_id" ]; then
    mount --bind "$h/boot_id" /proc/sys/kernel/random/boot_id
fi
virtlogd -d -p /run/libvirt/virtlogd.pid
# libvirt's own lock daemon, for the "lockd" baseline of the benchmarks.
if grep -q '^lock_manager = "lockd"' /etc/libvirt/qemu.conf; then
    virtlockd -d -p /run/libvirt/virtlockd.pid
fi
# sanlock, the "sanlock" baseline: a daemon of this host's own (private
# /run/sanlock: its socket and pid file), disk leases in a directory all
# hosts share. No watchdog (-w 0) and no mlockall here; VMH_SANLOCK_PRELOAD
# (bench/lib/rlimit-shim.c) lets it start without CAP_SYS_RESOURCE.
if grep -q '^lock_manager = "sanlock"' /etc/libvirt/qemu.conf; then
    mkdir -p "$h/sanlock" /run/sanlock /var/lib/libvirt/sanlock
    mount --bind "$h/sanlock" /run/sanlock
    mount --bind "$VMH_SANLOCK_LEASES" /var/lib/libvirt/sanlock
    LD_PRELOAD=${VMH_SANLOCK_PRELOAD:-} sanlock daemon -w 0 -l 0 -h 0 -U root -G root
fi
sh "$(dirname "$0")/vmhost-ctl.sh" watchdog-start "$h" "$bin"
sh "$(dirname "$0")/vmhost-ctl.sh" libvirtd-start "$h" "$bin"
# Keeps the subreaper (the namespace's anchor) alive until the host is
# taken down; its pid is recorded for the cleanup.
echo $$ >"$h/sleep.pid"
exec sleep 1000000
