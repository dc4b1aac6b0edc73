#!/bin/bash
# The iscsi protocol driver against tgtd (Debian's user-space target) and
# QEMU's iscsi driver: info/map/convert/compare/bench/io as qemu-img and
# qemu-io see the same LUN, data written by one read by the other, CHAP,
# vbd-daemon exporting the LUN over NBD (--blockdev) and vhost-user
# (--drive, with the stress test; on an iothread, where the graph stays on
# the main loop), bad input, and tgtd killed with -9
# during writes and restarted: every acknowledged write is there.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib-tgt.sh"
need qemu-img qemu-io nbdinfo python3
qemu-img --help | grep -q 'Supported formats:.* iscsi' || skip "QEMU's iscsi driver (qemu-block-extra) is not installed"
cd "$T"
truncate -s 64M disk.img
tgt_start "$T/disk.img"
U=$TGT_URL
json() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }

step "info and map agree with qemu-img; holes of the thin LUN are skipped"
must qemu-io -f raw -c "write -P 0x11 1M 1M" -c "write -P 0x12 9M 64k" "$U" >/dev/null
for args in "info" "info --output=json" "map --output=json -f raw" "map -f raw"; do
    "$VBD_IMG" $args "$U" >v.txt 2>&1 || fail "vbd-img $args: $(cat v.txt)"
    qemu-img $args "$U" >q.txt 2>&1
    # QEMU names the node json:{...}; vbd keeps the URI (without a password)
    diff -u <(grep -v '^image:\|"filename":' q.txt | awk '{print $1, $2, $3}') \
        <(grep -v '^image:\|"filename":' v.txt | awk '{print $1, $2, $3}') ||
        fail "vbd-img $args on iSCSI differs from qemu-img"
done
[ "$("$VBD_IMG" map --output=json -f raw "$U" | grep -c '"data": true')" = 2 ] || fail "map does not show exactly the two written extents"

step "convert qcow2 -> iscsi and iscsi -> raw; compare both ways"
qemu-img create -q -f qcow2 src.qcow2 64M
must qemu-io -f qcow2 -c "write -P 0x21 0 2M" -c "write -P 0x22 30M 1M" -c "write -P 0x23 63M 1M" src.qcow2 >/dev/null
must "$VBD_IMG" convert -n -f qcow2 -O raw src.qcow2 "$U"
must qemu-img compare -f qcow2 -F raw src.qcow2 "$U"
must "$VBD_IMG" compare -f qcow2 -F raw src.qcow2 "$U"
must "$VBD_IMG" convert -f raw -O raw "$U" out.raw
must qemu-img compare -f raw -F qcow2 out.raw src.qcow2
[ "$(du -k out.raw | cut -f1)" -lt 16384 ] || fail "convert from iSCSI did not keep holes ($(du -k out.raw | cut -f1) KiB)"
must "$VBD_IMG" convert -f raw -O qcow2 "$U" out.qcow2
must qemu-img compare out.qcow2 src.qcow2
"$VBD_IMG" bench -f raw -c 2000 -d 16 -s 4k "$U" >bench.txt 2>&1 || fail "bench read: $(cat bench.txt)"
"$VBD_IMG" bench -f raw -w -c 500 -d 16 -s 4k -o 40M "$U" >bench.txt 2>&1 || fail "bench write: $(cat bench.txt)"

step "interop: QEMU writes, vbd reads; vbd writes (data, FUA, zeroes, discard), QEMU and the backing file agree"
must qemu-img convert -n -f raw -O raw out.raw "$U" # back to the known content after bench -w
must qemu-io -f raw -c "write -P 0x31 5M 256k" -c "write -P 0x32 7M 4k" "$U" >/dev/null
must "$VBD_IO" -f raw -r -c "read -P 0x31 5M 256k" -c "read -P 0x32 7M 4k" -c "read -P 0x21 0 2M" "$U" >/dev/null
must "$VBD_IO" -f raw -c "write -P 0x41 12M 1M" -c "write -f -P 0x42 14M 64k" -c "aio_write -P 0x43 16M 512" -c aio_flush \
    -c "write -z 12M 64k" -c flush "$U" >/dev/null
must "$VBD_IO" --image-opts -c "discard 30M 1M" "driver=raw,discard=unmap,file.driver=iscsi,file.portal=127.0.0.1:$TGT_PORT,file.target=$TGT_IQN,file.lun=1,file.header-digest=crc32c" >/dev/null
must qemu-io -f raw -r -c "read -P 0 12M 64k" -c "read -P 0x41 12800k 64k" -c "read -P 0x42 14M 64k" -c "read -P 0x43 16M 512" \
    -c "read -P 0 30M 1M" "$U" >/dev/null
must qemu-io -f raw -r -c "read -P 0x41 12800k 64k" -c "read -P 0x42 14M 64k" -c "read -P 0 30M 1M" disk.img >/dev/null
"$VBD_IMG" map --output=json -f raw "$U" | python3 -c '
import json, sys
m = json.load(sys.stdin)
sys.exit(0 if any(e["start"] <= 30 << 20 and e["start"] + e["length"] >= 31 << 20 and not e["data"] for e in m) else 1)' ||
    fail "the discarded range is still allocated on the target"

step "vbd-daemon: --blockdev driver=iscsi exported over NBD, read by qemu-io and nbdinfo"
S=$T/nbd.sock
start_daemon --blockdev "driver=iscsi,node-name=i0,transport=tcp,portal=127.0.0.1:$TGT_PORT,target=$TGT_IQN,lun=1,timeout=30" \
    --blockdev driver=raw,node-name=r0,file=i0 --nbd-server addr.type=unix,addr.path="$S" \
    --export type=nbd,id=e0,node-name=r0,name=lun,writable=on
must qemu-io -f raw -c "read -P 0x31 5M 256k" -c "write -P 0x51 20M 64k" "nbd+unix:///lun?socket=$S" >/dev/null
[ "$(nbdinfo --size "nbd+unix:///lun?socket=$S")" = 67108864 ] || fail "nbdinfo size of the exported LUN"
stop_daemon
must qemu-io -f raw -r -c "read -P 0x51 20M 64k" "$U" >/dev/null

step "--drive file=iscsi://... over vhost-user: the stress test on the LUN"
S=$T/vu.sock
cp disk.img init.raw
start_daemon --drive "file=$U,format=raw,cache=writeback,discard=unmap" --vhost-user "$S"
seed=$((RANDOM * 32768 + RANDOM))
timeout -k 10 600 "$VBD_BUILD/tests/stress/vbd-stress" --seed $seed --ops 3000 --qd 16 --align 512 --init init.raw \
    --shadow-out shadow.raw --vhost-user "$S" >stress.log 2>&1 || { tail -20 stress.log; fail "vbd-stress seed $seed on the iSCSI LUN"; }
stop_daemon
cmp shadow.raw disk.img || fail "after vbd-stress (seed $seed) the LUN differs from the model"

# The NBD server asks block status before each read; the driver answers
# from its allocation cache what GET LBA STATUS told it, and writes,
# discards and zeroes in the same clusters must keep that cache honest.
step "an NBD export of the LUN (discard=unmap, 2 connections): the stress test through block status and the allocation cache"
S=$T/nbd.sock
cp disk.img init.raw
start_daemon --blockdev "driver=iscsi,node-name=i0,portal=127.0.0.1:$TGT_PORT,target=$TGT_IQN,lun=1,discard=unmap" \
    --nbd-server addr.type=unix,addr.path="$S" --export type=nbd,id=e0,node-name=i0,name=lun,writable=on
seed=$((RANDOM * 32768 + RANDOM))
timeout -k 10 600 "$VBD_BUILD/tests/stress/vbd-stress" --seed $seed --ops 3000 --qd 16 --align 512 --init init.raw \
    --shadow-out shadow.raw --nbd "nbd+unix:///lun?socket=$S" --conns 2 >stress.log 2>&1 ||
    { tail -20 stress.log; fail "vbd-stress seed $seed over NBD on the iSCSI LUN"; }
stop_daemon
cmp shadow.raw disk.img || fail "after vbd-stress over NBD (seed $seed) the LUN differs from the model"

# The session (libiscsi's context, its socket watch and timer) is bound to
# the loop that opened it: a vhost-user-blk export on an iothread must not
# take the graph there (the socket would be watched on one thread while
# requests use the context on another); its requests hop to the main loop.
step "vhost-user-blk, 2 queues on an iothread over the LUN: the graph stays on the main loop; the stress test"
S=$T/vu.sock
cp disk.img init.raw
start_daemon --object iothread,id=io0 --blockdev "driver=iscsi,node-name=i0,portal=127.0.0.1:$TGT_PORT,target=$TGT_IQN,lun=1" \
    --export type=vhost-user-blk,id=e0,node-name=i0,addr.type=unix,addr.path="$S",writable=on,num-queues=2,iothread=io0
seed=$((RANDOM * 32768 + RANDOM))
timeout -k 10 600 "$VBD_BUILD/tests/stress/vbd-stress" --seed $seed --ops 3000 --qd 16 --align 512 --init init.raw \
    --shadow-out shadow.raw --vhost-user "$S" --queues 2 >stress.log 2>&1 ||
    { tail -20 stress.log; cat "$T/daemon.log"; fail "vbd-stress seed $seed over vhost-user on an iothread on the iSCSI LUN"; }
stop_daemon
cmp shadow.raw disk.img || fail "after vbd-stress on an iothread (seed $seed) the LUN differs from the model"

step "bad input: refused portal, silent portal (bounded), wrong IQN, wrong LUN, LUN 0 is no disk, bad URI"
closed=$((TGT_PORT + 1))
(exec 3<>"/dev/tcp/127.0.0.1/$closed") 2>/dev/null && closed=$((TGT_PORT + 2))
one_line() { # EXPECTED-SUBSTRING CMD...: fails, with one line naming the reason
    local want=$1; shift
    "$@" >err.txt 2>&1 && fail "accepted: $*"
    [ "$(wc -l <err.txt)" = 1 ] || fail "not one line: $(cat err.txt)"
    grep -q -- "$want" err.txt || fail "expected '$want': $(cat err.txt)"
    ! grep -q Sanitizer err.txt || fail "sanitizer: $(cat err.txt)"
}
one_line "Connection refused" "$VBD_IMG" info "iscsi://127.0.0.1:$closed/$TGT_IQN/1"
python3 -c 'import socket,sys,time; s=socket.socket(); s.bind(("127.0.0.1",0)); s.listen(1); print(s.getsockname()[1], flush=True); time.sleep(120)' >silent.port &
silent_pid=$!
on_exit "kill $silent_pid 2>/dev/null"
for _ in $(seq 1200); do [ -s silent.port ] && break; sleep 0.05; done
one_line "127.0.0.1:$(cat silent.port): .*timed out" \
    "$VBD_IMG" info --image-opts "driver=iscsi,portal=127.0.0.1:$(cat silent.port),target=$TGT_IQN,lun=1,timeout=2"
kill $silent_pid
one_line "Target not found" "$VBD_IMG" info "iscsi://127.0.0.1:$TGT_PORT/iqn.2024-01.org.vbd.test:nosuch/1"
one_line "LOGICAL_UNIT_NOT_SUPPORTED" "$VBD_IO" -f raw -c "read 0 4k" "iscsi://127.0.0.1:$TGT_PORT/$TGT_IQN/7"
one_line "is not a disk" "$VBD_IMG" info "iscsi://127.0.0.1:$TGT_PORT/$TGT_IQN/0"
one_line "is not a number" "$VBD_IMG" info "iscsi://127.0.0.1:$TGT_PORT/$TGT_IQN/x"
one_line "expected" "$VBD_IMG" info "iscsi://127.0.0.1:$TGT_PORT"
one_line "transport 'iser' is not supported" "$VBD_IMG" info --image-opts "driver=iscsi,transport=iser,portal=127.0.0.1,target=x"
one_line "header-digest" "$VBD_IMG" info --image-opts "driver=iscsi,portal=127.0.0.1,target=x,header-digest=md5"

step "CHAP: the target asks for an account; URI and password-secret log in, QEMU too; none or a wrong one does not"
tgt_adm --op new --mode account --user vbduser --password s3cret-pass >/dev/null || fail "tgtadm account"
tgt_adm --op bind --mode account --tid 1 --user vbduser >/dev/null || fail "tgtadm bind account"
one_line "Failed to log in" "$VBD_IMG" info "$U"
one_line "Failed to log in" "$VBD_IMG" info "iscsi://vbduser%wrong@127.0.0.1:$TGT_PORT/$TGT_IQN/1"
CU="iscsi://vbduser%s3cret-pass@127.0.0.1:$TGT_PORT/$TGT_IQN/1"
must "$VBD_IO" -f raw -c "write -P 0x61 2M 64k" "$CU" >/dev/null
must qemu-io -f raw -r -c "read -P 0x61 2M 64k" "$CU" >/dev/null
printf %s s3cret-pass >pw
must "$VBD_IO" --object secret,id=pw0,file="$T/pw" --image-opts -c "read -P 0x61 2M 64k" \
    "driver=raw,file.driver=iscsi,file.portal=127.0.0.1:$TGT_PORT,file.target=$TGT_IQN,file.lun=1,file.user=vbduser,file.password-secret=pw0" >/dev/null
must "$VBD_IMG" info --object secret,id=pw1,format=base64,data="$(printf %s s3cret-pass | base64)" --image-opts \
    "driver=iscsi,portal=127.0.0.1:$TGT_PORT,target=$TGT_IQN,lun=1,user=vbduser,password-secret=pw1" >/dev/null
one_line "No secret with id 'nope'" "$VBD_IMG" info --image-opts \
    "driver=iscsi,portal=127.0.0.1:$TGT_PORT,target=$TGT_IQN,lun=1,user=vbduser,password-secret=nope"

step "CHAP over QMP: object-add secret (data/file, raw/base64) for blockdev-add's password-secret; object-del"
S=$T/qmp.sock
start_daemon --chardev socket,id=mon0,path="$S",server=on,wait=off --monitor chardev=mon0
VBD_QMP_PY=$VBD_ROOT/tests/qmp python3 - "$S" "$TGT_PORT" "$TGT_IQN" "$T/pw" <<'PY' || { cat "$T/daemon.log"; fail "see above"; }
import base64, os, sys
sys.path.insert(0, os.environ["VBD_QMP_PY"])
from qmp import QMP
sock, port, iqn, pwfile = sys.argv[1:]

def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)

def expect_error(reply, words):
    if "error" not in reply or words not in reply["error"]["desc"]:
        fail("expected an error '%s', got %s" % (words, reply))

def lun(name, secret):
    # transport is mandatory in QEMU's schema (qsd: "Parameter 'transport' is missing")
    return {"driver": "iscsi", "node-name": name, "transport": "tcp", "portal": "127.0.0.1:" + port, "target": iqn, "lun": 1,
            "user": "vbduser", "password-secret": secret}

m = QMP(sock, negotiate=True)
m.execute("object-add", qom_type="secret", id="s0", data=base64.b64encode(b"s3cret-pass").decode(), format="base64")
m.execute("object-add", qom_type="secret", id="s1", file=pwfile)
m.execute("object-add", qom_type="secret", id="bad", data="wrong-pass")
for n, s in (("n0", "s0"), ("n1", "s1")):
    m.execute("blockdev-add", **lun(n, s))
expect_error(m.cmd("blockdev-add", lun("n2", "bad")), "Failed to log in")
expect_error(m.cmd("blockdev-add", lun("n3", "nope")), "No secret with id 'nope'")
if m.execute("qom-get", path="/objects/s0", property="format") != "base64":
    fail("qom-get format of s0")
if m.execute("qom-get", path="s1", property="type") != "secret":
    fail("qom-get type of s1")
expect_error(m.cmd("qom-get", {"path": "/objects/s0", "property": "data"}), "not found")
names = [p["name"] for p in m.execute("qom-list", path="/objects")]
if not {"s0", "s1", "bad"} <= set(names):
    fail("qom-list /objects: %s" % names)
expect_error(m.cmd("object-add", {"qom-type": "secret", "id": "s0", "data": "x"}), "duplicate")
expect_error(m.cmd("object-add", {"qom-type": "secret", "id": "b64", "data": "not*base64", "format": "base64"}),
             "Base64 data contains invalid characters")
expect_error(m.cmd("object-add", {"qom-type": "secret", "id": "e", "data": "x", "format": "hex"}), "format")
expect_error(m.cmd("object-add", {"qom-type": "secret", "id": "e"}), "Either 'file' or 'data' must be provided")
expect_error(m.cmd("object-add", {"qom-type": "secret", "id": "e", "file": "/nonexistent/pw"}), "/nonexistent/pw")
expect_error(m.cmd("object-add", {"qom-type": "secret", "id": "e", "data": "x", "keyid": "k"}), "not supported")
# the open node keeps its session; a new one needs the secret
m.execute("object-del", id="s0")
expect_error(m.cmd("blockdev-add", lun("n4", "s0")), "No secret with id 's0'")
m.execute("blockdev-del", node_name="n0")
m.execute("blockdev-del", node_name="n1")
for s in ("s1", "bad"):
    m.execute("object-del", id=s)
expect_error(m.cmd("object-del", {"id": "s1"}), "not found")
PY
stop_daemon
tgt_adm --op unbind --mode account --tid 1 --user vbduser >/dev/null || fail "tgtadm unbind account"

# Writes of every MiB of the LUN, NPASSES times over (pass i writes the byte
# i*64 + MiB%61 + 1 into its MiB), by vbd-io in the background: io_pid,
# output in NAME.out and NAME.err. io_writes_start NPASSES NAME returns
# once the first pass is under way (MiB 32 holds its pattern).
# libiscsi 1.19 leaks a login PDU of its reconnect (in the library, not
# through vbd's allocations): LeakSanitizer is told to skip only that.
printf 'leak:libiscsi.so\n' >lsan.supp
io_writes_start() {
    local cmds=() pass mb
    for pass in $(seq "$1"); do
        for mb in $(seq 0 63); do cmds+=(-c "write -P $((pass * 64 + mb % 61 + 1)) ${mb}M 1M"); done
    done
    LSAN_OPTIONS=${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=$T/lsan.supp LIBISCSI_DEBUG=2 "$VBD_IO" -f raw "${cmds[@]}" "$U" >"$2.out" 2>"$2.err" &
    io_pid=$!
    for _ in $(seq 600); do
        [ "$(od -An -tu1 -j $((32 << 20)) -N1 disk.img | tr -d ' ')" = $((64 + 32 + 1)) ] && break
        kill -0 $io_pid 2>/dev/null || break
        sleep 0.02
    done
    kill -0 $io_pid 2>/dev/null || fail "the writes ended before tgtd could be killed"
}
# io_writes_finish NPASSES NAME, once tgtd is back: vbd-io ends well (a
# reconnect that never comes back is a failure with its trail, not a
# hang), reported the reconnect, completed every write, and the LUN's
# file holds the last pass (last_pass: the qemu-io reads that say so).
io_writes_finish() {
    for _ in $(seq 1200); do kill -0 $io_pid 2>/dev/null || break; sleep 0.1; done
    if kill -0 $io_pid 2>/dev/null; then
        kill -KILL $io_pid
        fail "vbd-io still waits 120 s after the target came back: $(tail -20 "$2.err")
tgtd (pid $TGT_PID) $(_tgt_alive "$TGT_PID" && echo "is running" || echo "is gone"); port $TGT_PORT $( (exec 3<>"/dev/tcp/127.0.0.1/$TGT_PORT") 2>/dev/null && echo accepts || echo refuses); tgtd's log: $(tail -8 "$T/tgtd.log")"
    fi
    wait $io_pid || fail "vbd-io failed across the target restart (exit status $?): $(tail -20 "$2.err")"
    grep -q "session re-established" "$2.err" || fail "no reconnect was reported: $(tail -20 "$2.err")"
    [ "$(grep -c '^wrote 1048576/1048576' "$2.out")" = $(($1 * 64)) ] || fail "not every write completed"
    last_pass=()
    local mb
    for mb in $(seq 0 63); do last_pass+=(-c "read -P $(($1 * 64 + mb % 61 + 1)) ${mb}M 1M"); done
    must qemu-io -f raw -r "${last_pass[@]}" disk.img >/dev/null
}

step "tgtd killed with -9 during writes and restarted: the writes go on, nothing acknowledged is lost"
io_writes_start 3 fault
tgt_kill9
tgt_restart
io_writes_finish 3 fault
must qemu-io -f raw -r "${last_pass[@]}" "$U" >/dev/null

# A reconnect whose login is never answered nor refused (a half-open
# connection: here a listener that takes the connection and keeps it
# silent) waits in libiscsi 1.19 for ever when no timeout is set; the
# driver then drops that session and logs in anew, bounded.
step "tgtd killed, the reconnect's login lost on a silent connection, tgtd back: a new session, nothing acknowledged is lost"
rm -f silent.ready
io_writes_start 2 fault2
tgt_kill9
# takes the first connection on tgtd's port, closes the listener (so tgtd
# can come back) and holds that connection without a word
python3 -c '
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1)
c, _ = s.accept(); s.close()
open(sys.argv[2], "w").close()
time.sleep(300)' "$TGT_PORT" "$T/silent.ready" &
silent_pid=$!
on_exit "kill $silent_pid 2>/dev/null"
for _ in $(seq 600); do [ -e silent.ready ] && break; kill -0 $silent_pid 2>/dev/null || break; sleep 0.05; done
[ -e silent.ready ] || fail "libiscsi's reconnect did not reach the silent listener in 30 s: $(tail -5 fault2.err)"
tgt_restart
io_writes_finish 2 fault2
kill $silent_pid 2>/dev/null
grep -q "starting a new one" fault2.err || fail "no new session was started: $(tail -20 fault2.err)"
echo PASS
