#!/bin/bash
# The image-operations library (include/vbd/imageops.h) on its own, driven by
# tests/unit/imageops_test.c on a 3-layer qcow2 chain made by qemu-img and
# qemu-io: an intermediate commit equals what qemu-img commit makes of a copy
# of the chain; copy_range copies what the chain shows; an operation
# cancelled halfway (from its per-chunk callback) stops with ECANCELED and
# leaves images that check clean and read back, with qemu-io, the old data
# past the point it reached and the new data before it; progress never goes
# back, and reaches the total when not cancelled (imageops-test checks that).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
OPS=$VBD_BUILD/tests/unit/imageops-test
[ -x "$OPS" ] || fail "$OPS not built"
cd "$T"
M=$((1 << 20))
SIZE=$((16 * M))

chain() { # DIR: base <- mid <- top, backing names relative (the copy stays a chain)
    mkdir -p "$1"
    must qemu-img create -q -f qcow2 "$1/base.qcow2" 16M
    must qemu-io -f qcow2 -c "write -P 0x11 0 16M" "$1/base.qcow2" >/dev/null
    must qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$1/mid.qcow2"
    must qemu-io -f qcow2 -c "write -P 0x22 1M 3M" -c "write -z 6M 1M" -c "write -P 0x23 7680k 1M" \
        -c "write -P 0x27 9M 64k" -c "write -P 0x24 12M 2M" -c "write -P 0x25 $((15 * M + 4096)) 8k" "$1/mid.qcow2" >/dev/null
    must qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 "$1/top.qcow2"
    must qemu-io -f qcow2 -c "write -P 0x33 2M 1M" -c "write -P 0x34 12M 512k" "$1/top.qcow2" >/dev/null
}

# expect IMG VIEW [CUT [OFF]]: IMG must read as VIEW (base, committed, top) everywhere;
# with CUT: "copied" - VIEW over [OFF, OFF+CUT), zeroes elsewhere; "commit" - VIEW
# before CUT and the base's old data from CUT on. One qemu-io read -P per run.
expect() {
    local img=$1 view=$2 mode=${3:-} cut=${4:-0} off=${5:-0} out
    mapfile -t cmds < <(python3 - "$view" "$mode" "$cut" "$off" <<'PY'
import sys
M = 1 << 20
view, mode, cut, off = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
base = [(0, 16 * M, 0x11)]
mid = [(1 * M, 3 * M, 0x22), (6 * M, M, 0), (7680 << 10, M, 0x23), (9 * M, 64 << 10, 0x27), (12 * M, 2 * M, 0x24), (15 * M + 4096, 8192, 0x25)]
top = [(2 * M, M, 0x33), (12 * M, 512 << 10, 0x34)]
def paint(layers):
    b = bytearray(16 * M)
    for l in layers:
        for s, n, p in l:
            b[s:s + n] = bytes([p]) * n
    return b
full = paint({'base': [base], 'committed': [base, mid], 'top': [base, mid, top]}[view])
if mode == 'copied':
    want = bytearray(16 * M); want[off:off + cut] = full[off:off + cut]
elif mode == 'commit':
    want = full[:cut] + paint([base])[cut:]
else:
    want = full
i = 0
while i < len(want):
    j = i
    while j < len(want) and want[j] == want[i]:
        j += 1 if j % 4096 or j + 4096 > len(want) or want[j:j + 4096] != bytes([want[i]]) * 4096 else 4096
    print('-c'); print('read -P %d %d %d' % (want[i], i, j - i))
    i = j
PY
)
    out=$(qemu-io -r -f qcow2 "${cmds[@]}" "$img" 2>&1) || fail "qemu-io read of $img ($view $mode $cut): $out"
    case "$out" in *[Ff]ail*|*rror*) fail "$img does not read as $view ($mode $cut): $out" ;; esac
}
field() { sed -n "s/.*$1=\([-0-9]*\).*/\1/p" <<<"$2"; }

step "intermediate commit (mid into base, top above) equals qemu-img commit"
chain q
must qemu-img commit -q q/mid.qcow2
chain a
out=$("$OPS" commit a/top.qcow2 a/mid.qcow2 a/base.qcow2) || fail "imageops-test commit: $out"
[ "$(field rc "$out")" = 0 ] || fail "commit: $out"
[ "$(field chunks "$out")" -gt 1 ] || fail "commit reported progress only once: $out"
qcheck a/base.qcow2
qemu-img compare -q -f qcow2 -F qcow2 a/base.qcow2 q/base.qcow2 || fail "committed base differs from qemu-img's"
expect a/base.qcow2 committed
expect a/top.qcow2 top

step "commit cancelled halfway, then done again"
chain c
out=$("$OPS" --chunk 262144 --cancel-at $((8 * M)) commit c/top.qcow2 c/mid.qcow2 c/base.qcow2) ||
    fail "imageops-test cancelled commit: $out"
cur=$(field current "$out")
[ "$(field rc "$out")" = -125 ] || fail "cancelled commit did not return -ECANCELED: $out"
# mid's 0x23 run covers 7.5M-8.5M: the cancel lands inside a copied range
[ "$cur" -ge $((8 * M)) ] && [ "$cur" -lt $((8 * M + 512 * 1024)) ] || fail "cancelled commit stopped at $cur: $out"
qcheck c/base.qcow2
qcheck c/mid.qcow2
expect c/base.qcow2 committed commit "$cur"
expect c/top.qcow2 top
out=$("$OPS" --chunk 262144 commit c/top.qcow2 c/mid.qcow2 c/base.qcow2) || fail "commit after cancel: $out"
qcheck c/base.qcow2
qemu-img compare -q -f qcow2 -F qcow2 c/base.qcow2 q/base.qcow2 || fail "base committed after a cancel differs from qemu-img's"

step "copy_range of the chain's view, whole and cancelled"
must qemu-img create -q -f qcow2 d1.qcow2 16M
out=$("$OPS" --chunk 131072 copy a/top.qcow2 d1.qcow2 $M $((12 * M))) || fail "imageops-test copy: $out"
[ "$(field current "$out")" = $((12 * M)) ] || fail "copy progress: $out"
qcheck d1.qcow2
expect d1.qcow2 top copied $((12 * M)) $M
must qemu-img create -q -f qcow2 d2.qcow2 16M
out=$("$OPS" --chunk 131072 --cancel-at $((5 * M)) copy a/top.qcow2 d2.qcow2 $M $((12 * M))) ||
    fail "imageops-test cancelled copy: $out"
cur=$(field current "$out")
[ "$(field rc "$out")" = -125 ] && [ "$cur" -ge $((5 * M)) ] && [ "$cur" -lt $((12 * M)) ] ||
    fail "cancelled copy: $out"
qcheck d2.qcow2
expect d2.qcow2 top copied "$cur" $M

step "bad input: a range past the end, a chunk size that is not a multiple of 512"
out=$("$OPS" copy a/top.qcow2 d1.qcow2 $((15 * M)) $((2 * M)))
[ "$(field rc "$out")" = -22 ] && [[ "$out" == *"past the end"* ]] || fail "copy past the end: $out"
out=$("$OPS" --chunk 1000 copy a/top.qcow2 d1.qcow2 0 $M)
[ "$(field rc "$out")" = -22 ] && [[ "$out" == *"multiple of 512"* ]] || fail "chunk 1000: $out"
echo ok
