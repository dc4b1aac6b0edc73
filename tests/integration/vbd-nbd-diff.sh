#!/bin/bash
# test-slow: one of the longest; run.sh starts it first
# vbd-nbd against qemu-nbd 7.2: the same argv given to both (the binary
# substituted), then what a client sees compared: nbdinfo --json (size,
# read-only, can_* flags, description, export names with --list),
# nbdinfo --map (base:allocation, qemu:allocation-depth, a dirty bitmap),
# the data (nbdcopy + cmp), writes (the images compared and checked after),
# -e (the N+1th client is not served), the exit after the last client
# without -t, --fork returning once it serves, --pid-file, -s (writes go to
# a temporary overlay, the image untouched) and the refused command lines
# (exit status and stderr). Over a unix socket and TCP, raw and qcow2.
# Differences of the server that vbd-nbd cannot change are printed as
# "known:" (README, vbd-nbd); any other difference fails.
. "$(dirname "$0")/lib.sh"
need qemu-nbd qemu-img qemu-io nbdinfo nbdcopy python3
cd "$T"
mkdir q v
declare -A pid port syncs

# gone PID: the process has exited (a zombie not yet reaped by init counts)
gone() { ! kill -0 "$1" 2>/dev/null || grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat" 2>/dev/null; }
wait_gone() { # (60 s: an ASan server's exit, its leak check, at load ~20)
    for _ in $(seq 1200); do gone "$1" && return 0; sleep 0.05; done
    fail "$2: process $1 still runs after 60 s"
}

# sides FN ARGS...: FN q ARGS and FN v ARGS side by side, each in a
# subshell that writes only its own files (K.*, K/): a step's two halves
# need not wait for each other (at load ~30 the test took up to 975 s, its
# time spent in one short process after the other). Fails (status 1) when
# either did; its message is above.
sides() {
    local fn=$1 pq pv rq=0 rv=0
    shift
    "$fn" q "$@" &
    pq=$!
    "$fn" v "$@" &
    pv=$!
    wait $pq || rq=$?
    wait $pv || rv=$?
    [ $rq = 0 ] && [ $rv = 0 ]
}

# start K ARGS...: BIN --fork --pid-file K.pid ARGS, BIN qemu-nbd (K=q) or
# vbd-nbd (K=v); {D} in ARGS is K's directory, {P} K's TCP port (in
# K.port). The fork returns once the server serves (as qemu-nbd's), so a
# client may connect at once. Status in K.frc, stderr (program names as
# PROG) in K.ferr. The port is lib.sh's free_port (another program, or the
# other server starting beside it, may still take it before the server
# binds: start retries then).
start() {
    local k=$1 bin=qemu-nbd try p; shift
    [ $k = v ] && bin=$VBD_NBD
    for try in 1 2 3 4 5; do
        p=$(free_port)
        local args=("${@//\{D\}/$T/$k}")
        args=("${args[@]//\{P\}/$p}")
        rm -f "$k.pid"
        "$bin" --fork --pid-file "$T/$k.pid" "${args[@]}" 2>"$k.raw" </dev/null
        echo $? >"$k.frc"
        grep -q "Failed to find an available port\|Address already in use" "$k.raw" || break
    done
    echo "$p" >"$k.port"
    sed -E -e "s#$T/$k#{D}#g" -e 's#([^ :]*/)?(qemu-nbd|vbd-nbd)#PROG#g' "$k.raw" >"$k.ferr"
    ! grep -q -e Sanitizer -e 'runtime error' "$k.raw" || fail "vbd-nbd $*: $(cat "$k.raw")"
}
# both ARGS...: start both (side by side); the fork's status and stderr
# must be the same
both() {
    local k rc=0
    rm -f q.port v.port
    sides start "$@" || rc=1
    for k in q v; do
        port[$k]=$(cat $k.port 2>/dev/null)
        pid[$k]=$(cat "$k.pid" 2>/dev/null)
        [ -z "${pid[$k]}" ] || on_exit "kill -9 ${pid[$k]} 2>/dev/null"
    done
    [ $rc = 0 ] || exit 1
    [ "$(cat q.frc)" = "$(cat v.frc)" ] || fail "$*: --fork returned $(cat q.frc) (qemu-nbd), $(cat v.frc) (vbd-nbd): $(cat q.ferr v.ferr)"
    cmp -s q.ferr v.ferr || { diff q.ferr v.ferr; fail "$*: stderr differs"; }
    [ -n "${pid[q]}" ] && [ -n "${pid[v]}" ] || fail "$*: no PID file: $(cat q.ferr v.ferr)"
}
stop() {
    local k
    for k in q v; do gone "${pid[$k]}" || kill -TERM "${pid[$k]}"; done
    for k in q v; do wait_gone "${pid[$k]}" "$k"; done
}
# uri K [NAME]: the export over the unix socket K/s.sock, or (tcp=1) TCP
tcp=0
uri() {
    if [ $tcp = 1 ]; then echo "nbd://127.0.0.1:${port[$1]}/${2:-}"; else echo "nbd+unix:///${2:-}?socket=$T/$1/s.sock"; fi
}
addr() { if [ $tcp = 1 ]; then echo "-b 127.0.0.1 -p {P}"; else echo "-k {D}/s.sock"; fi; }

# info_same WHAT ARGS...: nbdinfo ARGS --json (URI as @) alike from both
info_one() {
    local k=$1 what=$2 a=() x
    shift 2
    for x in "$@"; do [ "$x" = @ ] && a+=("$(uri $k "$name")") || a+=("$x"); done
    nbdinfo --json "${a[@]}" >"$k.json" || fail "$what: nbdinfo against $k"
}
info_same() {
    local what=$1
    sides info_one "$@" || exit 1
    python3 - q.json v.json "$what" <<'PY' || fail "$what: nbdinfo --json differs"
import json, sys
q, v = (json.load(open(f)) for f in sys.argv[1:3])
def norm(d):
    d.pop("uri", None)
    for e in d.get("exports", []):
        e.pop("uri", None)
    return d
q, v = norm(q), norm(v)
if q != v:
    print(json.dumps(q, indent=1, sort_keys=True)); print(json.dumps(v, indent=1, sort_keys=True))
    sys.exit(1)
PY
}
# map_same CONTEXT: nbdinfo --map=CONTEXT alike
map_one() { nbdinfo --map="$2" "$(uri $1 "$name")" >"$1.map" || fail "--map=$2 against $1"; }
map_same() {
    sides map_one "$1" || exit 1
    cmp -s q.map v.map || { diff q.map v.map; fail "--map=$1 differs"; }
}
# data_same: the whole export read with nbdcopy (as many connections as
# multi-conn lets it open: none refused under -e 1) is the same
data_one() { nbdcopy "$(uri $1 "$name")" "$1.data" || fail "nbdcopy from $1"; }
data_same() {
    sides data_one || exit 1
    cmp q.data v.data || fail "the data read differs"
}
# write_both: the same writes through both servers (nbdcopy of random data
# over the first MiBs, qemu-io pattern, zeroes and a flush)
write_one() {
    nbdcopy --connections=1 rand "$(uri $1 "$name")" || fail "nbdcopy to $1"
    qemu-io -f raw -c "write -P 0x6b 3M 68k" -c "write -z 3200k 8k" -c flush "$(uri $1 "$name")" >/dev/null ||
        fail "qemu-io writes to $1"
}
write_both() {
    [ -e rand ] || head -c 3M /dev/urandom >rand
    sides write_one || exit 1
}

mk_images() { # the same raw and qcow2 (with data, zeroes, a bitmap) in q/ and v/
    rm -f q/* v/*
    qemu-img create -q -f raw q/img.raw 8M
    qemu-io -f raw -c "write -P 0x11 0 1M" -c "write -P 0x22 5M 64k" q/img.raw >/dev/null
    qemu-img create -q -f qcow2 q/base.qcow2 8M
    qemu-img bitmap --add q/base.qcow2 bb # a bitmap down the chain: -B finds it there
    qemu-io -f qcow2 -c "write -P 0x33 1M 1M" q/base.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 q/img.qcow2
    qemu-img bitmap --add q/img.qcow2 b0
    qemu-io -f qcow2 -c "write -P 0x44 0 64k" q/img.qcow2 >/dev/null
    qemu-img bitmap --add --granularity 128k q/img.qcow2 b1 # a second bitmap, with other dirty extents
    qemu-io -f qcow2 -c "write -z 2M 128k" -c "write -P 0x55 6M 192k" -c "write -P 0x66 7M 64k" q/img.qcow2 >/dev/null
    cp --sparse=always q/* v/
}

for tcp in 0 1; do
    mk_images
    name=
    step "tcp=$tcp raw -f raw -t -D: nbdinfo --json, --map, data; writes; the images after"
    both $(addr) -f raw -t -D "a raw disk" {D}/img.raw
    info_same "raw" @
    map_same base:allocation
    data_same
    write_both
    data_same
    stop
    cmp q/img.raw v/img.raw || fail "tcp=$tcp: the raw images differ after the same writes"

    name=disk
    step "tcp=$tcp qcow2 -f qcow2 -t -A -x disk: --list, --map both contexts, data, writes, qemu-img check"
    both $(addr) -f qcow2 -t -A -x disk {D}/img.qcow2
    name=
    info_same "--list" --list @
    name=disk
    info_same "qcow2 -A" @
    map_same base:allocation
    map_same qemu:allocation-depth
    data_same
    write_both
    stop
    must qemu-img compare -q q/img.qcow2 v/img.qcow2
    qcheck q/img.qcow2
    qcheck v/img.qcow2

    name=
    step "tcp=$tcp qcow2 -r -B b0: the bitmap's map; writes refused by both"
    both $(addr) -f qcow2 -r -t -B b0 {D}/img.qcow2
    info_same "qcow2 -r -B" @
    map_same qemu:dirty-bitmap:b0
    for k in q v; do
        ! qemu-io -f raw -c "write -P 1 0 4k" "$(uri $k)" >/dev/null 2>&1 || fail "$k: a write to the -r export worked"
    done
    stop

    step "tcp=$tcp qcow2 -r -B bb: a bitmap of the backing file, found down the chain as qemu-nbd finds it"
    both $(addr) -f qcow2 -r -t -B bb {D}/img.qcow2
    info_same "qcow2 -r -B bb" @
    map_same qemu:dirty-bitmap:bb
    stop

    step "tcp=$tcp qcow2 -r -A -B b1 -B b0 -B b1: a context per bitmap, listed, selected and answered alike"
    both $(addr) -f qcow2 -r -t -A -B b1 -B b0 -B b1 {D}/img.qcow2
    info_same "qcow2 -A -B b1 -B b0 -B b1 --list --content" --list --content @
    map_same qemu:dirty-bitmap:b0
    map_same qemu:dirty-bitmap:b1
    map_same base:allocation
    # qemu-img's NBD client: base:allocation and a bitmap in one block status
    for k in q v; do
        if [ $tcp = 1 ]; then srv="server.type=inet,server.host=127.0.0.1,server.port=${port[$k]}"; else srv="server.type=unix,server.path=$T/$k/s.sock"; fi
        qemu-img map --output=json --image-opts "driver=nbd,$srv,x-dirty-bitmap=qemu:dirty-bitmap:b1" >$k.qmap ||
            fail "qemu-img map x-dirty-bitmap against $k"
    done
    cmp -s q.qmap v.qmap || { diff q.qmap v.qmap; fail "qemu-img map x-dirty-bitmap=qemu:dirty-bitmap:b1 differs"; }
    grep -q '"data": false' v.qmap && grep -q '"data": true' v.qmap || fail "x-dirty-bitmap: not both dirty and clean: $(cat v.qmap)"
    # the meta context options byte for byte (ids aside: each server picks
    # its own): LIST by namespace, SET of every context in another order
    # (the replies come in the server's order), block status for all five
    # (more chunks than a batch), with and without REQ_ONE
    meta_one() {
        local k=$1 a
        if [ $tcp = 1 ]; then a=tcp:${port[$k]}; else a=$T/$k/s.sock; fi
        python3 - "$a" >$k.meta <<'PY' || fail "the meta context exchange with $k failed"
import struct, sys
import nbdproto as p
LIST, SET, CMD_BLOCK_STATUS, FLAG_REQ_ONE = 9, 10, 7, 8
s = p.connect(sys.argv[1], timeout=60)
magic, ihaveopt, _ = struct.unpack('>QQH', p.recvn(s, 18))
s.sendall(struct.pack('>I', p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES))
def meta(opt, queries):
    data = struct.pack('>I', 0) + struct.pack('>I', len(queries))
    for q in queries:
        data += struct.pack('>I', len(q)) + q.encode()
    return [(struct.unpack('>I', pl[:4])[0], pl[4:].decode()) for t, pl in p.option(s, opt, data)]
# before structured replies: a LIST is answered, a SET refused
print('list/unstructured', [n for _, n in meta(LIST, [])])
try:
    meta(SET, ['base:allocation'])
    print('set/unstructured accepted')
except RuntimeError:
    print('set/unstructured refused')
p.option(s, p.OPT_STRUCTURED_REPLY)
for qs in ([], ['qemu:'], ['qemu:dirty-bitmap:'], ['base:'], ['qemu:dirty-bitmap:b1', 'base:allocation'],
           ['qemu:dirty-bitmap:nope', 'qemu:dirty-', 'other:x']):
    print('list', qs, [n for _, n in meta(LIST, qs)])
ids = dict((i, n) for i, n in meta(SET, ['qemu:dirty-bitmap:b1', 'qemu:dirty-bitmap:b0', 'qemu:allocation-depth',
                                         'base:allocation', 'qemu:dirty-bitmap:b1']))
print('set', list(ids.values()))
p.option(s, p.OPT_GO, struct.pack('>IH', 0, 0))
size = 8 << 20
for cookie, flags in ((1, 0), (2, FLAG_REQ_ONE)):
    s.sendall(p.request(CMD_BLOCK_STATUS, cookie, 0, size, flags))
    while True:
        magic, fl, typ, ck, ln = struct.unpack('>IHHQI', p.recvn(s, 20))
        pl = p.recvn(s, ln)
        assert magic == p.STRUCTURED_REPLY_MAGIC and ck == cookie and typ == 5, (hex(magic), ck, typ, pl)
        cid = struct.unpack('>I', pl[:4])[0]
        ext = [struct.unpack('>II', pl[i:i + 8]) for i in range(4, len(pl), 8)]
        print('status', flags, ids[cid], ext)
        if fl & p.REPLY_FLAG_DONE:
            break
s.sendall(p.request(p.CMD_DISC, 9, 0, 0))
PY
    }
    sides meta_one || exit 1
    cmp -s q.meta v.meta || { diff q.meta v.meta; fail "the meta context exchange differs"; }
    stop

    step "tcp=$tcp -s over raw and qcow2: writes go to a temporary overlay, the images untouched"
    for img in img.raw img.qcow2; do
        cp q/$img q.before
        cp v/$img v.before
        both $(addr) -s -t {D}/$img
        write_both
        data_same
        info_same "-s $img" @
        stop
        cmp q.before q/$img && cmp v.before v/$img || fail "tcp=$tcp -s $img: the image changed"
    done

    step "tcp=$tcp -o 524288 over raw: size and data"
    both $(addr) -f raw -r -t -o 524288 {D}/img.raw
    info_same "-o" @
    data_same
    stop
done
tcp=0

step "--image-opts, -n --aio=threads --discard=unmap --detect-zeroes=unmap: info and data alike, writes land alike"
mk_images
both -k {D}/s.sock -t --image-opts driver=raw,file.driver=file,file.filename={D}/img.raw
info_same "--image-opts" @
data_same
stop
both -k {D}/s.sock -t -f raw -n --aio=threads --discard=unmap --detect-zeroes=unmap {D}/img.raw
info_same "-n --aio --discard --detect-zeroes" @
write_both
data_same
stop
cmp q/img.raw v/img.raw || fail "the raw images differ after the same writes (-n --discard=unmap ...)"

if command -v certtool >/dev/null; then
    step "--object tls-creds-x509 --tls-creds (and --tls-authz): nbdinfo over TLS, data alike; a client without a certificate refused by both"
    gen_pki "$T/pki"
    id='O=vbd,CN=vbd-test-client'
    both -b 127.0.0.1 -p {P} -t -f raw --object tls-creds-x509,id=t0,dir=$T/pki/server,endpoint=server,verify-peer=on \
        --object "authz-simple,id=a0,identity=${id//,/,,}" --tls-creds=t0 --tls-authz=a0 {D}/img.raw
    for k in q v; do
        u="nbds://localhost:${port[$k]}/?tls-certificates=$T/pki/client"
        nbdinfo --json "$u" >$k.tls.json || fail "$k: nbdinfo over TLS"
        nbdcopy --connections=1 "$u" $k.data || fail "$k: nbdcopy over TLS"
        ! nbdinfo --size "nbd://127.0.0.1:${port[$k]}/" >/dev/null 2>&1 || fail "$k: a client without TLS was served"
    done
    cmp q.data v.data || fail "the data read over TLS differs"
    python3 -c 'import json,sys; a,b=(json.load(open(f)) for f in sys.argv[1:]); sys.exit(0 if a["TLS"] and b["TLS"] and a["exports"][0]["export-size"]==b["exports"][0]["export-size"] else 1)' q.tls.json v.tls.json ||
        fail "TLS info differs"
    stop
fi

step "no -f: the probe's warning for raw (the fork returns 1 as it came through its pipe), data alike"
both -k {D}/s.sock -t {D}/img.raw
[ "$(cat q.frc)" = 1 ] && grep -q "probing guessed raw" v.ferr || fail "probed raw: $(cat v.frc) $(cat v.ferr)"
data_same
stop

step "without -t: both exit once their last client has gone (and remove the socket); --pid-file holds the server's PID"
both -k {D}/s.sock -f qcow2 {D}/img.qcow2
for k in q v; do
    bin=$(command -v qemu-nbd)
    [ $k = q ] || bin=$VBD_NBD
    [ "$(readlink /proc/"${pid[$k]}"/exe)" = "$(readlink -f "$bin")" ] || fail "$k: the PID file does not name the server"
    # a client that only lists the exports does not count as the last one
    nbdinfo --list "$(uri $k)" >/dev/null || fail "$k: nbdinfo --list"
    nbdinfo --size "$(uri $k)" >/dev/null || fail "$k: nbdinfo --size after nbdinfo --list (the server exited)"
done
for k in q v; do
    wait_gone "${pid[$k]}" "$k without -t after its client left"
    [ ! -e $k/s.sock ] || fail "$k: socket left behind"
done

step "-e 1: with one client connected the next is not served; with -e 2 it is"
for e in 1 2; do
    both -k {D}/s.sock -f raw -t -e $e {D}/img.raw
    for k in q v; do
        mkfifo $k.fifo
        stdbuf -oL qemu-io -f raw "$(uri $k)" <$k.fifo >$k.hold 2>&1 &
        holder=$!
        exec 7>$k.fifo
        echo 'read 0 512' >&7
        # the reply line, not the prompt qemu-io prints before it
        for _ in $(seq 1200); do grep -q "read 512/512" $k.hold 2>/dev/null && break; sleep 0.05; done
        grep -q "read 512/512" $k.hold || fail "$k: the first client did not connect: $(cat $k.hold)"
        # the next client waits (in the listen backlog: no greeting) while
        # the first one holds the only slot, and is served once it leaves.
        # -e 1: the next one connected, two more round trips of the first
        # take the server past its listener's readiness: a server that took
        # the next client would have greeted it by then (no time waited);
        # -e 2: served, given all the time a loaded host may take
        if [ $e = 1 ]; then
            rm -f $k.next.*
            python3 - "$T/$k/s.sock" "$k.next" <<'PY' &
import os, select, sys, time
import nbdproto as p
sock, f = sys.argv[1:]
s = p.connect(sock, timeout=60)
open(f + ".connected", "w").close()
while not os.path.exists(f + ".synced"):
    time.sleep(0.02)  # polling for the test's step
if select.select([s], [], [], 0)[0]:
    sys.exit(f"greeted (or closed) while the only slot was taken: {s.recv(18)!r}")
open(f + ".waiting", "w").close()
p.recvn(s, 18)  # the greeting once the slot is free (60 s at the most)
PY
            waiter=$!
            for _ in $(seq 1200); do [ -e $k.next.connected ] && break; kill -0 $waiter 2>/dev/null || break; sleep 0.05; done
            [ -e $k.next.connected ] || fail "$k -e 1: the second client could not connect"
            for n in 2 3; do
                echo 'read 0 512' >&7
                for _ in $(seq 1200); do [ "$(grep -c "read 512/512" $k.hold)" -ge $n ] && break; sleep 0.05; done
                [ "$(grep -c "read 512/512" $k.hold)" -ge $n ] || fail "$k: the first client's read $n: $(cat $k.hold)"
            done
            touch $k.next.synced
            for _ in $(seq 1200); do [ -e $k.next.waiting ] && break; kill -0 $waiter 2>/dev/null || break; sleep 0.05; done
            [ -e $k.next.waiting ] || fail "$k -e 1: a second client was served"
        else
            timeout -k 1 60 nbdinfo --size "$(uri $k)" >$k.size 2>/dev/null || fail "$k -e 2: the second client was not served"
        fi
        echo quit >&7
        exec 7>&-
        wait $holder
        if [ $e = 1 ]; then
            wait $waiter || fail "$k -e 1: the client waiting for the slot was not served once it freed"
        fi
        rm $k.fifo
    done
    nbdinfo --size "$(uri v)" >/dev/null || fail "vbd-nbd -e $e: no client served after the first left"
    stop
done

step "--cache=writeback/writethrough/directsync --aio=threads: with write-through each write is on disk before its reply"
# strace counts the syscalls that make data durable (fdatasync, fsync, a
# write with RWF_DSYNC) while a client makes 8 writes, each waiting for its
# reply, and disconnects without a flush: write-through syncs at least once
# a write (before the reply: the next write is sent after it), writeback
# fewer than 8 (the exit's flush). --aio=threads: the syncs are syscalls
# (through io_uring strace would not see them). No leak check under
# strace: LeakSanitizer cannot stop a traced process's threads.
# --seccomp-bpf: only the traced calls stop the server (an ASan start
# under strace took ~2 s instead of ~0.5 s at load 30).
if command -v strace >/dev/null; then
    for mode in writeback writethrough directsync; do
        for k in q v; do
            bin=qemu-nbd
            [ $k = v ] && bin=$VBD_NBD
            rm -f $k/s.sock $k.spid
            # the server's PID from --pid-file: a SIGTERM to strace would only detach it
            strace -f -qq --seccomp-bpf -o "$T/$k.st" -e trace=fdatasync,fsync,pwritev2,pwrite64,pwritev \
                env ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
                "$bin" -k "$T/$k/s.sock" --pid-file "$T/$k.spid" -f raw -t --aio=threads --cache=$mode "$T/$k/img.raw" \
                2>$k.raw &
            spid=$!
            on_exit "kill -9 $spid 2>/dev/null"
            wait_sock "$T/$k/s.sock" "$spid" $k.raw
            for _ in $(seq 1200); do [ -s $k.spid ] && break; sleep 0.05; done
            [ -s $k.spid ] || fail "$bin --cache=$mode wrote no PID file: $(cat $k.raw)"
            on_exit "kill -9 $(cat $k.spid) 2>/dev/null"
            python3 - "$T/$k/s.sock" <<'PY' || fail "$k --cache=$mode: the client's writes failed"
import struct, sys
import nbdproto as p
s = p.connect(sys.argv[1], timeout=60)
p.handshake(s, export="", go=True)
for i in range(8):
    s.sendall(p.request(p.CMD_WRITE, i, i * 65536, 4096) + bytes([i + 1]) * 4096)
    magic, err, cookie = struct.unpack(">IIQ", p.recvn(s, 16))
    assert magic == p.SIMPLE_REPLY_MAGIC and err == 0 and cookie == i, (magic, err, cookie)
s.sendall(p.request(p.CMD_DISC, 99, 0, 0))
s.close()
PY
            kill -TERM "$(cat $k.spid)"
            wait $spid || fail "$bin --cache=$mode exited with $? after SIGTERM: $(cat $k.raw)"
            ! grep -q -e Sanitizer -e 'runtime error' $k.raw || fail "vbd-nbd --cache=$mode: $(cat $k.raw)"
            syncs[$k]=$(grep -cE '(fdatasync|fsync)\(|RWF_DSYNC' "$T/$k.st" || true)
        done
        echo "--cache=$mode: syncs for 8 writes and the exit: qemu-nbd ${syncs[q]}, vbd-nbd ${syncs[v]}"
        for k in q v; do
            if [ $mode = writeback ]; then
                [ "${syncs[$k]}" -lt 8 ] || fail "$k --cache=writeback: ${syncs[$k]} syncs for 8 writes: write-through?"
            else
                [ "${syncs[$k]}" -ge 8 ] || fail "$k --cache=$mode: ${syncs[$k]} syncs for 8 writes: a reply before its write was on disk"
            fi
        done
        cmp q/img.raw v/img.raw || fail "--cache=$mode: the images differ after the same writes"
    done
fi

step "refused command lines: exit status and stderr alike"
ndiff=0
# refuse_one K: the case's command line ($args) given to K's program
refuse_one() {
    local k=$1 bin=qemu-nbd
    [ $k = v ] && bin=$VBD_NBD
    eval "set -- ${args//\{D\}/$T/$k}"
    timeout -k 5 30 "$bin" "$@" </dev/null >$k.out 2>$k.raw
    echo $? >$k.rc
    sed -E -e "s#$T/$k#{D}#g" -e 's#([^ :]*/)?(qemu-nbd|vbd-nbd)#PROG#g' $k.raw >$k.err
}
while IFS= read -r line; do
    case "$line" in '' | '#'*) continue ;; esac
    args=${line%%  # known:*}
    why=
    [ "$args" = "$line" ] || why=${line#*  # known: }
    sides refuse_one || fail "$args: the programs did not run"
    ! grep -q -e Sanitizer -e 'runtime error' v.raw 2>/dev/null || fail "vbd-nbd $args: $(cat v.raw)"
    [ "$(cat q.rc)" != 0 ] || fail "case '$args' started qemu-nbd: not a refused command line"
    if [ "$(cat q.rc)" != "$(cat v.rc)" ]; then
        echo "DIFF $args: exit status qemu-nbd $(cat q.rc), vbd-nbd $(cat v.rc): $(cat v.err)"
        ndiff=$((ndiff + 1))
    elif ! cmp -s q.err v.err; then
        if [ -n "$why" ]; then
            echo "known: $args ($why)"
        else
            echo "DIFF $args:"
            diff q.err v.err | sed 's/^/    /'
            ndiff=$((ndiff + 1))
        fi
    fi
done <<'CASES'
{D}/nofile
-f bogus {D}/img.raw
-f qcow2 {D}/img.raw
--bogus {D}/img.raw
-Z {D}/img.raw
-p
-e -1 {D}/img.raw
-e x {D}/img.raw
-o abc {D}/img.raw
-o -1 {D}/img.raw
# no FILE, two FILEs
-k {D}/s.sock
{D}/img.raw {D}/img.raw
-k rel.sock {D}/img.raw
-n -n {D}/img.raw
--cache=bad {D}/img.raw
--aio=bad {D}/img.raw
--aio=native --aio=threads {D}/img.raw
--discard=bad {D}/img.raw
--discard=unmap --discard=ignore {D}/img.raw
--detect-zeroes=bad {D}/img.raw
--detect-zeroes=unmap {D}/img.raw
--tls-authz=a {D}/img.raw
--tls-hostname=h {D}/img.raw
--tls-creds=nope {D}/img.raw
--tls-creds=nope -k {D}/s.sock {D}/img.raw
--tls-hostname=h --tls-creds=nope {D}/img.raw
--object tls-creds-anon,id=c,endpoint=client --tls-creds=c {D}/img.raw
-f raw -o 99999999 {D}/img.raw
-o -1 -f raw {D}/img.raw
--image-opts -f raw {D}/img.raw
--image-opts -k {D}/s.sock foo
--image-opts -k {D}/s.sock foo,file.filename={D}/img.raw
-l snap -f raw {D}/img.raw
-B nob -f qcow2 -k {D}/s.sock {D}/img.qcow2
-x $(printf 'n%.0s' $(seq 4097)) {D}/img.raw
-D $(printf 'd%.0s' $(seq 4097)) {D}/img.raw
-k {D}/s.sock -f raw --pid-file /nonexistent/vbd/p.pid {D}/img.raw
-k {D}/s.sock -f raw -o 99999999999 {D}/img.raw
-k {D}/s.sock -f qcow2 -l nosuch {D}/img.qcow2
-k /nonexistent/vbd/s.sock -f raw {D}/img.raw  # known: vbd words a bind failure as its server does
-c /dev/nbd0 -f raw {D}/img.raw  # known: vbd-nbd has no kernel NBD client (README)
CASES
[ $ndiff = 0 ] || fail "$ndiff command lines refused differently"
echo "PASS"
