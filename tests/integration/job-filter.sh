#!/bin/bash
# Jobs with filter-node-name under writes, by vbd-daemon and by
# qemu-storage-daemon 7.2 on copies of the same chain base <- mid <- top
# (top exported over NBD). Each job starts at 1 byte/s, so it is surely
# running while qemu-io writes fixed patterns through the export (which
# sits on the named filter, query-block-exports says so, but for the
# intermediate commit's, which is mid's overlay's backing); then it runs at
# full speed to its end (job-complete for the active commit and the mirror):
#  S. block-stream, copy-on-read filter: a guest read through it copies that
#     range into top (a cancelled stream leaves it allocated there, and
#     not the range nobody read: qemu-img map);
#  s. block-stream to the end: top has no backing, equals the model;
#  C. intermediate block-commit (commit_top over mid): top's backing is
#     base, the export still equals the model;
#  A. active block-commit (mirror_top over top): the export moves to base;
#  M. blockdev-mirror to a qcow2 (mirror_top): the export moves to it;
#  B. blockdev-backup (copy-before-write): the backup is the image at the
#     start, the export has the writes.
# After each: the filter is gone, every byte read through the export equals
# the model, the images equal qsd's and are qemu-img check clean.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-img qemu-io python3
cd "$T"
mixed_disk base.raw 16 1
must qemu-img convert -q -f raw -O qcow2 base.raw base.qcow2
must qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
must qemu-io -f qcow2 -c 'write -P 0x22 4M 4M' -c 'write -z 12M 1M' mid.qcow2 >/dev/null
must qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
must qemu-io -f qcow2 -c 'write -P 0x33 6M 1M' top.qcow2 >/dev/null
must qemu-img convert -q -O raw top.qcow2 start.raw
# the writes during each job (across its chunks, unaligned, zeroes)
IOW=(-c 'write -P 0xa1 0 64k' -c 'write -P 0xa2 500k 100k' -c 'write -P 0xa3 5M 3M' -c 'write -z 9M 1M'
     -c 'write -P 0xa4 15M 1M' -c 'write -P 0xa5 1000 3000' -c 'write -P 0xa6 12M 4k')
cp start.raw model.raw
must qemu-io -f raw "${IOW[@]}" model.raw >/dev/null

on_exit 'kill -9 $dpid 2>/dev/null'

for scen in S s C A M B; do
    for d in vbd qsd; do
        step "$d, scenario $scen"
        rm -rf "$T/$d$scen" && mkdir "$T/$d$scen" && cd "$T/$d$scen"
        cp ../base.qcow2 ../mid.qcow2 ../top.qcow2 .
        must qemu-img create -q -f qcow2 tgt.qcow2 16M
        job_daemon_start $d top --blockdev "$(qcow2_node base null)" \
            --blockdev "$(qcow2_node mid base)" --blockdev "$(qcow2_node top mid)" --blockdev "$(qcow2_node tgt)"
        python3 - "$d" "$scen" "${IOW[@]}" <<'PY' || fail "$d scenario $scen"
import os, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, sh, fail
who, scen, iow = sys.argv[1], sys.argv[2], sys.argv[3:]
s = Session("qmp.sock", who)
url = "nbd+unix:///disk?socket=" + os.getcwd() + "/nbd.sock"
kind, start, name = {
    "S": ("copy-on-read", ("block-stream", {"job-id": "j", "device": "top"}), "cor0"),
    "s": ("copy-on-read", ("block-stream", {"job-id": "j", "device": "top"}), "cor0"),
    "C": ("commit_top", ("block-commit", {"job-id": "j", "device": "top", "top-node": "mid", "base-node": "base"}), "ct"),
    "A": ("mirror_top", ("block-commit", {"job-id": "j", "device": "top"}), "act"),
    "M": ("mirror_top", ("blockdev-mirror", {"job-id": "j", "device": "top", "target": "tgt", "sync": "full"}), "mt"),
    "B": ("copy-before-write", ("blockdev-backup", {"job-id": "j", "device": "top", "target": "tgt", "sync": "full"}), "bt"),
}[scen]


def filters():
    return [(n["node-name"], n["drv"]) for n in s.run("query-named-block-nodes", flat=True) if n["node-name"] == name]


def export_node():
    return s.run("query-block-exports")[0]["node-name"]


s.run(start[0], speed=1, **{"filter-node-name": name}, **start[1])
s.status("j", "created")
s.status("j", "running")
if filters() != [(name, kind)] or export_node() != ("top" if scen == "C" else name):
    fail(f"{who}: while the job runs: filter {filters()}, export on {export_node()}")
if scen == "S":
    # a guest read through copy-on-read; then the stream is cancelled
    sh(f"qemu-io -f raw -c 'read 2M 1M' '{url}'", "reading through the filter")
    s.run("job-cancel", id="j")
    s.m.wait_event("BLOCK_JOB_CANCELLED", timeout=300)
    while s.m.wait_event("JOB_STATUS_CHANGE", timeout=300)["data"]["status"] != "null":
        pass
else:
    sh(f"qemu-io -f raw {' '.join(repr(a) for a in iow)} '{url}'", "writes during the job")
    s.run("block-job-set-speed", device="j", speed=0)
    if scen in ("A", "M"):
        s.status("j", "ready")
        s.run("job-complete", id="j")
        s.completed("j")
    else:
        s.completed("j")
if filters():
    fail(f"{who}: the filter is still there after the job: {filters()}")
want = {"S": "top", "s": "top", "C": "top", "A": "base", "M": "tgt", "B": "top"}[scen]
if export_node() != want:
    fail(f"{who}: the export is on {export_node()}, expected {want}")
model = "../start.raw" if scen == "S" else "../model.raw"
sh(f"qemu-img compare -q -f raw -F raw {model} '{url}'", "the export against the model")
PY
        job_daemon_stop $d
        for img in base mid top tgt; do qcheck $img.qcow2; done
        case $scen in
        S) # 2M..3M read through copy-on-read is top's now; 10M..11M nobody read is not
           qemu-img map --output=json top.qcow2 | python3 -c '
import json, sys
m = json.load(sys.stdin)
def depth(off):
    return next(e["depth"] for e in m if e["start"] <= off < e["start"] + e["length"])
if depth(2 << 20) != 0 or depth((3 << 20) - 1) != 0 or depth(10 << 20) == 0:
    sys.exit("copy-on-read: depth at 2M %d, 3M-1 %d, 10M %d" % (depth(2 << 20), depth((3 << 20) - 1), depth(10 << 20)))
' || fail "$d: $(cat daemon.log)" ;;
        s) [ -z "$(qemu-img info --output=json top.qcow2 | grep backing-filename)" ] || fail "$d: top still has a backing file"
           must qemu-img compare -q -f qcow2 -F raw top.qcow2 ../model.raw ;;
        C) qemu-img info top.qcow2 | grep -q "backing file: .*base.qcow2" || fail "$d: top's backing is not base"
           must qemu-img compare -q -f qcow2 -F raw top.qcow2 ../model.raw ;;
        A) must qemu-img compare -q -f qcow2 -F raw base.qcow2 ../model.raw ;;
        M) must qemu-img compare -q -f qcow2 -F raw tgt.qcow2 ../model.raw ;;
        B) must qemu-img compare -q -f qcow2 -F raw tgt.qcow2 ../start.raw
           must qemu-img compare -q -f qcow2 -F raw top.qcow2 ../model.raw ;;
        esac
        cd "$T"
    done
    # the same job by both daemons: the same images
    for img in base mid top tgt; do
        must qemu-img compare -q "$T/vbd$scen/$img.qcow2" "$T/qsd$scen/$img.qcow2"
    done
done
echo ok
