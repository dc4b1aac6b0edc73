#!/bin/bash
# The filters and a raw file under mutations in flight on the same BYTES
# (vbd-stress --overlap: writes, write-zeroes with and without unmap and
# discards sharing bytes, 48 in flight on a few hot clusters that move to
# fresh ground, every read checked against its model; each byte must end as
# one of the mutations that may have landed last on it left it).
# filter-stress.sh runs the same graphs with mutations kept off each
# other's bytes; quorum-overlap.sh has quorum over two healthy children.
#  copy-on-read (bottom: base) over an empty qcow2 overlay of a filled
#    qcow2 base, over vhost-user-blk (2 rings on an iothread; with
#    FILTER_OVERLAP_COR="vhost nbd" also over NBD, 4 connections): a
#    read's copy of the base's cluster must never land over a newer write
#    (a discard may expose the base: --backing); the
#    overlay checks clean and reads as the model, the base is unchanged;
#  quorum of three raw children (vote-threshold 2), the third behind
#    blkdebug failing every write after its first 60 (its reads go on and
#    are outvoted where it missed writes), in process: every read right,
#    the two healthy children the model, the third not;
#  raw over a file with discard=unmap (discards and write-zeroes with unmap
#    punch holes under the writes) through a vhost-user-blk export (2 rings
#    on an iothread) and an NBD export of the node at once.
# Each run must have issued mutations over others in flight on the same
# bytes (the log's count). FILTER_OVERLAP_SEED; FILTER_OVERLAP_OPS requests
# a case (300: about 1.5 min under ASan at load 30; longer by hand).
. "$(dirname "$0")/lib.sh"
need qemu-img python3
overlap_stress_setup "${FILTER_OVERLAP_SEED:-2727}" "${FILTER_OVERLAP_OPS:-300}"

n=0
for tr in ${FILTER_OVERLAP_COR:-vhost}; do
    n=$((n + 1))
    step "copy-on-read over $tr, seed $((SEED + n))"
    scenario_dir cor-$tr
    cor_stack
    stress_transport $tr e0 cor
    srv=()
    [ $tr = nbd ] && srv=(--nbd-server "addr.type=unix,addr.path=$PWD/nbd.sock")
    "$VBD_DAEMON" --object iothread,id=io0 "${COR_NODES[@]}" "${srv[@]}" --export "$exp" 2>daemon.log &
    dpid=$!
    [ $tr = nbd ] && wait_sock "$PWD/nbd.sock" "$dpid" daemon.log || wait_sock "$PWD/vu.sock" "$dpid" daemon.log
    timeout -k 10 600 "$STRESS" --seed $((SEED + n)) "${COMMON[@]}" --init ../base.raw --backing ../base.raw \
        --shadow-out shadow.raw $target >stress.log 2>&1 ||
        fail "vbd-stress through copy-on-read over $tr, seed $((SEED + n)): $(tail -8 stress.log)"
    overlapped stress.log
    job_daemon_stop vbd-daemon
    cor_stack_check shadow.raw
    cd "$T"
done

n=$((n + 1))
step "quorum: three children, the third failing every write after its first 60, seed $((SEED + n))"
scenario_dir q
quorum_raw_children "" 2
D="children.2.file"
Q="$Q,children.2.driver=raw,$D.driver=blkdebug,$D.image.driver=file,$D.image.filename=$PWD/s2.raw"
Q="$Q,$D.inject-error.0.event=write_aio,$D.inject-error.0.errno=5,$D.inject-error.0.x-skip=60"
timeout -k 10 600 "$STRESS" --seed $((SEED + n)) "${COMMON[@]}" --init ../base.raw --shadow-out shadow.raw \
    --no-discard --image-opts "$Q" >stress.log 2>&1 || fail "vbd-stress through quorum: $(tail -8 stress.log)"
overlapped stress.log
for i in 0 1; do must qemu-img compare -q -f raw -F raw s$i.raw shadow.raw; done
# the failing child missed writes: otherwise the failure was not tested
! qemu-img compare -q -f raw -F raw s2.raw shadow.raw || fail "the blkdebug child holds every write"
cd "$T"

n=$((n + 1))
step "raw with discard=unmap over vhost-user and NBD at once, seed $((SEED + n))"
scenario_dir raw
cp ../base.raw img.raw
S=$PWD/qmp.sock
stress_daemon both r0 --blockdev "driver=file,node-name=f0,filename=$PWD/img.raw,discard=unmap" \
    --blockdev driver=raw,node-name=r0,file=f0,discard=unmap
timeout -k 10 600 "$STRESS" --seed $((SEED + n)) "${COMMON[@]}" --zero-heavy --init ../base.raw \
    --shadow-out shadow.raw --vhost-user "$T/vu.sock" --queues 2 --nbd "nbd+unix:///disk?socket=$T/nbd.sock" \
    --conns 2 >stress.log 2>&1 || fail "vbd-stress on raw: $(tail -8 stress.log)"
overlapped stress.log
stop_daemon
must qemu-img compare -q -f raw -F raw img.raw shadow.raw
cd "$T"
echo ok
