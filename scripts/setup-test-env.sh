#!/bin/sh
# Installs what the vmlease test suite and demo need on Debian 12 (root):
# libvirt + QEMU (qemu-utils pinned to qemu-system-x86's version: the
# machine image may carry a newer one from backports that conflicts),
# a Ceph cluster's daemons and ceph-fuse, and the tools the tests call.
# Idempotent and quiet: does nothing when everything is installed.
set -eu

PACKAGES="libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients
qemu-system-x86 qemu-utils iproute2 iputils-ping util-linux e2fsprogs
shellcheck rpm dpkg-dev sanlock gcc faketime
ceph-mon ceph-mgr ceph-osd ceph-mds ceph-fuse ceph-common"

log=${TMPDIR:-/tmp}/vmlease-setup.log
: > "$log"

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

# qemu-utils must match qemu-system-x86 (Debian 12's QEMU 7.2).
qemu_ok=yes
if [ -z "$missing" ]; then
    sys=$(dpkg-query -W -f '${Version}' qemu-system-x86)
    utils=$(dpkg-query -W -f '${Version}' qemu-utils)
    [ "$sys" = "$utils" ] || qemu_ok=no
fi

if [ -z "$missing" ] && [ "$qemu_ok" = yes ]; then
    echo "setup: all test dependencies are installed"
else
    echo "setup: installing:${missing:- (qemu-utils pin)}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get update >>"$log" 2>&1; then
        tail -n 20 "$log" >&2
        echo "setup: apt-get update failed (log: $log)" >&2
        exit 1
    fi
    qver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ { print $2 }')
    if [ -z "$qver" ] || [ "$qver" = "(none)" ]; then
        echo "setup: no qemu-system-x86 candidate in apt" >&2
        exit 1
    fi
    pkgs=""
    for p in $PACKAGES; do
        case "$p" in
            qemu-utils) pkgs="$pkgs qemu-utils=$qver" ;;
            *) pkgs="$pkgs $p" ;;
        esac
    done
    # shellcheck disable=SC2086 # the package list is meant to be split
    if ! apt-get install -y --no-install-recommends --allow-downgrades $pkgs >>"$log" 2>&1; then
        tail -n 30 "$log" >&2
        echo "setup: apt-get install failed (log: $log)" >&2
        exit 1
    fi
    echo "setup: installed (log: $log)"
fi

# The sandbox has no systemd: make sure no packaged daemon runs on its own
# (the tests start their own libvirtd/virtlogd/Ceph per host, by pid).
for d in libvirtd virtlogd virtlockd; do
    if [ -f "/run/$d.pid" ] && kill -0 "$(cat "/run/$d.pid")" 2>/dev/null; then
        echo "setup: note: a system $d is running (pid $(cat "/run/$d.pid")); tests use their own"
    fi
done

if command -v rustup >/dev/null 2>&1; then
    for c in clippy rustfmt; do
        if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
            rustup component add "$c" >>"$log" 2>&1 || echo "setup: could not add rustup component $c" >&2
        fi
    done
fi
