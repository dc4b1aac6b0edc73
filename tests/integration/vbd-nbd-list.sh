#!/bin/bash
# vbd-nbd -L beside qemu-nbd -L (7.2): the same argv given to both, the
# same stdout ("exports available: N", each export's name, description,
# size, flags, block sizes and meta contexts), stderr (program names as
# PROG) and exit status. Against vbd-daemon (two exports, a bitmap,
# allocation depth, read-only, over a unix socket and TCP), qemu-nbd,
# nbdkit (several exports with descriptions, no structured replies, an
# old-style server, TLS required, 4k blocks, an empty export) and TLS with
# x509 client credentials; then the command lines qemu-nbd refuses in list
# mode, and servers that are not there. Differences of vbd's TLS layer
# that the list cannot change are printed as "known:".
. "$(dirname "$0")/lib.sh"
need qemu-nbd qemu-img qemu-io nbdkit
cd "$T"
must qemu-img create -q -f qcow2 img.qcow2 8M
must qemu-img bitmap --add img.qcow2 b0
must qemu-io -f qcow2 -c 'write -P 1 0 1M' img.qcow2 >/dev/null
must qemu-img create -q -f raw img.raw 4M
cp img.qcow2 ro.qcow2 # for the read-only servers, beside the daemon that writes img.qcow2

ndiff=0
# same ARGS...: qemu-nbd -L ARGS and vbd-nbd -L ARGS alike; "known: WHY"
# as the last two arguments lets stderr alone differ
same() {
    local why=
    if [ $# -ge 2 ] && [ "${*: -2:1}" = known: ]; then
        why=${*: -1}
        set -- "${@:1:$#-2}"
    fi
    # side by side: each half is one short process (an ASan start costs
    # most of a case at load ~20)
    (timeout -k 5 60 qemu-nbd -L "$@" >q.out 2>q.raw </dev/null; echo "exit $?" >>q.out) &
    timeout -k 5 60 "$VBD_NBD" -L "$@" >v.out 2>v.raw </dev/null
    echo "exit $?" >>v.out
    wait $!
    ! grep -q -e Sanitizer -e 'runtime error' v.raw || fail "vbd-nbd -L $*: $(cat v.raw)"
    sed -E -e "s#$T#{T}#g" -e 's#([^ :]*/)?(qemu-nbd|vbd-nbd)#PROG#g' q.raw >q.err
    sed -E -e "s#$T#{T}#g" -e 's#([^ :]*/)?(qemu-nbd|vbd-nbd)#PROG#g' v.raw >v.err
    if ! cmp -s q.out v.out; then
        echo "DIFF -L $*:"
        diff q.out v.out | sed 's/^/    /'
        ndiff=$((ndiff + 1))
    elif ! cmp -s q.err v.err; then
        if [ -n "$why" ]; then
            echo "known: -L $* ($why)"
        else
            echo "DIFF -L $* (stderr):"
            diff q.err v.err | sed 's/^/    /'
            ndiff=$((ndiff + 1))
        fi
    fi
}
# serve NAME CMD...: CMD in the background (its own log), until $T/NAME.sock
# or, for NAME tcp-*, port ${port[NAME]} takes connections
declare -A port
serve() {
    local n=$1
    shift
    "$@" >"$T/$n.log" 2>&1 &
    local pid=$!
    on_exit "kill -9 $pid 2>/dev/null"
    if [ "${n#tcp-}" != "$n" ]; then wait_port "${port[$n]}" $pid "$T/$n.log"; else wait_sock "$T/$n.sock" $pid "$T/$n.log"; fi
}

step "vbd-daemon: two exports (description, bitmap, allocation depth, read-only), unix socket and TCP"
port[tcp-d]=$(free_port)
serve d "$VBD_DAEMON" --blockdev driver=file,node-name=f0,filename=img.qcow2 --blockdev driver=qcow2,node-name=q0,file=f0 \
    --blockdev driver=file,node-name=f1,filename=img.raw --blockdev driver=raw,node-name=r1,file=f1 \
    --nbd-server addr.type=unix,addr.path="$T/d.sock" \
    --export type=nbd,id=e0,node-name=q0,name=disk,description="the disk",writable=on,allocation-depth=on,bitmaps.0=b0 \
    --export type=nbd,id=e1,node-name=r1,name=raw
same -k "$T/d.sock"
same -k "$T/d.sock" -r -t -e 2 -s --image-opts --detect-zeroes=on
serve tcp-d "$VBD_DAEMON" --blockdev driver=file,node-name=f1,filename=img.raw,read-only=on \
    --blockdev driver=raw,node-name=r1,file=f1,read-only=on \
    --nbd-server addr.type=inet,addr.host=127.0.0.1,addr.port="${port[tcp-d]}" --export type=nbd,id=e1,node-name=r1,name=
same -b 127.0.0.1 -p "${port[tcp-d]}"

step "qemu-nbd and vbd-nbd serving the same image: -x -D -A -B -r over TCP"
for s in qemu-nbd "$VBD_NBD"; do
    n=tcp-${s##*/}
    port[$n]=$(free_port)
    serve "$n" "$s" -b 127.0.0.1 -p "${port[$n]}" -t -r -f qcow2 -x disk -D "a disk" -A -B b0 ro.qcow2
    same -b 127.0.0.1 -p "${port[$n]}"
done

step "nbdkit: several exports with descriptions, no structured replies, old style, TLS required, 4k blocks, empty"
serve k1 nbdkit -f -U "$T/k1.sock" --filter=exportname memory 1M exportname=a exportname=b \
    exportname-list=explicit exportdesc=fixed:hello
serve k2 nbdkit -f -U "$T/k2.sock" --no-sr memory 1M
serve k3 nbdkit -f -U "$T/k3.sock" -o memory 1M
serve k4 nbdkit -f -U "$T/k4.sock" --tls=require --tls-psk=/dev/null memory 1M
serve k5 nbdkit -f -U "$T/k5.sock" --filter=blocksize memory 1M minblock=4096
serve k6 nbdkit -f -U "$T/k6.sock" null 0
for k in k1 k2 k3 k4 k5 k6; do
    same -k "$T/$k.sock"
done
# -l snapshot.id=... is not a per-device setting to qemu-nbd's list mode
same -k "$T/k1.sock" -l snapshot.name=s -o 0

if command -v certtool >/dev/null; then
    step "TLS: x509 client credentials, the hostname from -b or --tls-hostname"
    gen_pki "$T/pki"
    port[tcp-tls]=$(free_port)
    serve tcp-tls nbdkit -f -p "${port[tcp-tls]}" -i 127.0.0.1 --tls=require --tls-certificates="$T/pki/server" memory 1M
    c0="tls-creds-x509,id=c0,dir=$T/pki/client,endpoint=client"
    same --object "$c0" --tls-creds=c0 -b localhost -p "${port[tcp-tls]}"
    same --object "$c0" --tls-creds=c0 -b 127.0.0.1 -p "${port[tcp-tls]}" --tls-hostname=localhost
    same -b 127.0.0.1 -p "${port[tcp-tls]}"
    same --object "$c0" --tls-creds=c0 -b 127.0.0.1 -p "${port[tcp-tls]}" --tls-hostname=wrong \
        known: "vbd's TLS layer words a certificate for another name its own way"
    same --object "$c0" --tls-creds=c0 -k "$T/k4.sock" known: "vbd's TLS layer words a failed handshake its own way"
fi

step "refused command lines, servers not there"
closed=$(free_port)
for args in "img.raw" "-x a" "-D d" "-o 1" "-f raw" "--fork" "-l s" "-B b0" "-A" "-n" "--cache=none" "--aio=threads" \
    "--discard=unmap" "-c /dev/nbd0" "-d" "-x a --fork img.raw" "--tls-hostname=h" "--tls-authz=a" "--tls-creds=nope" \
    "--object tls-creds-anon,id=t,endpoint=server --tls-creds=t" \
    "--object tls-creds-anon,id=t,endpoint=client --tls-creds=t --tls-authz=a" "-k rel.sock" \
    "-k $T/nosuch.sock" "-b 127.0.0.1 -p $closed" "-b nosuch.invalid -p $closed" "-k $T/k1.sock --selinux-label=x"; do
    # shellcheck disable=SC2086 # $args is words
    same $args
done
[ $ndiff = 0 ] || fail "$ndiff command lines listed differently"
echo PASS
