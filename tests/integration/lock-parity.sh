#!/bin/bash
# Image locks beside QEMU 7.2's, checker by checker: while a holder (qemu-io,
# qemu-storage-daemon, vbd-io, vbd-daemon; read-write or read-only) has an
# image open, each checker (info, check, map, compare, convert, measure,
# snapshot -l, resize, commit, rebase (-u, and onto a held backing file
# with and without -U); io -r/-U/read-write; a daemon's
# read-only, force-share and read-write --blockdev) runs as qemu-img/qemu-io/
# qemu-storage-daemon and as vbd-img/vbd-io/vbd-daemon and must give the
# same exit code and the same stderr (the tool's name aside). The holders'
# OFD byte ranges are QEMU's, so a vbd holder blocks qemu-img as a QEMU
# holder does. A qcow2 writer's image is refused to a reader without -U
# (QEMU: "bs->file always needs to be consistent because of the metadata");
# a raw one is not; a writer of a qcow2 backing file blocks opening the
# overlay's chain (commit's first open too: vbd-img commit opened the top
# alone and named the base in other words).
# One deliberate difference is left out: a raw writer in vbd shares no
# writes (a second writer is refused), where qemu-io's raw writer shares
# them (README); the rw checkers run only against qcow2.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io qemu-storage-daemon
cd "$T"
must qemu-img create -q -f raw r.raw 4M
must qemu-img create -q -f qcow2 q.qcow2 4M
must qemu-img create -q -f qcow2 bq.qcow2 4M
must qemu-img create -q -f qcow2 -b bq.qcow2 -F qcow2 ov.qcow2 4M
must qemu-img create -q -f raw br.raw 4M
must qemu-img create -q -f qcow2 -b br.raw -F raw ovr.qcow2 4M

hpid=
release() {
    [ -n "$hpid" ] || return 0
    exec 9>&-
    kill $hpid 2>/dev/null
    wait $hpid 2>/dev/null
    hpid=
    local ino=$(stat -c %i "$himg")
    for _ in $(seq 1200); do grep -q ":$ino " /proc/locks || return 0; sleep 0.05; done
    fail "the holder's locks outlived it on $himg"
}
on_exit release
# hold KIND FMT IMG: KIND keeps IMG open until release
hold() {
    local kind=$1 fmt=$2 img=$3 ino
    himg=$img
    rm -f hold.fifo && mkfifo hold.fifo
    case $kind in
    qemu-io-rw) qemu-io -f $fmt $img <hold.fifo >/dev/null 2>&1 & ;;
    qemu-io-ro) qemu-io -r -f $fmt $img <hold.fifo >/dev/null 2>&1 & ;;
    # vbd-io has no interactive mode: a long sleep, killed by release
    vbd-io-rw) "$VBD_IO" -f $fmt -c 'sleep 600000' $img <hold.fifo >/dev/null 2>hold.err & ;;
    vbd-io-ro) "$VBD_IO" -r -f $fmt -c 'sleep 600000' $img <hold.fifo >/dev/null 2>hold.err & ;;
    qsd-rw) qemu-storage-daemon --blockdev driver=file,node-name=f,filename=$img \
        --blockdev driver=$fmt,node-name=d,file=f --nbd-server addr.type=unix,addr.path=$T/h.sock \
        --export type=nbd,id=e,node-name=d,writable=on <hold.fifo >/dev/null 2>&1 & ;;
    # a daemon's node holds what its users take, as qsd's: exported, as
    # qsd-rw's (a raw node nothing uses holds no locks in either)
    vbd-daemon-rw) "$VBD_DAEMON" --blockdev driver=file,node-name=f,filename=$img \
        --blockdev driver=$fmt,node-name=d,file=f --nbd-server addr.type=unix,addr.path=$T/h.sock \
        --export type=nbd,id=e,node-name=d,writable=on <hold.fifo >/dev/null 2>hold.err & ;;
    vbd-daemon-ro) "$VBD_DAEMON" --blockdev driver=file,node-name=f,filename=$img,read-only=on \
        --blockdev driver=$fmt,node-name=d,file=f,read-only=on --nbd-server addr.type=unix,addr.path=$T/h.sock \
        --export type=nbd,id=e,node-name=d <hold.fifo >/dev/null 2>hold.err & ;;
    esac
    hpid=$!
    exec 9>hold.fifo
    # the holder is ready when its "consistent read" byte (100) is locked
    ino=$(stat -c %i "$img")
    for _ in $(seq 1200); do grep -Eq ":$ino 100 10[0-3]" /proc/locks && return 0; sleep 0.05; done
    cat hold.err 2>/dev/null
    fail "$kind never locked $img"
}

n=0
prep= # a command run before each tool's turn
fresh_nb() { rm -f nb.qcow2 && qemu-img create -q -f qcow2 nb.qcow2 4M; }
# same Q-COMMAND -- V-COMMAND: both run (in the same directory, against the
# same holder); exit codes and stderr must match
same() {
    local q=() v=()
    while [ "$1" != -- ]; do q+=("$1"); shift; done
    shift
    v=("$@")
    rm -f out.raw; $prep
    "${q[@]}" >q.out 2>q.err </dev/null; local qrc=$?
    rm -f out.raw; $prep
    "${v[@]}" >v.out 2>v.err </dev/null; local vrc=$?
    # the conflict is reported at the --blockdev that brings the format
    # (vbd: its file node's claim; QEMU: the format asks its file node)
    sed -i -E -e 's/qemu-img|qemu-io|qemu-storage-daemon/TOOL/g' -e 's/#block[0-9]+/#blockN/g' \
        -e 's/^TOOL: --blockdev [^ ]*: /TOOL: --blockdev X: /' q.err
    sed -i -E -e 's/vbd-img|vbd-io|vbd-daemon/TOOL/g' -e 's/#block[0-9]+/#blockN/g' \
        -e 's/^TOOL: --blockdev [^ ]*: /TOOL: --blockdev X: /' v.err
    [ $qrc = $vrc ] || { cat q.err v.err; fail "[$hdesc] exit $qrc (qemu) vs $vrc (vbd): ${q[*]}"; }
    diff -u q.err v.err || fail "[$hdesc] stderr differs: ${q[*]}"
    ! grep -q Sanitizer v.err || fail "sanitizer report: ${v[*]}"
    n=$((n + 1))
}
# both img ARGS...
img() { same qemu-img "$@" -- "$VBD_IMG" "$@"; }
io() { same qemu-io "$@" -- "$VBD_IO" "$@"; }
# dstart SOCK CMD...: a daemon started beside the holder: its exit code
# if it fails to start (a lock conflict), 0 once it serves SOCK (then it is
# stopped)
dstart() {
    local sock=$1 p
    shift
    rm -f "$sock"
    "$@" &
    p=$!
    for _ in $(seq 1200); do
        [ -S "$sock" ] && { kill $p; wait $p; return 0; }
        kill -0 $p 2>/dev/null || { wait $p; return; }
        sleep 0.05
    done
    kill $p; wait $p
    return 124
}
# dmn rw|ro|fs IMG FMT: a --blockdev pair (read-write, read-only,
# read-only with force-share) opened beside the holder
dmn() {
    local ro=$1 img=$2 fmt=$3 o=
    [ $ro = rw ] || o=,read-only=on
    [ $ro != fs ] || o=,read-only=on,force-share=on
    # the monitor socket comes last: it exists once both nodes are open
    same dstart c.sock qemu-storage-daemon --blockdev driver=file,node-name=f,filename=$img$o \
        --blockdev driver=$fmt,node-name=d,file=f$o \
        --chardev socket,id=m,path=$T/c.sock,server=on,wait=off --monitor chardev=m \
        -- dstart c.sock "$VBD_DAEMON" --blockdev driver=file,node-name=f,filename=$img$o \
        --blockdev driver=$fmt,node-name=d,file=f$o \
        --chardev socket,id=m,path=$T/c.sock,server=on,wait=off --monitor chardev=m
}

readers() { # FMT IMG
    local f=$1 i=$2
    img info -f $f $i
    img info -U -f $f $i
    img map -f $f $i
    img map -U -f $f $i
    img compare -f $f -F $f $i $i
    img compare -U -f $f -F $f $i $i
    img convert -f $f -O raw $i out.raw
    img convert -U -f $f -O raw $i out.raw
    img measure -f $f -O qcow2 $i
    img measure -U -f $f -O qcow2 $i
    io -r -f $f -c 'read 0 512' $i
    io -r -U -f $f -c 'read 0 512' $i
    if [ $f = qcow2 ]; then
        img check -f $f $i
        img check -U -f $f $i
        img snapshot -l $i
        img snapshot -l -U $i
    fi
    dmn ro $i $f
    dmn fs $i $f
}
writers() { # qcow2 IMG
    local i=$1
    img resize -f qcow2 $i 4M
    img commit -f qcow2 $i
    img rebase -u -f qcow2 -b '' $i
    img bitmap --add -f qcow2 $i b0
    io -f qcow2 -c 'write 0 512' $i
    dmn rw $i qcow2
}

for h in qemu-io-rw qemu-io-ro qsd-rw vbd-io-rw vbd-io-ro vbd-daemon-rw vbd-daemon-ro; do
    step "holder $h"
    hdesc="$h raw"; hold $h raw r.raw
    readers raw r.raw
    release
    hdesc="$h qcow2"; hold $h qcow2 q.qcow2
    readers qcow2 q.qcow2
    writers q.qcow2
    release
    # the backing file held: what opens the overlay's chain sees its locks
    hdesc="$h qcow2 backing"; hold $h qcow2 bq.qcow2
    img info --backing-chain ov.qcow2
    img info ov.qcow2
    img map ov.qcow2
    img compare ov.qcow2 ov.qcow2
    img convert -O raw ov.qcow2 out.raw
    # (qemu-img check opens the backing chain and fails here too; vbd-img
    # check reads the top image alone: not compared)
    io -r -c 'read 0 512' ov.qcow2
    io -r -U -c 'read 0 512' ov.qcow2
    # commit into it: refused at qemu-img's first open of the chain (top
    # read-write, backing read-only) or at the base's read-write open
    img commit ov.qcow2
    # rebase onto it (the new backing file is opened read-only; -U shares)
    prep=fresh_nb
    img rebase -b bq.qcow2 -F qcow2 nb.qcow2
    img rebase -U -b bq.qcow2 -F qcow2 nb.qcow2
    prep=
    release
    hdesc="$h raw backing"; hold $h raw br.raw
    img info --backing-chain ovr.qcow2
    img map ovr.qcow2
    img convert -O raw ovr.qcow2 out.raw
    io -r -c 'read 0 512' ovr.qcow2
    release
    # the overlay held: its backing file stays readable (and, for a raw
    # one, writable: QEMU's COW role shares writes when the parent does)
    hdesc="$h overlay"; hold $h qcow2 ov.qcow2
    img info -f qcow2 bq.qcow2
    io -r -f qcow2 -c 'read 0 512' bq.qcow2
    io -f qcow2 -c 'write 0 512' bq.qcow2
    release
done
step "nothing held: everything opens again"
img info q.qcow2
io -f qcow2 -c 'write 0 512' q.qcow2
echo "ok ($n comparisons)"
