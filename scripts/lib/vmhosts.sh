# shellcheck shell=sh
# Several libvirt "hypervisor hosts" on one machine, for the demo and the
# end-to-end tests. Each host is a libvirtd with the vmlease plugin, a
# virtlogd and a vmlease-watchdog in its own mount + UTS namespace, under a
# child subreaper; hosts share only the lockspace directory. Every process
# is tracked by pid and stopped by vmh_cleanup.
#
# Before sourcing, set:
#   VMH_DIR   scratch directory (removed by vmh_cleanup)
#   VMH_BIN   directory with vmlease, vmlease-watchdog and libvmlease.so
#   VMH_LIBDIR  the directory of this file
# Optional:
#   VMH_LOCKSPACE  the shared lockspace directory (default VMH_DIR/lockspace;
#               e.g. a directory on a CephFS mounted before vmh_init: the
#               hosts' mount namespaces are copies of ours)
#   VMH_ALLOW_LOCAL  allow_local_lockspace in the configs (default true:
#               the default lockspace is a local directory; false on CephFS)
#   VMH_CEPH_CONF, VMH_CEPH_ROOT  (exported) each host mounts the lockspace
#               through a ceph-fuse client of its own, in its network
#               namespace: the cluster's ceph.conf and the lockspace's
#               directory in the CephFS (a host's link then carries its
#               storage, and a Ceph blocklist of its address fences it)
#   VMH_LOCK_MANAGER  qemu.conf's lock_manager for the next vmh_host_up
#               (vmlease, nop, lockd or sanlock)
#   VMH_SANLOCK_LEASES  sanlock's shared disk_lease_dir (default
#               VMH_DIR/sanlock-leases); VMH_SANLOCK_PRELOAD: an LD_PRELOAD
#               for the sanlock daemon
# Timing of the test hosts: vmh_host_up writes it into each config.

VMH_HOSTS=""
VMH_MADE=""

vmh_now_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }

# vmh_wait WHAT TIMEOUT_MS CMD...: polls CMD (every 50 ms) until it
# succeeds; on timeout prints what it waited for and CMD's last output.
vmh_wait() {
    what=$1 limit=$2
    shift 2
    start=$(vmh_now_ms)
    while :; do
        if out=$("$@" 2>&1); then
            return 0
        fi
        if [ $(($(vmh_now_ms) - start)) -gt "$limit" ]; then
            echo "timed out after $limit ms waiting for $what; last seen: $out" >&2
            return 1
        fi
        sleep 0.05
    done
}

# Network: every host has its own network namespace with one link
# (192.0.2.10+ID/24) to a bridge in a "switch" namespace the harness makes;
# nothing is routed anywhere else.
VMH_TAG=$$
vmh_switch() { echo "vmh-sw-$VMH_TAG"; }
vmh_netns() { echo "vmh-$1-$VMH_TAG"; }
vmh_addr() { echo "192.0.2.$((10 + $1))"; }

vmh_init() {
    ip netns add "$(vmh_switch)"
    ip -n "$(vmh_switch)" link add br0 type bridge
    ip -n "$(vmh_switch)" link set br0 up
    for d in /var/lib/vmlease/lockspace /var/lib/vmlease /run/vmlease /run/sanlock; do
        [ -e "$d" ] || VMH_MADE="$VMH_MADE $d"
    done
    rm -rf "$VMH_DIR"
    VMH_LOCKSPACE=${VMH_LOCKSPACE:-$VMH_DIR/lockspace}
    VMH_SANLOCK_LEASES=${VMH_SANLOCK_LEASES:-$VMH_DIR/sanlock-leases}
    mkdir -p "$VMH_DIR" "$VMH_LOCKSPACE"
    # The hosts' anchor, built as tests/support/util.rs builds it (C_FLAGS).
    cc -O2 -Wall -pthread -o "$VMH_DIR/subreaper" "$VMH_LIBDIR/subreaper.c"
    printf 'lockspace_dir = "%s"\nallow_local_lockspace = %s\n' "$VMH_LOCKSPACE" "${VMH_ALLOW_LOCAL:-true}" >"$VMH_DIR/init.conf"
    "$VMH_BIN/vmlease" --config "$VMH_DIR/init.conf" init >/dev/null
}

# vmh_stop_pids PID...: processes a test started beside the hosts (etcd,
# vmlease-ha, watchers): SIGTERM, then SIGKILL after 2 s.
vmh_stop_pids() {
    for vmh_p in "$@"; do kill "$vmh_p" 2>/dev/null; done
    for vmh_p in "$@"; do
        vmh_i=0
        while kill -0 "$vmh_p" 2>/dev/null && [ "$vmh_i" -lt 40 ]; do sleep 0.05; vmh_i=$((vmh_i + 1)); done
        kill -9 "$vmh_p" 2>/dev/null
    done
    return 0
}

# vmh_report_survivors WHO PID...: names each of the processes that is
# still alive (a zombie is not) after the cleanup.
vmh_report_survivors() {
    vmh_who=$1
    shift
    for vmh_p in "$@"; do
        if [ -d "/proc/$vmh_p" ] && ! grep -q '^State:.*Z' "/proc/$vmh_p/status" 2>/dev/null; then
            echo "$vmh_who: pid $vmh_p ($(readlink "/proc/$vmh_p/exe")) survived the cleanup" >&2
        fi
    done
    return 0
}

# vmh_etcdctl ARGS...: etcdctl (API 3) against $ETCD_URL, from the switch
# namespace where the tests run etcd.
vmh_etcdctl() {
    ip netns exec "$(vmh_switch)" env ETCDCTL_API=3 etcdctl --endpoints="$ETCD_URL" "$@"
}

vmh_cleanup() {
    set +e
    for n in $VMH_HOSTS; do
        h="$VMH_DIR/host-$n"
        for f in "$h/run/libvirtd.pid" "$h/run/virtlogd.pid" "$h/run/virtlockd.pid" "$h/sanlock/sanlock.pid" "$h/watchdog.pid" "$h"/run/qemu/*.pid "$h/sleep.pid" "$h/anchor.pid" "$h/ceph-fuse.pid"; do
            [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null
        done
    done
    sleep 0.2
    for n in $VMH_HOSTS; do ip netns del "$(vmh_netns "$n")" 2>/dev/null; done
    ip netns del "$(vmh_switch)" 2>/dev/null
    rm -rf "$VMH_DIR"
    for d in $VMH_MADE; do rmdir "$d" 2>/dev/null; done
    VMH_HOSTS=""
}

# vmh_host_up NAME HOST_ID [EXTRA_CONFIG]: starts a host and waits until
# libvirtd answers and the watchdog protects it.
vmh_host_up() {
    n=$1 id=$2 extra=${3:-}
    h="$VMH_DIR/host-$n"
    mkdir -p "$h/run" "$h/lib/images" "$h/lib/qemu" "$h/log/qemu" "$h/cache" "$h/etc" "$h/state" "$h/plugins"
    cp -a /etc/libvirt/. "$h/etc/"
    if [ -d /var/cache/libvirt/qemu ]; then cp -a /var/cache/libvirt/qemu "$h/cache/"; fi
    cat >"$h/etc/qemu.conf" <<EOC
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
lock_manager = "${VMH_LOCK_MANAGER:-vmlease}"
EOC
    # Live migration needs a distinct host UUID per libvirtd.
    printf 'host_uuid = "%08d-0000-4000-8000-00000000000%d"\n' "$id" "$id" >>"$h/etc/libvirtd.conf"
    cat >"$h/etc/qemu-vmlease.conf" <<EOC
host_id = $id
host_name = "host-$n.test"
lockspace_dir = "/var/lib/vmlease/lockspace"
state_dir = "/run/vmlease"
renew_interval = ${VMH_R:-0.5}
renew_fail_timeout = ${VMH_F:-3}
kill_timeout = ${VMH_K:-1}
watchdog_timeout = ${VMH_W:-2}
# No hardware watchdog in this sandbox: UNSAFE outside tests and demos.
unsafe_no_watchdog = true
# A local lockspace directory (unless VMH_ALLOW_LOCAL=false: on CephFS):
# UNSAFE outside tests and demos.
allow_local_lockspace = ${VMH_ALLOW_LOCAL:-true}
# The other hosts have none either; take their leases over after D anyway.
trust_unsafe_peers = true
$extra
EOC
    if [ "${VMH_LOCK_MANAGER:-}" = sanlock ]; then
        mkdir -p "$VMH_SANLOCK_LEASES"
        cat >"$h/etc/qemu-sanlock.conf" <<EOC
auto_disk_leases = 1
disk_lease_dir = "/var/lib/libvirt/sanlock"
host_id = $id
require_lease_for_disks = 1
EOC
    fi
    cp "$VMH_BIN/libvmlease.so" "$h/plugins/vmlease.so"
    # libvirt's own plugins stay reachable for the baselines.
    for p in /usr/lib/x86_64-linux-gnu/libvirt/lock-driver/*.so; do
        [ -e "$p" ] && ln -sf "$p" "$h/plugins/"
    done
    # The qemu hook, as the package installs it.
    mkdir -p "$h/etc/hooks/qemu.d"
    cp "$VMH_LIBDIR/../../hooks/qemu" "$h/etc/hooks/qemu.d/vmlease"
    chmod 755 "$h/etc/hooks/qemu.d/vmlease"
    printf 'VMLEASE_BIN=%s/vmlease\n' "$VMH_BIN" >"$h/etc/hooks/vmlease.env"
    ns=$(vmh_netns "$n")
    ip netns add "$ns"
    ip link add "vh$id-$VMH_TAG" netns "$ns" type veth peer name "vs$id-$VMH_TAG" netns "$(vmh_switch)"
    ip -n "$ns" link set "vh$id-$VMH_TAG" name eth0
    ip -n "$ns" addr add "$(vmh_addr "$id")/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    ip -n "$(vmh_switch)" link set "vs$id-$VMH_TAG" master br0 up
    echo "$id" >"$h/id"
    VMH_SANLOCK_LEASES=$VMH_SANLOCK_LEASES VMH_SANLOCK_PRELOAD=${VMH_SANLOCK_PRELOAD:-} \
        ip netns exec "$ns" unshare --mount --uts --propagation private "$VMH_DIR/subreaper" \
        sh "$VMH_LIBDIR/vmhost-init.sh" "$n" "$h" "$VMH_BIN" "$VMH_LOCKSPACE" >"$h/init.log" 2>&1 &
    echo $! >"$h/anchor.pid"
    VMH_HOSTS="$VMH_HOSTS $n"
    # VMH_UP_TIMEOUT_MS: sanlock's plugin joins its lockspace in libvirtd's
    # init, which takes ~21 s.
    if ! vmh_wait "libvirtd on host $n" "${VMH_UP_TIMEOUT_MS:-15000}" vmh_virsh "$n" hostname; then
        tail -n 20 "$h/init.log" "$h/log/libvirtd.log" "$h/watchdog.log" >&2 2>/dev/null
        return 1
    fi
    vmh_wait "host $n to be protected" 10000 vmh_protected "$n"
}

# vmh_host_crash NAME: host NAME loses power: every process of it (QEMU,
# libvirtd, virtlogd, the watchdog, the namespace's anchor) is SIGKILLed at
# once; nothing releases anything. Its network namespace stays (the NIC).
vmh_host_crash() {
    h="$VMH_DIR/host-$1"
    for f in "$h"/run/qemu/*.pid "$h/run/libvirtd.pid" "$h/run/virtlogd.pid" "$h/run/virtlockd.pid" \
        "$h/sanlock/sanlock.pid" "$h/watchdog.pid" "$h/sleep.pid" "$h/anchor.pid" "$h/ceph-fuse.pid"; do
        # (a pid may be listed twice, e.g. libvirtd as driver.pid)
        if [ -f "$f" ]; then kill -9 "$(cat "$f")" 2>/dev/null || true; fi
    done
}

# vmh_host_boot NAME: host NAME boots again after vmh_host_crash, with a
# new kernel boot id (bind-mounted over /proc/sys/kernel/random/boot_id in
# its mount namespace) and empty /run/libvirt and /run/vmlease (tmpfs on a
# real host); waits until libvirtd answers and the host is protected.
vmh_host_boot() {
    n=$1
    h="$VMH_DIR/host-$n"
    rm -rf "$h/run" "$h/state"
    mkdir -p "$h/run" "$h/state"
    cat /proc/sys/kernel/random/uuid >"$h/boot_id"
    VMH_SANLOCK_LEASES=$VMH_SANLOCK_LEASES VMH_SANLOCK_PRELOAD=${VMH_SANLOCK_PRELOAD:-} \
        ip netns exec "$(vmh_netns "$n")" unshare --mount --uts --propagation private "$VMH_DIR/subreaper" \
        sh "$VMH_LIBDIR/vmhost-init.sh" "$n" "$h" "$VMH_BIN" "$VMH_LOCKSPACE" >>"$h/init.log" 2>&1 &
    echo $! >"$h/anchor.pid"
    vmh_wait "libvirtd on host $n" "${VMH_UP_TIMEOUT_MS:-15000}" vmh_virsh "$n" hostname &&
        vmh_wait "host $n to be protected" 10000 vmh_protected "$n"
}

vmh_sock() { echo "$VMH_DIR/host-$1/run/libvirt-sock"; }
vmh_uri() { echo "qemu+unix:///system?socket=$(vmh_sock "$1")"; }
vmh_virsh() { n=$1; shift; virsh -q -c "$(vmh_uri "$n")" "$@"; }
# Runs a command in host NAME's namespaces (anchor = the subreaper).
vmh_in() { n=$1; shift; nsenter -t "$(cat "$VMH_DIR/host-$n/anchor.pid")" -m -u -n "$@"; }
# The address of host NAME on the test network.
vmh_host_addr() { vmh_addr "$(cat "$VMH_DIR/host-$1/id")"; }
vmh_vmlease() { n=$1; shift; vmh_in "$n" "$VMH_BIN/vmlease" --config /etc/libvirt/qemu-vmlease.conf "$@"; }
vmh_ctl() { n=$1 a=$2; vmh_in "$n" sh "$VMH_LIBDIR/vmhost-ctl.sh" "$a" "$VMH_DIR/host-$n" "$VMH_BIN"; }
# Protected = the daemon's status is fresh and live (what the plugin checks).
vmh_protected() {
    st="$VMH_DIR/host-$1/state/status"
    grep -q '^state=live$' "$st" 2>/dev/null && ! grep -q '^last_renewal_ms=0$' "$st"
}
vmh_qemu_pid() { cat "$VMH_DIR/host-$1/run/qemu/$2.pid"; }
vmh_lease() { echo "$VMH_LOCKSPACE/leases/$1"; }
# vmh_holder KEY: prints "host pid" of each holder of a lease record.
vmh_holders() {
    f=$(vmh_lease "$1")
    [ -f "$f" ] || return 0
    sed -n 's/^holder=\([0-9]*\)%20[^%]*%20\([0-9]*\)%20.*/\1 \2/p' "$f"
}
vmh_disk_key() { printf 'disk-%s' "$(printf '%s' "$1" | sha256sum | cut -d' ' -f1)"; }

# vmh_image HOST FILE [FORMAT]: an image private to HOST at the shared path
# /var/lib/libvirt/images/FILE (same lease key on every host, own inode).
vmh_image() {
    qemu-img create -q -f "${3:-qcow2}" "$VMH_DIR/host-$1/lib/images/$2" 64M
}

# vmh_domain NAME UUID DISK...: domain XML; a DISK is FILE[:ro|:shared].
# VMH_DOMAIN_TYPE: the domain type (default kvm when /dev/kvm exists, else
# qemu; many domains with no OS: qemu, TCG, whose BIOS costs little CPU).
vmh_domain() {
    name=$1 uuid=$2
    shift 2
    type=qemu
    [ -e /dev/kvm ] && type=kvm
    type=${VMH_DOMAIN_TYPE:-$type}
    printf "<domain type='%s'>\n  <name>%s</name>\n  <uuid>%s</uuid>\n" "$type" "$name" "$uuid"
    printf "  <memory unit='MiB'>64</memory>\n  <os><type arch='x86_64' machine='pc'>hvm</type></os>\n"
    # VMH_ON_LOCKFAILURE: the domain's <on_lockfailure> (unset: none).
    if [ -n "${VMH_ON_LOCKFAILURE:-}" ]; then
        printf "  <on_lockfailure>%s</on_lockfailure>\n" "$VMH_ON_LOCKFAILURE"
    fi
    # ACPI: PCI hotplug on the pc machine needs it.
    printf "  <features><acpi/></features>\n  <devices>\n"
    # virtio-scsi: disks on it hot-unplug at once, without guest help.
    printf "    <controller type='scsi' model='virtio-scsi'/>\n"
    dev=a
    for d in "$@"; do
        file=${d%%:*} mode=${d#*:}
        [ "$mode" = "$d" ] && mode=rw
        fmt=qcow2 extra=""
        case "$mode" in
            ro) fmt=raw extra="<readonly/>" ;;
            shared) fmt=raw extra="<shareable/>" ;;
        esac
        printf "    <disk type='file' device='disk'><driver name='qemu' type='%s'/><source file='/var/lib/libvirt/images/%s'/><target dev='vd%s' bus='virtio'/>%s</disk>\n" \
            "$fmt" "$file" "$dev" "$extra"
        dev=$(echo "$dev" | tr 'a-y' 'b-z')
    done
    printf "  </devices>\n</domain>\n"
}
