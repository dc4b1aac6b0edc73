#!/bin/bash
# bench/syscall-tax (the wrapper behind bench/common.sh's SYSCALL_NS, which
# emulates a host with dear syscalls): the command it runs has its seccomp
# filters, in every thread and child; its exit status passes through; and
# real work through it is unchanged: vbd-daemon and its clients all wrapped,
# NBD over a unix socket and TCP (io_uring, splice, sockets) and
# vhost-user-blk (eventfds, shared memory), every byte checked against
# qemu-io and qemu-img. Nothing here measures the cost (no timing).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io nbdcopy nbdinfo python3
TAXBIN=$VBD_BUILD/bench/syscall-tax
[ -x "$TAXBIN" ] || fail "$TAXBIN not built"
# a fixed filter size: --ns calibrates (timing), tried once below
TAX=("$TAXBIN" --insns 3000 --)

step "the filters are in place in the command, its children and its threads"
st=$("${TAX[@]}" cat /proc/self/status) || fail "cat through the wrapper"
grep -qx $'Seccomp:\t2' <<<"$st" || fail "no seccomp filter mode: $(grep Seccomp <<<"$st")"
n=$(awk '$1 == "Seccomp_filters:" {print $2}' <<<"$st")
[ "${n:-0}" -ge 1 ] || fail "Seccomp_filters ${n:-missing}"
# 10000 loads need 3 filters (at most 4096 instructions each)
n=$("$TAXBIN" --insns 10000 -- sh -c 'awk '\''$1 == "Seccomp_filters:" {print $2}'\'' /proc/self/status')
[ "$n" = 3 ] || fail "10000 loads: $n filters, expected 3"
# --ns: calibrated, then the same. The target is far above any host's null
# syscall (a target below it installs no filter: 600 failed by chance on
# this ~425 ns host under load, and always would on a ~1 us one)
st=$("$TAXBIN" --ns 50000 -- cat /proc/self/status) || fail "--ns 50000"
grep -qx $'Seccomp:\t2' <<<"$st" || fail "--ns: no seccomp filter"
must_fail_with "more than the kernel allows" "$TAXBIN" --insns 40000 -- true
must_fail_with "--ns: 'abc' is not a count" "$TAXBIN" --ns abc -- true
must_fail_with "--insns: '12x' is not a count" "$TAXBIN" --insns 12x -- true

step "the exit status passes through"
"${TAX[@]}" sh -c 'exit 3'; rc=$?
[ $rc = 3 ] || fail "exit 3 came back as $rc"
"${TAX[@]}" sh -c 'kill -TERM $$'; rc=$?
[ $rc = 143 ] || fail "SIGTERM came back as $rc"
"${TAX[@]}" true || fail "true failed"
"${TAX[@]}" "$T/no-such-command" 2>/dev/null; rc=$?
[ $rc = 127 ] || fail "a missing command: $rc, expected 127"
"$TAXBIN" 2>/dev/null; rc=$?
[ $rc = 2 ] || fail "no arguments: $rc, expected 2"

img=$T/disk.raw
qemu-img create -q -f raw "$img" 64M
must qemu-io -f raw -c 'write -P 0x5a 0 64M' "$img" >/dev/null
sock=$T/nbd.sock
# serve ADDR: vbd-daemon, wrapped, exporting $img writable as "disk" on a
# unix socket path or tcp:PORT; its pid in $dpid
serve() { nbd_raw_daemon -w "${TAX[*]}" "$img" "$1"; }
unserve() { kill -TERM $dpid; wait $dpid || fail "vbd-daemon exit status $? after SIGTERM"; dpid=; }
# every thread of the server carries the filters
threads_taxed() {
    local f
    for f in /proc/$1/task/*/status; do
        grep -qx $'Seccomp:\t2' "$f" || fail "thread ${f%/status} of vbd-daemon has no filter"
    done
}

port=$(free_port) || fail "no free TCP port"
for t in unix tcp; do
    addr=$sock uri="nbd+unix:///disk?socket=$sock"
    [ $t = tcp ] && addr=tcp:$port uri="nbd://127.0.0.1:$port/disk"
    step "$t: NBD server and clients wrapped: vbd-bench --verify, qemu-io patterns, nbdcopy, qemu-img compare"
    serve "$addr"
    threads_taxed $dpid
    must "${TAX[@]}" "$VBD_BENCH" --nbd "$uri" --verify --size 16M -d 16 >/dev/null
    must "${TAX[@]}" "$VBD_BENCH" --nbd "$uri" --verify --size 8M -d 8 -b 256k -q 2 >/dev/null
    # qemu-io over the same socket: 1M reads (the server's zero-copy read
    # path for resident pages), writes, zeroes
    must "${TAX[@]}" qemu-io -f raw -c 'write -P 0xa1 32M 4M' -c 'write -z 40M 1M' -c 'read -P 0xa1 32M 4M' \
        -c 'read -P 0 40M 1M' -c 'read -P 0x5a 48M 8M' "$uri" >/dev/null
    must "${TAX[@]}" nbdcopy "$uri" "$T/copy.raw"
    unserve
    must cmp "$img" "$T/copy.raw"
    must qemu-io -f raw -c 'read -P 0xa1 32M 4M' -c 'read -P 0 40M 1M' -c 'read -P 0x5a 48M 8M' "$img" >/dev/null
    rm -f "$T/copy.raw"
done

step "vhost-user-blk: server and vbd-bench wrapped, --verify with 2 queues"
vsock=$T/vu.sock
rm -f "$vsock"
on_exit 'kill -9 $dpid 2>/dev/null'
"${TAX[@]}" "$VBD_DAEMON" --blockdev driver=file,node-name=f0,filename="$img" --blockdev driver=raw,node-name=d0,file=f0 \
    --export type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path="$vsock",writable=on,num-queues=2 \
    >"$T/daemon.log" 2>&1 &
dpid=$!
for _ in $(seq 1200); do [ -S "$vsock" ] && break; sleep 0.05; done
[ -S "$vsock" ] || { cat "$T/daemon.log"; fail "vhost-user export did not start"; }
must "${TAX[@]}" "$VBD_BENCH" --vhost-user "$vsock" --verify -q 2 -d 16 --size 16M >/dev/null
threads_taxed $dpid
unserve
# vbd-bench's pattern (8-byte words from their offset) is in the file
python3 - "$img" <<'PY' || fail "the vhost-user verify pattern is not in the image"
import array, sys
K, C, M = 0x9E3779B97F4A7C15, 0x7662642d62656e63, (1 << 64) - 1
f = open(sys.argv[1], 'rb')
for off in (0, 4096, (16 << 20) - 4096):
    f.seek(off)
    if list(array.array('Q', f.read(4096))) != [((off + 8 * i) * K & M) ^ C for i in range(512)]:
        sys.exit('mismatch at %d' % off)
PY
echo "PASS"
