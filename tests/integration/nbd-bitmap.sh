#!/bin/bash
# An NBD export with bitmap=NAME: the qcow2 image's persistent dirty bitmap
# is served as the meta context qemu:dirty-bitmap:NAME, as qemu-nbd -B and
# qemu-storage-daemon's bitmaps list do (several: bitmaps.0=A,bitmaps.1=B). nbdinfo reads the same dirty map from
# vbd-daemon as from qemu-nbd; writes through the export show up in it and
# are in the image's bitmap after the daemon stops.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io qemu-nbd nbdinfo
cd "$T"
must qemu-img create -q -f qcow2 bm.qcow2 64M
must qemu-img bitmap --add bm.qcow2 b0
qemu-io -c 'write -P 1 1M 64k' -c 'write -P 2 20M 200k' bm.qcow2 >/dev/null
must qemu-img bitmap --add --granularity 1M bm.qcow2 coarse
qemu-io -c 'write -P 3 40M 4k' bm.qcow2 >/dev/null

serve_vbd() { # BITMAP [writable]
    rm -f v.sock
    # read-only export: the node read-only too, as qemu-nbd -r opens it (an
    # enabled bitmap of a writable node is refused on a read-only export, as qsd's)
    local ro=on
    [ "${2:-off}" = on ] && ro=off
    "$VBD_DAEMON" --blockdev driver=file,node-name=f0,filename=bm.qcow2,read-only=$ro --blockdev driver=qcow2,node-name=d0,file=f0,read-only=$ro \
        --nbd-server addr.type=unix,addr.path="$T/v.sock" \
        --export type=nbd,id=e0,node-name=d0,name=disk,bitmap="$1",writable="${2:-off}" 2>daemon.log &
    vpid=$!
    for _ in $(seq 1200); do [ -S v.sock ] && return; sleep 0.05; done
    fail "vbd-daemon did not start: $(cat daemon.log)"
}
qemu_map() { # BITMAP: the dirty map as qemu-nbd exports it
    rm -f q.sock
    qemu-nbd -r -t -k "$T/q.sock" -B "$1" -f qcow2 bm.qcow2 2>qn.log &
    local p=$!
    for _ in $(seq 1200); do [ -S q.sock ] && break; sleep 0.05; done
    nbdinfo --map=qemu:dirty-bitmap:"$1" "nbd+unix:///?socket=$T/q.sock"
    kill $p; wait $p 2>/dev/null
}

for b in b0 coarse; do
    step "bitmap=$b: the context is listed and its map equals qemu-nbd's"
    qemu_map $b >q.map
    serve_vbd $b
    nbdinfo --list "nbd+unix:///disk?socket=$T/v.sock" | grep -q "qemu:dirty-bitmap:$b" || fail "context not listed for $b"
    nbdinfo --map=qemu:dirty-bitmap:$b "nbd+unix:///disk?socket=$T/v.sock" >v.map || fail "nbdinfo --map on vbd"
    kill $vpid; wait $vpid 2>/dev/null
    diff -u q.map v.map || fail "bitmap $b: vbd's dirty map differs from qemu-nbd's"
    grep -q " 1 *dirty" v.map || fail "bitmap $b has no dirty extent at all: $(cat v.map)"
done

step "writes through a writable export are tracked, and stored when the daemon stops"
serve_vbd b0 on
qemu-io -f raw -c 'write -P 4 50M 4k' "nbd+unix:///disk?socket=$T/v.sock" >/dev/null || fail "qemu-io write through vbd"
nbdinfo --map=qemu:dirty-bitmap:b0 "nbd+unix:///disk?socket=$T/v.sock" | grep -q "^ *52428800 *65536 *1" ||
    fail "the write at 50M is not dirty in the live bitmap"
kill $vpid; wait $vpid 2>/dev/null
qcheck bm.qcow2
qemu_map b0 | grep -q "^ *52428800 *65536 *1" || fail "the write at 50M is not in the stored bitmap"

if command -v qemu-storage-daemon >/dev/null; then
    step "bitmaps.0=coarse,bitmaps.1=b0 (qsd's list): both contexts, listed in that order, mapped as qemu-storage-daemon maps them"
    for d in q v; do
        bin=qemu-storage-daemon
        [ $d = v ] && bin=$VBD_DAEMON
        rm -f $d.sock
        "$bin" --blockdev driver=file,node-name=f0,filename=bm.qcow2 --blockdev driver=qcow2,node-name=d0,file=f0 \
            --nbd-server addr.type=unix,addr.path="$T/$d.sock" \
            --export type=nbd,id=e0,node-name=d0,name=disk,writable=on,bitmaps.0=coarse,bitmaps.1=b0 2>$d.log &
        p=$!
        wait_sock "$T/$d.sock" "$p" $d.log
        u="nbd+unix:///disk?socket=$T/$d.sock"
        nbdinfo --json --list "$u" | python3 -c 'import json,sys; print(json.load(sys.stdin)["exports"][0]["contexts"])' >$d.ctx ||
            fail "nbdinfo --list against $d: $(cat $d.log)"
        for b in coarse b0; do nbdinfo --map=qemu:dirty-bitmap:$b "$u" >$d.$b.map || fail "--map $b against $d"; done
        kill -TERM $p
        wait $p || fail "$d exited with $? after SIGTERM: $(cat $d.log)"
    done
    cat v.ctx
    grep -q "'qemu:dirty-bitmap:coarse', 'qemu:dirty-bitmap:b0'" v.ctx || fail "not both bitmaps, in order: $(cat v.ctx)"
    diff q.ctx v.ctx || fail "the contexts listed differ from qsd's"
    for b in coarse b0; do diff -u q.$b.map v.$b.map || fail "bitmap $b: the map differs from qsd's"; done
    ! grep -q Sanitizer v.log || fail "sanitizer report: $(cat v.log)"
fi

step "a bitmap that does not exist: a clear error, no export"
out=$("$VBD_DAEMON" --blockdev driver=file,node-name=f0,filename=bm.qcow2 --blockdev driver=qcow2,node-name=d0,file=f0 \
    --nbd-server addr.type=unix,addr.path="$T/x.sock" --export type=nbd,id=e0,node-name=d0,bitmap=nope 2>&1) &&
    fail "an export of a missing bitmap started"
case $out in *"Bitmap 'nope' is not found"*) ;; *) fail "unclear error: $out" ;; esac
echo ok
