#!/bin/bash
# Every member of a few commands (blockdev-add of six drivers, a bitmap,
# resize, the four block jobs, write threshold, set-iothread, exports,
# objects) given a value of the wrong JSON type, an enum value that does
# not exist, an integer out of its range, the other members valid
# (tests/qmp/diff-wrong-types.jsonl, written by tests/qmp/gen-wrong-types.py
# from qemu-storage-daemon 7.2's own schema): vbd-daemon refuses each with
# qsd's words, word for word, and nothing is created by a refused request.
# Then 47 other commands (jobs' verbs, reopen/del, bitmaps, snapshots,
# chardevs, qom, NBD server, queries; diff-wrong-types-more.jsonl, from
# gen-wrong-types.py --more): wrong types, each required member missing,
# a member the command does not have.
. "$(dirname "$0")/lib.sh"
need python3 qemu-storage-daemon
qmpdiff_nulls diff-wrong-types
qmpdiff_nulls diff-wrong-types-more
echo OK
