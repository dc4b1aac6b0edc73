#!/bin/bash
# The iscsi client under 64 requests in flight while tgtd is killed (-9)
# and restarted (the LUN away and back), twice in the middle of the run:
# libiscsi's reconnect and the driver's retries (UNIT ATTENTION of the new
# session) carry every request over, none fails or hangs, and afterwards
# the LUN's file holds exactly what the model says. vbd-daemon's node is
# the iscsi client; two raw windows of it are served at once: one over
# vhost-user-blk (2 queues on an iothread: the session stays on the main
# loop, requests hop), one over NBD (4 connections), each driven by its own
# vbd-stress (QD 64, mixed sizes, overlapping clusters, writes, zeroes,
# discards through UNMAP and the allocation cache, flushes).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib-tgt.sh"
need qemu-img
need_stress
cd "$T"
SEED=${ISCSI_RESTART_SEED:-8221}
WIN=$((8 << 20))
S=$T/nbd.sock
VU=$T/vu.sock
# libiscsi 1.19 leaks a login PDU of its reconnect (in the library): only that is skipped
printf 'leak:libiscsi.so\n' >lsan.supp

window_stress_disk disk.img
tgt_start "$T/disk.img"
step "tgtd killed and restarted twice under vhost-user (2 queues, iothread) and NBD (4 connections), QD 64 each, seed $SEED"
LSAN_OPTIONS=${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=$T/lsan.supp window_stress_start i0 \
    "driver=iscsi,node-name=i0,portal=127.0.0.1:$TGT_PORT,target=$TGT_IQN,lun=1" $SEED $((SEED + 1)) --align 512
tgt_outage() { tgt_kill9; sleep 0.3; tgt_restart; }
window_stress_rounds disk.img tgt_outage "session re-established"
window_stress_finish "tgtd restarts" disk.img
echo PASS
