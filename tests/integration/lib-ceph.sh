# shellcheck shell=bash
# Sourced after lib.sh by the tests that need a Ceph cluster (rbd.sh).
# A throwaway single-host cluster in $T/ceph: one monitor, one OSD (no
# manager: librbd, qemu and fio need none), pool "rbd" with one replica.
# Everything lives in that directory (config, keyring, sockets, logs, pid
# files), cephx is on (client.admin's key in $CEPH_DIR/keyring, which the
# config names, so rbd, qemu and vbd find it), and the daemons listen on 127.0.0.1 only, on ports
# found free from 3300 up, so tests can run beside each other.
#
#   ceph_start          start it; sets CEPH_CONF and CEPH_DIR, stops it at exit
#   ceph_osd_kill9      SIGKILL the OSD (the fault case); ceph_osd_start brings it back
#   ceph_stop           stop every daemon it started (by the PIDs it recorded)
#
# Env: CEPH_OBJECTSTORE=bluestore (default; survives an OSD kill) or memstore
# (data in the OSD's memory: faster to start, lost with the OSD).
# Packages: ceph-mon ceph-osd ceph-common (scripts/deps.sh).

CEPH_DIR="" CEPH_CONF=""
_ceph_t0=0

_ceph_port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ceph_wait SECONDS WHAT CMD...: until CMD succeeds. A daemon of ours that
# is gone meanwhile ends the wait at once with the logs (it cannot come
# back by itself): one whose pid file names no live daemon of ours, or
# whose pid file, seen in this wait, is removed (a clean exit removes it;
# a forked daemon writes it only some time after its start).
ceph_wait() {
    local end=$((SECONDS + $1)) what=$2 name seen=""; shift 2
    until "$@" >/dev/null 2>&1; do
        for name in mon.a osd.0; do
            if [ -s "$CEPH_DIR/run/$name.pid" ]; then
                seen="$seen $name"
                _ceph_pid $name >/dev/null ||
                    { _ceph_logs; fail "ceph: $name exited while waiting for $what"; }
            elif [[ " $seen " == *" $name "* ]]; then
                _ceph_logs; fail "ceph: $name exited (its pid file removed) while waiting for $what"
            fi
        done
        [ $SECONDS -lt $end ] || { _ceph_logs; fail "ceph: timed out waiting for $what"; }
        sleep 0.3
    done
}
_ceph_logs() { tail -n 20 "$CEPH_DIR"/log/*.log >&2 2>/dev/null || true; }
ceph_cli() { timeout 60 ceph -c "$CEPH_CONF" --connect-timeout 20 "$@"; }

# The PID in a pid file, if that process is still a ceph daemon of ours.
_ceph_pid() {
    local f=$CEPH_DIR/run/$1.pid pid
    [ -s "$f" ] || return 1
    pid=$(cat "$f")
    tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q -- "-c $CEPH_CONF" || return 1
    # a zombie is gone for our purposes (PID 1 reaps it later)
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
    echo "$pid"
}

ceph_start() {
    need ceph-mon ceph-osd ceph monmaptool ceph-authtool rados rbd
    _ceph_t0=$SECONDS
    CEPH_DIR=$T/ceph
    CEPH_CONF=$CEPH_DIR/ceph.conf
    mkdir -p "$CEPH_DIR"/{run,log,mon.a,osd.0}
    on_exit ceph_stop
    local port=3300 tries=0 fsid
    # a port found free may be taken by a test beside this one before the
    # monitor binds it: then the monitor fails and the next port is tried
    while :; do
    while ! _ceph_port_free $port || ! _ceph_port_free $((port + 1)); do port=$((port + 7)); done
    fsid=$(cat /proc/sys/kernel/random/uuid)
    CEPH_MON_ADDR=127.0.0.1:$port
    cat >"$CEPH_CONF" <<EOF
[global]
fsid = $fsid
mon_host = v2:$CEPH_MON_ADDR
mon_initial_members = a
public_network = 127.0.0.0/8
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_ipv6 = false
ms_bind_msgr1 = false
ms_bind_port_min = $((port + 2))
ms_bind_port_max = $((port + 300))
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
mon_warn_on_insecure_global_id_reclaim_allowed = false
keyring = $CEPH_DIR/keyring
run_dir = $CEPH_DIR/run
admin_socket = $CEPH_DIR/run/\$name.\$pid.asok
pid_file = $CEPH_DIR/run/\$name.pid
log_file = $CEPH_DIR/log/\$name.log
crash_dir = $CEPH_DIR/crash
log_to_stderr = false
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 1
mon_data_avail_crit = 0
[mon]
mon_data = $CEPH_DIR/mon.\$id
[osd]
keyring = $CEPH_DIR/osd.\$id/keyring
osd_data = $CEPH_DIR/osd.\$id
osd_objectstore = ${CEPH_OBJECTSTORE:-bluestore}
bluestore_block_path = $CEPH_DIR/osd.\$id/block.file
bluestore_block_create = true
bluestore_block_size = 4294967296
bluestore_fsck_on_mount = false
bluestore_fsck_on_mkfs = false
bluestore_cache_autotune = false
bluestore_cache_size = 134217728
osd_memory_target = 939524096
memstore_device_bytes = 1073741824
osd_max_object_name_len = 460
osd_max_object_namespace_len = 64
EOF
    ceph-authtool --create-keyring "$CEPH_DIR/keyring" --gen-key -n mon. --cap mon "allow *" >/dev/null &&
        ceph-authtool "$CEPH_DIR/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' \
            --cap mgr 'allow *' >/dev/null || fail "ceph: ceph-authtool failed"
    monmaptool --create --clobber --fsid "$fsid" --addv a "[v2:$CEPH_MON_ADDR]" "$CEPH_DIR/monmap" >/dev/null ||
        fail "ceph: monmaptool failed"
    ceph-mon -c "$CEPH_CONF" -i a --mkfs --monmap "$CEPH_DIR/monmap" --keyring "$CEPH_DIR/keyring" || fail "ceph: mon mkfs failed"
    ceph-mon -c "$CEPH_CONF" -i a 2>>"$CEPH_DIR/log/mon-start.err" && break
    tries=$((tries + 1))
    [ $tries -lt 5 ] || { tail -3 "$CEPH_DIR/log/mon-start.err" >&2; fail "ceph: mon did not start"; }
    rm -rf "$CEPH_DIR/mon.a" && mkdir "$CEPH_DIR/mon.a"
    port=$((port + 7))
    done
    ceph_wait 60 "the monitor" ceph_cli mon stat
    local uuid id key
    uuid=$(cat /proc/sys/kernel/random/uuid)
    key=$(ceph-authtool --gen-print-key)
    echo "{\"cephx_secret\": \"$key\"}" >"$CEPH_DIR/osd.0/new.json"
    id=$(ceph_cli osd new "$uuid" -i "$CEPH_DIR/osd.0/new.json") && [ "$id" = 0 ] || fail "ceph: osd new gave '$id'"
    ceph-authtool --create-keyring "$CEPH_DIR/osd.0/keyring" --name osd.0 --add-key "$key" >/dev/null ||
        fail "ceph: osd keyring"
    ceph-osd -c "$CEPH_CONF" -i 0 --mkfs --osd-uuid "$uuid" >"$CEPH_DIR/log/osd-mkfs.out" 2>&1 ||
        { cat "$CEPH_DIR/log/osd-mkfs.out" >&2; fail "ceph: osd mkfs failed"; }
    ceph_osd_start
    ceph_cli osd pool create rbd 8 8 replicated >/dev/null 2>&1 || fail "ceph: pool create failed"
    ceph_cli osd pool set rbd size 1 --yes-i-really-mean-it >/dev/null 2>&1
    timeout 60 rbd -c "$CEPH_CONF" pool init rbd || fail "ceph: rbd pool init failed"
    ceph_wait_io
    echo "ceph: cluster ready in $((SECONDS - _ceph_t0)) s (mon $CEPH_MON_ADDR, ${CEPH_OBJECTSTORE:-bluestore})"
}

# Until an object can be written and removed (the PGs are active).
ceph_wait_io() {
    ceph_wait 120 "a rados write" timeout 20 rados -c "$CEPH_CONF" -p rbd put vbd-probe "$CEPH_CONF"
    timeout 20 rados -c "$CEPH_CONF" -p rbd rm vbd-probe >/dev/null 2>&1 || true
}

_ceph_osd_up() { ceph_cli osd dump | grep -q '^osd.0 up'; }
ceph_osd_start() {
    ceph-osd -c "$CEPH_CONF" -i 0 2>>"$CEPH_DIR/log/osd-stderr.log" || fail "ceph: osd did not start"
    ceph_wait 120 "osd.0 up" _ceph_osd_up
}

ceph_osd_kill9() {
    local pid
    pid=$(_ceph_pid osd.0) || fail "ceph: no running osd.0"
    kill -9 "$pid"
    while _ceph_pid osd.0 >/dev/null; do sleep 0.1; done
    # its pid file stays behind: the next start's ceph_wait would take it
    # for the new OSD gone
    rm -f "$CEPH_DIR/run/osd.0.pid"
    # the monitor must see it down before a restart can be marked up again
    ceph_cli osd down 0 >/dev/null 2>&1 || true
}

ceph_stop() {
    [ -n "$CEPH_DIR" ] && [ -d "$CEPH_DIR/run" ] || return 0
    local name pid pids=""
    for name in osd.0 mon.a; do
        pid=$(_ceph_pid $name) && { kill -TERM "$pid" 2>/dev/null; pids="$pids $pid"; }
    done
    local end=$((SECONDS + 15))
    for name in osd.0 mon.a; do
        while _ceph_pid $name >/dev/null; do
            if [ $SECONDS -ge $end ]; then
                pid=$(_ceph_pid $name) && kill -9 "$pid" 2>/dev/null
            fi
            sleep 0.1
        done
    done
}
