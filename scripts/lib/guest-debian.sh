#!/bin/sh
# Fetches Debian's kernel and busybox for the test guests from the package
# archive (apt-get download + dpkg-deb -x: nothing is installed on this
# host) into CACHE, once, and prints the kernel package's name: the
# kernel is CACHE/NAME, busybox CACHE/busybox-static.
#
# usage: guest-debian.sh CACHE
set -eu
cache=$1

# The first match of a glob, or a loud failure when nothing matched.
first() {
    [ -e "$1" ] || { echo "guest-debian.sh: nothing matches $1" >&2; exit 1; }
    echo "$1"
}

mkdir -p "$cache"
kernel_pkg() {
    apt-cache depends linux-image-amd64 2> /dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1
}
kpkg=$(kernel_pkg)
if [ -z "$kpkg" ]; then
    # No package lists yet (a machine that had everything installed).
    apt-get update > /dev/null || { echo "guest-debian.sh: apt-get update failed" >&2; exit 1; }
    kpkg=$(kernel_pkg)
fi
[ -n "$kpkg" ] || { echo "guest-debian.sh: cannot tell the kernel package from linux-image-amd64" >&2; exit 1; }
for pkg in "$kpkg" busybox-static; do
    if [ ! -d "$cache/$pkg" ]; then
        (cd "$cache" && apt-get download "$pkg" >&2) || { echo "guest-debian.sh: cannot fetch $pkg" >&2; exit 1; }
        deb=$(first "$cache/${pkg}_"*.deb)
        rm -rf "$cache/$pkg.tmp"
        dpkg-deb -x "$deb" "$cache/$pkg.tmp"
        mv "$cache/$pkg.tmp" "$cache/$pkg"
    fi
done
echo "$kpkg"
