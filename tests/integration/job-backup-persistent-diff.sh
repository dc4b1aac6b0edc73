#!/bin/bash
# blockdev-backup with a persistent (qcow2) dirty bitmap against
# qemu-storage-daemon 7.2: tests/qmp/diff-backup-persistent.jsonl run on
# both by qmpdiff.py: a full backup and the bitmap in one transaction, then
# incremental backups (on-success, never, always, one cancelled) into a
# chain of qcow2 images whose last one reads as the source, the bitmap's
# bits (x-debug-block-dirty-bitmap-sha256) equal to qsd's after each, and
# busy while a job uses it (QEMU's words). Then, on each daemon, a bitmap
# left in-use by a SIGKILL: after a restart an incremental backup of it
# is refused with QEMU's words, and qemu-img check is clean apart from
# leaks.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
qmpdiff diff-backup-persistent \
    --blockdev "$(qcow2_node_in {DIR} src)" \
    --blockdev "$(qcow2_node_in {DIR} full)" \
    --blockdev "$(qcow2_node_in {DIR} inc1 null)" \
    --blockdev "$(qcow2_node_in {DIR} inc2 null)" \
    --blockdev "$(qcow2_node_in {DIR} inc3 null)" \
    --nbd-server "addr.type=unix,addr.path={DIR}/nbd.sock" \
    --export "type=nbd,id=e0,node-name=src,name=src,writable=on"

step "a bitmap in-use after SIGKILL"
cd "$T"
kpid=
on_exit 'kill -9 $kpid 2>/dev/null'
for d in qsd vbd; do
    rm -rf "$d" && mkdir "$d" && cd "$d" || fail "mkdir $d"
    must qemu-img create -q -f qcow2 src.qcow2 16M
    must qemu-img create -q -f qcow2 tgt.qcow2 16M
    must qemu-img bitmap --add src.qcow2 p0
    bin=$VBD_DAEMON
    [ $d = qsd ] && bin=qemu-storage-daemon
    for run in 1 2; do
        rm -f qmp.sock nbd.sock
        "$bin" --chardev socket,id=q,path="$PWD/qmp.sock",server=on,wait=off --monitor chardev=q \
            --blockdev "$(qcow2_node src)" --blockdev "$(qcow2_node tgt)" \
            --nbd-server "addr.type=unix,addr.path=$PWD/nbd.sock" \
            --export type=nbd,id=e0,node-name=src,name=src,writable=on 2>daemon.log &
        kpid=$!
        wait_sock "$PWD/nbd.sock" "$kpid" daemon.log
        [ $run = 2 ] && break
        must qemu-io -f raw -c 'write -P 0x22 1M 64k' "nbd+unix:///src?socket=$PWD/nbd.sock" >/dev/null
        kill -9 $kpid
        wait $kpid 2>/dev/null
        qemu-img info --output=json -U src.qcow2 | grep -q '"in-use"' || fail "$d: p0 not in-use after SIGKILL"
    done
    qmp_py "$PWD/qmp.sock" >refused.txt <<'PY' || fail "$d: QMP after the restart"
r = m.cmd("blockdev-backup", {"job-id": "i1", "device": "src", "target": "tgt", "sync": "incremental", "bitmap": "p0"})
print(r.get("error", {}).get("desc", "no error"))
PY
    kill -TERM $kpid
    wait $kpid || fail "$d exited with $?: $(tail -5 daemon.log)"
    ! grep -q Sanitizer daemon.log || fail "$d: $(cat daemon.log)"
    out=$(qemu-img check src.qcow2 2>&1)
    case $? in 0|3) ;; *) fail "$d: qemu-img check after the kill: $out" ;; esac
    cd "$T"
done
grep -q "^Bitmap 'p0' is inconsistent and cannot be used$" qsd/refused.txt || fail "qsd: $(cat qsd/refused.txt)"
cmp qsd/refused.txt vbd/refused.txt || fail "the refusal differs: qsd: $(cat qsd/refused.txt); vbd: $(cat vbd/refused.txt)"
echo ok
