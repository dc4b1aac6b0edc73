#!/bin/bash
# Crash consistency of vhdx block allocation: a vbd-io writer filling new
# 1 MiB blocks of a qemu-img-made image is killed with SIGKILL once it has
# completed its k-th write (k varies), in the middle of the next one: the
# data write, the log entry, the BAT sector or the header updates. After
# each kill, qemu-img check -r all (replaying the log vbd may have left)
# and vbd's own read-write open must give the same image, check clean,
# every completed write present and every block either whole or absent.
# CRASH_CYCLES (default 12) cycles.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cd "$T" || exit 1
cycles=${CRASH_CYCLES:-12}
exec {tick}<> <(:) # never readable: read -t on it waits without a fork
dirty=0 killed_mid_run=0
for cyc in $(seq "$cycles"); do
    rm -f c.vhdx
    must qemu-img create -q -f vhdx -o block_size=1M c.vhdx 40M
    python3 - $cyc >cmds.txt <<'PY'
import random, sys
r = random.Random(int(sys.argv[1]))
for k, b in enumerate(r.sample(range(40), 30)):
    print('write -P 0x%02x %d %d' % (k + 1, b << 20, 1 << 20))
PY
    args=(); while read -r l; do args+=(-c "$l"); done <cmds.txt
    : >out.txt
    "$VBD_IO" -f vhdx "${args[@]}" c.vhdx >out.txt 2>&1 &
    pid=$!
    k=$(( (cyc * 7) % 28 + 1 ))
    while kill -0 $pid 2>/dev/null; do
        [ "$(grep -c '^wrote' out.txt)" -ge $k ] && break
        read -r -t 0.002 -u $tick || true
    done
    kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null; wrc=$?
    [ $wrc = 137 ] || [ $wrc = 0 ] || fail "cycle $cyc: vbd-io exited with $wrc: $(head -3 out.txt)"
    [ $wrc = 137 ] && killed_mid_run=$((killed_mid_run + 1))
    wait_lock_free -f vhdx c.vhdx
    if python3 - c.vhdx <<'PY'
import struct, sys
b = open(sys.argv[1], 'rb').read(196608)
h = [b[o:o + 4096] for o in (65536, 131072)]
cur = h[0] if struct.unpack_from('<Q', h[0], 8)[0] > struct.unpack_from('<Q', h[1], 8)[0] else h[1]
sys.exit(0 if cur[48:64] != bytes(16) else 1)
PY
    then dirty=$((dirty + 1)); fi
    must cp c.vhdx q.vhdx
    out=$(qemu-img check -r all q.vhdx 2>&1) || fail "cycle $cyc: qemu-img check -r all: $out"
    qcheck q.vhdx
    out=$("$VBD_IO" -c 'read 0 512' c.vhdx 2>&1) || fail "cycle $cyc: vbd-io cannot open the crashed image: $out"
    qcheck c.vhdx
    out=$(qemu-img compare q.vhdx c.vhdx 2>&1) || fail "cycle $cyc: vbd's recovery differs from qemu's: $out"
    must qemu-img convert -O raw c.vhdx c.raw
    python3 - cmds.txt "$(grep -c '^wrote' out.txt)" c.raw <<'PY' || fail "cycle $cyc: the content after the crash is wrong"
import sys
cmds = [l.split() for l in open(sys.argv[1])]
done = int(sys.argv[2])
raw = open(sys.argv[3], 'rb').read()
for k, (_, _, p, off, ln) in enumerate(cmds):
    off, ln, p = int(off), int(ln), int(p, 16)
    blk = raw[off:off + ln]
    whole = blk.count(p) == ln
    if k < done and not whole:
        sys.exit('write %d completed but is not in the image' % k)
    if not whole and blk.count(0) != ln:
        sys.exit('block at %d is neither whole nor absent' % off)
PY
    echo "cycle $cyc: $(grep -c '^wrote' out.txt) writes completed, killed: $([ $wrc = 137 ] && echo yes || echo no)"
done
echo "$dirty of $cycles crashed images had a log to replay"
[ $killed_mid_run -gt 0 ] || fail "no cycle was killed in the middle of its writes"
echo ok
