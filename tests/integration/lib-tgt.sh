# shellcheck shell=bash
# shellcheck disable=SC2034 # TGT_* are for the test that sources this
# Sourced after lib.sh: a private tgtd (Debian's user-space iSCSI target)
# for one test. tgtd needs root (its control socket lives in
# /var/run/tgtd/socket.<N>, N at most 32767); each instance takes a free
# TCP port P in 20001..49999 and control port P - 20000, so tests in
# parallel never share one.
# tgt_start IMG [IQN]   one target, LUN 1 = IMG (thin-provisioned: UNMAP,
#                       GET LBA STATUS), open to every initiator; sets
#                       TGT_PORT TGT_PID TGT_IQN TGT_URL
# tgt_adm ARGS...       tgtadm on this instance
# tgt_kill9             SIGKILL, as a crash; tgt_restart brings the same
#                       target back on the same port
# Stopped in the EXIT trap (only the PID it started, checked by cmdline).
need tgtd tgtadm
[ "$(id -u)" = 0 ] || skip "tgtd needs root (control socket in /var/run/tgtd)"
TGT_PID='' TGT_PORT='' TGT_CTRL='' TGT_IMG='' TGT_IQN='' TGT_URL=''

_tgt_ours() { [ -n "$TGT_PID" ] && tr '\0' ' ' 2>/dev/null <"/proc/$TGT_PID/cmdline" | grep -q "^tgtd -f -C $TGT_CTRL "; }
_tgt_alive() { local st; st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1; [ "$st" != Z ]; }
tgt_adm() { timeout 20 tgtadm -C "$TGT_CTRL" --lld iscsi "$@"; }

_tgt_launch() {
    mkdir -p /var/run/tgtd
    setsid tgtd -f -C "$TGT_CTRL" --iscsi "portal=127.0.0.1:$TGT_PORT" </dev/null >>"$T/tgtd.log" 2>&1 &
    TGT_PID=$!
    disown "$TGT_PID" # its SIGKILL is no job news
    for _ in $(seq 1200); do
        [ -S "/var/run/tgtd/socket.$TGT_CTRL" ] && (exec 3<>"/dev/tcp/127.0.0.1/$TGT_PORT") 2>/dev/null && return 0
        _tgt_alive "$TGT_PID" || break
        sleep 0.05
    done
    echo "tgtd on port $TGT_PORT did not come up; its log:" >>"$T/tgtd.err"
    tail -8 "$T/tgtd.log" >>"$T/tgtd.err"
    _tgt_ours && kill -KILL "$TGT_PID"
    while _tgt_alive "$TGT_PID"; do sleep 0.05; done
    rm -f "/var/run/tgtd/socket.$TGT_CTRL" "/var/run/tgtd/socket.$TGT_CTRL.lock"
    return 1
}

_tgt_setup() {
    tgt_adm --op new --mode target --tid 1 -T "$TGT_IQN" &&
        tgt_adm --op new --mode logicalunit --tid 1 --lun 1 -b "$TGT_IMG" --bstype rdwr &&
        tgt_adm --op update --mode logicalunit --tid 1 --lun 1 --params thin_provisioning=1 &&
        tgt_adm --op bind --mode target --tid 1 -I ALL
}

tgt_start() {
    TGT_IMG=$1 TGT_IQN=${2:-iqn.2024-01.org.vbd.test:disk1}
    for _ in 1 2 3 4 5 6 7 8; do
        TGT_PORT=$((20001 + RANDOM % 29999)) TGT_CTRL=$((TGT_PORT - 20000))
        [ -e "/var/run/tgtd/socket.$TGT_CTRL" ] && continue
        (exec 3<>"/dev/tcp/127.0.0.1/$TGT_PORT") 2>/dev/null && continue
        if _tgt_launch; then
            _tgt_setup || fail "tgtadm could not set up the target (log: $(tail -3 "$T/tgtd.log"))"
            TGT_URL="iscsi://127.0.0.1:$TGT_PORT/$TGT_IQN/1"
            return 0
        fi
        tgt_stop # lost a race for the port: another one
    done
    fail "tgtd did not start: $(cat "$T/tgtd.err")"
}

tgt_kill9() {
    _tgt_ours && kill -KILL "$TGT_PID"
    while _tgt_alive "$TGT_PID"; do sleep 0.05; done
    rm -f "/var/run/tgtd/socket.$TGT_CTRL" "/var/run/tgtd/socket.$TGT_CTRL.lock"
}

tgt_restart() {
    _tgt_launch || _tgt_launch || fail "tgtd did not restart on port $TGT_PORT: $(cat "$T/tgtd.err")"
    _tgt_setup || fail "tgtadm could not set up the target again"
}

# tgtd ignores SIGTERM: delete its system over the control socket, then
# SIGKILL if it is still there after 10 s.
tgt_stop() {
    if _tgt_ours; then
        timeout 10 tgtadm -C "$TGT_CTRL" --lld iscsi --op delete --mode target --tid 1 --force >/dev/null 2>&1
        timeout 10 tgtadm -C "$TGT_CTRL" --op delete --mode system >/dev/null 2>&1
        for _ in $(seq 100); do _tgt_alive "$TGT_PID" || break; sleep 0.1; done
        _tgt_alive "$TGT_PID" && _tgt_ours && kill -KILL "$TGT_PID"
        while _tgt_alive "$TGT_PID"; do sleep 0.05; done
    fi
    [ -n "$TGT_CTRL" ] && rm -f "/var/run/tgtd/socket.$TGT_CTRL" "/var/run/tgtd/socket.$TGT_CTRL.lock"
    TGT_PID=
}
on_exit tgt_stop
# a test killed by timeout(1) or ^C still stops its tgtd (bash runs the EXIT trap only on exit)
trap 'exit 143' TERM
trap 'exit 130' INT
