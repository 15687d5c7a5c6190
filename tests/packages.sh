#!/bin/sh
# Builds the .deb and the .rpm and tests the installed result, not the
# build tree: install, files and modes, conffile, the installed plugin
# loaded as libvirtd loads it, check-config on the shipped config, the
# watchdog run from the unit's ExecStart line in test mode, an upgrade that
# keeps the operator's config edit, removal and purge; the .rpm's file list,
# signature check and an install into a scratch root.
# Run as root on Debian 12:  sh tests/packages.sh
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
export PATH
work=$(mktemp -d /var/tmp/vmlease-pkgtest.XXXXXX)
wdpid=""
cleanup() {
    [ -n "$wdpid" ] && kill -9 "$wdpid" 2>/dev/null
    dpkg -s vmlease >/dev/null 2>&1 && dpkg --purge vmlease >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "packages: FAIL: $*" >&2; exit 1; }
ok() { echo "packages: ok: $*"; }

if dpkg -s vmlease >/dev/null 2>&1; then
    fail "a vmlease package is already installed on this machine; refusing to touch it"
fi

VMLEASE_VERSION=0.1.0 sh scripts/build-packages "$work/n" >/dev/null
VMLEASE_SKIP_BUILD=1 VMLEASE_VERSION=0.1.1 sh scripts/build-packages "$work/n1" >/dev/null
deb="$work/n/vmlease_0.1.0_amd64.deb"
deb1="$work/n1/vmlease_0.1.1_amd64.deb"
rpmf="$work/n/vmlease-0.1.0-1.x86_64.rpm"
ok "built $(basename "$deb") and $(basename "$rpmf")"

# --- install the .deb -------------------------------------------------------
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$deb" >"$work/apt.log" 2>&1 ||
    { tail -n 20 "$work/apt.log"; fail "apt-get install"; }
grep -q 'lock_manager = "vmlease"' "$work/apt.log" || fail "postinst did not say how to enable the plugin"
grep -q '^lock_manager = "vmlease"' /etc/libvirt/qemu.conf && fail "the package enabled lock_manager behind the operator's back"
while read -r kind dest mode; do
    [ -f "$dest" ] || fail "$dest ($kind) missing"
    got=$(stat -c '%a' "$dest")
    [ "$got" = "${mode#0}" ] || fail "$dest has mode $got, expected ${mode#0}"
done <"$work/n/files-deb.txt"
ok "every file of packaging/files.list is installed with its mode"
dpkg-query -W -f '${Conffiles}\n' vmlease | grep -q '/etc/libvirt/qemu-vmlease.conf' || fail "config is not a conffile"
[ -d /var/lib/vmlease ] || fail "postinst did not create /var/lib/vmlease"

# --- the installed plugin, loaded as libvirtd loads it ------------------------
conf="$work/vmlease.conf"
cat >"$conf" <<EOC
host_id = 1
lockspace_dir = "$work/ls"
state_dir = "$work/run"
renew_interval = 0.2
renew_fail_timeout = 1.5
kill_timeout = 0.5
watchdog_timeout = 1
unsafe_no_watchdog = true
reset_action = "record"
reset_record_file = "$work/reset"
EOC
python3 - "$conf" <<'PY' || fail "the installed plugin does not load"
import ctypes, sys
lib = ctypes.CDLL("/usr/lib/x86_64-linux-gnu/libvirt/lock-driver/vmlease.so", mode=ctypes.RTLD_LOCAL | 2)
table = ctypes.c_void_p.in_dll(lib, "virLockDriverImpl")
class Driver(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint), ("flags", ctypes.c_uint),
                ("init", ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint, ctypes.c_char_p, ctypes.c_uint))]
d = Driver.in_dll(lib, "virLockDriverImpl")
assert d.version == 1000000, d.version
rc = d.init(1000000, sys.argv[1].encode(), 0)
assert rc == 0, rc
PY
ok "installed vmlease.so: dlopen, virLockDriverImpl version 1000000, drvInit 0"

# --- the CLI on the shipped config and on a configured copy ------------------
set +e
/usr/sbin/vmlease check-config >"$work/cc.out" 2>&1
rc=$?
set -e
[ "$rc" -eq 1 ] || fail "check-config on the shipped config (no host_id) exited $rc: $(cat "$work/cc.out")"
grep -q "host_id is not set" "$work/cc.out" || fail "check-config did not say host_id is missing"
/usr/sbin/vmlease --config "$conf" check-config >/dev/null || fail "check-config on a configured copy"
/usr/sbin/vmlease --config "$conf" init >/dev/null
ok "check-config (shipped config: exit 1, host_id not set; configured: exit 0), init"

# --- the watchdog, from the installed unit's command line, in test mode ------
cmd=$(sed -n 's/^ExecStart=//p' /lib/systemd/system/vmlease-watchdog.service)
cmd=$(printf '%s' "$cmd" | sed "s|/etc/libvirt/qemu-vmlease.conf|$conf|")
# shellcheck disable=SC2086 # the unit's command line, split as systemd does
$cmd >"$work/wd.log" 2>&1 &
wdpid=$!
i=0
until grep -q '^state=live$' "$work/run/status" 2>/dev/null && ! grep -q '^last_renewal_ms=0$' "$work/run/status"; do
    i=$((i + 1))
    [ "$i" -lt 100 ] || fail "the watchdog did not come up: $(cat "$work/wd.log")"
    sleep 0.05
done
/usr/sbin/vmlease --config "$conf" status >/dev/null || fail "status not protected with the daemon running"
kill -TERM "$wdpid"
wait "$wdpid" || fail "the watchdog did not stop cleanly on SIGTERM"
wdpid=""
ok "vmlease-watchdog from ExecStart ran, protected the host, stopped on SIGTERM"

# --- upgrade keeps the operator's edit ---------------------------------------
printf '\n# operator edit\nhost_id = 7\n' >>/etc/libvirt/qemu-vmlease.conf
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends -o Dpkg::Options::=--force-confold "$deb1" >"$work/apt1.log" 2>&1 ||
    { tail -n 20 "$work/apt1.log"; fail "upgrade"; }
[ "$(dpkg-query -W -f '${Version}' vmlease)" = "0.1.1" ] || fail "not upgraded"
grep -q '^host_id = 7$' /etc/libvirt/qemu-vmlease.conf || fail "the upgrade lost the operator's config edit"
ok "upgrade 0.1.0 -> 0.1.1 kept the config edit"

# --- remove, purge; the lockspace stays ----------------------------------------
apt-get remove -y vmlease >/dev/null 2>&1 || fail "remove"
[ ! -e /usr/sbin/vmlease-watchdog ] || fail "binary left after remove"
[ -f /etc/libvirt/qemu-vmlease.conf ] || fail "remove deleted the config (only purge may)"
dpkg --purge vmlease >/dev/null 2>&1 || fail "purge"
[ ! -e /etc/libvirt/qemu-vmlease.conf ] || fail "config left after purge"
[ -f "$work/ls/VMLEASE" ] || fail "removal touched the lockspace"
ok "remove keeps the config, purge removes it, the lockspace is untouched"

# --- the .rpm ----------------------------------------------------------------
rpm -K --nosignature "$rpmf" >/dev/null || fail "rpm -K"
rpm -qlp "$rpmf" 2>/dev/null | sort >"$work/rpm-list"
awk '{ print $2 }' "$work/n/files-rpm.txt" | sort >"$work/want-list"
diff -u "$work/want-list" "$work/rpm-list" || fail "the .rpm's file list differs from packaging/files.list"
rpm -qp --configfiles "$rpmf" 2>/dev/null | grep -q '/etc/libvirt/qemu-vmlease.conf' || fail "rpm: config not %config"
# A minimal root where the scriptlets can run: sh and the tools they call.
mkdir -p "$work/rpmroot/bin" "$work/rpmroot/usr/bin"
for t in sh mkdir cat rm; do
    p=$(command -v "$t")
    cp "$(readlink -f "$p")" "$work/rpmroot/bin/$t"
    for l in $(ldd "$p" | awk '/=>/ { print $3 } /^\t\// { print $1 }'); do
        mkdir -p "$work/rpmroot$(dirname "$l")"
        cp -n "$l" "$work/rpmroot$l"
    done
done
rpm --root "$work/rpmroot" --initdb
rpm --root "$work/rpmroot" --nodeps -i "$rpmf" >"$work/rpm.log" 2>&1 || { cat "$work/rpm.log"; fail "rpm install into a scratch root"; }
while read -r kind dest mode; do
    [ -f "$work/rpmroot$dest" ] || fail "rpm: $dest ($kind) missing in the scratch root"
done <"$work/n/files-rpm.txt"
grep -q "scriptlet failed" "$work/rpm.log" && fail "rpm %post failed: $(cat "$work/rpm.log")"
[ -d "$work/rpmroot/var/lib/vmlease" ] || fail "rpm %post did not run in the scratch root"
grep -q 'lock_manager = "vmlease"' "$work/rpm.log" || fail "rpm %post did not say how to enable the plugin"
rpm --root "$work/rpmroot" --nodeps -e vmlease >"$work/rpm-e.log" 2>&1 || { cat "$work/rpm-e.log"; fail "rpm -e in the scratch root"; }
[ ! -e "$work/rpmroot/usr/sbin/vmlease" ] || fail "rpm -e left the binary"
ok ".rpm: rpm -K, file list = files.list, %config, install and erase in a scratch root with its scriptlets"
echo "packages: 8 passed, 0 failed"
