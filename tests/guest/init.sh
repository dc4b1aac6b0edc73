#!/bin/sh
# The guest's /init: load the modules, wait for the disks (vbd.disks=N), run /workload.sh
# under a watchdog, print one GUEST-RESULT line and power off.
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /etc/modules); do insmod /lib/modules/$m 2>/dev/null; done
timeout=200
for w in $(cat /proc/cmdline); do case $w in vbd.timeout=*) timeout=${w#vbd.timeout=} ;; esac; done
disks=1
for w in $(cat /proc/cmdline); do case $w in vbd.disks=*) disks=${w#vbd.disks=} ;; esac; done
ndisks() { ls -d /sys/block/vd* 2>/dev/null | wc -l; }
i=0
while [ "$(ndisks)" -lt "$disks" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
result() { echo "GUEST-RESULT: $*"; sync; poweroff -f; }
[ -b /dev/vda ] || result "FAIL no /dev/vda"
[ "$(ndisks)" -ge "$disks" ] || result "FAIL $(ndisks) disks, expected $disks"
(
    sleep "$timeout"
    for b in /sys/block/vd*; do echo "vbd: watchdog: ${b##*/} inflight $(cat $b/inflight)"; done
    echo w >/proc/sysrq-trigger
    result "FAIL guest watchdog: no result after ${timeout}s (hung I/O?)"
) &
[ -f /env ] && . /env
export VBD_DEV=/dev/vda
sh /workload.sh
rc=$?
if [ $rc = 0 ]; then
    result PASS
elif [ -s /tmp/reason ]; then
    result "FAIL $(cat /tmp/reason)"
else
    result "FAIL workload exited with status $rc"
fi
