#!/bin/bash
# The differential NBD server sweep, short: tests/integration/nbdsweep.py's
# fixed sequences (each once a difference) and the first sequences of a
# fixed seed: qemu-nbd 7.2 and vbd-nbd started with the same random options
# on copies of the same images (raw, qcow2 over a backing file, bitmaps),
# the same handshake (list, info, meta contexts, go) and random requests
# (read, write, zero, trim, cache, flush, block status; flags, out of range,
# unaligned) sent to both by libnbd; each answer, the data, block status
# per byte and the images after must be the same, but for the differences
# README explains. A difference prints its sequence (--cases I reruns it);
# its two directories are kept in $T/sweep while the test runs. The long
# run: make nbd-sweep.
. "$(dirname "$0")/lib.sh"
need qemu-nbd qemu-img qemu-io
# libnbd's Python module (python3-libnbd) is Debian's, for its python3
PY=
for p in python3 /usr/bin/python3; do
    if "$p" -c "import nbd" 2>/dev/null; then PY=$p; break; fi
done
[ -n "$PY" ] || skip "python3-libnbd not installed"
TMPDIR=$T VBD_NBD=$VBD_NBD "$PY" "$VBD_ROOT/tests/integration/nbdsweep.py" --table --seed "${NBDSWEEP_SEED:-30}" \
    --count "${NBDSWEEP_COUNT:-8}" --steps 30 --keep "$T/sweep" ||
    fail "nbdsweep: vbd-nbd and qemu-nbd differ (above)"
echo OK
