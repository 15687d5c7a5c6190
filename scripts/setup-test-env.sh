#!/bin/sh
# Installs what the vmlease test suite and demo need, as root on Debian 12:
# libvirt + QEMU, a Ceph cluster's daemons and ceph-fuse, sanlock (an
# anchor, with libvirt-sanlock, its libvirt plugin, for the benchmarks),
# and the tools the tests call (ip, ping, cc, shellcheck, rpm...).
#
# Idempotent and quiet: when every package is installed it does not run
# apt at all. apt's output goes to a log; on failure its tail is printed.
#
# qemu-utils is pinned to the version of Debian 12's qemu-system-x86: the
# machine image may carry a newer qemu-utils from backports that conflicts
# with it, and --allow-downgrades lets apt replace it.
set -eu

PACKAGES="libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients
qemu-system-x86 qemu-utils
iproute2 iputils-ping util-linux mount e2fsprogs
gcc libc6-dev shellcheck rpm dpkg-dev sanlock libvirt-sanlock faketime
ceph-mon ceph-mgr ceph-osd ceph-mds ceph-fuse ceph-common
etcd-server etcd-client
prometheus-node-exporter prometheus"

log=${TMPDIR:-/tmp}/vmlease-setup.log

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: run as root" >&2
    exit 2
fi

# Packages not fully installed ("install ok installed"): one dpkg-query.
# shellcheck disable=SC2086 # the package list is meant to be split
installed=" $(dpkg-query -W -f '${Package} ${Status}\n' $PACKAGES 2>/dev/null |
    awk '$2 == "install" && $3 == "ok" && $4 == "installed" { printf "%s ", $1 }')"
missing=""
for p in $PACKAGES; do
    case "$installed" in
        *" $p "*) ;;
        *) missing="$missing $p" ;;
    esac
done

# The installed qemu-utils must be qemu-system-x86's version.
qemu_pin=ok
if [ -z "$missing" ]; then
    sys=$(dpkg-query -W -f '${Version}' qemu-system-x86)
    utils=$(dpkg-query -W -f '${Version}' qemu-utils)
    [ "$sys" = "$utils" ] || qemu_pin="qemu-utils $utils != qemu-system-x86 $sys"
fi

fail() {
    echo "setup: $1 failed; last lines of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
}

if [ -z "$missing" ] && [ "$qemu_pin" = ok ]; then
    echo "setup: all test dependencies are installed"
else
    if [ -n "$missing" ]; then
        echo "setup: installing:$missing (log: $log)"
    else
        echo "setup: re-pinning qemu-utils: $qemu_pin (log: $log)"
    fi
    : >"$log"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >>"$log" 2>&1 || fail "apt-get update"
    qver=$(apt-cache policy qemu-system-x86 | awk '$1 == "Candidate:" { print $2 }')
    if [ -z "$qver" ] || [ "$qver" = "(none)" ]; then
        echo "setup: apt has no qemu-system-x86 (is this Debian 12 with main enabled?)" >&2
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
    apt-get install -y --no-install-recommends --allow-downgrades $pkgs >>"$log" 2>&1 ||
        fail "apt-get install"
    echo "setup: installed; qemu-system-x86 and qemu-utils $qver"
fi

# The tests start their own libvirtd/virtlogd per test host, by pid; a
# packaged one running on its own is only worth a note.
for d in libvirtd virtlogd virtlockd; do
    if [ -f "/run/$d.pid" ] && kill -0 "$(cat "/run/$d.pid")" 2>/dev/null; then
        echo "setup: note: a system $d is running (pid $(cat "/run/$d.pid")); tests use their own"
    fi
done

# Rust lints and formatting (cargo clippy, cargo fmt).
if ! command -v rustup >/dev/null 2>&1 && [ -x "${HOME:-/root}/.cargo/bin/rustup" ]; then
    PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
if command -v rustup >/dev/null 2>&1; then
    have=$(rustup component list --installed 2>/dev/null || true)
    for c in clippy rustfmt; do
        if ! printf '%s\n' "$have" | grep -q "^$c-"; then
            echo "setup: rustup component add $c"
            rustup component add "$c" >>"$log" 2>&1 || fail "rustup component add $c"
        fi
    done
else
    echo "setup: note: no rustup; make sure cargo clippy and cargo fmt are available"
fi
