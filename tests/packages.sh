#!/bin/sh
# The packages, tested as installed, not as built. Run as root on Debian 12
# (after scripts/setup-test-env.sh):  sh tests/packages.sh
#
# .deb: builds versions N (Cargo.toml), N.1 and N.2 (repackaged, no new
# cargo build) and checks that the build is reproducible; installs N with
# apt and checks every entry of packaging/files.list, its mode, the
# conffiles, dpkg --verify and the unit (systemd-analyze); loads the
# installed vmlease.so through the installed header (plugin-check.c) as
# libvirtd does; check-config on the shipped config; then, with an
# operator's config in test mode (no hardware watchdog, recorded reset),
# runs the watchdog from the installed unit's ExecStart, starts a leased
# stand-in QEMU through the plugin, and checks that removal is refused
# while it runs or while qemu.conf selects the plugin, that the upgrade to
# N.1 keeps the config edit and restarts the daemon (which adopts the
# lease), that the upgrade to N.2 with a config the new version rejects
# does not restart it, and that remove and purge leave the lockspace alone.
# The systemd branch of the maintainer scripts runs against a stand-in
# systemctl (tests/packaging/systemctl) in a private mount namespace; the
# first install runs without systemd, as on this machine.
#
# .rpm: rpm -K, the file list and modes against files.list, %config,
# dependencies, changelog; install, upgrade with an edited config and erase
# in a scratch root (rpm --root --nodeps), where its scriptlets run.
#
# VMLEASE_KEEP_TEST=1 keeps the work directory (logs) for a post-mortem.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
DEBIAN_FRONTEND=noninteractive
export PATH DEBIAN_FRONTEND

passed=0
fail() { echo "packages: FAIL: $*" >&2; exit 1; }
ok() { passed=$((passed + 1)); echo "packages: ok: $*"; }
state() { dpkg-query -W -f '${db:Status-Abbrev}' vmlease 2>/dev/null | tr -d ' '; }

[ "$(id -u)" -eq 0 ] || { echo "packages: run as root (it installs the package)" >&2; exit 2; }
[ -z "$(state)" ] ||
    fail "vmlease is installed here ($(state)); refusing to touch it (dpkg --purge vmlease)"
qemu_conf=/etc/libvirt/qemu.conf
[ -f "$qemu_conf" ] || fail "$qemu_conf missing (libvirt-daemon-system is not installed)"
if grep -Eq '^[[:space:]]*lock_manager[[:space:]]*=[[:space:]]*"vmlease"' "$qemu_conf"; then
    fail "$qemu_conf already selects vmlease; run this test on a machine that does not use it"
fi
systemctl_bin=$(command -v systemctl) || fail "systemctl missing (Debian package systemd)"

work=$(mktemp -d /var/tmp/vmlease-pkgtest.XXXXXX)
chmod 0755 "$work" # apt reads the .deb files as _apt
fake="$work/fakebin"
mkdir -p "$fake"
sed "s|@DIR@|$fake|" tests/packaging/systemctl >"$fake/systemctl"
chmod 0755 "$fake/systemctl"
printf '#!/bin/sh\nexec apt-get -y -q --no-install-recommends -o Dpkg::Options::=--force-confold "$@" </dev/null\n' >"$fake/apt"
chmod 0755 "$fake/apt"

# The operator's lockspace: under the package's /var/lib/vmlease, so that
# removal has the chance to touch it (it must not).
lockspace=/var/lib/vmlease/pkgtest-lockspace
had_varlib=""
[ -d /var/lib/vmlease ] && had_varlib=1
made_run_systemd=""
qemu_pid=""
conf=/etc/libvirt/qemu-vmlease.conf
so=/usr/lib/x86_64-linux-gnu/libvirt/lock-driver/vmlease.so
unit=/lib/systemd/system/vmlease-watchdog.service
uuid=7d9c6a52-1f0e-4c8b-9a51-5b0c2f6a0e17

cleanup() {
    set +e
    [ -n "$qemu_pid" ] && kill -KILL "$qemu_pid" 2>/dev/null
    "$fake/systemctl" stop vmlease-watchdog.service 2>/dev/null
    [ -n "$(state)" ] && dpkg --purge vmlease >/dev/null 2>&1
    rm -rf "$lockspace"
    [ -n "$had_varlib" ] || rmdir /var/lib/vmlease 2>/dev/null
    [ -n "$made_run_systemd" ] && rmdir /run/systemd 2>/dev/null
    [ -n "${VMLEASE_KEEP_TEST:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# in_systemd CMD...: CMD where the maintainer scripts see systemd running:
# a private mount namespace with /run/systemd/system and the stand-in
# mounted over systemctl (dpkg's scripts do not inherit our PATH).
if [ ! -d /run/systemd ]; then
    mkdir /run/systemd
    made_run_systemd=1
fi
in_systemd() {
    # shellcheck disable=SC2016 # expanded by the inner shell
    unshare -m sh -c 'mount -t tmpfs -o mode=0755 vmlease-test /run/systemd &&
        mkdir /run/systemd/system && mount --bind "$0" "$1" && shift && exec "$@"' \
        "$fake/systemctl" "$systemctl_bin" "$@"
}
daemon_pid() { cat "$fake/pid"; }
alive() { # PID: running, not a zombie waiting for init
    [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -d ' ' -f 1)" != Z ]
}
json_status() { /usr/sbin/vmlease --json status 2>/dev/null || true; }
holder() { /usr/sbin/vmlease --json leases --domain "$uuid" 2>/dev/null | grep -q '"host_id":7'; }

# --- the scripts ------------------------------------------------------------------------
shellcheck -s sh packaging/scripts/postinst packaging/scripts/prerm packaging/scripts/postrm \
    scripts/build-packages tests/packages.sh tests/packaging/systemctl ||
    fail "shellcheck: the packaging scripts"
ok "maintainer scripts, build script and this test are POSIX sh and shellcheck-clean"

# --- build --------------------------------------------------------------------------------
vn=$(sed -n '/^\[package\]/,/^\[/ s/^version = "\(.*\)"$/\1/p' Cargo.toml)
vn1="$vn.1" vn2="$vn.2"
sh scripts/build-packages "$work/n" >/dev/null
VMLEASE_SKIP_BUILD=1 sh scripts/build-packages "$work/again" >/dev/null
VMLEASE_SKIP_BUILD=1 VMLEASE_VERSION="$vn1" sh scripts/build-packages "$work/n1" >/dev/null
VMLEASE_SKIP_BUILD=1 VMLEASE_VERSION="$vn2" sh scripts/build-packages "$work/n2" >/dev/null
deb="$work/n/vmlease_${vn}_amd64.deb"
rpmf="$work/n/vmlease-$vn-1.x86_64.rpm"
cmp -s "$deb" "$work/again/vmlease_${vn}_amd64.deb" || fail "the .deb is not reproducible"
cmp -s "$rpmf" "$work/again/vmlease-$vn-1.x86_64.rpm" || fail "the .rpm is not reproducible"
ok "built $vn, $vn1 and $vn2 (.deb and .rpm); a second build of $vn is bit-identical"

# --- install N, without systemd ----------------------------------------------------------
qemu_sum=$(cksum <"$qemu_conf")
"$fake/apt" install "$deb" >"$work/apt-install.log" 2>&1 ||
    { tail -n 30 "$work/apt-install.log"; fail "apt-get install $deb"; }
[ "$(state)" = ii ] || fail "vmlease is not installed after apt-get install: $(state)"
grep -q 'lock_manager = "vmlease"' "$work/apt-install.log" || fail "postinst did not say how to enable the plugin"
[ "$(cksum <"$qemu_conf")" = "$qemu_sum" ] || fail "the package changed $qemu_conf"
ok "apt-get install: postinst printed how to enable the plugin and left qemu.conf alone"

while read -r kind path mode; do
    case "$kind" in
        dir) [ -d "$path" ] || fail "directory $path missing" ;;
        *) [ -f "$path" ] || fail "$path ($kind) missing" ;;
    esac
    got=$(stat -c '%a' "$path")
    [ "$got" = "${mode#0}" ] || fail "$path has mode $got, expected ${mode#0}"
    [ "$(stat -c '%U:%G' "$path")" = root:root ] || fail "$path is not root:root"
done <"$work/n/files-deb.txt"
awk '$1 == "conf" { print $2 }' "$work/n/files-deb.txt" | sort >"$work/want-conffiles"
dpkg-query -W -f '${Conffiles}\n' vmlease | awk 'NF { print $1 }' | sort >"$work/conffiles"
cmp -s "$work/want-conffiles" "$work/conffiles" ||
    fail "conffiles differ from files.list: $(diff "$work/want-conffiles" "$work/conffiles")"
[ -z "$(dpkg --verify vmlease)" ] || fail "dpkg --verify: $(dpkg --verify vmlease)"
[ -d /run/vmlease ] || fail "postinst did not create /run/vmlease"
ok "every entry of files.list installed with its mode, root-owned; conffiles: $(tr '\n' ' ' <"$work/conffiles")"

# In a private namespace: systemd-analyze leaves a stamp in /run/systemd.
# shellcheck disable=SC2016 # expanded by the inner shell
verify=$(unshare -m sh -c 'mount -t tmpfs vmlease-test /run/systemd && exec systemd-analyze verify --man=no "$0"' \
    "$unit" 2>&1) || fail "systemd-analyze verify: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify $unit: $verify"
zcat /usr/share/man/man8/vmlease.8.gz | grep -q '^\.TH VMLEASE 8' || fail "vmlease(8) is not a man page"
zcat /usr/share/man/man8/vmlease-watchdog.8.gz | grep -q 'SIGTERM' || fail "vmlease-watchdog(8) lacks the --help text"
# vmlease-ha: its unit verifies too, and the binary refuses a config without [ha].
ha_unit=$(dirname "$unit")/vmlease-ha.service
# shellcheck disable=SC2016 # expanded by the inner shell
verify=$(unshare -m sh -c 'mount -t tmpfs vmlease-test /run/systemd && exec systemd-analyze verify --man=no "$0"' \
    "$ha_unit" 2>&1) || fail "systemd-analyze verify $ha_unit: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify $ha_unit: $verify"
zcat /usr/share/man/man8/vmlease-ha.8.gz | grep -q 'recovery agent' || fail "vmlease-ha(8) lacks the --help text"
printf 'host_id = 3\n' >"$work/no-ha.conf"
set +e
/usr/sbin/vmlease-ha --config "$work/no-ha.conf" >"$work/no-ha.out" 2>&1
rc=$?
set -e
if [ "$rc" -ne 2 ] || ! grep -q 'no \[ha\] section' "$work/no-ha.out"; then
    fail "vmlease-ha without [ha]: exit $rc, $(cat "$work/no-ha.out")"
fi
# qemu-vmlease.conf(5) is the shipped example inside a man page; the
# completions are what the installed command generates.
zcat /usr/share/man/man5/qemu-vmlease.conf.5.gz | grep -q '^\.TH QEMU\\-VMLEASE.CONF 5' ||
    fail "qemu-vmlease.conf(5) is not a man page"
zcat /usr/share/man/man5/qemu-vmlease.conf.5.gz | grep -q '^#metrics_dir = "/var/lib/prometheus/node\\-exporter"$' ||
    fail "qemu-vmlease.conf(5) lacks the example's keys"
if command -v man >/dev/null; then
    man -l /usr/share/man/man5/qemu-vmlease.conf.5.gz 2>"$work/man5.err" | grep -q 'renew_fail_timeout' ||
        fail "qemu-vmlease.conf(5) does not render: $(cat "$work/man5.err")"
fi
/usr/sbin/vmlease completion bash | cmp -s - /usr/share/bash-completion/completions/vmlease ||
    fail "the bash completion differs from 'vmlease completion bash'"
head -n 1 /usr/share/zsh/vendor-completions/_vmlease | grep -q '^#compdef vmlease' || fail "the zsh completion lacks #compdef"
bash -c '. /usr/share/bash-completion/completions/vmlease && complete -p vmlease' | grep -q '_vmlease' ||
    fail "bash does not load the completion"
zcat /usr/share/doc/vmlease/changelog.gz | head -n 1 | grep -q "^vmlease ($vn)" || fail "changelog.gz"
grep -q 'Apache-2.0' /usr/share/doc/vmlease/copyright || fail "copyright names no license"
ok "the unit passes systemd-analyze verify; man pages (8, and qemu-vmlease.conf(5) from the example), bash and zsh completions, changelog.gz, copyright installed"

# --- the installed plugin, through the installed header -----------------------------------
cc -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -rdynamic -o "$work/plugin-check" \
    tests/packaging/plugin-check.c -ldl || fail "plugin-check.c does not build against /usr/include/vmlease/vmlease.h"
"$work/plugin-check" "$so" "$conf" init 0 || fail "drvInit with the shipped config"
"$work/plugin-check" "$so" "$work/no-such.conf" init 0 || fail "drvInit without a config file"
printf 'no_such_key = 1\n' >"$work/bad.conf"
"$work/plugin-check" "$so" "$work/bad.conf" init -1 2>/dev/null || fail "drvInit accepted an invalid config"
ok "installed vmlease.so: dlopen RTLD_NOW|RTLD_LOCAL, table version 1000000, drvInit 0 (shipped config, no file) and -1 (invalid config)"

set +e
/usr/sbin/vmlease check-config >"$work/cc.out" 2>&1
rc=$?
set -e
[ "$rc" -eq 1 ] || fail "check-config on the shipped config exited $rc, expected 1 (valid, no host_id): $(cat "$work/cc.out")"
grep -q 'host_id is not set' "$work/cc.out" || fail "check-config did not say host_id is missing: $(cat "$work/cc.out")"
ok "vmlease check-config on the shipped config: exit 1, host_id is not set"

# --- the operator configures the host (test mode) -----------------------------------------
cat >>"$conf" <<EOC

# --- the operator's edit (tests/packages.sh) ---
host_id = 7
lockspace_dir = "$lockspace"
state_dir = "$work/run"
renew_interval = 0.5
renew_fail_timeout = 5
kill_timeout = 1
watchdog_timeout = 2
unsafe_no_watchdog = true
# The test's lockspace is a local directory: UNSAFE outside tests.
allow_local_lockspace = true
reset_action = "record"
reset_record_file = "$work/reset"
EOC
cp "$conf" "$work/edited.conf"
/usr/sbin/vmlease check-config >"$work/cc.out" 2>&1 || fail "check-config on the edited config: $(cat "$work/cc.out")"
/usr/sbin/vmlease init >/dev/null || fail "vmlease init"
"$fake/systemctl" start vmlease-watchdog.service || fail "the watchdog from $unit's ExecStart: $(cat "$fake/watchdog.log")"
pid0=$(daemon_pid)
[ "$(readlink "/proc/$pid0/exe")" = /usr/sbin/vmlease-watchdog ] || fail "the daemon is not /usr/sbin/vmlease-watchdog"
json_status | grep -q '"state":"live"' || fail "status: $(json_status)"
ok "vmlease-watchdog from the unit's ExecStart (pid $pid0): host 7 live and protected"

"$work/plugin-check" "$so" "$conf" start "$uuid" >"$work/qemu.pid" 2>"$work/start.err" ||
    fail "a leased start through the installed plugin: $(cat "$work/start.err")"
qemu_pid=$(cat "$work/qemu.pid")
holder || fail "the domain lease is not held by host 7: $(/usr/sbin/vmlease leases --domain "$uuid")"
json_status | grep -q '"alive":true' || fail "status does not list the leased process"
ok "a domain start through the installed plugin: lease held by host 7, QEMU stand-in pid $qemu_pid"

# --- removal refused while it would hurt ----------------------------------------------------
if "$fake/apt" remove vmlease >"$work/remove-vm.log" 2>&1; then
    fail "apt-get remove succeeded while a leased VM runs"
fi
grep -q 'leased VMs are running' "$work/remove-vm.log" || fail "no reason for the refusal: $(tail -n 5 "$work/remove-vm.log")"
[ "$(state)" = ii ] || fail "a refused removal left vmlease in state $(state)"
alive "$(daemon_pid)" || fail "a refused removal stopped the daemon"
ok "apt-get remove refused while a leased VM runs; package and daemon untouched"

# --- upgrade N -> N.1, the VM running: restart, adoption, config kept ----------------------
in_systemd "$fake/apt" install "$work/n1/vmlease_${vn1}_amd64.deb" >"$work/apt-n1.log" 2>&1 ||
    { tail -n 30 "$work/apt-n1.log"; fail "upgrade to $vn1"; }
[ "$(dpkg-query -W -f '${Version}' vmlease)" = "$vn1" ] || fail "not upgraded to $vn1"
cmp -s "$conf" "$work/edited.conf" || fail "the upgrade changed the operator's config"
grep -q '^try-restart vmlease-watchdog.service$' "$fake/systemctl.log" ||
    fail "postinst did not restart the daemon: $(cat "$fake/systemctl.log")"
grep -q '^enable' "$fake/systemctl.log" && fail "an upgrade enabled the unit"
pid1=$(daemon_pid)
[ "$pid1" != "$pid0" ] || fail "the daemon was not restarted"
[ "$(readlink "/proc/$pid1/exe")" = /usr/sbin/vmlease-watchdog ] || fail "the restarted daemon does not run the new binary"
/usr/sbin/vmlease status >/dev/null || fail "not protected after the restart: $(json_status)"
holder || fail "the restarted daemon lost the running VM's lease"
json_status | grep -q '"alive":true' || fail "the restarted daemon does not track the running VM"
ok "upgrade $vn -> $vn1 with a leased VM: config edit kept, daemon restarted on the new binary (pid $pid1), lease adopted"

# --- upgrade N.1 -> N.2 with a config the new version rejects: no restart -----------------
printf 'no_such_key_in_this_version = 1\n' >>"$conf"
cp "$conf" "$work/edited2.conf"
: >"$fake/systemctl.log"
in_systemd "$fake/apt" install "$work/n2/vmlease_${vn2}_amd64.deb" >"$work/apt-n2.log" 2>&1 ||
    { tail -n 30 "$work/apt-n2.log"; fail "upgrade to $vn2"; }
[ "$(dpkg-query -W -f '${Version}' vmlease)" = "$vn2" ] || fail "not upgraded to $vn2"
cmp -s "$conf" "$work/edited2.conf" || fail "the upgrade changed the operator's config"
grep -q 'restart' "$fake/systemctl.log" && fail "restarted with a config the new version rejects"
grep -q 'not restarting vmlease-watchdog.service' "$work/apt-n2.log" || fail "postinst did not say why it did not restart"
[ "$(daemon_pid)" = "$pid1" ] || fail "the running daemon was restarted"
alive "$pid1" || fail "the running daemon stopped"
cp "$work/edited.conf" "$conf"
ok "upgrade $vn1 -> $vn2 with a config it rejects: the daemon keeps running, postinst says why"

# --- the VM stops: its lease is released -----------------------------------------------------
kill -KILL "$qemu_pid"
qemu_pid=""
i=0
while holder; do
    i=$((i + 1))
    [ "$i" -lt 50 ] || fail "the daemon did not release the dead QEMU's lease"
    sleep 0.1
done
ok "the stand-in QEMU died: the daemon released its lease"

# --- removal refused while qemu.conf selects the plugin --------------------------------------
cp "$qemu_conf" "$work/qemu.conf"
printf 'lock_manager = "vmlease"\n' >>"$work/qemu.conf"
# shellcheck disable=SC2016 # expanded by the inner shell
if unshare -m sh -c 'mount --bind "$0" /etc/libvirt/qemu.conf && exec "$@"' "$work/qemu.conf" \
    "$fake/apt" remove vmlease >"$work/remove-qc.log" 2>&1; then
    fail "apt-get remove succeeded while qemu.conf selects the plugin"
fi
grep -q 'libvirtd cannot start without the plugin' "$work/remove-qc.log" || fail "no reason: $(tail -n 5 "$work/remove-qc.log")"
[ "$(state)" = ii ] || fail "a refused removal left vmlease in state $(state)"
ok "apt-get remove refused while qemu.conf has lock_manager = \"vmlease\""

# --- remove and purge: the lockspace stays ---------------------------------------------------
: >"$fake/systemctl.log"
in_systemd "$fake/apt" remove vmlease >"$work/remove.log" 2>&1 ||
    { tail -n 30 "$work/remove.log"; fail "apt-get remove"; }
[ "$(state)" = rc ] || fail "after remove: state $(state), expected rc"
grep -q '^disable --now vmlease-watchdog.service$' "$fake/systemctl.log" || fail "prerm did not stop and disable the unit"
alive "$pid1" && fail "the daemon still runs after remove"
"$top/target/release/vmlease" --config "$work/edited.conf" --json hosts | grep -q '"host_id":7,[^}]*"state":"leaving"' ||
    fail "the stopped daemon did not publish leaving"
while read -r kind path mode; do
    case "$kind" in
        conf) [ -f "$path" ] || fail "remove deleted $path (only purge may)" ;;
        dir) ;;
        *) [ ! -e "$path" ] || fail "$path left after remove" ;;
    esac
done <"$work/n/files-deb.txt"
/etc/libvirt/hooks/qemu.d/vmlease vm prepare begin - </dev/null || fail "the hook left after remove blocks libvirt"
find "$lockspace" -type f | sort | xargs sha256sum >"$work/lockspace.sum"
dpkg --purge vmlease >"$work/purge.log" 2>&1 || { cat "$work/purge.log"; fail "dpkg --purge"; }
[ -z "$(state)" ] || fail "after purge: state $(state)"
while read -r kind path mode; do
    [ "$path" = /var/lib/vmlease ] && continue
    [ ! -e "$path" ] || fail "$path left after purge"
done <"$work/n/files-deb.txt"
[ -f "$lockspace/VMLEASE" ] || fail "purge removed the lockspace"
find "$lockspace" -type f | sort | xargs sha256sum | cmp -s - "$work/lockspace.sum" || fail "purge changed the lockspace"
ok "remove stops the daemon (it publishes leaving), keeps conffiles, leaves a harmless hook; purge removes everything but the lockspace"

# --- a first install where systemd runs: enabled, not started ---------------------------------
: >"$fake/systemctl.log"
in_systemd "$fake/apt" install "$work/n2/vmlease_${vn2}_amd64.deb" >"$work/apt-sd.log" 2>&1 ||
    { tail -n 30 "$work/apt-sd.log"; fail "install with systemd"; }
grep -q '^enable vmlease-watchdog.service$' "$fake/systemctl.log" || fail "postinst did not enable the unit: $(cat "$fake/systemctl.log")"
grep -q 'start' "$fake/systemctl.log" && fail "postinst started the unconfigured daemon"
in_systemd dpkg --purge vmlease >"$work/purge-sd.log" 2>&1 || { cat "$work/purge-sd.log"; fail "purge with systemd"; }
[ ! -f "$fake/enabled" ] || fail "purge left the unit enabled"
ok "with systemd: install enables the unit without starting it; purge disables it"

# --- the .rpm ---------------------------------------------------------------------------------
rpm -K "$rpmf" | grep -q 'digests OK' || fail "rpm -K: $(rpm -K "$rpmf")"
rpm -qp --qf '[%{FILENAMES} %{FILEMODES:octal}\n]' "$rpmf" 2>/dev/null |
    awk '{ m = $2; print $1, "0" substr(m, length(m) - 2) }' | sort >"$work/rpm-list"
awk '{ print $2, $3 }' "$work/n/files-rpm.txt" | sort >"$work/want-list"
diff -u "$work/want-list" "$work/rpm-list" || fail "the .rpm's files and modes differ from files.list"
rpm -qp --configfiles "$rpmf" 2>/dev/null | sort >"$work/rpm-conf"
awk '$1 == "conf" { print $2 }' "$work/n/files-rpm.txt" | sort | cmp -s - "$work/rpm-conf" || fail "rpm: %config files"
rpm -qp --requires "$rpmf" 2>/dev/null >"$work/rpm-req"
grep -qx 'libvirt-daemon' "$work/rpm-req" || fail "rpm does not require libvirt-daemon"
grep -q '^libc.so.6(GLIBC_' "$work/rpm-req" || fail "rpm has no glibc requirement: $(cat "$work/rpm-req")"
rpm -qp --changelog "$rpmf" 2>/dev/null | head -n 1 | grep -q " - $vn-1\$" || fail "rpm %changelog"
ok ".rpm: rpm -K digests OK; files, modes, %config, requires and %changelog match files.list and packaging/changelog"

# A scratch root where the scriptlets can run: sh, the tools they call,
# /dev/null, and the libraries of those and of the vmlease command.
root="$work/rpmroot"
mkdir -p "$root/bin" "$root/dev"
for t in sh mkdir grep cat rm; do
    cp "$(readlink -f "$(command -v "$t")")" "$root/bin/$t"
done
for f in "$root"/bin/* target/release/vmlease; do
    for l in $(ldd "$f" | awk '/=>/ { print $3 } /^\t\// { print $1 }'); do
        mkdir -p "$root$(dirname "$l")"
        [ -e "$root$l" ] || cp "$(readlink -f "$l")" "$root$l"
    done
done
mknod -m 0666 "$root/dev/null" c 1 3 || fail "mknod $root/dev/null"
rpm --root "$root" --initdb
rpm --root "$root" --nodeps -i "$rpmf" >"$work/rpm-i.log" 2>&1 || { cat "$work/rpm-i.log"; fail "rpm -i in a scratch root"; }
grep -q 'lock_manager = "vmlease"' "$work/rpm-i.log" || fail "rpm %post did not run: $(cat "$work/rpm-i.log")"
[ -d "$root/run/vmlease" ] || fail "rpm %post did not create /run/vmlease"
while read -r kind path mode; do
    [ -e "$root$path" ] || fail "rpm: $path ($kind) missing in the scratch root"
    [ "$(stat -c '%a' "$root$path")" = "${mode#0}" ] || fail "rpm: $path has mode $(stat -c '%a' "$root$path")"
done <"$work/n/files-rpm.txt"
printf '\n# the operator edit\nhost_id = 9\n' >>"$root$conf"
cp "$root$conf" "$work/rpm-edited.conf"
mkdir -p "$root/var/lib/vmlease/lockspace"
echo operator >"$root/var/lib/vmlease/lockspace/VMLEASE"
rpm --root "$root" --nodeps -U "$work/n1/vmlease-$vn1-1.x86_64.rpm" >"$work/rpm-u.log" 2>&1 ||
    { cat "$work/rpm-u.log"; fail "rpm -U in the scratch root"; }
[ "$(rpm --root "$root" -q vmlease)" = "vmlease-$vn1-1.x86_64" ] || fail "rpm: not upgraded to $vn1"
cmp -s "$root$conf" "$work/rpm-edited.conf" || fail "rpm -U changed the operator's config"
rpm --root "$root" --nodeps -e vmlease >"$work/rpm-e.log" 2>&1 || { cat "$work/rpm-e.log"; fail "rpm -e in the scratch root"; }
# A scriptlet's shell errors name its temporary file.
! grep -q 'scriptlet failed\|rpm-tmp\.' "$work/rpm-i.log" "$work/rpm-u.log" "$work/rpm-e.log" ||
    fail "an rpm scriptlet failed: $(grep -h 'scriptlet failed\|rpm-tmp\.' "$work"/rpm-?.log)"
while read -r kind path mode; do
    case "$kind" in
        conf | dir) ;;
        *) [ ! -e "$root$path" ] || fail "rpm -e left $path" ;;
    esac
done <"$work/n/files-rpm.txt"
[ -f "$root$conf.rpmsave" ] || fail "rpm -e did not keep the edited config as .rpmsave"
[ "$(cat "$root/var/lib/vmlease/lockspace/VMLEASE")" = operator ] || fail "rpm -e touched the lockspace"
ok ".rpm in a scratch root: install (%post ran), upgrade keeps the edited config, erase keeps it as .rpmsave and leaves the lockspace"

echo "packages: $passed passed, 0 failed"
