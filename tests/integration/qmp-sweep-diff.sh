#!/bin/bash
# The differential QMP sweep, short: tests/qmp/qmpsweep.py's first
# sequences of a fixed seed (random commands over what qemu-storage-daemon
# 7.2 and vbd-daemon both have: nodes of seven drivers, exports, bitmaps,
# snapshots, resize, jobs on small images, queries; a third of them with a
# member dropped or added, a wrong type, a number out of range), each sent
# to both daemons; every reply's error class and return structure, and the
# nodes and exports listed every few commands, must be qsd's. A difference
# prints a qmpdiff.py reproducer. The long run: make qmp-sweep.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
VBD_DAEMON=$VBD_DAEMON python3 "$VBD_ROOT/tests/qmp/qmpsweep.py" --seed "${SWEEP_SEED:-28}" \
    --count "${SWEEP_COUNT:-2}" --steps 30 --keep "$T/sweep" ||
    fail "qmpsweep: vbd-daemon and qemu-storage-daemon differ (above)"
echo OK
