#!/bin/bash
# The nbd protocol driver (vbd as NBD client) against real servers:
# qemu-nbd and nbdkit (memory, file, and the error filter), URIs and
# --image-opts, info/map/convert/compare/io agreeing with qemu-img/qemu-io,
# vbd-daemon re-exporting a remote disk, reconnect, and bad input.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io qemu-nbd nbdkit python3
cd "$T"
qemu-img create -q -f raw disk.raw 64M
must qemu-io -f raw -c "write -P 0x42 1M 2M" -c "write -P 0x43 10M 64k" disk.raw >/dev/null
qemu-nbd -f raw -k "$T/qn.sock" -x exp --persistent --shared=4 disk.raw 2>qn.log &
qpid=$!
on_exit "kill $qpid 2>/dev/null"
wait_sock qn.sock "$qpid" qn.log
U="nbd+unix:///exp?socket=$T/qn.sock"

step "qemu-nbd: info, map (holes skipped), compare, convert, as qemu-img"
for args in "info --output=json" "info" "map --output=json -f raw" "map -f raw"; do
    "$VBD_IMG" $args "$U" >v.txt 2>&1 || fail "vbd-img $args: $(cat v.txt)"
    qemu-img $args "$U" >q.txt 2>&1
    diff -u q.txt v.txt || fail "vbd-img $args over NBD differs from qemu-img"
done
must "$VBD_IMG" compare -q -f raw -F raw "$U" disk.raw
must "$VBD_IMG" convert -f raw -O raw "$U" copy.raw
cmp copy.raw disk.raw || fail "converted copy differs"
[ "$(du -k copy.raw | cut -f1)" -lt 8192 ] || fail "convert from NBD did not keep holes"

step "qemu-nbd: vbd-io writes (data, zeroes, discard), qemu-io reads through the same server, and back"
must "$VBD_IO" -f raw -c "write -P 0x44 20M 1M" -c "write -z 1M 64k" -c "aio_write -P 0x45 30M 64k" -c aio_flush \
    -c flush "$U" >/dev/null
must qemu-io -f raw -c "read -P 0x44 20M 1M" -c "read -P 0 1M 64k" -c "read -P 0x45 30M 64k" -c "read -P 0x42 2M 1M" "$U" >/dev/null
must qemu-io -f raw -c "write -P 0x46 40M 4k" "$U" >/dev/null
must "$VBD_IO" -f raw -r -c "read -P 0x46 40M 4k" "$U" >/dev/null
must "$VBD_IO" --image-opts -c "read -P 0x44 20M 1M" \
    "driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=$T/qn.sock,file.export=exp" >/dev/null
must "$VBD_IO" -f raw -r -c "read -P 0x42 2M 64k" "nbd:unix:$T/qn.sock:exportname=exp" >/dev/null

step "vbd-daemon re-exports the remote disk; qemu-img reads it through both hops"
"$VBD_DAEMON" --blockdev driver=nbd,node-name=n0,server.type=unix,server.path="$T/qn.sock",export=exp \
    --nbd-server addr.type=unix,addr.path="$T/vbd.sock" --export type=nbd,id=e0,node-name=n0,name=hop,writable=on \
    2>daemon.log &
dpid=$!
on_exit "kill $dpid 2>/dev/null"
wait_sock vbd.sock "$dpid" daemon.log
must qemu-img compare -q -f raw -F raw "nbd+unix:///hop?socket=$T/vbd.sock" "$U"
must qemu-io -f raw -c "write -P 0x47 50M 64k" "nbd+unix:///hop?socket=$T/vbd.sock" >/dev/null
must qemu-io -f raw -r -c "read -P 0x47 50M 64k" "$U" >/dev/null
kill -TERM $dpid; wait $dpid || fail "vbd-daemon exit status $?"

step "nbdkit memory and file plugins over TCP"
port=$(free_port 4) || fail "no free TCP port"
nbdkit -f -i 127.0.0.1 -p $port memory 32M 2>/dev/null &
kpid=$!
on_exit "kill $kpid 2>/dev/null"
for _ in $(seq 1200); do nbdinfo --size "nbd://127.0.0.1:$port" >/dev/null 2>&1 && break; sleep 0.05; done
must "$VBD_IO" -f raw -c "write -P 0x51 0 1M" -c "read -P 0x51 0 1M" -c "read -P 0 1M 1M" "nbd://127.0.0.1:$port" >/dev/null
[ "$("$VBD_IMG" info --output=json "nbd://127.0.0.1:$port" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')" = 33554432 ] ||
    fail "nbdkit memory size"
kill $kpid
nbdkit -f -U "$T/kf.sock" file disk.raw 2>/dev/null &
kfpid=$!
on_exit "kill $kfpid 2>/dev/null"
wait_sock kf.sock "$kfpid"
must "$VBD_IMG" compare -q -f raw -F raw "nbd+unix:///?socket=$T/kf.sock" "$U"
kill $kfpid

step "nbdkit error filter: errors reach the caller, nothing hangs"
nbdkit -f -U "$T/ke.sock" --filter=error memory 16M error=EIO error-pread-rate=100% 2>/dev/null &
kepid=$!
on_exit "kill $kepid 2>/dev/null"
wait_sock ke.sock "$kepid"
out=$(timeout 120 "$VBD_IO" -f raw -c "read 0 64k" "nbd+unix:///?socket=$T/ke.sock" 2>&1); rc=$?
[ $rc != 124 ] || fail "a read from a failing server hung"
[ $rc != 0 ] || fail "a failing read exited 0"
echo "$out" | grep -qi "input/output error" || fail "the EIO did not reach the caller: $out"
must "$VBD_IO" -f raw -c "write -P 1 0 64k" "nbd+unix:///?socket=$T/ke.sock" >/dev/null
kill $kepid

step "reconnect: the server restarts between requests, reconnect-delay=60 carries on"
sock2=$T/qn2.sock
qemu-nbd -f raw -k "$sock2" -x exp --persistent disk.raw 2>/dev/null &
q2=$!
wait_sock "$sock2" "$q2"
kill $qpid; wait $qpid 2>/dev/null   # one server at a time holds the image lock
# the second read sent once the server was killed and started again (its
# socket may not be back yet: reconnect-delay, counted from the kill, covers
# that: 60 s for a loaded host)
io_start rc.out --image-opts \
    "driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=$sock2,file.export=exp,file.reconnect-delay=60"
io_cmd "read -P 0x44 20M 64k"
io_wait "read 65536/65536"
kill $q2; wait $q2 2>/dev/null
qemu-nbd -f raw -k "$sock2" -x exp --persistent disk.raw 2>/dev/null &
q3=$!
on_exit "kill $q3 2>/dev/null"
io_cmd "read -P 0x44 20M 64k"
io_end
wait $iopid || fail "the read after a server restart failed: $(cat rc.out)"
[ "$(grep -c "read 65536/65536" rc.out)" = 2 ] || fail "not two reads after a server restart: $(cat rc.out)"

step "no reconnect-delay: a lost server fails the next request with EIO, nothing hangs"
io_start nr.out --image-opts "driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=$sock2,file.export=exp"
io_cmd "read -P 0x44 20M 64k"
io_wait "read 65536/65536"
kill $q3; wait $q3 2>/dev/null
io_cmd "read -P 0x44 20M 64k"
io_end
timeout 120 tail --pid=$iopid -f /dev/null || fail "a read after the server died hung"
wait $iopid && fail "a read after the server died succeeded: $(cat nr.out)"
grep -qi "input/output error" nr.out || fail "no EIO after the server died: $(cat nr.out)"
qemu-nbd -f raw -k "$sock2" -x exp --persistent disk.raw 2>/dev/null &
q4=$!
on_exit "kill $q4 2>/dev/null"
wait_sock "$sock2" "$q4"

step "legacy nbd:HOST:PORT and nbd+tcp:// filenames"
port=$(free_port 4) || fail "no free TCP port"
nbdkit -f -i 127.0.0.1 -p $port memory 8M 2>/dev/null &
kpid=$!
on_exit "kill $kpid 2>/dev/null"
for _ in $(seq 1200); do nbdinfo --size "nbd://127.0.0.1:$port" >/dev/null 2>&1 && break; sleep 0.05; done
must "$VBD_IO" -f raw -c "write -P 0x61 4k 8k" "nbd:127.0.0.1:$port" >/dev/null
must "$VBD_IO" -f raw -r -c "read -P 0x61 4k 8k" "nbd+tcp://127.0.0.1:$port/" >/dev/null
must qemu-io -f raw -r -c "read -P 0x61 4k 8k" "nbd:127.0.0.1:$port" >/dev/null
kill $kpid

step "discard through qemu-nbd --discard=unmap punches the file; nbdkit trim and zero read back as zeroes"
qemu-img create -q -f raw dis.raw 8M
must qemu-io -f raw -c "write -P 0x71 0 8M" dis.raw >/dev/null
qemu-nbd -f raw -k "$T/dis.sock" --discard=unmap -t dis.raw 2>/dev/null &
dpid2=$!
on_exit "kill $dpid2 2>/dev/null"
wait_sock dis.sock "$dpid2"
must "$VBD_IO" -f raw -c "discard 1M 2M" -c "write -z -u 5M 1M" -c "read -P 0 1M 2M" -c "read -P 0x71 0 1M" \
    "nbd+unix:///?socket=$T/dis.sock" >/dev/null
kill $dpid2; wait $dpid2 2>/dev/null
qemu-img map --output=json -f raw dis.raw | grep -q '"start": 1048576, "length": 2097152, "depth": 0, "present": true, "zero": true, "data": false' ||
    fail "discard through NBD did not punch a hole: $(qemu-img map --output=json -f raw dis.raw)"
must qemu-io -f raw -r -c "read -P 0 5M 1M" -c "read -P 0x71 3M 2M" dis.raw >/dev/null

step "read-only export: write open refused with a clear error, read-only open works"
qemu-nbd -r -f raw -k "$T/ro.sock" -t dis.raw 2>/dev/null &
ropid=$!
on_exit "kill $ropid 2>/dev/null"
wait_sock ro.sock "$ropid"
must_fail_with "read-only" "$VBD_IO" -f raw -c "write 0 4k" "nbd+unix:///?socket=$T/ro.sock"
must "$VBD_IO" -f raw -r -c "read -P 0x71 0 1M" "nbd+unix:///?socket=$T/ro.sock" >/dev/null
kill $ropid

step "server block size constraints (nbdkit blocksize-policy rejects what breaks them)"
nbdkit -f -U "$T/bp.sock" --filter=blocksize-policy memory 16M blocksize-minimum=4096 blocksize-preferred=65536 \
    blocksize-maximum=1M blocksize-error-policy=error 2>/dev/null &
bppid=$!
on_exit "kill $bppid 2>/dev/null"
wait_sock bp.sock "$bppid"
must "$VBD_IO" -f raw -c "write -P 7 100 1000" -c "write -P 8 1M 5M" -c "aio_write -P 9 7M 3M" -c aio_flush \
    -c "read -P 7 100 1000" -c "read -P 0 0 100" -c "read -P 0 1100 3000" -c "read -P 8 1M 5M" -c "read -P 9 7M 3M" \
    "nbd+unix:///?socket=$T/bp.sock" >/dev/null
kill $bppid

step "bad input: one-line errors"
must_fail_with "server.type" "$VBD_IO" --image-opts -c "read 0 1" "driver=nbd,server.type=carrier-pigeon,server.host=x"
must_fail_with "Failed to connect" "$VBD_IO" -c "read 0 1" "nbd+unix:///x?socket=$T/none.sock"
must_fail_with "not available" "$VBD_IO" -c "read 0 1" "nbd+unix:///nosuchexport?socket=$sock2"
must_fail_with "socket=" "$VBD_IO" -c "read 0 1" "nbd+unix:///exp"
must_fail_with "server.path" "$VBD_IO" --image-opts -c "read 0 1" "driver=nbd,server.type=unix"
must_fail_with "No TLS credentials with id 'tls0'" "$VBD_IO" --image-opts -c "read 0 1" \
    "driver=nbd,server.type=unix,server.path=$sock2,export=exp,tls-creds=tls0"
must_fail_with "Failed to connect" "$VBD_IO" -c "read 0 1" "nbd://127.0.0.1:1/"
echo OK
