# shellcheck shell=bash
# Sourced by the libvirt tests after lib.sh: a private libvirtd for this test only.
#
# Debian 12 has the monolithic libvirtd (no virtqemud) and, without
# libvirt-daemon-system, no libvirt-qemu user and no systemd here. A
# privileged libvirtd keeps its configuration and state under fixed paths
# (/etc/libvirt, /run/libvirt, /var/lib/libvirt...), so it runs in a mount
# namespace of its own where directories under $T are mounted over those:
# nothing of the host's libvirt is read or changed, and several tests may
# each run one. Its qemu.conf runs QEMU as root without a security driver,
# cgroups or a private /dev (none of them works in this sandbox).
#
#   libvirt_start        sets LV_DIR, LV_URI, LV_PID; skips (77) unless root
#                        with the packages installed
#   virsh_ ARGS...       virsh against it (bounded by a timeout)
#   libvirt_stop         destroys its domains, stops QEMU and the daemons by PID
#                        (registered with on_exit by libvirt_start)

LV_DIR='' LV_URI='' LV_PID=''

virsh_() { timeout 120 virsh -q -c "$LV_URI" "$@"; }

_lv_alive() { local st; st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1; [ "$st" != Z ]; }
_lv_is() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q -- "$2"; }

libvirt_start() {
    [ "$(id -u)" = 0 ] || skip "libvirt tests need root (mount namespace)"
    need virsh libvirtd virtlogd unshare qemu-system-x86_64
    [ -d /etc/libvirt ] || skip "libvirt-daemon not installed"
    LV_DIR=$T/libvirt
    mkdir -p "$LV_DIR"/{etc,run,lib,cache,log}
    chmod 755 "$T" "$LV_DIR"
    cat >"$LV_DIR/etc/libvirtd.conf" <<EOF
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF
    echo 'log_outputs = "3:file:/var/log/libvirt/virtlogd.log"' >"$LV_DIR/etc/virtlogd.conf"
    cat >"$LV_DIR/etc/qemu.conf" <<EOF
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "logd"
EOF
    : >"$LV_DIR/etc/libvirt.conf"
    # libvirtd looks up its compiled-in "libvirt-qemu" user before reading
    # qemu.conf and disables the QEMU driver without it: give the namespace a
    # passwd/group that has one (QEMU still runs as root).
    local users=0
    if ! getent passwd libvirt-qemu >/dev/null; then
        users=1
        cp /etc/passwd "$LV_DIR/passwd"; cp /etc/group "$LV_DIR/group"
        local id=64055
        while getent passwd $id >/dev/null || getent group $id >/dev/null; do id=$((id + 1)); done
        getent group libvirt-qemu >/dev/null || echo "libvirt-qemu:x:$id:" >>"$LV_DIR/group"
        echo "libvirt-qemu:x:$id:$id:vbd test:/var/lib/libvirt:/usr/sbin/nologin" >>"$LV_DIR/passwd"
    fi
    # the mount points (what libvirt-daemon-system would have created)
    mkdir -p /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt
    # unshare execs (no --fork), and so does the shell: $! is libvirtd itself
    setsid unshare --mount --propagation private -- /bin/sh -ec '
        D=$1
        if [ "$2" = 1 ]; then mount --bind "$D/passwd" /etc/passwd; mount --bind "$D/group" /etc/group; fi
        mount --bind "$D/etc" /etc/libvirt
        mount --bind "$D/run" /run/libvirt
        mount --bind "$D/lib" /var/lib/libvirt
        mount --bind "$D/cache" /var/cache/libvirt
        mount --bind "$D/log" /var/log/libvirt
        virtlogd --daemon --pid-file /run/libvirt/virtlogd.pid
        exec libvirtd --pid-file /run/libvirt/libvirtd.pid
    ' sh "$LV_DIR" "$users" </dev/null >"$LV_DIR/log/stdout" 2>&1 &
    LV_PID=$!
    on_exit libvirt_stop
    LV_URI="qemu+unix:///system?socket=$LV_DIR/run/libvirt-sock"
    # up to 600 s: 180 s was outlasted once by a libvirt-guest run at load
    # 29-31 (round 29; the start alone takes 21-31 s at load 30, and what
    # took the rest was not logged: the failure now prints libvirtd's log
    # and virsh's answer)
    local end=$((SECONDS + 600))
    until [ -S "$LV_DIR/run/libvirt-sock" ] && timeout 30 virsh -c "$LV_URI" version >/dev/null 2>&1; do
        _lv_alive "$LV_PID" || { tail -n 20 "$LV_DIR/log/"*; fail "libvirtd exited"; }
        [ $SECONDS -lt $end ] || {
            ls -l "$LV_DIR/run"; tail -n 30 "$LV_DIR/log/libvirtd.log"
            timeout 30 virsh -c "$LV_URI" version
            fail "libvirtd not ready after 600 s"
        }
        sleep 0.2
    done
    # the QEMU driver probes QEMU's capabilities: usable only once that worked
    timeout 120 virsh -c "$LV_URI" domcapabilities --virttype qemu >/dev/null ||
        { tail -n 20 "$LV_DIR/log/libvirtd.log"; fail "libvirtd's QEMU driver is not usable"; }
}

# SIGTERM, then SIGKILL after 15 s, the PIDs given (only those still alive).
# builtin kill: the callers name each process by its program, and libvirtd
# starts QEMU and virtlogd with an environment of its own, without the tag
# lib.sh's exit cleanup looks for
_lv_stop_pids() {
    local p end=$((SECONDS + 15))
    for p in "$@"; do builtin kill -TERM "$p" 2>/dev/null; done
    for p in "$@"; do
        while _lv_alive "$p"; do
            if [ $SECONDS -ge $end ]; then builtin kill -KILL "$p" 2>/dev/null; break; fi
            sleep 0.1
        done
    done
}

libvirt_stop() {
    [ -n "$LV_DIR" ] && [ -d "$LV_DIR" ] || return 0
    local dom p f pids=()
    if [ -S "$LV_DIR/run/libvirt-sock" ] && _lv_alive "$LV_PID"; then
        for dom in $(timeout 20 virsh -c "$LV_URI" list --all --name 2>/dev/null); do
            timeout 30 virsh -c "$LV_URI" destroy "$dom" >/dev/null 2>&1
            timeout 30 virsh -c "$LV_URI" undefine "$dom" >/dev/null 2>&1
        done
    fi
    for f in "$LV_DIR"/run/qemu/*.pid; do
        [ -e "$f" ] || continue
        p=$(cat "$f" 2>/dev/null)
        case "$p" in '' | *[!0-9]*) continue ;; esac
        _lv_alive "$p" && _lv_is "$p" qemu-system && pids+=("$p")
    done
    [ ${#pids[@]} = 0 ] || _lv_stop_pids "${pids[@]}"
    pids=()
    _lv_alive "$LV_PID" && _lv_is "$LV_PID" libvirtd && pids+=("$LV_PID")
    p=$(cat "$LV_DIR/run/virtlogd.pid" 2>/dev/null) && _lv_alive "$p" && _lv_is "$p" virtlogd && pids+=("$p")
    [ ${#pids[@]} = 0 ] || _lv_stop_pids "${pids[@]}"
    LV_DIR=
}
