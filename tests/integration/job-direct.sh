#!/bin/bash
# Block jobs with cache.direct=on on every file node (O_DIRECT: the copies'
# buffers are 2 MiB huge pages, carved into 1 MiB pieces for backup's
# copy-before-write pool), by vbd-daemon and by qemu-storage-daemon 7.2 with
# the same command line and QMP: blockdev-backup sync=full into a new
# qcow2, block-commit of an intermediate layer into its empty base,
# block-stream of a base into its empty overlay. The data: extents that
# start and end off the jobs' 512 KiB and 1 MiB steps, a zero cluster run
# and the image's last MiB. Each result equals the data (a stream's overlay
# read without its backing file), equals the other daemon's, and is clean
# for qemu-img check; the daemons exit 0 with no sanitizer report.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io qemu-storage-daemon python3
cd "$T"
qemu-img create -q -f qcow2 data.qcow2 64M
must qemu-io -f qcow2 -c 'write -P 1 0 3M' -c 'write -P 2 5M 64k' -c 'write -P 3 7680k 1M' \
    -c 'write -P 4 20M 12M' -c 'write -z 40M 2M' -c 'write -P 5 44M 2112k' -c 'write -P 6 63M 1M' \
    data.qcow2 >/dev/null
cp data.qcow2 mid.qcow2
must qemu-img rebase -u -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2

fnode() { echo '{"driver":"file","filename":"'"$PWD/$1"'","cache":{"direct":true}}'; }
# run WHO JOB: in WHO/, the job's images made fresh, the daemon started with
# its nodes, the job run to BLOCK_JOB_COMPLETED; prints the result's file
run_job() {
    local who=$1 job=$2 bin=$VBD_DAEMON nodes=() bd=() n out
    [ "$who" = qsd ] && bin=qemu-storage-daemon
    mkdir -p "$T/$who" && cd "$T/$who" || fail "no $T/$who"
    cp ../data.qcow2 ../mid.qcow2 .
    rm -f tgt.qcow2 top.qcow2 base.qcow2 m.sock
    case $job in
    backup)
        qemu-img create -q -f qcow2 tgt.qcow2 64M
        nodes=('{"driver":"qcow2","node-name":"src","file":'"$(fnode data.qcow2)"'}'
            '{"driver":"qcow2","node-name":"tgt","file":'"$(fnode tgt.qcow2)"',"backing":null}')
        out=tgt.qcow2 ;;
    commit)
        qemu-img create -q -f qcow2 base.qcow2 64M
        qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
        nodes=('{"driver":"qcow2","node-name":"base","file":'"$(fnode base.qcow2)"',"backing":null}'
            '{"driver":"qcow2","node-name":"mid","file":'"$(fnode mid.qcow2)"',"backing":"base"}'
            '{"driver":"qcow2","node-name":"top","file":'"$(fnode top.qcow2)"',"backing":"mid"}')
        out=base.qcow2 ;;
    stream)
        qemu-img create -q -f qcow2 -b data.qcow2 -F qcow2 top.qcow2
        nodes=('{"driver":"qcow2","node-name":"base","file":'"$(fnode data.qcow2)"',"backing":null}'
            '{"driver":"qcow2","node-name":"top","file":'"$(fnode top.qcow2)"',"backing":"base"}')
        out=top.qcow2 ;;
    esac
    for n in "${nodes[@]}"; do bd+=(--blockdev "$n"); done
    # stdout into a file, not the pipe of $(run_job ...): a daemon a failing
    # step leaves behind would hold that pipe open and hang the caller
    "$bin" --chardev socket,id=m0,path="$PWD/m.sock",server=on,wait=off --monitor m0 "${bd[@]}" >"$T/$who.out" 2>"$T/$who.log" &
    dpid=$!
    on_exit "[ -z \"\$dpid\" ] || kill -9 \$dpid 2>/dev/null"
    wait_sock "$PWD/m.sock" "$dpid" "$T/$who.log"
    qmp_py "$PWD/m.sock" <<PY || fail "$who $job: the job failed ($(cat "$T/$who.log"))"
cmd = {"backup": ("blockdev-backup", {"job-id": "j", "device": "src", "target": "tgt", "sync": "full"}),
       "commit": ("block-commit", {"job-id": "j", "device": "top", "top-node": "mid", "base-node": "base"}),
       "stream": ("block-stream", {"job-id": "j", "device": "top"})}["$job"]
ok(cmd[0], **cmd[1])
ev = m.wait_event("BLOCK_JOB_COMPLETED", timeout=600)
if "error" in ev["data"] or ev["data"]["offset"] != ev["data"]["len"]:
    print(f"FAIL: $who $job: {ev}", file=sys.stderr); sys.exit(1)
PY
    kill -TERM $dpid
    wait $dpid || fail "$who exited with $? after SIGTERM: $(cat "$T/$who.log")"
    dpid=
    ! grep -q Sanitizer "$T/$who.log" || fail "$who $job: sanitizer report: $(cat "$T/$who.log")"
    # the stream's overlay alone: what it copied, not what its backing file shows
    [ "$job" = stream ] && must qemu-img rebase -q -u -f qcow2 -b '' top.qcow2
    qcheck "$out"
    cd "$T" || fail "no $T"
    echo "$who/$out"
}
dpid=
for job in backup commit stream; do
    step "$job with cache.direct=on: vbd-daemon's result as the data and as qemu-storage-daemon's"
    v=$(run_job vbd $job) || exit 1
    q=$(run_job qsd $job) || exit 1
    must qemu-img compare -q -f qcow2 -F qcow2 "$v" data.qcow2
    must qemu-img compare -q -f qcow2 -F qcow2 "$v" "$q"
done
echo ok
