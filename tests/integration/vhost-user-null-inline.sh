#!/bin/bash
# Requests that a null-co node completes inline (no latency-ns) run without
# a coroutine, and the backend counts them in per-thread shares: the
# export's query-blockstats must still count every request once, with its
# bytes and no failure, on the main loop and on two iothreads (two rings
# each: four rings, two threads adding to the counters at once), also while
# mirror jobs start and end under load (each start and end drains the
# export and swaps its root: the requests go through the coroutine path
# while the filter is there and inline again after). qemu-storage-daemon
# (its export has no merge option) serves the same runs of vbd-bench (it lists no export in
# query-blockstats: the counts are vbd's alone); every run must end with
# all its requests done and no error on both.
. "$(dirname "$0")/lib.sh"
need python3 qemu-storage-daemon
[ -x "$VBD_BENCH" ] || fail "no vbd-bench (build the tree first)"
cd "$T"
S=$T/qmp.sock
spid=
on_exit 'kill -9 $dpid $spid 2>/dev/null'
nodes=(--blockdev driver=null-co,node-name=disk0,size=67108864,read-zeroes=on
       --blockdev driver=null-co,node-name=tgt,size=67108864)
for mode in main iothread; do
    iot=() exp=
    [ $mode = iothread ] && iot=(--object iothread,id=io0 --object iothread,id=io1) exp=,iothread.0=io0,iothread.1=io1
    export_opt=type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,addr.path=$T/vu.sock,writable=on,num-queues=4$exp
    step "$mode: every request counted once in query-blockstats (vbd), every request done (vbd and qsd)"
    # merging on (the default): a merged batch is one backend request, but
    # every guest request in it is an operation, as QEMU's virtio-blk counts
    # them, and the ones merged into another are rd_merged/wr_merged
    start_daemon "${iot[@]}" --chardev socket,id=mon,path="$S",server=on,wait=off --monitor chardev=mon \
        "${nodes[@]}" --export "$export_opt"
    wait_sock "$T/vu.sock" "$dpid" "$T/daemon.log"
    T=$T BENCH=$VBD_BENCH python3 - <<'PY' || fail_with_daemon_log "$mode: counts"
import json, os, subprocess, sys, threading
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from jobs import Session, fail
T, BENCH = os.environ["T"], os.environ["BENCH"]
s = Session(T + "/qmp.sock", "vbd")
want = {"rd_operations": 0, "wr_operations": 0, "rd_bytes": 0, "wr_bytes": 0}


def bench(*args):
    p = subprocess.run([BENCH, "--vhost-user", T + "/vu.sock", "-q", "4", "--json", *args], capture_output=True, text=True)
    if p.returncode:
        fail(f"vbd-bench {args}: exit {p.returncode}: {p.stdout}{p.stderr}")
    return json.loads(p.stdout)["requests"]


mixed = {"operations": 0, "bytes": 0}  # randrw: vbd-bench does not say how many of each


def run(workload, bs, depth, n):
    done = bench("-w", workload, "-b", str(bs), "-d", str(depth), "-n", str(n))
    if workload == "randrw":
        mixed["operations"] += done
        mixed["bytes"] += done * bs
    else:
        rw = "rd" if "read" in workload else "wr"
        want[rw + "_operations"] += done
        want[rw + "_bytes"] += done * bs
    return done


def check(what):
    st = [b["stats"] for b in s.run("query-blockstats") if b.get("qdev") == "e0"]
    if len(st) != 1:
        fail(f"{what}: no single entry of export e0 in query-blockstats: {s.run('query-blockstats')}")
    st = st[0]
    extra = {k: st["rd_" + k] + st["wr_" + k] - want["rd_" + k] - want["wr_" + k] for k in mixed}
    exact = all(st[k] == want[k] for k in want) if not mixed["operations"] else \
        all(st[k] >= want[k] for k in want) and extra == mixed
    print(f"{what}: {st['rd_operations']}+{st['wr_operations']} operations, {st['rd_merged']}+{st['wr_merged']} merged", file=sys.stderr)
    merged_ok = st["rd_merged"] < max(st["rd_operations"], 1) and st["wr_merged"] < max(st["wr_operations"], 1)
    if not exact or not merged_ok or st["failed_rd_operations"] or st["failed_wr_operations"]:
        fail(f"{what}: query-blockstats says {st}, vbd-bench did {want} and, mixed, {mixed}")


run("randread", 4096, 32, 20000)
run("randwrite", 4096, 32, 10000)
run("read", 65536, 8, 4000)
# sequential 4 KiB at QD32: adjacent requests popped in one kick go down merged
run("read", 4096, 32, 20000)
run("write", 4096, 32, 10000)
check("after five runs")
# mirror jobs starting and ending under load: the root swapped in drained sections
errors, runs = [], [0]
stop = threading.Event()


def load():
    while not stop.is_set():
        try:
            run("randrw", 4096, 16, 5000)
            runs[0] += 1
        except SystemExit as e:
            errors.append(str(e))
            return


th = threading.Thread(target=load)
th.start()
try:
    for i in range(4):
        jid = f"m{i}"
        s.run("blockdev-mirror", **{"job-id": jid, "device": "disk0", "target": "tgt", "sync": "full"})
        s.status(jid, "created")
        s.status(jid, "running")
        s.status(jid, "ready")
        s.run("block-job-cancel", device=jid)  # in READY: the export stays on disk0
        while s.m.wait_event("JOB_STATUS_CHANGE", timeout=300)["data"]["status"] != "null":
            pass
finally:
    stop.set()
    th.join()
if errors:
    fail(errors[0])
if any(a["node-name"] != "disk0" for a in s.run("query-block-exports")):
    fail(f"the export is not back on disk0: {s.run('query-block-exports')}")
check(f"after {runs[0]} runs under 4 mirror jobs")
PY
    stop_daemon
    step "$mode: qemu-storage-daemon, the same runs"
    rm -f "$T/vu.sock"
    # qsd 7.2 takes one iothread per export
    qemu-storage-daemon "${iot[@]}" "${nodes[@]}" --export "${export_opt/iothread.0=io0,iothread.1=io1/iothread=io0}" \
        >"$T/qsd.log" 2>&1 &
    spid=$!
    wait_sock "$T/vu.sock" "$spid"
    for r in "randread 4096 32 20000" "randwrite 4096 32 10000" "read 65536 8 4000"; do
        read -r w b d n <<<"$r"
        "$VBD_BENCH" --vhost-user "$T/vu.sock" -q 4 --json -w "$w" -b "$b" -d "$d" -n "$n" >"$T/q.json" 2>&1 ||
            fail "qsd: vbd-bench $r: $(cat "$T/q.json")"
        python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); sys.exit(d["requests"] < int(sys.argv[2]))' \
            "$T/q.json" "$n" || fail "qsd: vbd-bench $r ended short: $(cat "$T/q.json")"
    done
    kill -TERM $spid
    wait $spid 2>/dev/null
    spid=
done
echo ok
