#!/bin/bash
# nbds:// and nbds+unix:// URIs in vbd's NBD client (TLS required, libnbd's
# query parameters or QEMU's tls-creds=ID): vbd-img info/map/convert, vbd-io
# and vbd-daemon --blockdev file.filename= against qemu-nbd --tls-creds
# (x509, client certificates checked) and nbdkit --tls=require (x509 and
# PSK). The host name is checked; a plaintext server, a wrong CA and bad
# query parameters are one-line errors; an nbd:// URI never does TLS.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io qemu-nbd nbdkit certtool psktool
cd "$T"

step "credentials and servers: qemu-nbd x509 (unix + TCP), nbdkit x509 and PSK, a plaintext qemu-nbd"
gen_pki "$T/pki"
gen_pki "$T/other"
mkdir psk
psktool -u alice -p psk/keys.psk >/dev/null 2>&1 || fail "psktool"
me=$(id -un)
psktool -u "$me" -p psk/keys.psk >/dev/null 2>&1 || fail "psktool $me"
SRV="tls-creds-x509,id=tls0,dir=$T/pki/server,endpoint=server,verify-peer=on"
qemu-img create -q -f raw disk.raw 64M
must qemu-io -f raw -c "write -P 0x71 1M 2M" -c "write -P 0x72 20M 64k" disk.raw >/dev/null
port=$(free_port 4) || fail "no free TCP port"
kport=$((port + 1))
qemu-nbd --object "$SRV" --tls-creds tls0 -f raw -k "$T/qn.sock" -x exp --persistent --shared=8 disk.raw 2>qn.log &
qn=$!
qemu-nbd --object "$SRV" --tls-creds tls0 -f raw -b 127.0.0.1 -p $port -x exp --persistent --shared=8 disk.raw 2>qt.log &
qt=$!
nbdkit -f -i 127.0.0.1 -p $kport --tls=require --tls-certificates="$T/pki/server" memory 16M 2>nk.log &
nk=$!
nbdkit -f -U "$T/nkp.sock" --tls=require --tls-psk="$T/psk/keys.psk" memory 16M 2>nkp.log &
nkp=$!
qemu-nbd -f raw -k "$T/plain.sock" -x exp --persistent --shared=8 -r disk.raw 2>plain.log &
plain=$!
on_exit "kill $qn $qt $nk $nkp $plain 2>/dev/null"
wait_sock qn.sock $qn qn.log; wait_sock nkp.sock $nkp nkp.log; wait_sock plain.sock $plain plain.log
wait_port $port $qt qt.log; wait_port $kport $nk nk.log
CLI="tls-creds-x509,id=tls0,dir=$T/pki/client,endpoint=client"
QU="nbds+unix:///exp?socket=$T/qn.sock&tls-certificates=$T/pki/client"
QT="nbds://localhost:$port/exp?tls-certificates=$T/pki/client"
QOPTS="driver=nbd,server.type=unix,server.path=$T/qn.sock,export=exp,tls-creds=tls0,tls-hostname=localhost"

step "vbd-img info/map/convert and vbd-io on nbds+unix:// and nbds:// (qemu-nbd, x509)"
for uri in "$QU" "$QT"; do
    out=$("$VBD_IMG" info "$uri" 2>&1) || fail "vbd-img info $uri: $out"
    echo "$out" | grep -q "virtual size: 64 MiB" || fail "vbd-img info $uri: $out"
    "$VBD_IMG" map --output=json -f raw "$uri" >v.map 2>&1 || fail "vbd-img map $uri: $(cat v.map)"
    qemu-img map --output=json --object "$CLI" --image-opts "driver=raw,file.${QOPTS//,/,file.}" >q.map 2>&1
    diff -u q.map v.map || fail "vbd-img map of $uri differs from qemu-img's"
done
must "$VBD_IO" -f raw -c "write -P 0x73 30M 1M" -c "read -P 0x71 1M 2M" "$QU" >/dev/null
must "$VBD_IO" -f raw -c "read -P 0x73 30M 1M" -c "write -P 0x74 31M 64k" "$QT" >/dev/null
must qemu-io --object "$CLI" --image-opts "driver=raw,file.${QOPTS//,/,file.}" -r -c "read -P 0x74 31M 64k" >/dev/null
must "$VBD_IMG" convert -f raw -O raw "$QT" copy.raw
must cmp copy.raw disk.raw
# 127.0.0.1 is in the server certificate too; another name is not
must "$VBD_IO" -f raw -r -c "read -P 0x72 20M 64k" "nbds://127.0.0.1:$port/exp?tls-certificates=$T/pki/client" >/dev/null
must_fail_with "does not match" timeout 120 "$VBD_IO" -f raw -r -c "read 0 4k" \
    "nbds://127.0.0.1:$port/exp?tls-certificates=$T/pki/client&tls-hostname=nbd.example.org"
must_fail_with "certificate issuer is unknown" timeout 120 "$VBD_IO" -f raw -r -c "read 0 4k" \
    "nbds://localhost:$port/exp?tls-certificates=$T/other/client"

step "tls-creds=ID names an --object (QEMU's way) in the URI"
must "$VBD_IO" --object "$CLI" -f raw -r -c "read -P 0x73 30M 1M" \
    "nbds+unix:///exp?socket=$T/qn.sock&tls-creds=tls0&tls-hostname=localhost" >/dev/null
must_fail_with "No TLS credentials with id 'tls9'" "$VBD_IO" -f raw -r -c "read 0 1" \
    "nbds+unix:///exp?socket=$T/qn.sock&tls-creds=tls9"

step "the node's filename keeps nbds:// and its parameters, and opens again as it is"
"$VBD_IMG" info --output=json --image-opts \
    "driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=$T/qn.sock,file.export=exp,file.tls-certificates=$T/pki/client" >i.json 2>&1 ||
    fail "vbd-img info --image-opts with tls-certificates: $(cat i.json)"
fn=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["filename"])' i.json)
[ "$fn" = "$QU" ] || fail "filename is '$fn', expected '$QU'"
must "$VBD_IO" -f raw -r -c "read -P 0x73 30M 1M" "$fn" >/dev/null

step "vbd-daemon --blockdev file.filename=nbds+unix://... (file= alone names a node, as in QEMU) re-exports qemu-nbd's TLS export in plaintext"
"$VBD_DAEMON" --blockdev "driver=raw,node-name=r0,file.filename=$QU" --nbd-server addr.type=unix,addr.path="$T/re.sock" \
    --export type=nbd,id=e0,node-name=r0,name=re 2>re.log &
rpid=$!
on_exit "kill $rpid 2>/dev/null"
wait_sock re.sock "$rpid" re.log
must qemu-io -f raw -r -c "read -P 0x74 31M 64k" "nbd+unix:///re?socket=$T/re.sock" >/dev/null
kill -TERM $rpid; wait $rpid || fail "vbd-daemon exit status $?: $(tail -20 re.log)"

step "without credentials: libnbd's default directory, else the system's CAs (which do not know this CA)"
mkdir -p home/.pki
must_fail_with "trusts the system's CAs only" env HOME="$T/home" timeout 120 "$VBD_IO" -f raw -r -c "read 0 4k" \
    "nbds://localhost:$port/exp"
if [ "$(id -u)" != 0 ]; then
    cp -r pki/client home/.pki/libnbd
    must env HOME="$T/home" "$VBD_IO" -f raw -r -c "read -P 0x72 20M 64k" "nbds://localhost:$port/exp" >/dev/null
else
    echo "(as root libnbd's default directory is /etc/pki/libnbd, which a test does not write)"
fi

step "nbdkit --tls=require: x509 (tls-verify-peer=false skips the server check) and PSK"
must "$VBD_IO" -f raw -c "write -P 0x75 0 1M" -c "read -P 0x75 0 1M" \
    "nbds://localhost:$kport/?tls-certificates=$T/pki/client" >/dev/null
must_fail_with "certificate issuer is unknown" timeout 120 "$VBD_IO" -f raw -r -c "read 0 4k" \
    "nbds://localhost:$kport/?tls-certificates=$T/other/client"
must "$VBD_IO" -f raw -r -c "read -P 0x75 0 1M" \
    "nbds://localhost:$kport/?tls-certificates=$T/other/client&tls-verify-peer=false" >/dev/null
must "$VBD_IO" -f raw -c "write -P 0x76 0 1M" "nbds+unix://alice@/?socket=$T/nkp.sock&tls-psk-file=$T/psk/keys.psk" >/dev/null
must "$VBD_IO" -f raw -r -c "read -P 0x76 0 1M" \
    "nbds+unix:///?socket=$T/nkp.sock&tls-psk-file=$T/psk/keys.psk&tls-username=alice" >/dev/null
# no username: the login name, as libnbd
must "$VBD_IO" -f raw -r -c "read -P 0x76 0 1M" "nbds+unix:///?socket=$T/nkp.sock&tls-psk-file=$T/psk/keys.psk" >/dev/null
out=$("$VBD_IMG" info "nbds+unix:///?socket=$T/nkp.sock&tls-psk-file=$T/psk/keys.psk") || fail "vbd-img info PSK: $out"
echo "$out" | grep -q "virtual size: 16 MiB" || fail "vbd-img info PSK: $out"
must_fail_with "username 'bob' not found" "$VBD_IO" -f raw -r -c "read 0 4k" \
    "nbds+unix://bob@/?socket=$T/nkp.sock&tls-psk-file=$T/psk/keys.psk"

step "never plaintext: nbds:// against a server without TLS fails; nbd:// against a TLS server does not try TLS"
must_fail_with "the NBD server does not accept TLS" timeout 120 "$VBD_IO" -f raw -r -c "read 0 4k" \
    "nbds+unix:///exp?socket=$T/plain.sock&tls-certificates=$T/pki/client"
must_fail_with "requires TLS" timeout 120 "$VBD_IO" -f raw -r -c "read 0 4k" "nbd+unix:///exp?socket=$T/qn.sock"
must_fail_with "requires TLS" timeout 120 "$VBD_IMG" info "nbd://localhost:$port/exp"

step "bad URIs: one-line errors naming the URI"
B="nbds+unix:///exp?socket=$T/qn.sock"
must_fail_with "unknown query parameter 'tls-certificate'" "$VBD_IMG" info "$B&tls-certificate=$T/pki/client"
must_fail_with "'tls-certificates' is given twice" "$VBD_IMG" info "$B&tls-certificates=/a&tls-certificates=/b"
must_fail_with "'tls-psk-file' needs a value" "$VBD_IMG" info "$B&tls-psk-file="
must_fail_with "tls-certificates= is for nbds:// URIs (an nbd:// URI never uses TLS)" "$VBD_IMG" info \
    "nbd+unix:///exp?socket=$T/qn.sock&tls-certificates=$T/pki/client"
must_fail_with "give one" "$VBD_IMG" info "$B&tls-certificates=$T/pki/client&tls-psk-file=$T/psk/keys.psk"
must_fail_with "tls-username is the PSK username" "$VBD_IMG" info "$B&tls-certificates=$T/pki/client&tls-username=x"
must_fail_with "nbd+unix needs ?socket=PATH" "$VBD_IMG" info "nbds+unix:///exp"
must_fail_with "bad port '70000'" "$VBD_IMG" info "nbds://localhost:70000/exp"
must_fail_with "bad percent-encoding" "$VBD_IMG" info "nbds://localhost/e%zz"
must_fail_with "Unable to access credentials $T/none/ca-cert.pem" "$VBD_IMG" info "$B&tls-certificates=$T/none"
must_fail_with "tls-psk-file=$T/none.psk: No such file" "$VBD_IMG" info "$B&tls-psk-file=$T/none.psk"
echo OK
