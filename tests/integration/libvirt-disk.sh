#!/bin/bash
# vbd-daemon --libvirt-disk, differentially against libvirt itself: for a set
# of <disk> elements (a qcow2 chain from <backingStore>, a raw file in each
# cache mode, a block device, an NBD network disk, readonly, discard, io,
# copy_on_read, detect_zeroes, serial, blockio, iotune) libvirt 9's
# `virsh domxml-to-native qemu-argv` shows the -blockdev nodes QEMU would
# get; vbd's query-named-block-nodes (QMP) must show the same layers with
# the same drivers, cache.direct/no-flush, detect_zeroes, read-only flags and backing chain,
# and the filters libvirt adds (copy-on-read). iotune must give a throttle
# group with the limits. The <disk type='vhostuser'> element printed by
# --print-libvirt-disk must be one libvirt accepts (domxml-to-native).
# Elements vbd cannot honour are one-line errors naming them.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/lib-libvirt.sh"
need qemu-img qemu-nbd python3
libvirt_start

qemu-img create -q -f qcow2 "$T/base.qcow2" 32M || fail "qemu-img create"
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$T/mid.qcow2" || fail "qemu-img create mid"
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 "$T/top.qcow2" || fail "qemu-img create top"
qemu-img create -q -f raw "$T/r.raw" 16M || fail "qemu-img create raw"
qemu-img create -q -f raw "$T/n.raw" 16M || fail "qemu-img create nbd image"
# libvirt's type='block' is QEMU's host_device driver, which opens only a
# block or character device (qsd and vbd refuse a regular file): a loop
# device over a file (losetup needs root; without it the case is left out)
qemu-img create -q -f raw "$T/blk.raw" 8M || fail "qemu-img create blk"
B=$(losetup -f --show "$T/blk.raw" 2>/dev/null) || B=
[ -z "$B" ] || on_exit "losetup -d $B"

# an NBD server (qemu-nbd) for the network disk
NS=$T/nbd.sock
qemu-nbd -k "$NS" -f raw -x exp -e 4 -t "$T/n.raw" </dev/null >"$T/qemu-nbd.log" 2>&1 &
npid=$!
on_exit "kill $npid 2>/dev/null; wait $npid 2>/dev/null"
wait_sock "$NS" "$npid"

domain() { # NAME DISK-XML... -> a domain around the disks
    echo "<domain type='qemu'><name>$1</name><memory unit='MiB'>128</memory>"
    echo "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
    echo "<emulator>/usr/bin/qemu-system-x86_64</emulator>"
    shift
    printf '%s\n' "$@"
    echo "</devices></domain>"
}

cases=()
add_case() { cases+=("$1"); printf '%s\n' "$2" >"$T/case-$1.xml"; }
add_case chain "<disk type='file' device='disk'>
  <driver name='qemu' type='qcow2' cache='none' io='native' discard='unmap'/>
  <source file='$T/top.qcow2'/>
  <backingStore type='file'><format type='qcow2'/><source file='$T/mid.qcow2'/>
    <backingStore type='file'><format type='qcow2'/><source file='$T/base.qcow2'/><backingStore/></backingStore>
  </backingStore>
  <target dev='vda' bus='virtio'/>
  <serial>vbd-chain-1</serial>
  <blockio logical_block_size='4096' physical_block_size='4096'/>
</disk>"
for mode in writeback writethrough none directsync unsafe; do
    add_case "cache-$mode" "<disk type='file' device='disk'>
  <driver name='qemu' type='raw' cache='$mode' discard='ignore'/>
  <source file='$T/r.raw'/><target dev='vdb' bus='virtio'/>
</disk>"
done
add_case readonly "<disk type='file' device='disk'>
  <driver name='qemu' type='qcow2' io='threads'/>
  <source file='$T/base.qcow2'/><backingStore/>
  <target dev='vdc' bus='virtio'/><readonly/>
</disk>"
[ -z "$B" ] && echo "--- block: no loop device (losetup: not root?): the block case is left out"
[ -z "$B" ] || add_case block "<disk type='block' device='disk'>
  <driver name='qemu' type='raw' cache='none' io='native'/>
  <source dev='$B'/><target dev='vdd' bus='virtio'/><shareable/>
</disk>"
add_case nbd "<disk type='network' device='disk'>
  <driver name='qemu' type='raw' cache='writeback' discard='unmap'/>
  <source protocol='nbd' name='exp'><host transport='unix' socket='$NS'/></source>
  <target dev='vde' bus='virtio'/>
</disk>"
add_case cor "<disk type='file' device='disk'>
  <driver name='qemu' type='qcow2' copy_on_read='on' cache='writethrough'/>
  <source file='$T/mid.qcow2'/>
  <backingStore type='file'><format type='qcow2'/><source file='$T/base.qcow2'/><backingStore/></backingStore>
  <target dev='vdf' bus='virtio'/>
</disk>"
# detect_zeroes: libvirt 9 puts it on the top format node only, and makes
# unmap without discard='unmap' on
add_case dz-on "<disk type='file' device='disk'>
  <driver name='qemu' type='raw' detect_zeroes='on'/>
  <source file='$T/r.raw'/><target dev='vdb' bus='virtio'/>
</disk>"
add_case dz-unmap "<disk type='file' device='disk'>
  <driver name='qemu' type='qcow2' discard='unmap' detect_zeroes='unmap'/>
  <source file='$T/mid.qcow2'/>
  <backingStore type='file'><format type='qcow2'/><source file='$T/base.qcow2'/><backingStore/></backingStore>
  <target dev='vdb' bus='virtio'/>
</disk>"
add_case dz-unmap-nodiscard "<disk type='file' device='disk'>
  <driver name='qemu' type='raw' detect_zeroes='unmap'/>
  <source file='$T/r.raw'/><target dev='vdb' bus='virtio'/>
</disk>"
add_case iotune "<disk type='file' device='disk'>
  <driver name='qemu' type='raw'/>
  <source file='$T/r.raw'/><target dev='vdg' bus='virtio'/>
  <iotune><read_bytes_sec>2000000</read_bytes_sec>
    <write_iops_sec>300</write_iops_sec><write_iops_sec_max>900</write_iops_sec_max><write_iops_sec_max_length>3</write_iops_sec_max_length>
    <size_iops_sec>8192</size_iops_sec><group_name>tier1</group_name></iotune>
</disk>"

# iSCSI: a user-space target (tgt) when vbd has the iscsi driver
if command -v tgtd >/dev/null && [ "$(id -u)" = 0 ] && "$VBD_IMG" --help 2>&1 | grep -qw iscsi; then
    source "$(dirname "$0")/lib-tgt.sh"
    qemu-img create -q -f raw "$T/lun.raw" 16M || fail "qemu-img create lun"
    tgt_start "$T/lun.raw"
    add_case iscsi "<disk type='network' device='disk'>
  <driver name='qemu' type='raw' cache='directsync'/>
  <source protocol='iscsi' name='$TGT_IQN/1'><host name='127.0.0.1' port='$TGT_PORT'/></source>
  <target dev='vdh' bus='virtio'/>
</disk>"
else
    echo "(no iscsi case: needs root, tgtd and vbd's iscsi driver)"
fi

# RBD: a throwaway Ceph cluster (memstore: the data is not kept) when vbd has the rbd driver
if command -v ceph-mon >/dev/null && "$VBD_IMG" --help 2>&1 | grep -qw rbd; then
    export CEPH_OBJECTSTORE=memstore
    source "$(dirname "$0")/lib-ceph.sh"
    ceph_start
    rbd -c "$CEPH_CONF" create --size 16M rbd/lv || fail "rbd create"
    mon=$(grep -o 'v2:127.0.0.1:[0-9]*' "$CEPH_CONF" | head -n1 | cut -d: -f3)
    [ -n "$mon" ] || fail "no monitor address in $CEPH_CONF"
    add_case rbd "<disk type='network' device='disk'>
  <driver name='qemu' type='raw' cache='none' discard='unmap'/>
  <source protocol='rbd' name='rbd/lv'><host name='127.0.0.1' port='$mon'/><config file='$CEPH_CONF'/></source>
  <target dev='vdi' bus='virtio'/>
</disk>"
else
    echo "(no rbd case: needs ceph-mon and vbd's rbd driver)"
fi

Q=$T/qmp.sock
on_exit '[ -z "$dpid" ] || kill -9 $dpid 2>/dev/null'
for c in "${cases[@]}"; do
    step "$c: libvirt's -blockdev vs vbd's nodes"
    domain "vbd-$c" "$(cat "$T/case-$c.xml")" >"$T/dom-$c.xml"
    virsh_ domxml-to-native qemu-argv "$T/dom-$c.xml" >"$T/argv-$c" || fail "$c: libvirt refused the disk"
    # ready once the export listens: the QMP socket comes first and answers
    # while the nodes are still opening (an rbd node takes a while)
    S=$T/vhu-$c.sock
    start_daemon --chardev socket,id=m,path="$Q",server=on,wait=off --monitor m \
        --libvirt-disk "$T/case-$c.xml" --vhost-user "$T/vhu-$c.sock"
    PYTHONPATH=$VBD_ROOT/tests/qmp python3 - "$Q" "$T/argv-$c" "$c" >"$T/cmp-$c.out" 2>&1 <<'EOF' || { cat "$T/cmp-$c.out"; tail -n 60 "$T/daemon.log"; fail "$c: vbd's nodes differ from libvirt's"; }
import json, shlex, sys
from qmp import QMP
sock, argv_file, case = sys.argv[1:]
argv = shlex.split(open(argv_file).read())
lv = {}
dev = None
for i, a in enumerate(argv):
    if a == "-blockdev":
        o = json.loads(argv[i + 1]); lv[o["node-name"]] = o
    if a == "-device":
        o = json.loads(argv[i + 1])
        if o.get("driver") == "virtio-blk-pci": dev = o
assert dev, "no virtio-blk-pci device in libvirt's command line"
m = QMP(sock, negotiate=True)
vbd = {n["node-name"]: n for n in m.execute("query-named-block-nodes")}

def lv_cache(o):
    c = o.get("cache", {})
    return (c.get("direct", False), c.get("no-flush", False))

# libvirt's chain, top down: filters, then (format, storage) per image
node = lv[dev["drive"]]
filters = []
while node["driver"] in ("copy-on-read", "throttle"):
    filters.append(node["driver"]); node = lv[node["file"]]
layers = []
while node is not None:
    layers.append((node, lv[node["file"]]))
    b = node.get("backing")
    node = lv[b] if isinstance(b, str) else None

# vbd's: the top node is the target, named layers below it
tdev = {"chain": "vda", "readonly": "vdc", "block": "vdd", "nbd": "vde", "cor": "vdf", "iotune": "vdg", "iscsi": "vdh", "rbd": "vdi"}.get(case, "vdb")
top = vbd[tdev]
vfilters = []
name = tdev
if "throttle" in [top["drv"]]:
    vfilters.append("throttle"); name = tdev + "-cor" if (tdev + "-cor") in vbd else tdev + "-format"
if vbd.get(name, {}).get("drv") == "copy-on-read":
    vfilters.append("copy-on-read"); name = tdev + "-format"
elif name == tdev and (tdev + "-format") in vbd:
    name = tdev + "-format"
# libvirt 9 applies iotune over QMP at start (not -blockdev); QEMU's limits sit on the BlockBackend
want_filters = filters + (["throttle"] if case == "iotune" else [])
assert vfilters == want_filters, f"filters: vbd {vfilters}, libvirt {want_filters}"
for k, (lf, ls) in enumerate(layers):
    fmt = name if k == 0 else f"{tdev}-b{k}-format"
    sto = (tdev + "-storage") if k == 0 else f"{tdev}-b{k}-storage"
    vf, vs = vbd[fmt], vbd[sto]
    assert vf["drv"] == lf["driver"], f"layer {k} format: vbd {vf['drv']}, libvirt {lf['driver']}"
    # vbd's file driver also serves host_device (registry.c) and reports itself as "file"
    lsd = "file" if ls["driver"] == "host_device" else ls["driver"]
    assert vs["drv"] == lsd, f"layer {k} protocol: vbd {vs['drv']}, libvirt {ls['driver']}"
    for v, l, what in ((vf, lf, "format"), (vs, ls, "protocol")):
        vc = (v["cache"]["direct"], v["cache"]["no-flush"])
        assert vc == lv_cache(l), f"layer {k} {what} cache (direct, no-flush): vbd {vc}, libvirt {lv_cache(l)}"
    for v, l, what in ((vf, lf, "format"), (vs, ls, "protocol")):
        assert v["detect_zeroes"] == l.get("detect-zeroes", "off"), f"layer {k} {what} detect_zeroes: vbd {v['detect_zeroes']}, libvirt {l.get('detect-zeroes', 'off')}"
    ro = lf.get("read-only", False)
    assert vf["ro"] == ro, f"layer {k} format read-only: vbd {vf['ro']}, libvirt {ro}"
    # libvirt opens protocol nodes auto-read-only: read-only when only readers are above
    assert vs["ro"] == ro, f"layer {k} protocol read-only: vbd {vs['ro']}, libvirt auto-read-only under {ro}"
    if ls["driver"] in ("file", "host_device"):
        assert vs["file"] == ls["filename"], f"layer {k} file: vbd {vs['file']}, libvirt {ls['filename']}"
    if ls["driver"] == "rbd":
        assert vs["file"].startswith("rbd:rbd/lv"), f"layer {k} rbd image: vbd {vs['file']}"
    nxt = layers[k + 1][1] if k + 1 < len(layers) else None
    if nxt is not None:
        assert vf.get("backing_file") == nxt["filename"], f"layer {k} backing: vbd {vf.get('backing_file')}, libvirt {nxt['filename']}"
    else:
        assert "backing_file" not in vf, f"layer {k}: vbd has a backing file {vf.get('backing_file')}, libvirt none"
assert f"{tdev}-b{len(layers)}-format" not in vbd, "vbd's chain is longer than libvirt's"
if case == "iotune":
    lim = m.execute("qom-get", path="tier1", property="limits")
    want = {"iops-write": 300, "bps-read": 2000000, "iops-write-max": 900, "iops-write-max-length": 3, "iops-size": 8192}
    for k, v in want.items():
        assert lim.get(k) == v, f"throttle group tier1 {k}: {lim.get(k)}, want {v}"
ex = m.execute("query-block-exports")
assert [e["node-name"] for e in ex] == [tdev], f"exports {ex}"
print(f"{case}: {len(layers)} image(s), filters {vfilters}: same as libvirt")
EOF
    cat "$T/cmp-$c.out"
    stop_daemon
done

step "the printed <disk type='vhostuser'> is a disk libvirt accepts"
P=$T/vhu.sock
S=$P
"$VBD_DAEMON" --libvirt-disk "$T/case-chain.xml" --vhost-user "$P" --print-libvirt-disk >"$T/printed.xml" 2>"$T/daemon.log" &
# shellcheck disable=SC2034 # stop_daemon (lib.sh) stops it
dpid=$!
wait_sock "$P" "$dpid" "$T/daemon.log"
for _ in $(seq 1200); do grep -q '</disk>' "$T/printed.xml" && break; sleep 0.05; done
grep -q "<source type='unix' path='$P'>" "$T/printed.xml" || { cat "$T/printed.xml"; fail "printed element lacks the socket"; }
grep -q "<reconnect enabled='yes' timeout='1'/>" "$T/printed.xml" || fail "printed element lacks <reconnect>"
grep -q "<target dev='vda' bus='virtio'/>" "$T/printed.xml" || fail "printed element lacks the target"
{
    echo "<domain type='qemu'><name>vbd-printed</name><memory unit='MiB'>128</memory>"
    echo "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>"
    echo "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
    cat "$T/printed.xml"
    echo "</devices></domain>"
} >"$T/dom-printed.xml"
virsh_ domxml-to-native qemu-argv "$T/dom-printed.xml" >"$T/argv-printed" || fail "libvirt refused the printed element"
grep -q "vhost-user-blk-pci" "$T/argv-printed" || fail "no vhost-user-blk-pci for the printed element"
grep -q "path=$P" "$T/argv-printed" || grep -q "\"path\":\"$P\"" "$T/argv-printed" || fail "the printed socket is not QEMU's chardev"
stop_daemon

step "--print-libvirt-disk and a stdio monitor would share stdout: refused in one line, in either order, before a greeting"
printf '%s\n' "<disk type='file'><driver name='qemu' type='raw'/><source file='$T/r.raw'/><target dev='vda'/></disk>" >"$T/one.xml"
lv=(--libvirt-disk "$T/one.xml" --vhost-user "$T/one.sock")
must_fail_with "--chardev stdio,id=m: stdio and --print-libvirt-disk both write to stdout" \
    "$VBD_DAEMON" --chardev stdio,id=m --monitor m "${lv[@]}" --print-libvirt-disk
must_fail_with "--chardev stdio,id=m: stdio and --print-libvirt-disk both write to stdout" \
    "$VBD_DAEMON" "${lv[@]}" --print-libvirt-disk --chardev stdio,id=m --monitor m
# getopt takes an abbreviation of the option: so does the scan for it
must_fail_with "--chardev stdio,id=m: stdio and --print-libvirt-disk both write to stdout" \
    "$VBD_DAEMON" --chardev stdio,id=m --monitor m "${lv[@]}" --print-libvirt
out=$("$VBD_DAEMON" --chardev stdio,id=m --monitor m "${lv[@]}" --print-libvirt-disk </dev/null 2>/dev/null)
[ -z "$out" ] || fail "stdout of the refused start: $out"
[ ! -e "$T/one.sock" ] || fail "the refused start left its socket"

step "what vbd cannot honour: one-line errors naming the element"
bad() { # WANT XML
    printf '%s\n' "$2" >"$T/bad.xml"
    must_fail_with "$1" "$VBD_DAEMON" --libvirt-disk "$T/bad.xml"
}
bad "detect_zeroes='bogus'" "<disk type='file'><driver name='qemu' type='raw' detect_zeroes='bogus'/><source file='$T/r.raw'/><target dev='vda'/></disk>"
bad "<wwn>" "<disk type='file'><driver name='qemu' type='raw'/><source file='$T/r.raw'/><target dev='vda'/><wwn>5000c50015ea71ac</wwn></disk>"
bad "protocol='gluster'" "<disk type='network'><driver name='qemu' type='raw'/><source protocol='gluster' name='v/i'><host name='h'/></source><target dev='vda'/></disk>"
bad "type='dir'" "<disk type='dir'><driver name='qemu' type='raw'/><source dir='$T'/><target dev='vda'/></disk>"
bad "device='cdrom'" "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='$T/r.raw'/><target dev='hdc'/></disk>"
bad "cache='bogus'" "<disk type='file'><driver name='qemu' type='raw' cache='bogus'/><source file='$T/r.raw'/><target dev='vda'/></disk>"
bad "<driver sgio=" "<disk type='file'><driver name='qemu' type='raw' sgio='filtered'/><source file='$T/r.raw'/><target dev='vda'/></disk>"
bad "<iotune><bogus_sec>" "<disk type='file'><driver name='qemu' type='raw'/><source file='$T/r.raw'/><target dev='vda'/><iotune><bogus_sec>1</bogus_sec></iotune></disk>"
bad "no vmdk2 format" "<disk type='file'><driver name='qemu' type='vmdk2'/><source file='$T/r.raw'/><target dev='vda'/></disk>"
bad "<disk type='file'><auth>: only for network disks" "<disk type='file'><driver name='qemu' type='raw'/><source file='$T/r.raw'/><auth username='u'><secret type='ceph' usage='s'/></auth><target dev='vda'/></disk>"
bad "<reconnect>: only for protocol nbd" "<disk type='network'><driver name='qemu' type='raw'/><source protocol='iscsi' name='iqn.x/1'><host name='127.0.0.1'/><reconnect delay='1'/></source><target dev='vda'/></disk>"
# a chain longer than any real one ends with an error, not a deep recursion
deep="<disk type='file'><driver name='qemu' type='qcow2'/><source file='$T/base.qcow2'/>"
for _ in $(seq 40); do deep+="<backingStore type='file'><format type='qcow2'/><source file='$T/base.qcow2'/>"; done
for _ in $(seq 40); do deep+="</backingStore>"; done
bad "chain deeper than 32" "$deep<target dev='vda'/></disk>"
bad "not XML" "<disk type='file'><source file='$T/r.raw'/>"
must_fail_with "no <disk> with <target dev='vdz'>" "$VBD_DAEMON" --libvirt-disk "$T/dom-chain.xml#vdz"
bad "node 'vda-storage': Could not open" "<disk type='file'><driver name='qemu' type='raw'/><source file='$T/missing.raw'/><target dev='vda'/></disk>"
# <geometry> is a warning only (a virtio disk has none)
printf '%s\n' "<disk type='file'><driver name='qemu' type='raw'/><source file='$T/r.raw'/><target dev='vda'/><geometry cyls='16' heads='16' secs='63'/></disk>" >"$T/geo.xml"
S=$T/geo.sock
start_daemon --libvirt-disk "$T/geo.xml" --vhost-user "$S"
grep -q "<geometry> ignored" "$T/daemon.log" || fail "no warning for <geometry>"
stop_daemon
echo "PASS"
