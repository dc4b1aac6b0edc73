#!/bin/bash
# Iothread moves of a running block job's nodes, as qemu-storage-daemon
# 7.2: x-blockdev-set-iothread and an NBD export's iothread move the job's
# nodes together with a pause of the job (its events compared in order),
# refusals in qsd's words; the backup and the mirror finish right (data
# read over NBD compared with qemu-img). tests/qmp/diff-job-iothread.jsonl
# run on both by qmpdiff.py. vbd refused every such move.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
qmpdiff_job_chain diff-job-iothread
echo OK
