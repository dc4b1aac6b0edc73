#!/bin/bash
# make demo: a tour of what works, on a local default image.
set -euo pipefail
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/$BUILD/src/tools
D=$(mktemp -d "${TMPDIR:-/tmp}/vbd-demo.XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$D"' EXIT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
cd "$D"

say "Create a sparse 1 GiB raw image"
run "$BIN/vbd-img" create -f raw disk.raw 1G

say "Write through the block layer (io_uring), read back and verify"
run "$BIN/vbd-io" -f raw -c 'write -P 0xab 0 1M' -c 'write -P 0x5a 512M 64k' -c 'write -z 600M 1M' -c 'read -P 0xab 0 1M' -c 'read -P 0x5a 512M 64k' disk.raw

say "The same data as qemu-io sees it"
run qemu-io -f raw -c 'read -P 0xab 0 1M' -c 'read -P 0x5a 512M 64k' disk.raw

say "Image information and allocation map (same JSON as qemu-img)"
run "$BIN/vbd-img" info disk.raw
run "$BIN/vbd-img" map --output=json -f raw disk.raw

say "Convert (holes stay holes) and compare with qemu-img"
run "$BIN/vbd-img" convert -p -f raw -O raw disk.raw copy.raw
run qemu-img compare -f raw -F raw disk.raw copy.raw
run du -h --apparent-size copy.raw
run du -h copy.raw

if [ -x "$BIN/vbd-daemon" ]; then
    say "Serve the image over NBD and read it with nbdinfo / qemu-img"
    "$BIN/vbd-daemon" --blockdev driver=file,node-name=f0,filename=disk.raw \
        --blockdev driver=raw,node-name=disk0,file=f0 \
        --nbd-server addr.type=unix,addr.path="$D/nbd.sock" \
        --export type=nbd,id=e0,node-name=disk0,name=disk0 &
    for _ in $(seq 100); do [ -S "$D/nbd.sock" ] && break; sleep 0.05; done
    if command -v nbdinfo >/dev/null; then run nbdinfo "nbd+unix:///disk0?socket=$D/nbd.sock"; fi
    run qemu-img compare -f raw -F raw disk.raw "nbd+unix:///disk0?socket=$D/nbd.sock"
    kill %1; wait %1 2>/dev/null || true
fi

say "Convert to qcow2 (same layout as qemu-img's), check it with qemu-img, grow it"
run "$BIN/vbd-img" convert -f raw -O qcow2 -o compression_type=zstd disk.raw disk.qcow2
run qemu-img check disk.qcow2
run "$BIN/vbd-img" resize disk.qcow2 2G
run "$BIN/vbd-img" info disk.qcow2

say "An overlay on it, written by vbd, read by qemu-io"
run "$BIN/vbd-img" create -f qcow2 -b disk.qcow2 -F qcow2 overlay.qcow2
run "$BIN/vbd-io" -c 'write -P 0x77 4k 8k' overlay.qcow2
run qemu-io -r -c 'read -P 0xab 0 4k' -c 'read -P 0x77 4k 8k' -c 'read -P 0xab 12k 1012k' overlay.qcow2
run "$BIN/vbd-img" map overlay.qcow2

say "Serve the overlay to a VMM over vhost-user-blk; vbd-bench plays the VM"
"$BIN/vbd-daemon" --drive file=overlay.qcow2,format=qcow2,cache=writeback,num-queues=2 --vhost-user "$D/vu.sock" &
for _ in $(seq 100); do [ -S "$D/vu.sock" ] && break; sleep 0.05; done
run "$BIN/vbd-bench" --vhost-user "$D/vu.sock" -q 2 --verify --size 64M
run "$BIN/vbd-bench" --vhost-user "$D/vu.sock" -q 2 -w randread -b 4k -d 32 -t 2
kill %%; wait %% 2>/dev/null || true
run qemu-img check overlay.qcow2

say "Benchmark: vbd-img bench vs qemu-img bench (4k reads, 32 in flight, same file)"
# the first reader of a sparse file fills the page cache for both: warm it first so neither tool pays for the other
cat disk.raw >/dev/null
run "$BIN/vbd-img" bench -c 200000 -d 32 -s 4k -f raw disk.raw
run qemu-img bench -c 200000 -d 32 -s 4k -f raw -i io_uring disk.raw

say "Done: every step above succeeded"
