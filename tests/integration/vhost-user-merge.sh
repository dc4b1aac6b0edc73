#!/bin/bash
# Request merging in the vhost-user-blk export: sequential 4K writes and
# reads from vbd-bench (QD32) reach the storage below as fewer, larger
# requests, counted by nbdkit's log filter behind vbd-daemon's nbd client;
# the data verifies; requests of 64K or more and every request with
# merge=off go down on their own;
# random I/O and mixed sizes still verify.
. "$(dirname "$0")/lib.sh"
need nbdkit python3
S=$T/vu.sock
dpid= kpid=
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null; [ -n "$kpid" ] && kill $kpid 2>/dev/null'
start() { # EXPORT-OPTS: nbdkit (memory, log filter) and vbd-daemon on it
    rm -f "$T/nbd.sock" "$S" "$T/nbd.log"
    nbdkit -f -U "$T/nbd.sock" --filter=log memory 64M logfile="$T/nbd.log" 2>"$T/nbdkit.err" &
    kpid=$!
    for _ in $(seq 600); do [ -S "$T/nbd.sock" ] && break; sleep 0.1; done
    "$VBD_DAEMON" --blockdev driver=nbd,node-name=n0,server.type=unix,server.path="$T/nbd.sock" \
        --blockdev driver=raw,node-name=disk0,file=n0 \
        --export "type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,addr.path=$S,writable=on$1" 2>"$T/daemon.log" &
    dpid=$!
    for _ in $(seq 600); do [ -S "$S" ] && return; sleep 0.1; done
    cat "$T/daemon.log"; fail "vbd-daemon did not start"
}
stop() {
    kill -TERM $dpid; wait $dpid || { cat "$T/daemon.log"; fail "vbd-daemon exit status $?"; }
    dpid=
    ! grep -q "Sanitizer" "$T/daemon.log" || { cat "$T/daemon.log"; fail "sanitizer report"; }
    kill $kpid; wait $kpid 2>/dev/null; kpid=
}
count() { # OP: requests of that kind nbdkit saw, and the largest
    python3 - "$T/nbd.log" "$1" <<'PY'
import re, sys
n = big = 0
for line in open(sys.argv[1]):
    m = re.search(r' %s id=\d+ offset=0x[0-9a-f]+ count=(0x[0-9a-f]+)' % sys.argv[2], line)
    if m:
        n += 1
        big = max(big, int(m.group(1), 16))
print(n, big)
PY
}

step "merge on (default): 4096 sequential 4K writes and reads, QD32, verified"
start ""
must "$VBD_BENCH" --vhost-user "$S" --verify --size 16M -d 32 -b 4k >"$T/bench.out"
stop
read -r nw bw < <(count Write)
read -r nr br < <(count Read)
echo "nbdkit saw $nw writes (largest $bw bytes) and $nr reads (largest $br bytes) for 4096 + 4096 guest requests"
[ "$nw" -ge 1 ] && [ "$nw" -lt 4096 ] && [ "$bw" -gt 4096 ] || fail "writes were not merged: $nw writes, largest $bw"
[ "$nr" -ge 1 ] && [ "$nr" -lt 4096 ] && [ "$br" -gt 4096 ] || fail "reads were not merged: $nr reads, largest $br"
[ "$bw" -le $((4 << 20)) ] || fail "a merged write is larger than 4 MiB: $bw"

step "requests of 64 KiB go down on their own: 256 sequential 64K writes, QD8"
start ""
must "$VBD_BENCH" --vhost-user "$S" --verify --size 16M -d 8 -b 64k >/dev/null
stop
read -r nw bw < <(count Write)
[ "$nw" = 256 ] && [ "$bw" = 65536 ] || fail "64K writes: $nw writes, largest $bw (expected 256 of 65536)"

step "merge=off: every guest request goes down on its own"
start ",merge=off"
must "$VBD_BENCH" --vhost-user "$S" --verify --size 16M -d 32 -b 4k >/dev/null
stop
read -r nw bw < <(count Write)
[ "$nw" = 4096 ] && [ "$bw" = 4096 ] || fail "merge=off: $nw writes, largest $bw"

step "random and mixed I/O with merging: verify with 2 queues, 512-byte and 64K blocks; randrw error-free"
start ",num-queues=2"
must "$VBD_BENCH" --vhost-user "$S" --verify --size 4M -q 2 -d 32 -b 512 >/dev/null
must "$VBD_BENCH" --vhost-user "$S" --verify --size 32M -q 2 -d 16 -b 64k >/dev/null
out=$("$VBD_BENCH" --vhost-user "$S" -q 2 -w randrw:50 -n 20000 --flush-every 64 --json) || fail "randrw: $out"
python3 -c 'import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if r["errors"] == 0 and r["requests"] >= 20000 else 1)' "$out" ||
    fail "randrw: $out"
stop
echo OK
