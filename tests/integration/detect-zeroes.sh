#!/bin/bash
# detect-zeroes (the generic node option) against qemu-storage-daemon 7.2:
# the same qcow2 node options on both daemons, qemu-io writing zeroes as
# data (write -P 0, some with FUA) over NBD. off leaves data clusters; on
# leaves zero clusters (over allocated clusters they keep their place, as
# QEMU's write-zeroes without unmap); unmap with discard=unmap deallocates
# them. qemu-img map of both images is the same (host offsets reduced to
# "has one"), query-named-block-nodes reports the same detect_zeroes, and
# the refused combinations give qsd's error text. (Zeroes over never
# allocated clusters are left out: vbd's qcow2 write-zeroes leaves those
# unallocated where QEMU sets the zero flag, with or without detect-zeroes.)
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
cd "$T" || fail "cd"
qpid=
on_exit '[ -z "$qpid" ] || kill -9 $qpid 2>/dev/null'
maps() { qemu-img map --output=json "$1" | python3 -c "
import json,sys
for e in json.load(sys.stdin): e['offset'] = 'offset' in e; print(json.dumps(e, sort_keys=True))"; }
Q=$T/qmp.sock
query_dz() { # the node's detect_zeroes from query-named-block-nodes
    PYTHONPATH=$VBD_ROOT/tests/qmp python3 -c "
import sys
from qmp import QMP
m = QMP(sys.argv[1], negotiate=True)
print([n['detect_zeroes'] for n in m.execute('query-named-block-nodes') if n['node-name'] == 'd'][0])" "$Q"
}

for mode in off on unmap; do
    opts="detect-zeroes=$mode"
    [ $mode = unmap ] && opts+=",discard=unmap"
    step "detect-zeroes=$mode: zero writes as data, as qemu-storage-daemon"
    for p in v q; do
        rm -f $p.qcow2
        must qemu-img create -q -f qcow2 $p.qcow2 4M
        # allocated data the zero writes land on, and a fresh area
        must qemu-io -f qcow2 -c "write -P 0x55 0 1M" $p.qcow2 >/dev/null
        S=$T/$p.nbd
        args=(--blockdev "qcow2,node-name=d,$opts,file.driver=file,file.filename=$T/$p.qcow2"
            --chardev "socket,id=m,path=$Q,server=on,wait=off" --monitor m
            --nbd-server "addr.type=unix,addr.path=$S" --export type=nbd,id=e0,node-name=d,name=d,writable=on)
        rm -f "$Q"
        if [ $p = v ]; then
            start_daemon "${args[@]}"
        else
            rm -f "$S"; qemu-storage-daemon "${args[@]}" 2>qsd.log & qpid=$!; wait_sock "$S" "$qpid" qsd.log
        fi
        wait_sock "$Q" "$qpid" qsd.log
        dz=$(query_dz) || fail "query-named-block-nodes on $p"
        [ "$dz" = "$mode" ] || fail "$p reports detect_zeroes '$dz', want '$mode'"
        qemu-io -f raw "nbd+unix:///d?socket=$S" -c "write -P 0 0 512k" -c "write -f -P 0 512k 128k" \
            -c "write -P 0x66 3M 64k" -c "write -P 0 3M 64k" -c "write -P 0 1M 0" \
            -c "read -P 0 0 640k" -c "read -P 0x55 640k 384k" -c "read -P 0 2M 2M" >$p.io 2>&1 || fail "qemu-io on $p: $(cat $p.io)"
        grep -q "failed\|Pattern verification" $p.io && fail "I/O on $p: $(cat $p.io)"
        if [ $p = v ]; then stop_daemon; else kill $qpid; wait $qpid 2>/dev/null; qpid=; fi
        wait_lock_free $p.qcow2
        maps $p.qcow2 >$p.map
        qcheck $p.qcow2
    done
    diff -u q.map v.map || fail "detect-zeroes=$mode: the maps differ (qsd -, vbd +)"
    z='"data": false, "depth": 0, "length": 655360, "offset": %s, "present": true, "start": 0, "zero": true}'
    case $mode in
    off) grep -q '"data": true, "depth": 0, "length": 1048576, "offset": true, "present": true, "start": 0, "zero": false}' v.map ||
        fail "off: the zeroes are not written as data: $(cat v.map)" ;;
    # shellcheck disable=SC2059
    on) grep -qF "$(printf "$z" true)" v.map || fail "on: no preallocated zero clusters at 0: $(cat v.map)" ;;
    # shellcheck disable=SC2059
    unmap) grep -qF "$(printf "$z" false)" v.map || fail "unmap: the zero clusters at 0 kept their place: $(cat v.map)" ;;
    esac
    [ $mode = off ] || ! grep '"data": true' v.map | grep -q '"start": 3145728' || fail "$mode: 3M is still data"
done

step "refused combinations: qsd's error text"
must qemu-img create -q -f qcow2 e.qcow2 1M
for o in detect-zeroes=unmap detect-zeroes=unmap,discard=ignore detect-zeroes=bogus; do
    spec="qcow2,node-name=d,$o,file.driver=file,file.filename=$T/e.qcow2"
    qemu-storage-daemon --blockdev "$spec" >q.err 2>&1 && fail "qsd accepted $o"
    "$VBD_DAEMON" --blockdev "$spec" >v.err 2>&1 && fail "vbd accepted $o"
    want=$(sed 's/.*file.filename=[^:]*: //' q.err)
    [ -n "$want" ] || fail "no error from qsd for $o"
    grep -qF "$want" v.err || fail "$o: vbd says '$(cat v.err)', qsd '$want'"
done

step "--drive detect-zeroes= (as -drive)"
must qemu-img create -q -f qcow2 dr.qcow2 4M
must qemu-io -f qcow2 -c "write -P 0x55 0 1M" dr.qcow2 >/dev/null
S=$T/dr.nbd
must_fail_with "setting detect-zeroes to unmap is not allowed" "$VBD_DAEMON" --drive file=$T/dr.qcow2,format=qcow2,detect-zeroes=unmap
start_daemon --drive file=$T/dr.qcow2,format=qcow2,id=d,detect-zeroes=unmap,discard=unmap \
    --nbd-server addr.type=unix,addr.path=$S --export type=nbd,id=e0,node-name=d,name=d,writable=on
must qemu-io -f raw "nbd+unix:///d?socket=$S" -c "write -P 0 0 1M" >/dev/null
stop_daemon
maps dr.qcow2 | grep -qF '"data": false, "depth": 0, "length": 1048576, "offset": false, "present": true, "start": 0, "zero": true}' ||
    fail "--drive detect-zeroes=unmap: $(maps dr.qcow2)"
echo "PASS"
