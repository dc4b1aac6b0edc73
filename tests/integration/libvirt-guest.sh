#!/bin/bash
# test-slow: one of the longest; run.sh starts it first
# test-timeout: 2700 (run.sh: its TCG guest may take 1200 s to the fs workload and 1200 s after the restart)
# A libvirt-managed guest on vbd disks. A private libvirtd (lib-libvirt.sh)
# defines and starts a TCG domain with two disks, both served by vbd-daemon
# from libvirt <disk> elements (--libvirt-disk):
#   vda: a qcow2 image, cache='directsync': every write is on disk before the
#        guest sees it complete, so a back end killed with -9 loses nothing the
#        guest was told is written (with a write-back cache, cache='none', the
#        qcow2 metadata of writes not yet flushed dies with the process, as
#        with QEMU: one run of 6 lost mke2fs's writes that way);
#        vhost-user-blk, the element --print-libvirt-disk printed
#        (<disk type='vhostuser'> with <reconnect>, 2 queues), serial and
#        4K logical blocks from the original <disk> that the guest must see;
#   vdb: <disk type='network'><source protocol='nbd'> from a second
#        vbd-daemon's NBD export.
# `virsh domblklist` shows both. The guest checks vdb with a pattern, then
# runs the fs workload on vda; when it has started, vda's vbd-daemon is
# killed with -9 and started again under the running domain: libvirt's
# <reconnect> brings the disk back and the workload (checksums after
# remount, deletion, fstrim) passes with no I/O error in the guest's log.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/lib-libvirt.sh"
need qemu-img busybox cpio
G=$VBD_ROOT/tests/guest
ls /boot/vmlinuz-* >/dev/null 2>&1 || skip "no guest kernel (linux-image-amd64)"
read -r kver base < <("$G/build-initramfs.sh") || fail "cannot build the guest's initramfs"
libvirt_start
on_exit '[ -z "$apid" ] || kill -9 $apid 2>/dev/null; [ -z "$bpid" ] || kill -9 $bpid 2>/dev/null'
apid='' bpid=''

must qemu-img create -q -f qcow2 "$T/a.qcow2" 128M
must qemu-img create -q -f raw "$T/b.raw" 32M
cat >"$T/vda.xml" <<EOF
<disk type='file' device='disk'>
  <driver name='qemu' type='qcow2' cache='directsync' io='native' discard='unmap' queues='2'/>
  <source file='$T/a.qcow2'/><backingStore/>
  <target dev='vda' bus='virtio'/>
  <serial>vbd-libvirt-0</serial>
  <blockio logical_block_size='4096' physical_block_size='4096'/>
</disk>
EOF
cat >"$T/vdb.xml" <<EOF
<disk type='file' device='disk'>
  <driver name='qemu' type='raw' cache='writeback'/>
  <source file='$T/b.raw'/>
  <target dev='vdb' bus='virtio'/>
</disk>
EOF
A=$T/vda.sock
NB=$T/nbd.sock
start_a() { # vda's back end; prints the vhostuser element to $T/printed-$1.xml
    rm -f "$A"
    "$VBD_DAEMON" --libvirt-disk "$T/vda.xml" --vhost-user "$A" --print-libvirt-disk \
        >"$T/printed-$1.xml" 2>>"$T/a.log" &
    apid=$!
    for _ in $(seq 1200); do grep -q '</disk>' "$T/printed-$1.xml" && return; kill -0 $apid 2>/dev/null || break; sleep 0.05; done
    cat "$T/a.log"; fail "vda's vbd-daemon did not start"
}
step "vbd-daemon serves vda (vhost-user-blk) and vdb (NBD) from libvirt <disk> elements"
start_a 1
"$VBD_DAEMON" --libvirt-disk "$T/vdb.xml" --nbd-server addr.type=unix,addr.path="$NB" \
    --export type=nbd,id=e,node-name=vdb,name=vdb,writable=on 2>"$T/b.log" &
bpid=$!
wait_sock "$NB" "$bpid" "$T/b.log"
grep -q "<reconnect enabled='yes' timeout='1'/>" "$T/printed-1.xml" || fail "no <reconnect> in the printed element"
grep -q "queues='2'" "$T/printed-1.xml" || fail "the printed element lacks queues='2'"

# the guest: the shared initramfs plus this test's workload
mkdir -p "$T/extra"
{
    cat <<'EOF'
. /lib/vbd.sh
i=0; while [ ! -b /dev/vdb ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
[ -b /dev/vdb ] || fail "no /dev/vdb"
[ "$(cat /sys/block/vda/serial)" = vbd-libvirt-0 ] || fail "vda serial '$(cat /sys/block/vda/serial)'"
[ "$(cat /sys/block/vda/queue/logical_block_size)" = 4096 ] || fail "vda logical block size"
[ "$(ls /sys/block/vda/mq | wc -l)" = 2 ] || fail "vda has $(ls /sys/block/vda/mq | wc -l) queues, not 2"
VBD_DEV=/dev/vdb sh -c '. /lib/vbd.sh; write_pattern 0 2048 direct; check_region 0 2048 direct' || fail "vdb (nbd) pattern"
log "vdb: 1 MiB pattern written and read back over NBD"
EOF
    cat "$G/workloads/fs.sh"
} >"$T/extra/workload.sh"
echo "export VBD_FILES=300" >"$T/extra/env"
(cd "$T/extra" && printf 'workload.sh\nenv\n' | cpio -o -H newc -R 0:0 --quiet | gzip) >"$T/extra.cpio.gz"
cat "$base" "$T/extra.cpio.gz" >"$T/initrd"
CON=$T/console.log
cat >"$T/domain.xml" <<EOF
<domain type='qemu'>
  <name>vbd-guest</name>
  <memory unit='MiB'>256</memory>
  <vcpu>2</vcpu>
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>/boot/vmlinuz-$kver</kernel>
    <initrd>$T/initrd</initrd>
    <cmdline>console=ttyS0 no_timer_check panic=-1 oops=panic loglevel=4 vbd.timeout=1200</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='maximum' check='none'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
$(cat "$T/printed-1.xml")
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' discard='unmap'/>
      <source protocol='nbd' name='vdb'><host transport='unix' socket='$NB'/></source>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <serial type='file'><source path='$CON'/><target port='0'/></serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
step "libvirt defines and starts the domain"
virsh_ define "$T/domain.xml" >/dev/null || fail "virsh define"
virsh_ start vbd-guest >/dev/null || { tail -n 20 "$LV_DIR/log/libvirtd.log"; fail "virsh start"; }
virsh_ domblklist vbd-guest >"$T/blklist" || fail "virsh domblklist"
grep -q "vda *$A" "$T/blklist" || { cat "$T/blklist"; fail "domblklist does not show vda on $A"; }
grep -q "vdb *vdb" "$T/blklist" || { cat "$T/blklist"; fail "domblklist does not show vdb (nbd export vdb)"; }

step "kill -9 vda's vbd-daemon under the running fs workload, start it again"
# a TCG guest's time scales with the host's load: the waits follow the
# guest's own watchdog (vbd.timeout, 1200 s), as the other guest tests'
end=$((SECONDS + 1200))
until grep -q "fs: mkfs" "$CON" 2>/dev/null; do
    [ "$(virsh_ domstate vbd-guest 2>/dev/null)" = running ] || { tail -n 30 "$CON"; fail "the domain stopped before the fs workload"; }
    [ $SECONDS -lt $end ] || { tail -n 30 "$CON"; fail "the fs workload did not start in 1200 s"; }
    sleep 0.1
done
grep -q "vdb: 1 MiB pattern" "$CON" || { tail -n 30 "$CON"; fail "the vdb (nbd) check did not pass"; }
kill -9 $apid; wait $apid 2>/dev/null
! grep -q "fs: done\|GUEST-RESULT" "$CON" || fail "the workload ended before the back end was killed: nothing tested"
start_a 2
cmp -s "$T/printed-1.xml" "$T/printed-2.xml" || fail "the restarted daemon prints another element"
end=$((SECONDS + 1200))
while [ "$(virsh_ domstate vbd-guest 2>/dev/null)" = running ]; do
    [ $SECONDS -lt $end ] || { tail -n 30 "$CON"; fail "the guest did not finish in 1200 s after the restart"; }
    sleep 0.5
done
res=$(tr -d '\r' <"$CON" | grep -a -o 'GUEST-RESULT: .*' | tail -n1)
grep -a 'vbd:' "$CON" | tr -d '\r' | tail -n 8
[ "$res" = "GUEST-RESULT: PASS" ] || { tr -d '\r' <"$CON" | tail -n 30; fail "guest: ${res:-no result}"; }
! tr -d '\r' <"$CON" | grep -a -q "I/O error" || { grep -a "I/O error" "$CON" | head; fail "I/O errors in the guest's log"; }
[ "$(grep -c "front end connected" "$T/a.log")" -ge 2 ] || { cat "$T/a.log"; fail "QEMU did not reconnect to the restarted daemon"; }
virsh_ undefine vbd-guest >/dev/null || fail "virsh undefine"

step "the daemons stop cleanly; the images are consistent"
for p in $apid $bpid; do
    kill -TERM $p; wait $p || fail "vbd-daemon $p exited with $? after SIGTERM"
done
apid='' bpid=''
! grep -q Sanitizer "$T/a.log" "$T/b.log" || { cat "$T/a.log" "$T/b.log"; fail "sanitizer report"; }
# killed with -9: leaked clusters are allowed (exit 3), errors are not
qemu-img check "$T/a.qcow2" >"$T/check.out" 2>&1; rc=$?
[ $rc = 0 ] || [ $rc = 3 ] || { cat "$T/check.out"; fail "qemu-img check: exit $rc"; }
echo "PASS"
