#!/bin/bash
# NBD over TLS (x509, TLS 1.3), a 1 GiB raw file on /dev/shm, unix socket:
#  1. vbd-img vs qemu-img as the client (convert down from and up to the
#     server), against vbd-daemon, qemu-nbd and nbdkit as TLS servers, and
#     vbd-daemon without TLS for the cost of TLS;
#  2. the servers under one client (fio's nbd engine = libnbd), IOPS.
# Wall seconds (median of REPS) and the server's CPU seconds. Servers do not ask for
# client certificates (fio cannot give libnbd a certificate directory). Not a test.
#   bench/nbd-tls.sh [SECONDS_PER_FIO_RUN]      (REPS=N, SKIP_CONVERT=1 for part 2 only)
set -euo pipefail
source "$(dirname "$0")/common.sh"
VBD_DAEMON=$VBD_BUILD/src/tools/vbd-daemon
SECS=${1:-3}
REPS=${REPS:-3}
dir=$(mktemp -d /dev/shm/vbd-nbd-tls-bench.XXXXXX)
spid=
trap '[ -n "$spid" ] && kill $spid 2>/dev/null; rm -rf "$dir"' EXIT
cd "$dir"
# credentials: a CA, a server certificate for localhost, a client certificate
certtool --generate-privkey --key-type=ecdsa --outfile ca-key.pem 2>/dev/null
printf 'cn = bench CA\nca\ncert_signing_key\nexpiration_days = 2\n' >ca.info
certtool --generate-self-signed --load-privkey ca-key.pem --template ca.info --outfile ca-cert.pem 2>/dev/null
printf 'cn = localhost\ndns_name = localhost\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n' >server.info
printf 'cn = client\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 2\n' >client.info
mkdir -p server home/.pki/libnbd
for who in server client; do
    d=server; [ $who = client ] && d=home/.pki/libnbd   # libnbd's default place, for fio
    certtool --generate-privkey --key-type=ecdsa --outfile $d/$who-key.pem 2>/dev/null
    certtool --generate-certificate --load-ca-certificate ca-cert.pem --load-ca-privkey ca-key.pem \
        --load-privkey $d/$who-key.pem --template $who.info --outfile $d/$who-cert.pem 2>/dev/null
    cp ca-cert.pem $d/
done
CLI="tls-creds-x509,id=tls0,dir=$dir/home/.pki/libnbd,endpoint=client"
SRV="tls-creds-x509,id=tls0,dir=$dir/server,endpoint=server,verify-peer=off" # libnbd from its default directory offers no client certificate
qemu-img create -q -f raw disk.raw 1G
qemu-io -f raw -c 'write -P 0x5a 0 1G' disk.raw >/dev/null
cp disk.raw src.raw
sock=$dir/s.sock

serve() { # vbd|vbd-plain|qemu-nbd|nbdkit
    rm -f "$sock"
    case $1 in
        vbd) "$VBD_DAEMON" --object "$SRV" --blockdev driver=file,node-name=d0,filename=disk.raw \
                 --nbd-server addr.type=unix,addr.path="$sock",tls-creds=tls0 \
                 --export type=nbd,id=e0,node-name=d0,name=disk,writable=on >/dev/null 2>&1 & ;;
        vbd-plain) "$VBD_DAEMON" --blockdev driver=file,node-name=d0,filename=disk.raw \
                 --nbd-server addr.type=unix,addr.path="$sock" \
                 --export type=nbd,id=e0,node-name=d0,name=disk,writable=on >/dev/null 2>&1 & ;;
        qemu-nbd) qemu-nbd --object "$SRV" --tls-creds tls0 -f raw -x disk -k "$sock" --persistent --shared=8 \
                 disk.raw >/dev/null 2>&1 & ;;
        nbdkit) nbdkit -f -U "$sock" --tls=require --tls-certificates="$dir/server" -e disk \
                 file disk.raw >/dev/null 2>&1 & ;;
    esac
    spid=$!
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
    sleep 0.1
}
stop() { kill $spid 2>/dev/null; wait $spid 2>/dev/null || true; spid=; }
scpu() { awk '{printf "%.2f", ($14 + $15) / 100}' /proc/$spid/stat; }
opts() { # SERVER -> the client's --image-opts string
    if [ $1 = vbd-plain ]; then echo "driver=nbd,server.type=unix,server.path=$sock,export=disk"
    else echo "driver=nbd,server.type=unix,server.path=$sock,export=disk,tls-creds=tls0,tls-hostname=localhost"; fi
}
one() { # CLIENT DIR SERVER -> "wall cpu"
    local tool=$1 I; I=$(opts $3)
    local bin=qemu-img; [ $tool = vbd-img ] && bin=$VBD_IMG
    local c0 t0 t1; c0=$(scpu); t0=$(date +%s.%N)
    if [ $2 = down ]; then "$bin" convert --object "$CLI" --image-opts "$I" -O raw out.raw
    else "$bin" convert --object "$CLI" -n -f raw src.raw --target-image-opts "driver=raw,file.${I//,/,file.}"; fi
    t1=$(date +%s.%N)
    echo "$(echo "$t1 - $t0" | bc) $(echo "$(scpu) - $c0" | bc)"
}
echo "machine: $(machine); 1 GiB, median of $REPS; load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
[ "${SKIP_CONVERT:-0}" = 1 ] || {
echo "1. convert 1 GiB (wall s / server CPU s)"
printf '%-10s %-5s %18s %18s\n' server dir vbd-img qemu-img
for s in vbd qemu-nbd nbdkit vbd-plain; do
    serve $s
    for d in down up; do
        row=()
        for tool in vbd-img qemu-img; do
            w=(); c=()
            for _ in $(seq $REPS); do read -r a b < <(one $tool $d $s); w+=("$a"); c+=("$b"); done
            row+=("$(printf '%s\n' "${w[@]}" | median | xargs printf '%.2f') / $(printf '%s\n' "${c[@]}" | median | xargs printf '%.2f')")
        done
        printf '%-10s %-5s %18s %18s\n' $s $d "${row[0]}" "${row[1]}"
    done
    stop
done
rm -f out.raw
}

echo "2. fio --ioengine=nbd (libnbd, nbds+unix://), $SECS s per run, IOPS"
printf '%-18s %10s %10s %10s %10s\n' workload vbd qemu-nbd nbdkit vbd-plain
fio_iops() { # URI RW BS DEPTH
    HOME=$dir/home fio --name=b --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" --iodepth="$4" --time_based \
        --runtime="$SECS" --size=1G --output-format=json 2>/dev/null |
        python3 -c "import json,sys; t=sys.stdin.read(); j=json.loads(t[t.index('{'):])['jobs'][0]; d='write' if '$2'.endswith('write') else 'read'; print(round(j[d]['iops']))"
}
while IFS='|' read -r label rw bs depth; do
    r=()
    for s in vbd qemu-nbd nbdkit vbd-plain; do
        serve $s
        u="nbds+unix:///disk?socket=$sock"; [ $s = vbd-plain ] && u="nbd+unix:///disk?socket=$sock"
        v=$(fio_iops "$u" $rw $bs $depth || true)
        r+=("${v:-0}")
        stop
    done
    printf '%-18s %10s %10s %10s %10s\n' "$label" "${r[@]}"
done <<ROWS
4k randread QD32|randread|4k|32
4k randwrite QD32|randwrite|4k|32
1M seqread QD8|read|1M|8
1M seqwrite QD8|write|1M|8
ROWS
