#!/bin/sh
# Builds the watchdog test guest: a Debian kernel and busybox
# (scripts/lib/guest-debian.sh fetches them into CACHE), and an initramfs
# made from STAGE (the test puts /init, /etc and /bin there) plus busybox,
# the i6300esb driver and the shared libraries of STAGE's binaries (which
# it strips).
#
# usage: build.sh CACHE STAGE OUT    (writes OUT/vmlinuz and OUT/initrd.gz)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cache=$1
stage=$2
out=$3

# The first match of a glob, or a loud failure when nothing matched.
first() {
    [ -e "$1" ] || { echo "build.sh: nothing matches $1" >&2; exit 1; }
    echo "$1"
}

mkdir -p "$out"
kpkg=$(sh "$here/../../scripts/lib/guest-debian.sh" "$cache")

kdir=$cache/$kpkg
cp "$(first "$kdir"/boot/vmlinuz-*)" "$out/vmlinuz"
mods=$(first "$kdir"/lib/modules/*/kernel/drivers/watchdog)
mkdir -p "$stage/bin" "$stage/lib/modules" "$stage/proc" "$stage/sys" "$stage/dev" "$stage/etc"
cp "$cache/busybox-static/bin/busybox" "$stage/bin/busybox"
for m in watchdog i6300esb; do
    if [ -f "$mods/$m.ko.xz" ]; then
        xz -dc "$mods/$m.ko.xz" > "$stage/lib/modules/$m.ko"
    else
        cp "$mods/$m.ko" "$stage/lib/modules/$m.ko"
    fi
done
for b in "$stage"/bin/*; do
    [ "$b" = "$stage/bin/busybox" ] && continue
    # Debug builds carry ~60 MB of debug info each: an initramfs that size
    # takes TCG seconds to unpack.
    strip "$b"
    ldd "$b" | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) .*/\1/p' | while read -r lib; do
        mkdir -p "$stage$(dirname "$lib")"
        cp -L "$lib" "$stage$lib"
    done
done
(cd "$stage" && find . | "$cache/busybox-static/bin/busybox" cpio -o -H newc 2> /dev/null) | gzip -1 > "$out/initrd.gz"
