#!/bin/bash
# test-slow: one of the longest; run.sh starts it first
# The rbd protocol driver against a real Ceph cluster (one mon, one OSD,
# started once for this file by lib-ceph.sh) and QEMU's own rbd driver
# (qemu-block-extra): data written by either is read by the other, in the
# filename syntax (rbd:pool[/namespace]/image[@snap][:opt=val]) and with
# blockdev options; create/convert/info/map/resize/snapshot as qemu-img
# does them; a qcow2 on rbd; write-zeroes and discard; an NBD export of an
# rbd node; the model-based stress test on an rbd node; bad input (an
# unreachable monitor fails in bounded time with one line, a wrong pool or
# image, a wrong key); cephx with the key in a secret object (key-secret); and the fault case: the OSD killed with SIGKILL during writes
# and restarted, every acknowledged write still there.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib-ceph.sh"
need qemu-img qemu-io nbdinfo python3
[ -e /usr/lib/x86_64-linux-gnu/qemu/block-rbd.so ] || skip "qemu-block-extra (QEMU's rbd driver) not installed"
cd "$T" || exit 1

ceph_start
C=$CEPH_CONF
rbdc() { timeout 60 rbd -c "$C" "$@"; }
R() { echo "rbd:rbd/$1:conf=$C"; } # the image's filename

step "interop with QEMU's rbd driver, both ways"
must rbdc create --size 64M a
must qemu-io -f raw -c 'write -P 0xa1 0 1M' -c 'write -P 0xa2 5M 64k' "$(R a)" >/dev/null
must "$VBD_IO" -f raw -c 'read -P 0xa1 0 1M' -c 'read -P 0xa2 5M 64k' -c 'read -P 0 6M 1M' "$(R a)" >/dev/null
must "$VBD_IO" -f raw -c 'write -P 0xb1 1M 1M' -c 'writev -P 0xb2 9M 4k 60k 1M' -c flush "$(R a)" >/dev/null
must qemu-io -f raw -c 'read -P 0xb1 1M 1M' -c 'read -P 0xb2 9M 1088k' -c 'read -P 0xa1 0 1M' "$(R a)" >/dev/null
# unaligned bytes, both directions
must "$VBD_IO" -f raw -c 'write -P 0xc1 3158073 777' "$(R a)" >/dev/null
must qemu-io -f raw -c 'read -P 0xc1 3158073 777' -c 'read -P 0 3M 12345' -c 'read -P 0 3158850 1000' "$(R a)" >/dev/null
# cache=none (rbd_cache off) and writeback
must "$VBD_IO" -t none -f raw -c 'write -P 0xc2 20M 1M' "$(R a)" >/dev/null
must "$VBD_IO" -t writeback -f raw -c 'write -P 0xc3 21M 1M' -c flush "$(R a)" >/dev/null
must qemu-io -f raw -c 'read -P 0xc2 20M 1M' -c 'read -P 0xc3 21M 1M' "$(R a)" >/dev/null

step "blockdev options: pool/image/conf, server.N + auth-client-required without a conf file, json: filenames, namespaces"
must "$VBD_IO" --image-opts -c 'read -P 0xa1 0 1M' \
    "driver=raw,file.driver=rbd,file.pool=rbd,file.image=a,file.conf=$C" >/dev/null
mon_host=${CEPH_MON_ADDR%:*} mon_port=${CEPH_MON_ADDR##*:}
admin_key=$(ceph_cli auth print-key client.admin) || fail "no admin key"
if [ "$mon_port" = 3300 ]; then # librados speaks msgr2 to an untyped address on 3300 only
    # no config file at all: the monitor, the user and its key from options
    must env CEPH_CONF=/nonexistent "$VBD_IO" --object "secret,id=adm,data=$admin_key,format=base64" --image-opts \
        -c 'read -P 0xb1 1M 1M' \
        "driver=raw,file.driver=rbd,file.pool=rbd,file.image=a,file.server.0.host=$mon_host,file.server.0.port=$mon_port,file.auth-client-required.0=cephx,file.user=admin,file.key-secret=adm" >/dev/null
fi
must "$VBD_IO" --image-opts -c 'read -P 0xb1 1M 1M' "driver=rbd,filename=rbd:rbd/a:conf=$C" >/dev/null
must "$VBD_IO" -c 'read -P 0xb1 1M 1M' \
    "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"rbd\",\"pool\":\"rbd\",\"image\":\"a\",\"conf\":\"$C\"}}" >/dev/null
must rbdc namespace create rbd/ns1
must rbdc create --size 8M rbd/ns1/b
must qemu-io -f raw -c 'write -P 0xd1 0 64k' "rbd:rbd/ns1/b:conf=$C" >/dev/null
must "$VBD_IO" -f raw -c 'read -P 0xd1 0 64k' -c 'write -P 0xd2 64k 64k' "rbd:rbd/ns1/b:conf=$C" >/dev/null
must qemu-io -f raw -c 'read -P 0xd2 64k 64k' \
    "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"rbd\",\"pool\":\"rbd\",\"namespace\":\"ns1\",\"image\":\"b\",\"conf\":\"$C\"}}" >/dev/null
# the same image name outside the namespace does not exist
must_fail_with "error reading header from b" "$VBD_IO" -f raw -c 'read 0 1' "$(R b)"
# id= is the client name (client.admin is what the rbd tool uses)
must "$VBD_IO" -f raw -c 'read -P 0xa1 0 4k' "rbd:rbd/a:id=admin:conf=$C" >/dev/null

step "cephx: a user whose key is only in a secret object (key-secret), base64 or raw bytes from a file"
ceph_cli auth get-or-create client.vbd mon 'profile rbd' osd 'profile rbd pool=rbd' >/dev/null || fail "auth get-or-create"
vkey=$(ceph_cli auth print-key client.vbd) || fail "no key for client.vbd"
printf '%s' "$vkey" | base64 -d >vbd.key
vo() { echo "driver=raw,file.driver=rbd,file.pool=rbd,file.image=a,file.conf=$C,file.user=vbd$1"; }
# the keyring the config names has no key for client.vbd
must_fail_with "error connecting: Permission denied" "$VBD_IO" -f raw -c 'read 0 1' "rbd:rbd/a:conf=$C:id=vbd"
must "$VBD_IO" --object "secret,id=k0,data=$vkey,format=base64" --image-opts -c 'read -P 0xa1 0 1M' \
    -c 'write -P 0xa3 4M 64k' "$(vo ,file.key-secret=k0)" >/dev/null
must "$VBD_IO" --object "secret,id=k1,file=$T/vbd.key" --image-opts -c 'read -P 0xa3 4M 64k' \
    "$(vo ,file.key-secret=k1)" >/dev/null
must qemu-io --object "secret,id=k0,data=$vkey,format=base64" --image-opts -c 'read -P 0xa3 4M 64k' \
    "$(vo ,file.key-secret=k0)" >/dev/null
must_fail_with "error connecting: Permission denied" "$VBD_IO" \
    --object "secret,id=k2,data=$(ceph-authtool --gen-print-key),format=base64" --image-opts -c 'read 0 1' \
    "$(vo ,file.key-secret=k2)"
must_fail_with "No secret with id 'k9'" "$VBD_IO" --image-opts -c 'read 0 1' "$(vo ,file.key-secret=k9)"
must_fail_with "Base64 data contains invalid characters" "$VBD_IO" --object "secret,id=k3,data=not*base64,format=base64" \
    --image-opts -c 'read 0 1' "$(vo ,file.key-secret=k3)"

step "create, info (object size, features), convert qcow2 -> rbd -> raw, map skips holes"
out=$("$VBD_IMG" create -f raw -o cluster_size=1M "$(R c)" 32M 2>&1) || fail "create: $out"
rbdc info c | grep -q "order 20 (1 MiB objects)" || fail "rbd info after create: $(rbdc info c)"
rbdc info c | grep -q "size 32 MiB" || fail "rbd info size: $(rbdc info c)"
must_fail_with "obj size needs to be power of 2" "$VBD_IMG" create -f raw -o cluster_size=3M "$(R c2)" 32M
must_fail_with "error rbd create: File exists" "$VBD_IMG" create -f raw "$(R c)" 32M
"$VBD_IMG" info --output=json "$(R c)" >info.json || fail "info"
python3 - info.json <<'EOF' || fail "info: $(cat info.json)"
import json, sys
i = json.load(open(sys.argv[1]))
assert i["virtual-size"] == 32 << 20 and i["cluster-size"] == 1 << 20, i
d = i["format-specific"]["data"]
assert i["format-specific"]["type"] == "rbd" and d["object-size"] == 1 << 20 and d["image"] == "c", d
assert "layering" in d["features"] and "fast-diff" in d["features"], d
EOF
qemu-img info "$(R c)" | grep -q "cluster_size: 1048576" || fail "qemu-img info of the created image"
mixed_data src.raw 7 && truncate -s 24M src.raw # 6 MiB of data, zero runs, then a hole
dd if=/dev/urandom of=src.raw bs=1M seek=17 count=2 conv=notrunc status=none
must qemu-img convert -f raw -O qcow2 src.raw src.qcow2
must "$VBD_IMG" convert -f qcow2 -O raw -o cluster_size=64k src.qcow2 "$(R conv)"
must qemu-img compare -q -f qcow2 -F raw src.qcow2 "$(R conv)"
must "$VBD_IMG" convert -f raw -O raw "$(R conv)" back.raw
must qemu-img compare -q -f raw -F raw src.raw back.raw
"$VBD_IMG" map --output=json -f raw "$(R conv)" >v.map || fail "map"
qemu-img map --output=json -f raw "$(R conv)" >q.map || fail "qemu-img map"
cmp -s v.map q.map || fail "map differs from qemu-img's: $(diff v.map q.map | head)"
grep -q '"data": false' v.map || fail "map shows no hole: $(cat v.map)"
# the converted copy only allocated the objects that hold data
used=$(rbdc du conv 2>/dev/null | awk '$1 == "conv" {print $4, $5}')
echo "rbd du of the converted image: $used (source: 24 MiB with holes)"

step "write-zeroes and discard"
must rbdc create --size 16M --object-size 64K z
must qemu-io -f raw -c 'write -P 0xe1 0 1M' "$(R z)" >/dev/null
must "$VBD_IO" -f raw -c 'write -z -u 0 256k' -c 'write -z 512k 64k' -c 'discard 768k 128k' "$(R z)" >/dev/null
must qemu-io -f raw -c 'read -P 0 0 256k' -c 'read -P 0xe1 256k 256k' -c 'read -P 0 512k 64k' \
    -c 'read -P 0xe1 576k 192k' -c 'read -P 0 768k 128k' -c 'read -P 0xe1 896k 128k' "$(R z)" >/dev/null
"$VBD_IMG" map --output=json -f raw "$(R z)" >z.map || fail "map z"
python3 - z.map <<'EOF' || fail "map after zeroing: $(cat z.map)"
import json, sys
m = json.load(open(sys.argv[1]))
def at(o): return next(e for e in m if e["start"] <= o < e["start"] + e["length"])
assert not at(0)["data"] and at(0)["zero"], at(0)             # unmapped zeroes: a hole
assert at(256 << 10)["data"], at(256 << 10)
assert at(512 << 10)["data"], at(512 << 10)                   # zeroes without unmap stay allocated
assert not at(800 << 10)["data"], at(800 << 10)               # discarded whole objects
assert not at(8 << 20)["data"], at(8 << 20)                   # never written
EOF

step "resize"
must "$VBD_IMG" resize -f raw "$(R z)" 40M >/dev/null
qemu-img info "$(R z)" | grep -q "virtual size: 40 MiB" || fail "size after resize: $(qemu-img info "$(R z)")"
must "$VBD_IMG" resize -f raw --shrink "$(R z)" 8M >/dev/null
[ "$(rbdc info z | grep -o 'size [0-9]* MiB')" = "size 8 MiB" ] || fail "rbd info after shrink: $(rbdc info z)"

step "snapshots: -c/-l/-a/-d as qemu-img, and a read-only snapshot open"
must "$VBD_IMG" snapshot -f raw -c s1 "$(R a)"
must qemu-io -f raw -c 'write -P 0xf1 0 1M' "$(R a)" >/dev/null
"$VBD_IMG" snapshot -f raw -l "$(R a)" >l.out || fail "snapshot -l"
grep -q "^s1 *s1 *64 MiB" l.out || fail "snapshot -l: $(cat l.out)"
qemu-img snapshot -l "$(R a)" 2>/dev/null | grep -q "^s1 " || fail "qemu-img does not see s1"
must qemu-img snapshot -c s2 "$(R a)" 2>/dev/null
"$VBD_IMG" info -f raw "$(R a)" | grep -q "^s2 " || fail "vbd-img info lists no snapshots: $("$VBD_IMG" info -f raw "$(R a)")"
"$VBD_IMG" snapshot -f raw -l "$(R a)" | grep -q "^s2 " || fail "vbd-img does not see QEMU's s2"
must "$VBD_IO" -r -f raw -c 'read -P 0xa1 0 1M' "rbd:rbd/a@s1:conf=$C" >/dev/null
must "$VBD_IO" -r --image-opts -c 'read -P 0xf1 0 1M' \
    "driver=raw,file.driver=rbd,file.pool=rbd,file.image=a,file.snapshot=s2,file.conf=$C" >/dev/null
must_fail_with "rbd snapshots are read-only" "$VBD_IO" -f raw -c 'read 0 1' "rbd:rbd/a@s1:conf=$C"
must_fail_with "error reading header from a" "$VBD_IO" -r -f raw -c 'read 0 1' "rbd:rbd/a@nosuch:conf=$C"
must "$VBD_IMG" snapshot -f raw -a s1 "$(R a)"
must qemu-io -f raw -c 'read -P 0xa1 0 1M' "$(R a)" >/dev/null
must "$VBD_IMG" snapshot -f raw -d s1 "$(R a)"
must "$VBD_IMG" snapshot -f raw -d s2 "$(R a)"
[ -z "$(rbdc snap ls a)" ] || fail "snapshots left: $(rbdc snap ls a)"

step "a qcow2 on rbd, made by vbd-img, checked and read by QEMU"
must "$VBD_IMG" create -q -f qcow2 "$(R q)" 64M
must "$VBD_IO" -f qcow2 -c 'write -P 0x51 0 1M' -c 'write -P 0x52 40M 3M' "$(R q)" >/dev/null
qcheck -f qcow2 "$(R q)"
must qemu-io -f qcow2 -c 'read -P 0x51 0 1M' -c 'read -P 0x52 40M 3M' -c 'write -P 0x53 8M 64k' "$(R q)" >/dev/null
must "$VBD_IO" -f qcow2 -c 'read -P 0x53 8M 64k' -c 'read -P 0 9M 1M' "$(R q)" >/dev/null
must "$VBD_IMG" check -f qcow2 "$(R q)" >/dev/null

step "an NBD export of an rbd node (vbd-daemon, cephx key from a secret object), read and written by qemu-io, block status by nbdinfo"
S=$T/nbd.sock
start_daemon --object "secret,id=k0,data=$vkey,format=base64" \
    --blockdev "driver=rbd,node-name=r0,pool=rbd,image=z,conf=$C,user=vbd,key-secret=k0" \
    --blockdev "driver=raw,node-name=d0,file=r0" \
    --nbd-server "addr.type=unix,addr.path=$S" --export "type=nbd,id=n0,node-name=d0,name=disk,writable=on"
must qemu-io -f raw -c 'read -P 0 0 256k' -c 'read -P 0xe1 256k 256k' -c 'write -P 0x71 2M 64k' \
    "nbd+unix:///disk?socket=$S" >/dev/null
nbdinfo --map "nbd+unix:///disk?socket=$S" >nbd.map || fail "nbdinfo --map"
grep -q "hole,zero" nbd.map || fail "no hole in the export's map: $(cat nbd.map)"
awk '$1 == 2097152 || ($1 < 2097152 && $1 + $2 > 2097152)' nbd.map | grep -q "data" || fail "written range not data: $(cat nbd.map)"
stop_daemon
must qemu-io -f raw -c 'read -P 0x71 2M 64k' "$(R z)" >/dev/null

step "the model-based stress test (tests/stress/vbd-stress) on rbd: in process, NBD (4 connections), vhost-user-blk (4 queues on 2 iothreads), qcow2 on rbd"
need_stress
head -c 3M /dev/urandom >init.raw && truncate -s 8M init.raw
n=0
for tr in lib nbd vhost qcow2; do
    n=$((n + 1)) fmt=raw
    if [ $tr = qcow2 ]; then
        fmt=qcow2
        must "$VBD_IMG" create -q -f qcow2 -o cluster_size=64k "$(R st$n)" 8M
    else
        must "$VBD_IMG" create -q -f raw -o cluster_size=64k "$(R st$n)" 8M
    fi
    must qemu-img convert -n -f raw -O $fmt init.raw "$(R st$n)"
    stress=(timeout -k 10 600 "$STRESS" --seed $((300 + n)) --ops 1500 --cluster-size 65536 --init init.raw
            --shadow-out shadow.raw)
    node=(--blockdev "driver=rbd,node-name=r0,pool=rbd,image=st$n,conf=$C,discard=unmap"
          --blockdev "driver=raw,node-name=d0,file=r0,discard=unmap")
    case $tr in
    lib | qcow2)
        out=$("${stress[@]}" -f $fmt "$(R st$n)" 2>&1) || fail "vbd-stress $tr seed=$((300 + n)): $(echo "$out" | tail -5)" ;;
    nbd)
        start_daemon "${node[@]}" --nbd-server "addr.type=unix,addr.path=$S" \
            --export "type=nbd,id=n0,node-name=d0,name=disk,writable=on"
        out=$("${stress[@]}" --nbd "nbd+unix:///disk?socket=$S" --conns 4 2>&1) ||
            fail "vbd-stress over NBD seed=$((300 + n)): $(echo "$out" | tail -5)"
        stop_daemon ;;
    vhost)
        S=$T/vu.sock
        start_daemon --object iothread,id=io0 --object iothread,id=io1 "${node[@]}" \
            --export "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=$S,writable=on,num-queues=4,iothread.0=io0,iothread.1=io1"
        out=$("${stress[@]}" --vhost-user "$S" --queues 4 2>&1) ||
            fail "vbd-stress over vhost-user seed=$((300 + n)): $(echo "$out" | tail -5)"
        stop_daemon
        S=$T/nbd.sock ;;
    esac
    [ $tr = qcow2 ] && qcheck -f qcow2 "$(R st$n)"
    must qemu-img compare -q -f $fmt -F raw "$(R st$n)" shadow.raw
done

step "bad input: unreachable monitor (bounded, one line), wrong pool, wrong image, bad filenames"
# nothing listens on port 1; the driver's own bound (client_mount_timeout,
# 30 s unless the configuration sets one) is shortened here by the option:
# "error connecting" is the driver's, which ended the attempt (a kill by
# timeout, a hang, prints none); the elapsed time, compared with 50 s
# before, is the host's as much as the driver's
must_fail_with "error connecting" timeout 300 "$VBD_IO" -f raw -c 'read 0 1' \
    "rbd:rbd/a:mon_host=127.0.0.1\\:1:auth_client_required=none:client_mount_timeout=3"
must_fail_with "error opening pool nopool" "$VBD_IO" -f raw -c 'read 0 1' "rbd:nopool/a:conf=$C"
must_fail_with "error reading header from nosuch" "$VBD_IO" -f raw -c 'read 0 1' "$(R nosuch)"
must_fail_with "Pool name is required" "$VBD_IO" -f raw -c 'read 0 1' "rbd:justanimage"
must_fail_with "has no value" "$VBD_IO" -f raw -c 'read 0 1' "rbd:rbd/a:conf"
must_fail_with "error reading conf file /nonexistent.conf" "$VBD_IO" -f raw -c 'read 0 1' "rbd:rbd/a:conf=/nonexistent.conf"
must_fail_with "invalid conf option no_such_option" "$VBD_IO" -f raw -c 'read 0 1' "rbd:rbd/a:conf=$C:no_such_option=1"
must_fail_with "Parameter 'image' is missing" "$VBD_IO" --image-opts -c 'read 0 1' "driver=rbd,pool=rbd,conf=$C"
must_fail_with "Can't use snapshot name for image creation" "$VBD_IMG" create -f raw "rbd:rbd/new@s:conf=$C" 1M

step "fault: SIGKILL the OSD during writes (vbd-io, cache=none), restart it: no acknowledged write lost"
must rbdc create --size 64M --object-size 64K f
# 120 writes of 256 KiB, paced by the tools' own sleep command so that the
# OSD dies while most of them are still to come
nw=120
args=() ver=()
for i in $(seq 0 $((nw - 1))); do
    args+=(-c "write -P $((i + 1)) $((i * 262144)) 262144" -c "sleep 10")
    ver+=(-c "read -P $((i + 1)) $((i * 262144)) 262144")
done
: >fault.out
"$VBD_IO" -t none -f raw "${args[@]}" "$(R f)" >fault.out 2>&1 &
wpid=$!
for _ in $(seq 600); do [ "$(grep -c '^wrote' fault.out)" -ge 20 ] && break; kill -0 $wpid 2>/dev/null || break; sleep 0.05; done
done_before=$(grep -c '^wrote' fault.out)
ceph_osd_kill9
after_kill=$(grep -c '^wrote' fault.out)
ceph_osd_start
wait $wpid || fail "vbd-io failed across the OSD restart: $(tail -3 fault.out)"
echo "writes acknowledged: $done_before before the kill, $after_kill when the OSD was gone, $(grep -c '^wrote' fault.out) at the end of $nw"
[ "$after_kill" -lt $nw ] || fail "the writes were over before the OSD was killed (nothing tested)"
[ "$(grep -c '^wrote' fault.out)" = $nw ] || fail "not every write acknowledged: $(tail -3 fault.out)"
must qemu-io -f raw "${ver[@]}" "$(R f)" >/dev/null

step "fault through an export: qemu-io writes over NBD to vbd-daemon's rbd node, the OSD killed and restarted"
must rbdc create --size 64M --object-size 64K g
start_daemon --blockdev "driver=rbd,node-name=r0,pool=rbd,image=g,conf=$C,cache.direct=on" \
    --blockdev "driver=raw,node-name=d0,file=r0" \
    --nbd-server "addr.type=unix,addr.path=$S" --export "type=nbd,id=n0,node-name=d0,name=disk,writable=on"
: >fault2.out
stdbuf -oL qemu-io -f raw "${args[@]}" "nbd+unix:///disk?socket=$S" >fault2.out 2>&1 &
wpid=$!
for _ in $(seq 600); do [ "$(grep -c '^wrote' fault2.out)" -ge 20 ] && break; kill -0 $wpid 2>/dev/null || break; sleep 0.05; done
ceph_osd_kill9
after_kill=$(grep -c '^wrote' fault2.out)
ceph_osd_start
wait $wpid || fail "qemu-io over NBD failed across the OSD restart: $(tail -3 fault2.out)"
[ "$after_kill" -lt $nw ] || fail "the writes were over before the OSD was killed (nothing tested)"
[ "$(grep -c '^wrote' fault2.out)" = $nw ] || fail "not every write acknowledged: $(tail -3 fault2.out)"
must qemu-io -f raw "${ver[@]}" "nbd+unix:///disk?socket=$S" >/dev/null
stop_daemon
must qemu-io -f raw "${ver[@]}" "$(R g)" >/dev/null
echo ok
