#!/bin/bash
# Boots Debian's kernel under QEMU (KVM where /dev/kvm is usable, else TCG;
# VBD_ACCEL=kvm|tcg forces one, see accel.sh) with one virtio-blk disk and
# runs a workload in it (several --workload: each in turn in the same boot,
# the first failure ends it). Exit: 0 PASS, 1 FAIL, 2 usage, 3 TIMEOUT, 4 KERNEL PANIC,
# 5 NO RESULT (QEMU refused the disk or died).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage() {
    cat <<USAGE
Usage: run-guest.sh DISK --workload FILE [options]
  DISK: --vhost-user SOCKET | --nbd URI | --image FILE [--format FMT]
  --num-queues N   virtqueues (default 1)      --smp N     vCPUs (default 2)
  --workload FILE  again: run after the previous one, in the same boot
  --env NAME=VAL   exported to the workloads   --timeout S (default 180)
  --readonly       read-only disk (--nbd/--image)
  --reconnect      vhost-user chardev with reconnect=1 (back end may restart)
  --listen         vhost-user: QEMU listens on SOCKET (server=on,wait=off) and the
                   back end connects to it (vbd-daemon's server=off)
  --device-opts O  appended to -device         --log FILE  keep the console
USAGE
}
mode= target= fmt=raw workloads=() nq=1 smp=2 timeout=180 ro=0 reconnect=0 listen=0 devopts= log= envs=()
while [ $# -gt 0 ]; do
    case "$1" in
        --vhost-user) mode=vhost-user target=$2; shift ;;
        --nbd) mode=nbd target=$2; shift ;;
        --image) mode=image target=$2; shift ;;
        --format) fmt=$2; shift ;;
        --workload) workloads+=("$2"); shift ;;
        --num-queues) nq=$2; shift ;;
        --smp) smp=$2; shift ;;
        --env) envs+=("$2"); shift ;;
        --timeout) timeout=$2; shift ;;
        --readonly) ro=1 ;;
        --reconnect) reconnect=1 ;;
        --listen) listen=1 ;;
        --device-opts) devopts=,$2; shift ;;
        --log) log=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run-guest: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
[ -n "$mode" ] && [ ${#workloads[@]} -gt 0 ] || { echo "run-guest: need a disk and a --workload" >&2; exit 2; }
for w in "${workloads[@]}"; do [ -r "$w" ] || { echo "run-guest: cannot read workload '$w'" >&2; exit 2; }; done
[ $mode != vhost-user ] || [ $listen = 1 ] || [ -S "$target" ] || { echo "run-guest: no socket at '$target'" >&2; exit 2; }
read -r kver base < <("$here/build-initramfs.sh") || exit 2
. "$here/accel.sh"
pick_accel "/boot/vmlinuz-$kver" || exit 2
echo "run-guest: accel $ACCEL ($ACCEL_WHY)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
log=${log:-$tmp/console.log}
mkdir -p "$tmp/extra"
# /workload.sh (what init.sh runs) runs each workload as its own shell, in order
: >"$tmp/extra/workload.sh"
files="workload.sh"
for i in "${!workloads[@]}"; do
    cp "${workloads[$i]}" "$tmp/extra/workload$i.sh"
    echo "sh /workload$i.sh || exit \$?" >>"$tmp/extra/workload.sh"
    files="$files workload$i.sh"
done
: >"$tmp/extra/env"
for e in "${envs[@]}"; do printf 'export %q\n' "$e" >>"$tmp/extra/env"; done
(cd "$tmp/extra" && printf '%s\n' $files env | cpio -o -H newc -R 0:0 --quiet | gzip) >"$tmp/extra.cpio.gz"
cat "$base" "$tmp/extra.cpio.gz" >"$tmp/initrd"
esc() { printf '%s' "${1//,/,,}"; }
rostr=; [ $ro = 1 ] && rostr=,readonly=on
case $mode in
    vhost-user)
        rc=; [ $reconnect = 1 ] && rc=,reconnect=1
        [ $listen = 1 ] && rc=,server=on,wait=off
        disk=(-object memory-backend-memfd,id=mem0,size=256M,share=on -machine memory-backend=mem0
              -chardev "socket,id=vu0,path=$(esc "$target")$rc"
              -device "vhost-user-blk-pci,chardev=vu0,num-queues=$nq$devopts") ;;
    nbd|image)
        f=raw; [ $mode = image ] && f=$fmt
        disk=(-drive "if=none,id=d0,file=$(esc "$target"),format=$f,discard=unmap$rostr"
              -device "virtio-blk-pci,drive=d0,num-queues=$nq$devopts") ;;
esac
start=$(date +%s.%N)
timeout -k 10 "$timeout" qemu-system-x86_64 -accel "$ACCEL" -nographic -nodefaults -no-reboot \
    -machine pc -cpu max -smp "$smp" -m 256M -kernel "/boot/vmlinuz-$kver" -initrd "$tmp/initrd" \
    -append "console=ttyS0 no_timer_check panic=-1 oops=panic loglevel=4 vbd.timeout=$((timeout - 30))" \
    -chardev "stdio,id=con0,signal=off,logfile=$(esc "$log")" -serial chardev:con0 \
    "${disk[@]}" </dev/null >"$tmp/out" 2>"$tmp/err"
qrc=$?
secs=$(echo "$(date +%s.%N) - $start" | bc | cut -c1-5)
result=$(tr -d '\r' <"$log" | grep -a -o 'GUEST-RESULT: .*' | tail -1)
panic=$(tr -d '\r' <"$log" | grep -a -m1 'Kernel panic' || true)
grep -a 'vbd:' "$log" | tr -d '\r' | sed 's/^.*vbd:/  vbd:/' | tail -40
case "$result" in
    "GUEST-RESULT: PASS") echo "run-guest: PASS ($mode, $ACCEL, ${secs}s)"; exit 0 ;;
    "GUEST-RESULT: FAIL"*) echo "run-guest: FAIL ($mode, $ACCEL, ${secs}s): ${result#GUEST-RESULT: FAIL }"; exit 1 ;;
esac
tail -30 "$log" >&2
cat "$tmp/err" >&2
[ -n "$panic" ] && { echo "run-guest: KERNEL PANIC ($mode): $panic"; exit 4; }
[ $qrc = 124 ] || [ $qrc = 137 ] && { echo "run-guest: TIMEOUT ($mode): no result after ${timeout}s"; exit 3; }
echo "run-guest: NO RESULT ($mode, qemu exit $qrc)"; exit 5
