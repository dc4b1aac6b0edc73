#!/bin/bash
# lib.sh's waits for a server to come up (wait_sock, wait_port, wait_log)
# given the PID of the process that makes what they wait for: a server that
# exits first (vbd-daemon, qemu-nbd refusing their command lines) ends the wait at once, and the failure says why: the
# server's own error line (its log's tail) and its exit status. The old waits went on for their
# whole 60 s and said only "no socket". A server that comes up passes, as
# does one that made its socket and exited before the wait looked.
# Each case runs in a bash of its own that sources lib.sh (its own $T).
. "$(dirname "$0")/lib.sh"
need qemu-nbd python3
LIB=$VBD_ROOT/tests/integration/lib.sh

# case_out SCRIPT: the output and exit status ("rc N" last) of SCRIPT run
# after lib.sh in a bash of its own
case_out() {
    VBD_BUILD=$VBD_BUILD bash -c ". '$LIB'; $1" 2>&1
    echo "rc $?"
}
# must_say OUT WHAT...: OUT has each WHAT as a fixed string, and ends in rc 1
must_say() {
    local out=$1 w
    shift
    [ "$(tail -n 1 <<<"$out")" = "rc 1" ] || fail "the wait did not fail: $out"
    for w in "$@"; do
        grep -qF -- "$w" <<<"$out" || fail "the failure does not say '$w': $out"
    done
}

step "wait_sock: vbd-daemon refuses its command line; its error and exit status are printed"
out=$(case_out '"$VBD_DAEMON" --blockdev driver=nosuch,node-name=x --nbd-server addr.type=unix,addr.path="$T/n.sock" 2>"$T/d.log" &
    wait_sock "$T/n.sock" $! "$T/d.log"')
must_say "$out" "Parameter 'driver' does not accept value 'nosuch'" "exited first (exit status 1)"

step "wait_sock: qemu-nbd refuses its cache mode"
out=$(case_out 'qemu-nbd -k "$T/q.sock" --cache=bogus -f raw "$T/q.raw" 2>"$T/q.log" &
    wait_sock "$T/q.sock" $! "$T/q.log"')
must_say "$out" "Invalid cache mode" "exited first (exit status 1)"

step "wait_port: a server that exits before it listens"
out=$(case_out 'port=$(free_port); python3 -c "import sys; sys.exit(\"cannot listen\")" 2>"$T/p.log" &
    wait_port $port $! "$T/p.log"')
must_say "$out" "cannot listen" "nothing listens on port" "exited first (exit status 1)"

step "wait_log: the writer exits without the line"
out=$(case_out '(echo starting; exit 0) >"$T/l.log" & wait_log "$T/l.log" listening 1 $! "$T/l.log"')
must_say "$out" "starting" "no line 'listening'" "exited first (exit status 0)"

step "a server that comes up passes; so does one that made its socket and exited before the wait"
out=$(case_out 'S=$T/v.sock; "$VBD_DAEMON" --blockdev driver=null-co,node-name=n0 --nbd-server addr.type=unix,addr.path="$S" 2>"$T/v.log" &
    dpid=$!; wait_sock "$S" $dpid "$T/v.log"; kill -TERM $dpid; wait $dpid || fail "vbd-daemon exit status $?"
    python3 -c "import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])" "$T/gone.sock" & p=$!
    wait $p; wait_sock "$T/gone.sock" $p; echo up')
[ "$(tail -n 2 <<<"$out")" = $'up\nrc 0' ] || fail "a server that came up failed the wait: $out"
echo OK
