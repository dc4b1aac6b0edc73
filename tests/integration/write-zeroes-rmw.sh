#!/bin/bash
# A write-zeroes in flight beside an unaligned write into one of its blocks,
# on a cache.direct=on file (request_alignment 512 or 4096: the unaligned
# write is a read-modify-write of its whole block). Whichever of the two
# lands last, the block's bytes outside the unaligned write must read as
# zeroes once both are done: the old code let the read-modify-write read the
# block before the zeroes and write it back after them (the image's old
# bytes came back over a completed write-zeroes). vbd-io issues both as aio
# requests, in either order, 5 pairs per run (more in flight at once hid it
# on the old code: the reads came back before the zeroes were issued), 20
# runs; qemu-io 7.2 runs the same commands as the peer that shows the
# expected outcome.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T"
n=100 per_run=5
# check FILE: every 8 KiB block: bytes 0-99 and 200-8191 zero, bytes 100-199
# all 0x11 (the write landed last) or all zero (the zeroes did)
check() {
    python3 - "$1" "$n" <<'PY'
import sys
d = open(sys.argv[1], "rb").read()
bad = []
for i in range(int(sys.argv[2])):
    b = d[i * 8192:(i + 1) * 8192]
    mid = b[100:200]
    if any(b[:100]) or any(b[200:]) or mid not in (bytes(100), b"\x11" * 100):
        bad.append(i)
if bad:
    print(f"{len(bad)} of {sys.argv[2]} blocks wrong, first at offset {bad[0] * 8192}:"
          f" {d[bad[0] * 8192:bad[0] * 8192 + 128].hex()}")
    sys.exit(1)
PY
}
for order in write-first zeroes-first; do
    for tool in "$VBD_IO" qemu-io; do
        step "$order, ${tool##*/} -t none: the block's other bytes are zeroes"
        qemu-img create -q -f raw img.raw $((n * 8192))
        must qemu-io -f raw -c "write -P 0x55 0 $((n * 8192))" img.raw >/dev/null
        for ((r = 0; r < n; r += per_run)); do
            cmds=()
            for ((i = r; i < r + per_run; i++)); do
                o=$((i * 8192))
                w=(-c "aio_write -P 0x11 $((o + 100)) 100") z=(-c "aio_write -z $o 8192")
                if [ $order = write-first ]; then cmds+=("${w[@]}" "${z[@]}"); else cmds+=("${z[@]}" "${w[@]}"); fi
            done
            must "$tool" -t none -f raw "${cmds[@]}" -c aio_flush img.raw >"$T/out" 2>&1
        done
        check img.raw || fail "${tool##*/} $order: a completed write-zeroes read back as old data"
    done
done
echo ok
