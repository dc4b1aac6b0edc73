#!/bin/bash
# NBD over TLS, both ways: vbd-daemon's server with tls-creds (x509 with
# client certificates, and PSK) read and written by qemu-img/qemu-io,
# nbdinfo (nbds://) and vbd's own client; vbd's nbd client against
# qemu-nbd --tls-creds and nbdkit --tls=require (x509 and PSK), with
# reconnect redoing TLS. Refusals: a plaintext client (NBD_REP_ERR_TLS_REQD
# on the wire), a certificate from another CA (both directions), a client
# without a certificate, a wrong host name, a wrong PSK key: each fails at
# once with a clear one-line error. Credentials are made here with
# certtool and psktool.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io qemu-nbd nbdkit nbdinfo certtool psktool python3
cd "$T"

step "credentials: a CA with server and client certificates, another CA, PSK keys"
gen_pki "$T/pki"
gen_pki "$T/other"
mkdir -p nocert psk-srv psk-cli psk-bad
cp pki/ca-cert.pem nocert/
psktool -u alice -p psk-srv/keys.psk >/dev/null 2>&1 || fail "psktool"
grep '^alice:' psk-srv/keys.psk >psk-cli/keys.psk
psktool -u alice -p psk-bad/keys.psk >/dev/null 2>&1
SRV_X509="tls-creds-x509,id=tls0,dir=$T/pki/server,endpoint=server,verify-peer=on"
CLI_X509="tls-creds-x509,id=tls0,dir=$T/pki/client,endpoint=client"
CLI_OTHER="tls-creds-x509,id=tls0,dir=$T/other/client,endpoint=client"
SRV_PSK="tls-creds-psk,id=tls0,dir=$T/psk-srv,endpoint=server"
CLI_PSK="tls-creds-psk,id=tls0,dir=$T/psk-cli,endpoint=client,username=alice"

qemu-img create -q -f raw disk.raw 64M
must qemu-io -f raw -c "write -P 0x42 1M 2M" -c "write -P 0x43 10M 64k" disk.raw >/dev/null

step "vbd-daemon: x509 server (client certificates required) on a unix socket and TCP"
port=$(free_port 4) || fail "no free TCP port"
"$VBD_DAEMON" --object "$SRV_X509" --blockdev driver=file,node-name=n0,filename=disk.raw \
    --nbd-server addr.type=unix,addr.path="$T/vbd.sock",tls-creds=tls0 \
    --export type=nbd,id=e0,node-name=n0,name=exp,writable=on 2>daemon.log &
dpid=$!
on_exit "kill $dpid 2>/dev/null"
wait_sock vbd.sock "$dpid" daemon.log
U="driver=nbd,server.type=unix,server.path=$T/vbd.sock,export=exp,tls-creds=tls0,tls-hostname=localhost"
RAWU="driver=raw,file.${U//,/,file.}"
out=$(qemu-img info --object "$CLI_X509" --image-opts "$U" 2>&1) || fail "qemu-img info over TLS: $out"
echo "$out" | grep -q "virtual size: 64 MiB" || fail "qemu-img info over TLS: $out"
must qemu-img compare --object "$CLI_X509" --image-opts "$RAWU" "driver=raw,file.driver=file,file.filename=disk.raw"
must qemu-io --object "$CLI_X509" --image-opts "$RAWU" -c "read -P 0x42 1M 2M" -c "write -P 0x44 20M 1M" \
    -c "write -z 1M 64k" -c "aio_write -P 0x45 30M 64k" -c aio_flush >/dev/null
must "$VBD_IO" --object "$CLI_X509" --image-opts "$U" -c "read -P 0x44 20M 1M" -c "read -P 0 1M 64k" \
    -c "read -P 0x45 30M 64k" -c "read -P 0x42 2M 64k" -c "write -P 0x46 40M 4M" -c flush >/dev/null
must qemu-io --object "$CLI_X509" --image-opts "$RAWU" -r -c "read -P 0x46 40M 4M" >/dev/null
"$VBD_IMG" info --object "$CLI_X509" --output=json --image-opts "$U" >v.json 2>&1 || fail "vbd-img info: $(cat v.json)"
qemu-img info --object "$CLI_X509" --output=json --image-opts "$U" >q.json 2>&1
diff -u q.json v.json || fail "vbd-img info over TLS differs from qemu-img's"
"$VBD_IMG" map --object "$CLI_X509" --output=json --image-opts "$U" >v.map 2>&1 || fail "vbd-img map: $(cat v.map)"
qemu-img map --object "$CLI_X509" --output=json --image-opts "$U" >q.map 2>&1
diff -u q.map v.map || fail "vbd-img map over TLS differs from qemu-img's"

step "nbdinfo nbds+unix:// (libnbd's TLS) reads the export and its map"
NB="nbds+unix:///exp?socket=$T/vbd.sock&tls-certificates=$T/pki/client"
out=$(nbdinfo "$NB" 2>&1) || fail "nbdinfo over TLS: $out"
echo "$out" | grep -q "with TLS" || fail "nbdinfo did not use TLS: $out"
echo "$out" | grep -q "export-size: 67108864" || fail "nbdinfo size: $out"
nbdinfo --map "$NB" | grep -q "hole,zero" || fail "nbdinfo --map over TLS shows no hole"
must nbdcopy "$NB" copy1.raw
must cmp copy1.raw disk.raw

step "plaintext clients are refused (NBD_REP_ERR_TLS_REQD), the server keeps serving"
must_fail_with "requires TLS" "$VBD_IO" -c "read 0 4k" "nbd+unix:///exp?socket=$T/vbd.sock"
out=$(timeout 120 qemu-img info "nbd+unix:///exp?socket=$T/vbd.sock" 2>&1) && fail "plaintext qemu-img got in: $out"
echo "$out" | grep -q "TLS" || fail "qemu-img's error does not mention TLS: $out"
out=$(timeout 120 nbdinfo "nbd+unix:///exp?socket=$T/vbd.sock" 2>&1) && fail "plaintext nbdinfo got in: $out"
# on the wire: LIST and GO get ERR_TLS_REQD, STARTTLS with data ERR_INVALID, EXPORT_NAME closes
python3 - "$T/vbd.sock" <<'EOF' || fail "raw protocol check of the TLS-only server"
import socket, struct, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(10)
def rd(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c: raise SystemExit("closed early")
        b += c
    return b
assert rd(18)[:16] == b"NBDMAGICIHAVEOPT"
s.sendall(struct.pack(">I", 3))                           # fixed newstyle, no zeroes
def opt(o, data=b""):
    s.sendall(struct.pack(">QII", 0x49484156454F5054, o, len(data)) + data)
    magic, ro, typ, ln = struct.unpack(">QIII", rd(20)); rd(ln)
    assert magic == 0x3e889045565a9 and ro == o, (magic, ro)
    return typ
assert opt(3) == 0x80000005, "LIST before TLS"             # NBD_REP_ERR_TLS_REQD
assert opt(7, struct.pack(">I", 3) + b"exp" + struct.pack(">H", 0)) == 0x80000005, "GO before TLS"
assert opt(8) == 0x80000005, "STRUCTURED_REPLY before TLS"
assert opt(5, b"x") == 0x80000003, "STARTTLS with data"   # NBD_REP_ERR_INVALID
s.sendall(struct.pack(">QII", 0x49484156454F5054, 1, 3) + b"exp")   # EXPORT_NAME without TLS
assert s.recv(1) == b"", "EXPORT_NAME without TLS must close"
EOF
must "$VBD_IO" --object "$CLI_X509" --image-opts "$U" -r -c "read -P 0x44 20M 1M" >/dev/null

step "refusals: another CA, no client certificate, wrong host name; clear errors, no hang"
must_fail_with "certificate issuer is unknown" timeout 120 "$VBD_IO" --object "$CLI_OTHER" --image-opts "$U" -c "read 0 4k"
out=$(timeout 120 qemu-img info --object "$CLI_OTHER" --image-opts "$U" 2>&1); rc=$?
[ $rc != 124 ] || fail "qemu-img with another CA hung"
[ $rc != 0 ] || fail "qemu-img with another CA got in"
echo "$out" | grep -qi "issuer\|certificate" || fail "qemu-img's error with another CA: $out"
out=$(timeout 120 nbdinfo "nbds+unix:///exp?socket=$T/vbd.sock&tls-certificates=$T/other/client" 2>&1) &&
    fail "nbdinfo with another CA got in"
echo "$out" | grep -qi "certificate\|alert" || fail "nbdinfo's error with another CA: $out"
must_fail_with "Certificate is required" timeout 120 "$VBD_IO" \
    --object "tls-creds-x509,id=tls0,dir=$T/nocert,endpoint=client" --image-opts "$U" -c "read 0 4k"
must_fail_with "does not match" timeout 120 "$VBD_IO" --object "$CLI_X509" --image-opts "${U/tls-hostname=localhost/tls-hostname=nbd.example.org}" -c "read 0 4k"
# a client whose certificate is from another CA offers none (TLS 1.3 names the accepted CAs)
grep -q "Certificate is required\|certificate is not accepted" daemon.log ||
    fail "the server did not log the refused client: $(cat daemon.log)"
must "$VBD_IO" --object "$CLI_X509" --image-opts "$U" -r -c "read -P 0x44 20M 1M" >/dev/null
kill -TERM $dpid; wait $dpid || fail "vbd-daemon exit status $? (sanitizer report?): $(tail -20 daemon.log)"

step "vbd-daemon over TCP: certificate checked against the address (127.0.0.1 and localhost)"
"$VBD_DAEMON" --object "$SRV_X509" --blockdev driver=file,node-name=n0,filename=disk.raw \
    --nbd-server addr.type=inet,addr.host=127.0.0.1,addr.port=$port,tls-creds=tls0 \
    --export type=nbd,id=e0,node-name=n0,name=exp,writable=on 2>daemon-tcp.log &
dpid=$!
on_exit "kill $dpid 2>/dev/null"
wait_port $port "$dpid" daemon-tcp.log
for host in 127.0.0.1 localhost; do
    I="driver=nbd,server.type=inet,server.host=$host,server.port=$port,export=exp,tls-creds=tls0"
    must qemu-io --object "$CLI_X509" --image-opts "driver=raw,file.${I//,/,file.}" -r -c "read -P 0x46 40M 4M" >/dev/null
    must "$VBD_IO" --object "$CLI_X509" --image-opts "$I" -r -c "read -P 0x46 40M 4M" >/dev/null
    [ "$(nbdinfo --size "nbds://$host:$port/exp?tls-certificates=$T/pki/client")" = 67108864 ] ||
        fail "nbdinfo nbds://$host"
done
step "64 MiB both ways over TLS (vbd-img convert; qemu-img compare)"
qemu-img create -q -f raw big.raw 64M
must qemu-io -f raw -c "write -P 0x5a 0 24M" -c "write -P 0x5b 40M 24M" big.raw >/dev/null
I="driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$port,export=exp,tls-creds=tls0"
t0=$(date +%s.%N)
must "$VBD_IMG" convert --object "$CLI_X509" -n --target-image-opts big.raw "driver=raw,file.${I//,/,file.}"
t1=$(date +%s.%N)
must "$VBD_IMG" convert --object "$CLI_X509" --image-opts "$I" -O raw back.raw
t2=$(date +%s.%N)
must cmp back.raw big.raw
must cmp disk.raw big.raw
echo "vbd-img convert over TLS (ASan build): 64 MiB up $(echo "$t1 - $t0" | bc) s, down $(echo "$t2 - $t1" | bc) s"
kill -TERM $dpid; wait $dpid || fail "vbd-daemon (TCP) exit status $?: $(tail -20 daemon-tcp.log)"

step "vbd-daemon PSK server: qemu-img, nbdinfo, vbd-io get in; a wrong key is refused"
"$VBD_DAEMON" --object "$SRV_PSK" --blockdev driver=file,node-name=n0,filename=disk.raw \
    --nbd-server addr.type=unix,addr.path="$T/psk.sock",tls-creds=tls0 \
    --export type=nbd,id=e0,node-name=n0,name=exp,writable=on 2>daemon-psk.log &
dpid=$!
on_exit "kill $dpid 2>/dev/null"
wait_sock psk.sock "$dpid" daemon-psk.log
P="driver=nbd,server.type=unix,server.path=$T/psk.sock,export=exp,tls-creds=tls0"
must qemu-io --object "$CLI_PSK" --image-opts "driver=raw,file.${P//,/,file.}" -c "write -P 0x47 50M 1M" >/dev/null
must "$VBD_IO" --object "$CLI_PSK" --image-opts "$P" -c "read -P 0x47 50M 1M" -c "read -P 0x5a 0 1M" >/dev/null
[ "$(nbdinfo --size "nbds+unix://alice@/exp?socket=$T/psk.sock&tls-psk-file=$T/psk-cli/keys.psk")" = 67108864 ] ||
    fail "nbdinfo with PSK"
must_fail_with "PSK" timeout 120 "$VBD_IO" --object "tls-creds-psk,id=tls0,dir=$T/psk-bad,endpoint=client,username=alice" \
    --image-opts "$P" -c "read 0 4k"
out=$(timeout 120 qemu-img info --object "tls-creds-psk,id=tls0,dir=$T/psk-bad,endpoint=client,username=alice" \
    --image-opts "$P" 2>&1); rc=$?
[ $rc != 0 ] && [ $rc != 124 ] || fail "qemu-img with a wrong PSK key: rc $rc: $out"
must_fail_with "requires TLS" "$VBD_IO" -c "read 0 4k" "nbd+unix:///exp?socket=$T/psk.sock"
kill -TERM $dpid; wait $dpid || fail "vbd-daemon (PSK) exit status $?: $(tail -20 daemon-psk.log)"

step "vbd as TLS client: qemu-nbd --tls-creds (x509, client certificate checked)"
qemu-nbd --object "$SRV_X509" --tls-creds tls0 -f raw -k "$T/qn.sock" -x exp --persistent --shared=4 disk.raw 2>qn.log &
qpid=$!
on_exit "kill $qpid 2>/dev/null"
wait_sock qn.sock "$qpid" qn.log
Q="driver=nbd,server.type=unix,server.path=$T/qn.sock,export=exp,tls-creds=tls0,tls-hostname=localhost"
must "$VBD_IMG" compare --object "$CLI_X509" --image-opts "driver=raw,file.${Q//,/,file.}" \
    "driver=raw,file.driver=file,file.filename=disk.raw"
must "$VBD_IO" --object "$CLI_X509" --image-opts "$Q" -c "write -P 0x48 60M 1M" -c "aio_write -P 0x49 62M 64k" -c aio_flush >/dev/null
must qemu-io --object "$CLI_X509" --image-opts "driver=raw,file.${Q//,/,file.}" -r -c "read -P 0x48 60M 1M" \
    -c "read -P 0x49 62M 64k" >/dev/null
"$VBD_IMG" map --object "$CLI_X509" --output=json --image-opts "$Q" >v.map 2>&1 || fail "vbd-img map: $(cat v.map)"
qemu-img map --object "$CLI_X509" --output=json --image-opts "$Q" >q.map 2>&1
diff -u q.map v.map || fail "vbd-img map over TLS from qemu-nbd differs from qemu-img's"
must_fail_with "certificate issuer is unknown" timeout 120 "$VBD_IO" --object "$CLI_OTHER" --image-opts "$Q" -c "read 0 4k"
must_fail_with "requires TLS" "$VBD_IO" -c "read 0 4k" "nbd+unix:///exp?socket=$T/qn.sock"

step "reconnect redoes STARTTLS and the TLS handshake (qemu-nbd restarted)"
# reconnect-delay counts from the lost connection (the kill): 60 s for a
# TLS server's restart on a loaded host (10 s ran out at load 38)
io_start rc.out --object "$CLI_X509" --image-opts "$Q,reconnect-delay=60"
io_cmd "read -P 0x48 60M 64k"
io_wait "read 65536/65536"
kill $qpid; wait $qpid 2>/dev/null
qemu-nbd --object "$SRV_X509" --tls-creds tls0 -f raw -k "$T/qn.sock" -x exp --persistent --shared=4 disk.raw 2>qn2.log &
qpid=$!
on_exit "kill $qpid 2>/dev/null"
io_cmd "read -P 0x48 60M 64k" "write -P 0x4a 61M 64k"
io_end
wait $iopid || fail "a read after a TLS server restart failed: $(cat rc.out)"
[ "$(grep -c "read 65536/65536" rc.out)" = 2 ] && grep -q "wrote 65536/65536" rc.out ||
    fail "not two reads and a write across a TLS server restart: $(cat rc.out)"
must qemu-io --object "$CLI_X509" --image-opts "driver=raw,file.${Q//,/,file.}" -r -c "read -P 0x4a 61M 64k" >/dev/null

step "two TLS hops: qemu-img -> vbd-daemon (TLS server, PSK) -> qemu-nbd (TLS, x509)"
"$VBD_DAEMON" --object "$CLI_X509" --object "tls-creds-psk,id=tls1,dir=$T/psk-srv,endpoint=server" \
    --blockdev "$Q,node-name=remote,reconnect-delay=5" \
    --nbd-server addr.type=unix,addr.path="$T/hop.sock",tls-creds=tls1 \
    --export type=nbd,id=e0,node-name=remote,name=hop,writable=on 2>daemon-hop.log &
hpid=$!
on_exit "kill $hpid 2>/dev/null"
wait_sock hop.sock "$hpid" daemon-hop.log
H="driver=nbd,server.type=unix,server.path=$T/hop.sock,export=hop,tls-creds=tls0,tls-hostname=localhost"
must qemu-img compare --object "$CLI_PSK" --image-opts "driver=raw,file.${H//,/,file.}" \
    "driver=raw,file.driver=file,file.filename=disk.raw"
must qemu-io --object "$CLI_PSK" --image-opts "driver=raw,file.${H//,/,file.}" -c "write -P 0x4b 63M 64k" >/dev/null
must qemu-io --object "$CLI_X509" --image-opts "driver=raw,file.${Q//,/,file.}" -r -c "read -P 0x4b 63M 64k" >/dev/null
kill -TERM $hpid; wait $hpid || fail "vbd-daemon (two hops) exit status $?: $(tail -20 daemon-hop.log)"
kill $qpid; wait $qpid 2>/dev/null

step "vbd as TLS client: nbdkit --tls=require, x509 with --tls-verify-peer and PSK"
nbdkit -f -U "$T/nk.sock" --tls=require --tls-certificates="$T/pki/server" --tls-verify-peer memory 32M 2>nk.log &
kpid=$!
on_exit "kill $kpid 2>/dev/null"
nbdkit -f -U "$T/nkp.sock" --tls=require --tls-psk="$T/psk-srv/keys.psk" memory 32M 2>nkp.log &
kppid=$!
on_exit "kill $kppid 2>/dev/null"
wait_sock nk.sock "$kpid" nk.log
wait_sock nkp.sock "$kppid" nkp.log
must "$VBD_IO" --object "$CLI_X509" --image-opts "driver=nbd,server.type=unix,server.path=$T/nk.sock,tls-creds=tls0" \
    -c "write -P 0x51 0 4M" -c "read -P 0x51 0 4M" -c "write -z 1M 1M" -c "read -P 0 1M 1M" -c "discard 2M 1M" >/dev/null
must "$VBD_IO" --object "$CLI_PSK" --image-opts "driver=nbd,server.type=unix,server.path=$T/nkp.sock,tls-creds=tls0" \
    -c "write -P 0x52 0 4M" -c "read -P 0x52 0 4M" >/dev/null
[ "$(nbdinfo --size "nbds+unix:///?socket=$T/nk.sock&tls-certificates=$T/pki/client")" = 33554432 ] || fail "nbdinfo vs nbdkit"
must_fail_with "certificate issuer is unknown" timeout 120 "$VBD_IO" --object "$CLI_OTHER" \
    --image-opts "driver=nbd,server.type=unix,server.path=$T/nk.sock,tls-creds=tls0" -c "read 0 4k"
must_fail_with "PSK" timeout 120 "$VBD_IO" --object "tls-creds-psk,id=tls0,dir=$T/psk-bad,endpoint=client,username=alice" \
    --image-opts "driver=nbd,server.type=unix,server.path=$T/nkp.sock,tls-creds=tls0" -c "read 0 4k"
must_fail_with "requires TLS" "$VBD_IO" -c "read 0 4k" "nbd+unix:///?socket=$T/nk.sock"
kill $kpid $kppid

step "bad input: one-line errors"
must_fail_with "Unable to access credentials $T/none/ca-cert.pem" "$VBD_IO" \
    --object "tls-creds-x509,id=tls0,dir=$T/none,endpoint=client" -c "read 0 1" disk.raw
must_fail_with "server-cert.pem" "$VBD_DAEMON" --object "tls-creds-x509,id=tls0,dir=$T/pki/client,endpoint=server"
must_fail_with "Expecting TLS credentials with a client endpoint" "$VBD_IO" --object "$SRV_X509" --image-opts -c "read 0 1" "$U"
must_fail_with "Expecting TLS credentials with a server endpoint" "$VBD_DAEMON" --object "$CLI_X509" \
    --nbd-server addr.type=unix,addr.path="$T/x.sock",tls-creds=tls0
must_fail_with "No TLS credentials with id 'nope'" "$VBD_DAEMON" \
    --nbd-server addr.type=unix,addr.path="$T/x.sock",tls-creds=nope
must_fail_with "username 'bob' not found" "$VBD_IO" \
    --object "tls-creds-psk,id=tls0,dir=$T/psk-cli,endpoint=client,username=bob" -c "read 0 1" disk.raw
must_fail_with "tls-hostname needs tls-creds" "$VBD_IO" --image-opts -c "read 0 1" \
    "driver=nbd,server.type=unix,server.path=$T/vbd.sock,tls-hostname=x"
must_fail_with "attempt to add duplicate property 'tls0'" "$VBD_DAEMON" --object "$SRV_X509" --object "$SRV_PSK"
must_fail_with "Parameter 'colour' is unexpected" "$VBD_DAEMON" --object "$SRV_X509,colour=blue"
must_fail_with "endpoint" "$VBD_DAEMON" --object "tls-creds-psk,id=t,dir=$T/psk-srv,endpoint=middle"
echo OK
