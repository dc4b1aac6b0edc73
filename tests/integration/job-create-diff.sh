#!/bin/bash
# blockdev-create and x-blockdev-amend against qemu-storage-daemon 7.2:
# tests/qmp/diff-create.jsonl run on both by qmpdiff.py (the jobs' replies,
# states, events and errors, QAPI's argument errors), then the images each
# daemon made (qcow2 with each option, vdi, qed, parallels, vpc, vhdx): qemu-img
# check clean (in the script) and qemu-img info the same (sizes, cluster
# size, compat, lazy refcounts, refcount bits, compression, extended L2,
# backing file, subformats), the file names and the on-disk size aside.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img python3
export CREATE_OUT=$T/info
mkdir -p "$CREATE_OUT"
qmpdiff diff-create
n=0
for q in "$CREATE_OUT"/qsd.*.json; do
    v=$CREATE_OUT/vbd.${q#"$CREATE_OUT"/qsd.}
    [ -s "$v" ] || fail "vbd-daemon made no ${q#"$CREATE_OUT"/qsd.}"
    python3 - "$q" "$v" <<'PY' || fail "qemu-img info differs for ${q#"$CREATE_OUT"/qsd.}"
import json, os, sys
def norm(path):
    d = json.load(open(path))
    for k in ("filename", "actual-size", "dirty-flag", "full-backing-filename"):
        d.pop(k, None)
    if "backing-filename" in d:
        d["backing-filename"] = os.path.basename(d["backing-filename"])
    return d
q, v = norm(sys.argv[1]), norm(sys.argv[2])
if q != v:
    print(f"qsd: {json.dumps(q, sort_keys=True)}\nvbd: {json.dumps(v, sort_keys=True)}", file=sys.stderr)
    sys.exit(1)
PY
    n=$((n + 1))
done
[ $n = 19 ] || fail "expected 19 images from each daemon, compared $n"
echo "job-create-diff: ok ($n images compared)"
