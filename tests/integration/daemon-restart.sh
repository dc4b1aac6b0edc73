#!/bin/bash
# A daemon restarted with the same command line starts and serves, after
# SIGTERM, after QMP quit and after kill -9 (every socket file and the
# --pidfile left behind), for qemu-storage-daemon 7.2 and vbd-daemon alike.
# The socket files left at a clean exit: qsd removes its monitor's and its
# vhost-user-blk export's but leaves the NBD server's; vbd-daemon removes
# all three (a deliberate difference, README: a script or service manager
# that waits for the socket to appear must not take last run's file for
# this run's listener; both replace a stale file when they start, so a
# restart works either way).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon nbdinfo python3
cd "$T"
pid=
on_exit '[ -z "$pid" ] || kill -9 $pid 2>/dev/null'

# start NAME BIN: in $T/NAME, returns once the pid file names it (both write
# it after every socket listens; a stale file from a killed run names the old one)
start() {
    local d=$T/$1
    mkdir -p "$d"
    "$2" --chardev socket,id=m0,path="$d/qmp.sock",server=on,wait=off --monitor chardev=m0 \
        --blockdev driver=null-co,node-name=n0,size=1048576 \
        --nbd-server addr.type=unix,addr.path="$d/nbd.sock" --export type=nbd,id=e0,node-name=n0,name=disk \
        --export type=vhost-user-blk,id=e1,node-name=n0,addr.type=unix,addr.path="$d/vu.sock" \
        --pidfile "$d/pid" 2>>"$d/err.log" &
    pid=$!
    for _ in $(seq 1200); do [ "$(cat "$d/pid" 2>/dev/null)" = $pid ] && break
        kill -0 $pid 2>/dev/null || break; sleep 0.05; done
    [ "$(cat "$d/pid" 2>/dev/null)" = $pid ] || fail "$1 did not start: $(cat "$d/err.log")"
    [ "$(nbdinfo --size "nbd+unix:///disk?socket=$d/nbd.sock")" = 1048576 ] || fail "$1: the NBD export does not answer"
    [ -S "$d/vu.sock" ] && [ -S "$d/qmp.sock" ] || fail "$1: no vhost-user or monitor socket"
}
# stopped NAME HOW: the daemon exited with status 0 (HOW: TERM or quit); the socket files left
stopped() {
    local d=$T/$1 rc
    if [ "$2" = quit ]; then
        python3 -c "
import sys; sys.path.insert(0, '$VBD_ROOT/tests/qmp')
from qmp import QMP
m = QMP('$d/qmp.sock', negotiate=True)
assert m.cmd('quit') == {'return': {}}
" || fail "$1: quit"
    else
        kill -TERM $pid
    fi
    wait $pid; rc=$?
    pid=
    [ $rc = 0 ] || fail "$1 exited with $rc after $2: $(cat "$d/err.log")"
    ! grep -q -e Sanitizer -e 'runtime error' "$d/err.log" || fail "$1: $(cat "$d/err.log")"
    left=$(cd "$d" && for f in qmp.sock nbd.sock vu.sock pid; do [ -e $f ] && echo -n "$f "; done)
}

for who in qsd vbd; do
    bin=qemu-storage-daemon
    want="nbd.sock " # qsd's NBD server leaves its file
    [ $who = vbd ] && bin=$VBD_DAEMON want=
    for how in TERM quit; do
        step "$who: started, stopped by $how: exit 0, the socket files left: '${want}'"
        start $who $bin
        stopped $who $how
        [ "$left" = "$want" ] || fail "$who after $how: left '$left', want '$want'"
        step "$who: started again with the same command line (what the last run left in place)"
        start $who $bin
        stopped $who TERM
    done
    step "$who: killed with SIGKILL, every file left behind; a restart replaces them"
    start $who $bin
    kill -9 $pid; wait $pid 2>/dev/null; pid=
    for f in qmp.sock nbd.sock vu.sock pid; do [ -e "$T/$who/$f" ] || fail "$who: $f gone after SIGKILL"; done
    start $who $bin
    stopped $who TERM
    [ "$left" = "$want" ] || fail "$who after a restart over stale files: left '$left', want '$want'"
done
echo PASS
