#!/bin/bash
# vbd-daemon --libvirt-disk with <auth>: a libvirt network disk on an iSCSI
# LUN that asks for CHAP (tgtd account). libvirt keeps the password in a
# secret named by usage (or uuid); vbd takes it from a --object secret
# with that id. The node logs in, is exported over NBD and qemu-io reads
# what QEMU's own iscsi driver wrote with the same account; a wrong
# password, or no such secret, is a one-line error and no daemon.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib-tgt.sh"
need qemu-io python3
qemu-img --help | grep -q 'Supported formats:.* iscsi' || skip "QEMU's iscsi driver (qemu-block-extra) is not installed"
cd "$T"
truncate -s 16M disk.img
tgt_start "$T/disk.img"
on_exit '[ -z "$dpid" ] || kill -9 $dpid 2>/dev/null'
tgt_adm --op new --mode account --user vbduser --password s3cret-pass >/dev/null || fail "tgtadm account"
tgt_adm --op bind --mode account --tid 1 --user vbduser >/dev/null || fail "tgtadm bind account"
must qemu-io -f raw -c "write -P 0x5a 1M 64k" "iscsi://vbduser%s3cret-pass@127.0.0.1:$TGT_PORT/$TGT_IQN/1" >/dev/null
for how in usage uuid; do
    sid=vbd-iscsi-pw oid=vbd-iscsi-pw
    # an object id starts with a letter (qsd refuses the uuid itself as one)
    [ $how = uuid ] && sid=2d8a0b4e-5c1f-4f6e-9a43-0b8d2f1c7e11 oid=secret-2d8a0b4e-5c1f-4f6e-9a43-0b8d2f1c7e11
    cat >disk.xml <<XML
<disk type='network' device='disk'>
  <driver name='qemu' type='raw' cache='none'/>
  <source protocol='iscsi' name='$TGT_IQN/1'>
    <host name='127.0.0.1' port='$TGT_PORT'/>
    <auth username='vbduser'><secret type='iscsi' $how='$sid'/></auth>
  </source>
  <target dev='vda' bus='virtio'/>
</disk>
XML
    step "<secret $how=...>: a --object secret with that id logs in"
    rm -f nbd.sock
    "$VBD_DAEMON" --object secret,id=$oid,data=s3cret-pass --libvirt-disk "$T/disk.xml" \
        --nbd-server addr.type=unix,addr.path="$T/nbd.sock" --export type=nbd,id=e0,node-name=vda,name=vda \
        2>daemon.log &
    dpid=$!
    wait_sock "$T/nbd.sock" "$dpid" daemon.log
    must qemu-io -f raw -r -c "read -P 0x5a 1M 64k" "nbd+unix:///vda?socket=$T/nbd.sock" >/dev/null
    kill -TERM $dpid; wait $dpid; rc=$?; dpid=
    [ $rc = 0 ] || fail "vbd-daemon exited with $rc: $(tail -3 daemon.log)"
    ! grep -q Sanitizer daemon.log || fail "$(cat daemon.log)"
done
step "a wrong password and a missing secret: one line, no daemon"
must_fail_with "Failed to log in" "$VBD_DAEMON" --object secret,id=$oid,data=wrong --libvirt-disk "$T/disk.xml"
must_fail_with "No secret with id '$oid'" "$VBD_DAEMON" --libvirt-disk "$T/disk.xml"
echo ok
