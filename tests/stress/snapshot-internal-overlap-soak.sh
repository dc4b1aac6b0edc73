#!/bin/bash
# Internal qcow2 snapshots (blockdev-snapshot-internal-sync, deletes, a
# failing transaction's abort) taken while the guest's writes, write-zeroes
# and discards in flight share BYTES: snapshot-internal-stress.sh's phases
# 1, 1b and 2 with vbd-stress --overlap (SNAPI_OVERLAP=1 there), 64 requests in
# flight on a vhost-user-blk export (2 rings on an iothread) and an NBD
# export of the node at once. Each snapshot holds, byte for byte, a write
# that may have landed last before it (vbd-stress --points: one completed
# before the command unless another issued after it completed did too, or
# one in flight across it; none issued after the reply), reads the same at
# the end (qemu-img convert -l) and, applied with qemu-img snapshot -a to
# a copy, gives the same bytes and a clean check; the image equals the
# model and checks clean; each phase had mutations over others in flight
# on the same bytes. About 4 minutes at load 25 (release build): longer
# than make check's budget, so `make soak` runs it (SOAK_JOBS=1), or alone:
#   tests/stress/snapshot-internal-overlap-soak.sh [BUILD_DIR]
# SNAPI_SEED (default random, printed), SNAPI_ROUNDS (default 6).
[ $# -gt 0 ] && export VBD_BUILD=$(cd "$1" && pwd)
SNAPI_OVERLAP=1 exec bash "$(dirname "$0")/../integration/snapshot-internal-stress.sh"
