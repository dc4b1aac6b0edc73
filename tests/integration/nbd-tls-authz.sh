#!/bin/bash
# tls-authz on vbd-daemon's NBD server (QEMU's authz-simple and authz-list):
# qemu-img/qemu-io (tls-creds-x509 objects), nbdinfo (nbds://?tls-certificates=)
# and vbd-io get in with the client certificate whose distinguished name is
# allowed, and are refused after the TLS handshake, with the DN and the
# object in the daemon's log, with a second certificate from the same CA
# that names another client. qemu-nbd --tls-authz with the same identity
# string accepts and refuses the same clients: the DN is written as QEMU
# writes it. Bad combinations are one-line errors at start.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io qemu-nbd nbdinfo certtool
cd "$T"

step "credentials: one CA, a server, client O=vbd,CN=vbd-test-client and client2 O=vbd,CN=vbd-other-client"
gen_pki "$T/pki"
SRV="tls-creds-x509,id=tls0,dir=$T/pki/server,endpoint=server,verify-peer=on"
CLI="tls-creds-x509,id=tls0,dir=$T/pki/client,endpoint=client"
CLI2="tls-creds-x509,id=tls0,dir=$T/pki/client2,endpoint=client"
qemu-img create -q -f raw disk.raw 32M
must qemu-io -f raw -c "write -P 0x61 1M 1M" disk.raw >/dev/null

# start_daemon LOG AUTHZ-OBJECT: vbd-daemon serving disk.raw as "exp" on $T/vbd.sock with tls-authz=auth0
start_daemon() {
    rm -f vbd.sock
    "$VBD_DAEMON" --object "$SRV" --object "$2" --blockdev driver=file,node-name=n0,filename=disk.raw \
        --nbd-server addr.type=unix,addr.path="$T/vbd.sock",tls-creds=tls0,tls-authz=auth0 \
        --export type=nbd,id=e0,node-name=n0,name=exp,writable=on 2>"$1" &
    dpid=$!
    on_exit "kill $dpid 2>/dev/null"
    wait_sock vbd.sock "$dpid" "$1"
}
U="driver=nbd,server.type=unix,server.path=$T/vbd.sock,export=exp,tls-creds=tls0,tls-hostname=localhost"
RAWU="driver=raw,file.${U//,/,file.}"
NB="nbds+unix:///exp?socket=$T/vbd.sock&tls-certificates=$T/pki"

# allowed: qemu-io writes, qemu-img/nbdinfo/vbd-io read what was written
check_allowed() {
    must qemu-io --object "$CLI" --image-opts "$RAWU" -c "read -P 0x61 1M 1M" -c "write -P $1 4M 64k" >/dev/null
    [ "$(nbdinfo --size "$NB/client")" = 33554432 ] || fail "nbdinfo with the allowed certificate"
    must "$VBD_IO" --image-opts "$U" --object "$CLI" -r -c "read -P $1 4M 64k" >/dev/null
    out=$(qemu-img info --object "$CLI" --image-opts "$U" 2>&1) || fail "qemu-img info: $out"
    echo "$out" | grep -q "virtual size: 32 MiB" || fail "qemu-img info: $out"
}
# refused: every client fails quickly, nothing is written, the daemon logs the DN and the object
check_refused() {
    local log=$1 before
    before=$(grep -c "authz check for 'O=vbd,CN=vbd-other-client' is denied by 'auth0'" "$log")
    out=$(timeout 120 qemu-io --object "$CLI2" --image-opts "$RAWU" -c "write -P 0x99 4M 64k" 2>&1); rc=$?
    [ $rc != 124 ] || fail "qemu-io with the refused certificate hung"
    [ $rc != 0 ] && ! echo "$out" | grep -q "wrote" || fail "qemu-io with the refused certificate wrote: $out"
    out=$(timeout 120 nbdinfo --size "$NB/client2" 2>&1) && fail "nbdinfo with the refused certificate got in: $out"
    echo "$out" | grep -qi "alert" || fail "nbdinfo's error does not say the server refused the session: $out"
    must_fail_with "alert: Access was denied" timeout 120 "$VBD_IO" --object "$CLI2" --image-opts "$U" -r -c "read 0 4k"
    out=$(timeout 120 qemu-img info --object "$CLI2" --image-opts "$U" 2>&1); rc=$?
    [ $rc != 0 ] && [ $rc != 124 ] || fail "qemu-img info with the refused certificate: rc $rc: $out"
    [ "$(grep -c "authz check for 'O=vbd,CN=vbd-other-client' is denied by 'auth0'" "$log")" -ge $((before + 4)) ] ||
        fail "the daemon did not log each refused client with its DN and the authz object: $(cat "$log")"
    must qemu-io -f raw -r -c "read -P $2 4M 64k" disk.raw >/dev/null
}

step "authz-simple: identity=O=vbd,CN=vbd-test-client (keyval: ',,' is a comma)"
start_daemon d1.log "authz-simple,id=auth0,identity=O=vbd,,CN=vbd-test-client"
check_allowed 0x62
check_refused d1.log 0x62
check_allowed 0x63 # still serving after refusals
grep -q "denied.*vbd-test-client" d1.log && fail "the allowed client was logged as denied: $(cat d1.log)"
kill -TERM $dpid; wait $dpid || fail "vbd-daemon exit status $? (sanitizer report?): $(tail -20 d1.log)"

step "qemu-nbd --tls-authz with the same identity string decides the same way (QEMU's DN format)"
qemu-nbd --object "$SRV" --object "authz-simple,id=auth0,identity=O=vbd,,CN=vbd-test-client" --tls-creds tls0 \
    --tls-authz auth0 -f raw -k "$T/qn.sock" -x exp --persistent disk.raw 2>qn.log &
qpid=$!
on_exit "kill $qpid 2>/dev/null"
wait_sock qn.sock "$qpid" qn.log
[ "$(nbdinfo --size "nbds+unix:///exp?socket=$T/qn.sock&tls-certificates=$T/pki/client")" = 33554432 ] ||
    fail "qemu-nbd refused the identity vbd allows: $(cat qn.log)"
nbdinfo --size "nbds+unix:///exp?socket=$T/qn.sock&tls-certificates=$T/pki/client2" >/dev/null 2>&1 &&
    fail "qemu-nbd allowed the identity vbd refuses"
wait_log qn.log "authz check for O=vbd,CN=vbd-other-client is denied" 1 "$qpid" || fail "qemu-nbd's log: $(cat qn.log)"
kill $qpid; wait $qpid 2>/dev/null

step "authz-list (JSON): deny one client by an exact rule, allow O=vbd,CN=* by glob, default deny"
start_daemon d2.log '{"qom-type":"authz-list","id":"auth0","policy":"deny","rules":[
    {"match":"O=vbd,CN=vbd-other-client","policy":"deny"},
    {"match":"O=vbd,CN=*","policy":"allow","format":"glob"}]}'
check_allowed 0x64
check_refused d2.log 0x64
kill -TERM $dpid; wait $dpid || fail "vbd-daemon exit status $?: $(tail -20 d2.log)"

step "authz-list (keyval rules.N): a glob that allows only vbd-test-*; everyone else falls to policy=deny"
start_daemon d3.log "authz-list,id=auth0,policy=deny,rules.0.match=O=vbd,,CN=vbd-test-*,rules.0.policy=allow,rules.0.format=glob"
check_allowed 0x65
check_refused d3.log 0x65
kill -TERM $dpid; wait $dpid || fail "vbd-daemon exit status $?: $(tail -20 d3.log)"

step "policy=allow lets the second client in (the list is what decides)"
start_daemon d4.log "authz-list,id=auth0,policy=allow"
must "$VBD_IO" --object "$CLI2" --image-opts "$U" -c "write -P 0x66 4M 64k" >/dev/null
must qemu-io -f raw -r -c "read -P 0x66 4M 64k" disk.raw >/dev/null
kill -TERM $dpid; wait $dpid || fail "vbd-daemon exit status $?: $(tail -20 d4.log)"

step "bad combinations: one-line errors at start"
A="authz-simple,id=auth0,identity=x"
must_fail_with "tls-authz=auth0 needs x509 credentials with verify-peer=on ('tls0' is tls-creds-x509 with verify-peer=off)" \
    "$VBD_DAEMON" --object "${SRV/verify-peer=on/verify-peer=off}" --object "$A" \
    --nbd-server addr.type=unix,addr.path="$T/x.sock",tls-creds=tls0,tls-authz=auth0
mkdir psk && printf 'alice:00112233445566778899aabbccddeeff\n' >psk/keys.psk
must_fail_with "('tls0' is tls-creds-psk)" "$VBD_DAEMON" --object "tls-creds-psk,id=tls0,dir=$T/psk,endpoint=server" \
    --object "$A" --nbd-server addr.type=unix,addr.path="$T/x.sock",tls-creds=tls0,tls-authz=auth0
must_fail_with "tls-authz=auth0 needs tls-creds" "$VBD_DAEMON" --object "$A" \
    --nbd-server addr.type=unix,addr.path="$T/x.sock",tls-authz=auth0
must_fail_with "no authorization object with id 'auth9'" "$VBD_DAEMON" --object "$SRV" \
    --nbd-server addr.type=unix,addr.path="$T/x.sock",tls-creds=tls0,tls-authz=auth9
must_fail_with "invalid object type: authz-pam" "$VBD_DAEMON" \
    --object authz-pam,id=auth0,service=login
must_fail_with "Parameter 'identity' is missing" "$VBD_DAEMON" --object authz-simple,id=auth0
must_fail_with "Parameter 'rules[0].policy' is missing" "$VBD_DAEMON" \
    --object '{"qom-type":"authz-list","id":"auth0","rules":[{"match":"x"}]}'
must_fail_with "Parameter 'format' does not accept value 'regex'" "$VBD_DAEMON" \
    --object '{"qom-type":"authz-list","id":"auth0","rules":[{"match":"x","policy":"allow","format":"regex"}]}'
must_fail_with "Parameter 'colour' is unexpected" "$VBD_DAEMON" --object "$A,colour=red"
[ ! -S x.sock ] || fail "a refused configuration left a listening socket"
echo OK
