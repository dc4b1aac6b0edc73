#!/bin/bash
# Long backing chains and backing loops. Each image of a chain is opened on a
# coroutine stack of its own (a 40-deep qcow2 chain overflowed the one
# 256 KiB stack before: SIGSEGV), and a chain that comes back to one of its
# own files is refused with one line instead of recursing for ever
# (qemu-io -U does).
#  1. a 200-deep qcow2 chain made by qemu-img, qemu-io writing a pattern in
#     every 20th layer: vbd-io reads every pattern through the top, vbd-img
#     convert gives qemu-img convert's bytes, info --backing-chain lists the
#     201 images as qemu-img does, vbd-nbd serves it and qemu-img compare over
#     NBD equals qemu-img's raw copy;
#  2. loops (an image its own backing file; a -> b -> a): qemu-img info's one
#     line, exit 1, from vbd-img info --backing-chain, convert and vbd-io -U.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io
cd "$T"
N=200
step "a $N-deep chain"
must qemu-img create -q -f qcow2 c0.qcow2 16M
must qemu-io -c "write -P 1 0 64k" c0.qcow2 >/dev/null
for i in $(seq 1 $N); do
    # -u: the size is given, so the backing chain (i images deep) is not
    # opened for each layer: 200 opens of up to 200 images were 20 s of CPU
    must qemu-img create -q -u -f qcow2 -F qcow2 -b "c$((i - 1)).qcow2" "c$i.qcow2" 16M
    if [ $((i % 20)) = 0 ]; then
        must qemu-io -c "write -P $((i / 20 + 1)) $((i / 20 * 64))k 64k" "c$i.qcow2" >/dev/null
    fi
done
top=c$N.qcow2
cmds=(-c "read -P 1 0 64k")
for i in $(seq 20 20 $N); do cmds+=(-c "read -P $((i / 20 + 1)) $((i / 20 * 64))k 64k"); done
out=$("$VBD_IO" -r "${cmds[@]}" "$top" 2>&1) || fail "vbd-io on the $N-deep chain: $out"
! grep -q "verification failed\|error" <<<"$out" || fail "vbd-io: $out"
[ "$(grep -c '^read 65536/65536' <<<"$out")" = $((N / 20 + 1)) ] || fail "vbd-io read count: $out"
must qemu-img convert -O raw "$top" q.raw
must "$VBD_IMG" convert -O raw "$top" v.raw
cmp q.raw v.raw || fail "vbd-img convert of the chain differs from qemu-img's"
qemu-img info --backing-chain "$top" | grep '^image:' >q.info || fail "qemu-img info"
"$VBD_IMG" info --backing-chain "$top" | grep '^image:' >v.info || fail "vbd-img info --backing-chain"
[ "$(wc -l <v.info)" = $((N + 1)) ] || fail "vbd-img info lists $(wc -l <v.info) images"
diff q.info v.info || fail "info --backing-chain image lists differ"
"$VBD_NBD" -r -f qcow2 -k "$T/nbd.sock" "$top" 2>"$T/nbd.log" &
npid=$!
on_exit "kill $npid 2>/dev/null"
wait_sock "$T/nbd.sock" "$npid" "$T/nbd.log"
must qemu-img compare -f raw -F raw q.raw "nbd+unix:///?socket=$T/nbd.sock"
kill -TERM $npid; wait $npid
! grep -q Sanitizer "$T/nbd.log" || { cat "$T/nbd.log"; fail "sanitizer report from vbd-nbd"; }

step "backing loops"
must qemu-img create -q -f qcow2 self.qcow2 1M
must qemu-img rebase -u -F qcow2 -b self.qcow2 self.qcow2
must qemu-img create -q -f qcow2 la.qcow2 1M
must qemu-img create -q -f qcow2 -F qcow2 -b la.qcow2 lb.qcow2
must qemu-img rebase -u -F qcow2 -b lb.qcow2 la.qcow2
for img in self.qcow2 la.qcow2; do
    q=$(qemu-img info --backing-chain "$img" 2>&1) && fail "qemu-img info of loop $img succeeded"
    v=$(timeout 60 "$VBD_IMG" info --backing-chain "$img" 2>&1); rc=$?
    [ $rc = 1 ] || fail "vbd-img info --backing-chain $img: exit $rc ($v)"
    [ "${v//vbd-img/qemu-img}" = "$q" ] || fail "vbd-img info $img: '$v', qemu-img: '$q'"
    v=$(timeout 60 "$VBD_IMG" convert -U -O raw "$img" out.raw 2>&1); rc=$?
    [ $rc = 1 ] || fail "vbd-img convert -U $img: exit $rc ($v)"
    [ "$(wc -l <<<"$v")" = 1 ] && grep -q "creates an infinite loop" <<<"$v" || fail "vbd-img convert $img: $v"
    v=$(timeout 60 "$VBD_IO" -U -r -c "read 0 4k" "$img" 2>&1); rc=$?
    [ $rc = 1 ] || fail "vbd-io -U $img: exit $rc ($v)"
    grep -q "creates an infinite loop" <<<"$v" || fail "vbd-io -U $img: $v"
done
echo OK
