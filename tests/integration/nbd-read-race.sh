#!/bin/bash
# Reads of 1 MiB and odd sizes in flight while writes land on the same and
# neighbouring sectors through the same export, over unix and TCP, simple
# and structured replies: every sector a read returns is the one written
# last before it (no write to it in flight during the read) or, with writes
# in flight, old or new byte by byte (nbd-read-race.py has the model and why).
# Then qemu-img compare: the export holds the model's final image.
. "$(dirname "$0")/lib.sh"
need qemu-img python3
# the zero-copy path (remote clients') for these local clients too: nbd-local-copy.sh
export VBD_NBD_LOCAL_ZERO_COPY=1
img=$T/disk.img
size=$((8 << 20))
python3 - "$img" $size <<'PY' || fail "initial fill"
import struct, sys
with open(sys.argv[1], "wb") as f:
    for s in range(int(sys.argv[2]) // 512):
        f.write(struct.pack("<QQ", 0, s) * 32)
PY
port=$(free_port 4) || fail "no free TCP port"
for via in unix tcp; do
    nbd_via $via $port
    nbd_raw_daemon "$img" "$addr"
    cp "$img" "$T/shadow"
    seed=${SEED:-$RANDOM}
    for mode in simple structured; do
        step "$via, $mode replies (seed $seed)"
        python3 "$(dirname "$0")/nbd-read-race.py" "$where" disk $size "$T/shadow" $seed ${OPS:-3000} $mode ||
            fail "$via $mode: a read returned what no model allows (seed $seed)"
        must qemu-img compare -q -f raw -F raw "$U" "$T/shadow"
    done
    kill $dpid
    wait $dpid || fail "daemon exit: $(cat "$T/daemon.log")"
    port=$((port + 1))
done
echo PASS
