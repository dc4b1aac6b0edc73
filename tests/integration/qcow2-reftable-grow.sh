#!/bin/bash
# qcow2 refcount table growth. With 512-byte clusters a refcount table
# cluster covers 8 MiB of the file (16-bit refcounts) or 2 MiB (64-bit):
# a write that takes the file past that makes vbd place a larger table at
# the end of the file, with a new refcount block for its own clusters.
# That block's table entry went to the disk at the OLD table's offset plus
# its index, past the old table's end: 8 bytes over whatever came next
# (the first refcount block, rewritten soon after, or the guest data QEMU
# put after a table it grew): after qemu-io had grown the table and vbd-io
# grew it again, qemu-io read other bytes than it wrote in the first 3 MiB
# and qemu-img check counted clusters referenced twice.
#  - qemu-io grows the table, then vbd-io's writes grow it again (the
#    header's refcount_table_clusters says so): qemu-img check clean,
#    qemu-io and vbd-io read back what each wrote;
#  - the stress kind c512-rc64 (tests/stress/stress-lib.sh): 48 requests
#    in flight on clusters that move to fresh ground, the file (4.5 MiB of
#    data written by qemu-img, which grew the table to 2 clusters) taken
#    past 4 MiB and the table grown under them, in process and over NBD:
#    check clean, identical to the model (the old code: "8 bad bytes" in
#    the final read-back, 3 seeds of 4).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
. "$VBD_ROOT/tests/stress/stress-lib.sh"
[ -x "$STRESS_BIN" ] || fail "no $STRESS_BIN (build the tree first)"
on_exit stress_kill_daemon
cd "$T"
reftable_clusters() { od -An -tu1 -j56 -N4 "$1" | awk '{print $1 * 16777216 + $2 * 65536 + $3 * 256 + $4}'; }
verify() { # TOOL IMG PATTERN-ARGS...: every "read -P" verifies
    local tool=$1 img=$2 out args=()
    shift 2
    for c in "$@"; do args+=(-c "read -P $c"); done
    out=$("$tool" -f qcow2 -r "${args[@]}" "$img" 2>&1) || fail "$tool read of $img: $out"
    ! grep -q "failed\|mismatch" <<<"$out" || fail "$img does not hold the data written ($tool): $(grep -m3 "failed\|mismatch" <<<"$out")"
}

# RB QEMU_BYTES VBD_BYTES: qemu-io writes the first QEMU_BYTES (QEMU
# grows the table: the cluster after its new table is guest data), vbd-io
# the next VBD_BYTES in 3 MiB writes (vbd grows it, at least once more)
for args in "16 9 9" "64 3 9"; do
    set -- $args
    rb=$1 q=$(($2 << 20)) v=$(($3 << 20))
    step "512-byte clusters, refcount_bits=$rb: $2 MiB written by qemu-io, $3 MiB more by vbd-io"
    rm -f g.qcow2
    must qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=$rb g.qcow2 256M
    must qemu-io -f qcow2 -c "write -P 0x11 0 $q" g.qcow2 >/dev/null
    t0=$(reftable_clusters g.qcow2)
    cmds=() pats=("0x11 0 $q")
    for ((o = q, i = 0; o < q + v; o += 3 << 20, i++)); do
        cmds+=(-c "write -P $((0x30 + i)) $o 3M")
        pats+=("$((0x30 + i)) $o 3M")
    done
    must "$VBD_IO" -f qcow2 "${cmds[@]}" g.qcow2 >/dev/null
    t1=$(reftable_clusters g.qcow2)
    echo "refcount table: 1 -> $t0 clusters (qemu-io) -> $t1 (vbd-io)"
    [ "$t0" -gt 1 ] && [ "$t1" -gt "$t0" ] || fail "refcount_bits=$rb: the refcount table did not grow in both steps"
    qcheck g.qcow2
    verify qemu-io g.qcow2 "${pats[@]}"
    verify "$VBD_IO" g.qcow2 "${pats[@]}"
done

step "the same under 48 requests in flight (stress kind c512-rc64)"
export STRESS_QD=48
# 3500: with stress_data's text of 2026-12-07 2500 operations of seed 4414 left the table at 2 clusters
OPS=${STRESS_OPS:-3500}
failures=0 n=0
for tr in lib nbd; do
    n=$((n + 1))
    seed=$((4407 + 7 * n))
    # the image as made for the run (qemu-img grew its table, guest data after it)
    rm -rf "$T/pre" && mkdir "$T/pre" && stress_make c512-rc64 "$T/pre" "$seed" >/dev/null || fail "stress_make c512-rc64"
    c0=$(reftable_clusters "$T/pre/img.qcow2")
    if stress_case c512-rc64 "$tr" "$seed" "$OPS" "$T/case"; then
        c=$(reftable_clusters "$T/case/img.qcow2")
        echo "ok   c512-rc64/$tr seed=$seed ($STRESS_LAST_OPS ops, $STRESS_LAST_VARIANT, refcount table $c0 -> $c clusters)"
        [ "$c" -gt "$c0" ] || fail "c512-rc64/$tr seed=$seed: the refcount table did not grow under the requests"
    else
        echo "FAIL c512-rc64/$tr seed=$seed"
        failures=$((failures + 1))
    fi
done
[ $failures = 0 ] || fail "$failures of $n runs failed (replay one: STRESS_QD=$STRESS_QD tests/stress/soak.sh --kind c512-rc64 --transport T --seed S --ops $OPS build-asan)"
echo OK
