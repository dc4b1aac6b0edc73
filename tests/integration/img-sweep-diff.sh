#!/bin/bash
# The differential image-tool sweep, short: tests/integration/imgsweep.py's
# first command lines of a fixed seed (random qemu-img verbs with their
# options, valid and spoiled, and qemu-io command lines), each run by
# qemu-img/qemu-io 7.2 and by vbd-img/vbd-io in a copy of the same
# images; the exit code, stdout (names, dates and timings masked), the
# first line of stderr, the files left and every image written (qemu-img
# compare, check, info --output=json) must be the same, but for the
# differences README explains. A difference prints its command line; its
# two directories are kept in $T/sweep while the test runs. The long run:
# make img-sweep.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
VBD_IMG=$VBD_IMG VBD_IO=$VBD_IO python3 "$VBD_ROOT/tests/integration/imgsweep.py" --seed "${IMGSWEEP_SEED:-29}" \
    --count "${IMGSWEEP_COUNT:-25}" --keep "$T/sweep" ||
    fail "imgsweep: vbd-img/vbd-io and qemu-img/qemu-io differ (above)"
echo OK
