#!/bin/bash
# QMP block commands against real tools: a qcow2 chain added with
# blockdev-add is what qemu-img sees after block_resize, change-backing-file
# and blockdev-reopen (read-only: qemu-img may open the image without -U;
# read-write: the write lock is back); blockdev-del is refused while a node
# is in use; a write through an NBD export (qemu-io) past a write threshold
# raises BLOCK_WRITE_THRESHOLD once and is counted by query-blockstats; a
# read of a qcow2 image with a broken L1 entry raises BLOCK_IMAGE_CORRUPTED
# and marks the image corrupt; auto-read-only opens an immutable file read-only;
# a client reading through an export sees no error while its node is reopened
# read-only and read-write ten times.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

S=$T/qmp.sock
N=$T/nbd.sock
qemu-img create -q -f qcow2 "$T/base.qcow2" 64M || fail "qemu-img create"
must qemu-io -f qcow2 -c "write -P 0x5a 0 1M" "$T/base.qcow2" >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$T/top.qcow2" || fail "qemu-img create overlay"
ln -s base.qcow2 "$T/base-link.qcow2"
qemu-img create -q -f qcow2 "$T/w.qcow2" 64M || fail "qemu-img create w"
qemu-img create -q -f qcow2 "$T/bm.qcow2" 64M || fail "qemu-img create bm"
must qemu-img bitmap --add "$T/bm.qcow2" b0
must qemu-io -f qcow2 -c "write 0 64k" "$T/bm.qcow2" >/dev/null
qemu-img create -q -f qcow2 "$T/q.qcow2" 16M || fail "qemu-img create q"
must qemu-io -f qcow2 -c "write -P 0x77 0 4M" "$T/q.qcow2" >/dev/null
# c.qcow2: one cluster of data, then L1[0] points into the middle of a cluster
qemu-img create -q -f qcow2 "$T/c.qcow2" 8M || fail "qemu-img create c"
must qemu-io -f qcow2 -c "write -P 0x11 0 64k" "$T/c.qcow2" >/dev/null
python3 - "$T/c.qcow2" <<'EOF' || fail "cannot corrupt c.qcow2"
import struct, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(40); l1 = struct.unpack(">Q", f.read(8))[0]
    f.seek(l1); e = struct.unpack(">Q", f.read(8))[0]
    assert e, "no L1 entry"
    f.seek(l1); f.write(struct.pack(">Q", e + 512))
EOF

# an image nobody may open for writing, not even root (auto-read-only falls back to read-only)
truncate -s 1M "$T/imm.raw" "$T/x.raw"
IMM=0
if chattr +i "$T/imm.raw" 2>/dev/null; then
    IMM=1
    on_exit 'chattr -i "$T/imm.raw" 2>/dev/null'
fi

start_daemon --chardev socket,id=mon,path="$S",server=on,wait=off --monitor chardev=mon \
    --nbd-server addr.type=unix,addr.path="$N" \
    --blockdev driver=file,node-name=wf,filename="$T/w.qcow2" --blockdev driver=qcow2,node-name=w,file=wf \
    --export type=nbd,id=ew,node-name=w,writable=on \
    --blockdev driver=file,node-name=xf,filename="$T/x.raw" --export type=nbd,id=ex,node-name=xf,writable=on \
    --blockdev driver=file,node-name=qf,filename="$T/q.qcow2" --blockdev driver=qcow2,node-name=q,file=qf \
    --export type=nbd,id=eq,node-name=q \
    --blockdev driver=file,node-name=cf,filename="$T/c.qcow2" --blockdev driver=qcow2,node-name=c,file=cf \
    --export type=nbd,id=ec,node-name=c
on_exit '[ -z "$dpid" ] || kill -9 $dpid 2>/dev/null'

PYTHONPATH=$VBD_ROOT/tests/qmp T=$T N=$N IMM=$IMM python3 - "$S" <<'EOF' || fail "QMP block session (see above)"
import json, os, subprocess, sys, time
from qmp import QMP, QMPError

T, N = os.environ["T"], os.environ["N"]
m = QMP(sys.argv[1], negotiate=True)

def check(cond, what):
    if not cond:
        print("FAIL:", what, file=sys.stderr)
        sys.exit(1)

def ex(cmd, args=None):
    r = m.cmd(cmd, args)
    check("return" in r, f"{cmd} {args}: {r}")
    return r["return"]

def error_of(cmd, args):
    r = m.cmd(cmd, args)
    check("error" in r, f"{cmd} {args} should fail: {r}")
    check(r["error"]["class"] == "GenericError", f"{cmd}: class {r['error']['class']}")
    return r["error"]["desc"]

def run(*argv):
    return subprocess.run(argv, capture_output=True, text=True)

def img_info(path, share=True):
    r = run("qemu-img", "info", "--output=json", *(["-U"] if share else []), path)
    return json.loads(r.stdout) if r.returncode == 0 else r.stderr

def nodes():
    return {n["node-name"]: n for n in ex("query-named-block-nodes")}

def poll(cond, what):  # bounded wait for something another process sees
    for _ in range(200):
        if cond():
            return
        time.sleep(0.05)
    check(False, what)

def nbd(export, cmd, *opts):
    return run("qemu-io", *opts, "-f", "raw", "-c", cmd, f"nbd+unix:///{export}?socket={N}")

# --- blockdev-add: a qcow2 over a nested file, its backing chain opened below it
ex("blockdev-add", {"driver": "qcow2", "node-name": "top",
                           "file": {"driver": "file", "filename": f"{T}/top.qcow2", "node-name": "top-file"}})
ns = nodes()
top = ns["top"]
check(top["drv"] == "qcow2" and not top["ro"] and top["backing_file_depth"] == 1, f"top: {top}")
check(top["image"]["backing-image"]["filename"] == f"{T}/base.qcow2", f"backing-image: {top['image']}")
check(top["image"]["virtual-size"] == 64 << 20, "virtual-size")
base = [n for n in ns.values() if n["file"] == f"{T}/base.qcow2" and n["drv"] == "qcow2"]
check(len(base) == 1 and base[0]["ro"], f"base node: {base}")
flat = {n["node-name"]: n for n in ex("query-named-block-nodes", {"flat": True})}
check("backing-image" not in flat["top"]["image"], "flat lists no backing-image")
check("Duplicate" in error_of("blockdev-add", {"driver": "qcow2", "node-name": "top", "file": "top-file"}),
      "duplicate node-name")
error_of("blockdev-add", {"driver": "qcow2", "node-name": "x", "file": "no-such-node"})
error_of("blockdev-add", {"driver": "qcow2", "node-name": "x"})
error_of("blockdev-add", {"driver": "file", "node-name": "x", "filename": f"{T}/none"})
error_of("blockdev-add", {"driver": "file", "node-name": "x", "filename": f"{T}/w.qcow2", "read-only": "yes"})

if os.environ["IMM"] == "1":  # auto-read-only: read-only when writing is refused, as QEMU's file driver
    error_of("blockdev-add", {"driver": "file", "node-name": "imm", "filename": f"{T}/imm.raw"})
    ex("blockdev-add", {"driver": "file", "node-name": "imm", "filename": f"{T}/imm.raw", "auto-read-only": True})
    # (qsd lists it as ro=false: QEMU keeps such a node nominally writable until a writer comes)
    check(nodes()["imm"]["ro"], "auto-read-only opened it read-only")
    ex("blockdev-del", {"node-name": "imm"})

# --- blockdev-del: refused in use, refused for a node opened below another
ex("blockdev-add", {"driver": "raw", "node-name": "over", "file": "top"})
check("top" in error_of("blockdev-del", {"node-name": "top"}), "del in use names the node")
check("owned" in error_of("blockdev-del", {"node-name": "top-file"}), "implicit node")
check(error_of("blockdev-del", {"node-name": "w"}) == "Node w is in use", "del under an export (qsd's words)")
ex("blockdev-del", {"node-name": "over"})
check("over" not in nodes(), "over deleted")
error_of("blockdev-del", {"node-name": "over"})

# --- block_resize: qemu-img sees the new size
ex("block_resize", {"node-name": "top", "size": 128 << 20})
check(img_info(f"{T}/top.qcow2")["virtual-size"] == 128 << 20, "qemu-img sees 128M")
check(nodes()["top"]["image"]["virtual-size"] == 128 << 20, "query sees 128M")
error_of("block_resize", {"node-name": "no-such-node", "size": 1 << 20})
error_of("block_resize", {"node-name": "top", "size": -1})

# --- change-backing-file: recorded in the image
ex("change-backing-file", {"device": "top", "image-node-name": "top", "backing-file": "base-link.qcow2"})
check(img_info(f"{T}/top.qcow2")["backing-filename"] == "base-link.qcow2", "backing file changed")
error_of("change-backing-file", {"device": "top", "image-node-name": "no-such", "backing-file": "x"})

# --- blockdev-reopen: read-only lets qemu-img in without -U; read-write takes the lock again
bname = base[0]["node-name"]
ro = {"driver": "qcow2", "node-name": "top", "file": "top-file", "backing": bname, "read-only": True}
locked = lambda: isinstance(img_info(f"{T}/top.qcow2", share=False), str)
check(locked(), "a writer holds the lock")
ex("blockdev-reopen", {"options": [ro]})
poll(lambda: not locked(), "qemu-img info without -U after reopen read-only")
check(nodes()["top"]["ro"] and nodes()["top-file"]["ro"], "top and its file read-only")
r = run("qemu-img", "check", f"{T}/top.qcow2")
check(r.returncode == 0 and "No errors" in r.stdout, f"qemu-img check after reopen: {r.stdout}{r.stderr}")
check(img_info(f"{T}/top.qcow2", share=False)["virtual-size"] == 128 << 20, "size on disk")
ex("blockdev-reopen", {"options": [dict(ro, **{"read-only": False})]})
poll(locked, "write lock back after reopen read-write")
check(not nodes()["top"]["ro"], "top read-write")
# a cache size reopen takes (qsd's mutable options), but not one larger than the whole cache
error_of("blockdev-reopen", {"options": [dict(ro, **{"read-only": False, "cache-size": 1000, "l2-cache-size": 2000})]})
error_of("blockdev-reopen", {"options": [{"driver": "qcow2", "node-name": "top", "file": "top-file"}]})
error_of("blockdev-reopen", {"options": [{"driver": "qcow2", "node-name": "nope", "file": "top-file"}]})
check("read-write users" in error_of("blockdev-reopen", {"options": [
    {"driver": "qcow2", "node-name": "w", "file": "wf", "read-only": True}]}), "writable export refuses ro")

# --- a node over a file an export writes: the node goes read-only, the file stays writable
ex("blockdev-add", {"driver": "raw", "node-name": "xr", "file": "xf"})
ex("blockdev-reopen", {"options": [{"driver": "raw", "node-name": "xr", "file": "xf", "read-only": True}]})
check(nodes()["xr"]["ro"] and not nodes()["xf"]["ro"], "the exported file stays writable")
r = nbd("xf", "write -P 0x66 0 4k")
check(r.returncode == 0 and "wrote" in r.stdout, f"write through the export after the reopen: {r.stdout}{r.stderr}")
check("read-write users" in error_of("blockdev-reopen", {"options": [
    {"driver": "file", "node-name": "xf", "filename": f"{T}/x.raw", "read-only": True}]}), "exported file refuses ro")
ex("blockdev-del", {"node-name": "xr"})

# --- reopen back and forth while a client reads through an export: no request fails
reader = subprocess.Popen(["qemu-io", "-r", "-f", "raw"] + ["-c", "read -P 0x77 0 4M"] * 100
                          + [f"nbd+unix:///q?socket={N}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
q_opts = {"driver": "qcow2", "node-name": "q", "file": "qf"}
for i in range(10):
    ex("blockdev-reopen", {"options": [dict(q_opts, **{"read-only": True})]})
    ex("blockdev-reopen", {"options": [dict(q_opts, **{"read-only": False})]})
out, _ = reader.communicate(timeout=300)
check(reader.returncode == 0 and out.count("read 4194304/4194304") == 100 and "failed" not in out,
      f"reads during the reopens: {out[-300:]}")

# --- reopen with a persistent bitmap: stored and consistent while read-only, in use again after
def bitmap_flags(share):
    info = img_info(f"{T}/bm.qcow2", share)
    return info["format-specific"]["data"]["bitmaps"][0]["flags"] if isinstance(info, dict) else info
ex("blockdev-add", {"driver": "qcow2", "node-name": "bm",
                    "file": {"driver": "file", "filename": f"{T}/bm.qcow2", "node-name": "bm-file"}})
check(bitmap_flags(True) == ["in-use", "auto"], f"in use while writable: {bitmap_flags(True)}")
db = nodes()["bm"]["dirty-bitmaps"]
check(db == [{"name": "b0", "recording": True, "persistent": True, "busy": False, "count": 65536,
              "granularity": 65536}], f"dirty-bitmaps: {db}")
bm_ro = {"driver": "qcow2", "node-name": "bm", "file": "bm-file", "read-only": True}
ex("blockdev-reopen", {"options": [bm_ro]})
poll(lambda: bitmap_flags(False) == ["auto"], "bitmap stored, not in use, image unlocked")
r = run("qemu-img", "check", f"{T}/bm.qcow2")
check(r.returncode == 0 and "No errors" in r.stdout, f"qemu-img check bm: {r.stdout}{r.stderr}")
ex("blockdev-reopen", {"options": [dict(bm_ro, **{"read-only": False})]})
check(bitmap_flags(True) == ["in-use", "auto"], f"in use again: {bitmap_flags(True)}")
ex("blockdev-del", {"node-name": "bm"})
poll(lambda: bitmap_flags(False) == ["auto"], "stored and unlocked at blockdev-del")

# --- write threshold: one event when a write through the export passes it, then disarmed
ex("block-set-write-threshold", {"node-name": "w", "write-threshold": 1 << 20})
r = nbd("w", "write -P 0x33 0 64k")
check(r.returncode == 0, f"write below the threshold: {r.stdout}{r.stderr}")
check(nodes()["w"]["write_threshold"] == 1 << 20, "still armed")
check(not [e for e in m.events if e["event"] == "BLOCK_WRITE_THRESHOLD"], "no event below the threshold")
check(nbd("w", "write -P 0x44 2M 64k").returncode == 0, "write past the threshold")
ev = m.wait_event("BLOCK_WRITE_THRESHOLD", timeout=60)
check(ev["data"] == {"node-name": "w", "write-threshold": 1 << 20, "amount-exceeded": (2 << 20) + 65536 - (1 << 20)},
      f"event data: {ev}")
check(nodes()["w"]["write_threshold"] == 0, "disarmed")
check(nbd("w", "write -P 0x55 4M 64k").returncode == 0, "write after")
m.cmd("query-version")  # a round trip: an event would have come before its reply
check(not [e for e in m.events if e["event"] == "BLOCK_WRITE_THRESHOLD"], "reported once")
error_of("block-set-write-threshold", {"node-name": "no-such", "write-threshold": 1})

# --- query-blockstats: the export's requests
st = [s for s in ex("query-blockstats") if s["node-name"] == "w"]
check(len(st) == 1 and st[0]["qdev"] == "ew", f"stats of the export: {st}")
s = st[0]["stats"]
check(s["wr_operations"] == 3 and s["wr_bytes"] == 3 * 65536 and s["failed_wr_operations"] == 0, f"stats {s}")
bynode = {b["node-name"]: b for b in ex("query-blockstats", {"query-nodes": True})}
check(bynode["w"]["stats"]["wr_bytes"] == 3 * 65536 and bynode["w"]["parent"]["node-name"] == "wf", "per node")

# --- BLOCK_IMAGE_CORRUPTED: a read through a broken L1 entry
r = nbd("c", "read 0 64k", "-r")
check("read failed" in r.stdout + r.stderr, f"read of the corrupt cluster fails: {r.stdout}{r.stderr}")
ev = m.wait_event("BLOCK_IMAGE_CORRUPTED", timeout=60)["data"]
check(ev["node-name"] == "c" and ev["device"] == "" and "L2 table offset" in ev["msg"] and ev["fatal"] is True,
      f"corrupt event: {ev}")
check(nodes()["c"]["image"]["format-specific"]["data"]["corrupt"] is True, "query shows corrupt")

# --- blockdev-add of the foreign formats (QEMU's generic format options): qemu-io's pattern read over NBD
for fmt in ("vdi", "vpc", "parallels", "qed", "vmdk", "vhdx"):
    img = f"{T}/f.{fmt}"
    check(run("qemu-img", "create", "-q", "-f", fmt, img, "8M").returncode == 0, f"qemu-img create -f {fmt}")
    check(run("qemu-io", "-f", fmt, "-c", "write -P 0x66 1M 64k", img).returncode == 0, f"qemu-io write {fmt}")
    f = {"driver": "file", "filename": img}
    if fmt not in ("qed", "vmdk"):
        check("'backing' is unexpected" in error_of("blockdev-add", {"driver": fmt, "node-name": "nb", "file": f,
                                                                      "backing": None}), f"{fmt}: backing refused")
    ex("blockdev-add", {"driver": fmt, "node-name": f"n-{fmt}", "file": f})
    check(nodes()[f"n-{fmt}"]["drv"] == fmt, f"{fmt} node listed")
    ex("block-export-add", {"type": "nbd", "id": f"e-{fmt}", "node-name": f"n-{fmt}"})
    r = nbd(f"n-{fmt}", "read -P 0x66 1M 64k", "-r")
    check(r.returncode == 0 and "Pattern verification failed" not in r.stdout + r.stderr,
          f"{fmt}: pattern over NBD: {r.stdout}{r.stderr}")
EOF

stop_daemon
qcheck "$T/top.qcow2"
qcheck "$T/w.qcow2"
qcheck "$T/q.qcow2"
out=$(qemu-img info "$T/top.qcow2") || fail "qemu-img info top"
case "$out" in *"backing file: base-link.qcow2"*"128 MiB"* | *"128 MiB"*"backing file: base-link.qcow2"*) ;; *) fail "top after the session: $out" ;; esac
out=$(qemu-io -f qcow2 -c "read -P 0x33 0 64k" -c "read -P 0x44 2M 64k" -c "read -P 0x55 4M 64k" "$T/w.qcow2" 2>&1) ||
    fail "w: $out"
case "$out" in *"Pattern verification failed"*) fail "w.qcow2 lacks the data written over NBD: $out" ;; esac
out=$(qemu-img info "$T/c.qcow2") || fail "qemu-img info c"
case "$out" in *"corrupt: true"*) ;; *) fail "the corrupt bit is not set in c.qcow2: $out" ;; esac
echo PASS
