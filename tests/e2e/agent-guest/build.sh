#!/bin/sh
# Builds the guest of tests/e2e/vmfail.sh: Debian's kernel and busybox
# (scripts/lib/guest-debian.sh fetches them into CACHE, shared with the
# watchdog guest)
# and an initramfs with /init (this directory's init), a stand-in for the
# QEMU guest agent on its virtio-serial port (this directory's agent) and
# the virtio-console driver.
#
# usage: build.sh CACHE OUT    (writes OUT/vmlinuz and OUT/initrd.gz)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cache=$1
out=$2

first() {
    [ -e "$1" ] || { echo "build.sh: nothing matches $1" >&2; exit 1; }
    echo "$1"
}

mkdir -p "$out"
kpkg=$(sh "$here/../../../scripts/lib/guest-debian.sh" "$cache")

kdir=$cache/$kpkg
stage=$out/stage
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/lib/modules" "$stage/proc" "$stage/sys" "$stage/dev" "$stage/tmp"
cp "$(first "$kdir"/boot/vmlinuz-*)" "$out/vmlinuz"
cp "$cache/busybox-static/bin/busybox" "$stage/bin/busybox"
cp "$here/init" "$stage/init"
cp "$here/agent" "$stage/bin/vmlease-agent"
chmod 755 "$stage/init" "$stage/bin/vmlease-agent"
mods=$(first "$kdir"/lib/modules/*/kernel/drivers)
# In load order (each needs the ones before it).
for m in virtio/virtio virtio/virtio_ring virtio/virtio_pci_modern_dev \
    virtio/virtio_pci_legacy_dev virtio/virtio_pci char/virtio_console; do
    name=$(basename "$m")
    if [ -f "$mods/$m.ko.xz" ]; then
        xz -dc "$mods/$m.ko.xz" >"$stage/lib/modules/$name.ko"
    else
        cp "$(first "$mods/$m.ko")" "$stage/lib/modules/$name.ko"
    fi
done
(cd "$stage" && find . | "$cache/busybox-static/bin/busybox" cpio -o -H newc 2>/dev/null) | gzip -1 >"$out/initrd.gz"
