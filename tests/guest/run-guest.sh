#!/bin/bash
# Boots Debian's kernel under QEMU (KVM where /dev/kvm is usable, else TCG;
# VBD_ACCEL=kvm|tcg forces one, see accel.sh) with one or more virtio-blk
# disks and runs workloads in it (several --workload: each in turn in the
# same boot, the first failure ends it). Exit: 0 PASS, 1 FAIL, 2 usage, 3 TIMEOUT,
# 4 KERNEL PANIC, 5 NO RESULT (QEMU refused a disk or died).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage() {
    cat <<USAGE
Usage: run-guest.sh DISK [disk options] [DISK [disk options]]... [options]
  DISK: --vhost-user SOCKET | --nbd URI | --image FILE; each one more disk.
  Disk options (for the disk named last; before any DISK: for the first):
  --format FMT     image format (--image)     --num-queues N  virtqueues (default 1)
  --workload FILE  run on this disk (VBD_DEV); again: after the previous one
  --env NAME=VAL   exported to this disk's workloads
  --readonly       read-only disk (--nbd/--image)
  --reconnect      vhost-user chardev with reconnect=1 (back end may restart)
  --listen         vhost-user: QEMU listens on SOCKET (server=on,wait=off) and the
                   back end connects to it (vbd-daemon's server=off)
  --device-opts O  appended to -device
  Options: --smp N vCPUs (default 2)  --timeout S (default 180)  --log FILE keep the console
  --parallel       the disks' workloads at once (each disk's in its order)
  --qmp SOCKET     a QMP monitor on this unix socket (QEMU listens)
  --incoming URI   wait for a migration (-incoming URI): the guest's result
                   comes on this QEMU's console; a source that migrated
                   away ends with NO RESULT once it is told to quit
  Workloads run in the order given, whatever their disk (--parallel: the
  disks side by side). With more than one disk each workload's "vbd:" lines
  name its disk, counted from 0 in the order given: "vbd: disk1: ...".
USAGE
}
# per disk d: mode, target, fmt, nq, ro, reconnect, listen, devopts, envs ("\n"-separated)
modes=() targets=() fmts=() nqs=() ros=() rcs=() listens=() devopts=() denvs=()
workloads=() wdisks=() smp=2 timeout=180 log= d=-1 parallel=0 qemu_extra=()
cur() { [ $d -ge 0 ] || new_disk "" ""; }
new_disk() {
    d=$((d + 1))
    modes[d]=$1 targets[d]=$2 fmts[d]=raw nqs[d]=1 ros[d]=0 rcs[d]=0 listens[d]=0 devopts[d]= denvs[d]=
}
while [ $# -gt 0 ]; do
    case "$1" in
        --vhost-user | --nbd | --image)
            m=${1#--}
            if [ $d = 0 ] && [ -z "${modes[0]}" ]; then modes[0]=$m targets[0]=$2; else new_disk "$m" "$2"; fi
            shift ;;
        --format) cur; fmts[d]=$2; shift ;;
        --workload) cur; workloads+=("$2"); wdisks+=("$d"); shift ;;
        --num-queues) cur; nqs[d]=$2; shift ;;
        --smp) smp=$2; shift ;;
        --env) cur; denvs[d]+="$2"$'\n'; shift ;;
        --timeout) timeout=$2; shift ;;
        --readonly) cur; ros[d]=1 ;;
        --reconnect) cur; rcs[d]=1 ;;
        --listen) cur; listens[d]=1 ;;
        --device-opts) cur; devopts[d]=,$2; shift ;;
        --log) log=$2; shift ;;
        --parallel) parallel=1 ;;
        --qmp) qemu_extra+=(-qmp "unix:$2,server=on,wait=off"); shift ;;
        --incoming) qemu_extra+=(-incoming "$2"); shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run-guest: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
ndisks=$((d + 1))
[ $ndisks -gt 0 ] && [ ${#workloads[@]} -gt 0 ] || { echo "run-guest: need a disk and a --workload" >&2; exit 2; }
for i in $(seq 0 $((ndisks - 1))); do
    [ -n "${modes[i]}" ] || { echo "run-guest: disk options without a disk" >&2; exit 2; }
    [ "${modes[i]}" != vhost-user ] || [ "${listens[i]}" = 1 ] || [ -S "${targets[i]}" ] ||
        { echo "run-guest: no socket at '${targets[i]}'" >&2; exit 2; }
done
for w in "${workloads[@]}"; do [ -r "$w" ] || { echo "run-guest: cannot read workload '$w'" >&2; exit 2; }; done
mode=${modes[0]}; [ $ndisks = 1 ] || mode="$ndisks disks"
read -r kver base < <("$here/build-initramfs.sh") || exit 2
. "$here/accel.sh"
pick_accel "/boot/vmlinuz-$kver" || exit 2
echo "run-guest: accel $ACCEL ($ACCEL_WHY)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
log=${log:-$tmp/console.log}
mkdir -p "$tmp/extra"
# disk i sits in PCI slot 0x10+i: the guest finds its device by that, whatever
# order the kernel named the disks in
slot() { printf '%02x' $((16 + $1)); }
# /workload.sh (what init.sh runs) runs each workload as its own shell, with its
# disk's device in VBD_DEV and its disk's environment: in order, or (--parallel)
# one chain per disk, the chains at once
cat >"$tmp/extra/devof.sh" <<'SH'
devof() { for b in /sys/block/vd*; do case $(readlink -f $b/device) in */0000:00:$1.0/*) echo /dev/${b##*/}; return ;; esac; done; }
SH
echo ". /devof.sh" >"$tmp/extra/workload.sh"
files="devof.sh workload.sh"
chains=()
for i in $(seq 0 $((ndisks - 1))); do
    printf '%s' "${denvs[i]}" | while IFS= read -r e; do printf 'export %q\n' "$e"; done >"$tmp/extra/env$i"
    files="$files env$i"
done
for i in "${!workloads[@]}"; do
    cp "${workloads[$i]}" "$tmp/extra/workload$i.sh"
    w=${wdisks[i]}
    tag=; [ $ndisks = 1 ] || tag="export VBD_TAG=disk$w; "
    line="(. /env$w; VBD_DEV=\$(devof $(slot $w)); export VBD_DEV; [ -b \"\$VBD_DEV\" ] || { echo 'no disk in slot $(slot $w)' >/tmp/reason; exit 1; }; ${tag}sh /workload$i.sh) || exit \$?"
    if [ $parallel = 1 ]; then
        [ -n "${chains[w]:-}" ] || { chains[w]=1; echo ". /devof.sh" >"$tmp/extra/chain$w.sh"; files="$files chain$w.sh"; }
        echo "$line" >>"$tmp/extra/chain$w.sh"
    else
        echo "$line" >>"$tmp/extra/workload.sh"
    fi
    files="$files workload$i.sh"
done
if [ $parallel = 1 ]; then
    for w in "${!chains[@]}"; do echo "sh /chain$w.sh & pids=\"\$pids \$!\"" >>"$tmp/extra/workload.sh"; done
    echo 'rc=0; for p in $pids; do wait $p || rc=$?; done; exit $rc' >>"$tmp/extra/workload.sh"
fi
(cd "$tmp/extra" && printf '%s\n' $files | cpio -o -H newc -R 0:0 --quiet | gzip) >"$tmp/extra.cpio.gz"
cat "$base" "$tmp/extra.cpio.gz" >"$tmp/initrd"
esc() { printf '%s' "${1//,/,,}"; }
disk=()
vu=0
for i in $(seq 0 $((ndisks - 1))); do
    t=${targets[i]} nq=${nqs[i]} dopt=${devopts[i]} addr=addr=0x$(slot $i)
    rostr=; [ "${ros[i]}" = 1 ] && rostr=,readonly=on
    case ${modes[i]} in
        vhost-user)
            [ $vu = 1 ] || disk+=(-object memory-backend-memfd,id=mem0,size=256M,share=on -machine memory-backend=mem0)
            vu=1
            rc=; [ "${rcs[i]}" = 1 ] && rc=,reconnect=1
            [ "${listens[i]}" = 1 ] && rc=,server=on,wait=off
            disk+=(-chardev "socket,id=vu$i,path=$(esc "$t")$rc"
                   -device "vhost-user-blk-pci,chardev=vu$i,num-queues=$nq,$addr$dopt") ;;
        nbd|image)
            f=raw; [ ${modes[i]} = image ] && f=${fmts[i]}
            disk+=(-drive "if=none,id=d$i,file=$(esc "$t"),format=$f,discard=unmap$rostr"
                   -device "virtio-blk-pci,drive=d$i,num-queues=$nq,$addr$dopt") ;;
    esac
done
start=$(date +%s.%N)
timeout -k 10 "$timeout" qemu-system-x86_64 -accel "$ACCEL" -nographic -nodefaults -no-reboot \
    -machine pc -cpu max -smp "$smp" -m 256M -kernel "/boot/vmlinuz-$kver" -initrd "$tmp/initrd" \
    -append "console=ttyS0 no_timer_check panic=-1 oops=panic loglevel=4 vbd.timeout=$((timeout - 30)) vbd.disks=$ndisks" \
    -chardev "stdio,id=con0,signal=off,logfile=$(esc "$log")" -serial chardev:con0 \
    "${disk[@]}" ${qemu_extra[@]+"${qemu_extra[@]}"} </dev/null >"$tmp/out" 2>"$tmp/err"
qrc=$?
secs=$(echo "$(date +%s.%N) - $start" | bc | cut -c1-5)
result=$(tr -d '\r' <"$log" | grep -a -o 'GUEST-RESULT: .*' | tail -1)
panic=$(tr -d '\r' <"$log" | grep -a -m1 'Kernel panic' || true)
grep -a 'vbd:' "$log" | tr -d '\r' | sed 's/^.*vbd:/  vbd:/' | tail -$((40 * ndisks))
case "$result" in
    "GUEST-RESULT: PASS") echo "run-guest: PASS ($mode, $ACCEL, ${secs}s)"; exit 0 ;;
    "GUEST-RESULT: FAIL"*) echo "run-guest: FAIL ($mode, $ACCEL, ${secs}s): ${result#GUEST-RESULT: FAIL }"; exit 1 ;;
esac
tail -30 "$log" >&2
cat "$tmp/err" >&2
[ -n "$panic" ] && { echo "run-guest: KERNEL PANIC ($mode): $panic"; exit 4; }
[ $qrc = 124 ] || [ $qrc = 137 ] && { echo "run-guest: TIMEOUT ($mode): no result after ${timeout}s"; exit 3; }
echo "run-guest: NO RESULT ($mode, qemu exit $qrc)"; exit 5
