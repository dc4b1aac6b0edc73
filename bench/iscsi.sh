#!/bin/bash
# vbd-daemon vs qemu-storage-daemon on the same iSCSI LUN (tgtd, a 1 GiB
# file on /dev/shm), each exporting it over NBD on a unix socket and driven
# by fio's nbd engine: 4K randread/randwrite QD32, 1M sequential read QD8.
# The limit: iscsi-perf (libiscsi straight to the LUN, reads only).
# Ratio = vbd / qsd (> 1: vbd is faster). Needs root (tgtd). Not a test.
#   [THIN=0] [REPS=N] bench/iscsi.sh [SECONDS]
set -euo pipefail
source "$(dirname "$0")/common.sh"
VBD_DAEMON=$VBD_BUILD/src/tools/vbd-daemon
SECS=${1:-5}
# the test harness's tgtd helpers (lib.sh provides T, fail, need, on_exit)
VBD_BUILD=$VBD_BUILD source "$(dirname "$0")/../tests/integration/lib.sh"
source "$(dirname "$0")/../tests/integration/lib-tgt.sh"
set +u
img=$(mktemp /dev/shm/vbd-iscsi-bench.XXXXXX)
on_exit "rm -f $img"
qemu-img create -q -f raw "$img" 1G
qemu-io -f raw -c 'write -P 0x5a 0 1G' "$img" >/dev/null
tgt_start "$img"
# THIN=0: a LUN without thin provisioning (no GET LBA STATUS: vbd's NBD
# server asks block status before every structured read, one more round
# trip to the target each)
[ "${THIN:-1}" = 1 ] || tgt_adm --op update --mode logicalunit --tid 1 --lun 1 --params thin_provisioning=0
sock=$T/nbd.sock
spid=
on_exit '[ -n "$spid" ] && kill $spid 2>/dev/null'
node="driver=iscsi,node-name=i0,transport=tcp,portal=127.0.0.1:$TGT_PORT,target=$TGT_IQN,lun=1"
serve() {
    rm -f "$sock"
    case $1 in
    vbd) "$VBD_DAEMON" --blockdev "$node" --nbd-server addr.type=unix,addr.path="$sock" \
        --export type=nbd,id=e0,node-name=i0,name=disk,writable=on >/dev/null 2>&1 & ;;
    qsd) qemu-storage-daemon --blockdev "$node" --nbd-server addr.type=unix,addr.path="$sock" \
        --export type=nbd,id=e0,node-name=i0,name=disk,writable=on >/dev/null 2>&1 & ;;
    esac
    spid=$!
    for _ in $(seq 100); do nbdinfo --size "nbd+unix:///disk?socket=$sock" >/dev/null 2>&1 && return; sleep 0.05; done
    fail "$1 did not start"
}
stop() { kill $spid 2>/dev/null; wait $spid 2>/dev/null || true; spid=; }
fio_iops() { # RW BS DEPTH
    fio --name=b --ioengine=nbd --uri="nbd+unix:///disk?socket=$sock" --rw="$1" --bs="$2" --iodepth="$3" --time_based \
        --runtime="$SECS" --size=1G --output-format=json 2>/dev/null |
        python3 -c "import json,sys; t=sys.stdin.read(); j=json.loads(t[t.index('{'):])['jobs'][0]; d='write' if '$1'.endswith('write') else 'read'; print(round(j[d]['iops']))"
}
echo "machine: $(machine); load $(cut -d' ' -f1-3 /proc/loadavg); $SECS s per run, median of $REPS"
limit=$(timeout -s INT "$SECS" iscsi-perf -r -m 32 -b 8 "$TGT_URL" 2>&1 | tr '\r' '\n' | grep -o 'iops average [0-9]*' | tail -1 |
    awk '{print $3}' || true)
echo "limit: iscsi-perf 4K randread QD32 straight to the LUN: $limit IOPS"
printf '%-20s %10s %10s %7s\n' workload vbd qsd ratio
while IFS='|' read -r label rw bs depth; do
    declare -A r=()
    for s in vbd qsd; do
        vals=()
        for _ in $(seq "$REPS"); do serve $s; vals+=("$(fio_iops "$rw" "$bs" "$depth" || echo 0)"); stop; done
        r[$s]=$(printf '%s\n' "${vals[@]}" | median)
    done
    printf '%-20s %10s %10s %7.2f\n' "$label" "${r[vbd]}" "${r[qsd]}" "$(echo "${r[vbd]} / (${r[qsd]} + 0.0001)" | bc -l)"
done <<ROWS
4k randread QD32|randread|4k|32
4k randwrite QD32|randwrite|4k|32
1M seqread QD8|read|1M|8
ROWS
