#!/bin/bash
# Large reads for a TCP client on this host (127.0.0.1) are copied into the
# socket, not spliced from the page cache: such a client would copy out of
# the page-cache pages on its own CPU at twice the cost (bench/RESULTS.md,
# nbd24). The daemon runs under strace: no splice(2) or sendfile(2) for it
# by default, splice(2) with VBD_NBD_LOCAL_ZERO_COPY=1 (the path remote
# clients get) and over a unix socket (kept zero-copy). Either way the bytes
# are the image's: nbdcopy and qemu-img convert of the whole export (1 MiB
# data pieces, a hole, a tail that is not a whole MiB) compare equal.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io nbdcopy strace cmp
img=$T/disk.img
size=$(((48 << 20) + 12288))
must qemu-img create -q -f raw "$img" $size
# 1 MiB pieces each filled with its own index, MiB 20-27 left a hole, the odd tail written
for i in $(seq 0 47); do [ $i -ge 20 ] && [ $i -lt 28 ] || echo "write -P $((i + 1)) ${i}M 1M"; done >"$T/fill"
echo "write -P 0x77 48M 12288" >>"$T/fill"
must qemu-io -f raw "$img" <"$T/fill" >/dev/null
port=$(free_port 4) || fail "no free TCP port"
for zc in 0 1; do
    for via in unix tcp; do
        nbd_via $via $port
        : >"$T/strace.log"
        VBD_NBD_LOCAL_ZERO_COPY=$zc nbd_raw_daemon -w "strace -f -qq -e trace=splice,sendfile -o $T/strace.log" "$img" "$addr"
        step "$via, VBD_NBD_LOCAL_ZERO_COPY=$zc: nbdcopy and qemu-img convert read the image back"
        rm -f "$T/copy.raw" "$T/conv.raw"
        must nbdcopy --request-size=1048576 "$U" "$T/copy.raw"
        must cmp "$img" "$T/copy.raw"
        must qemu-img convert -f raw -O raw "$U" "$T/conv.raw"
        must cmp "$img" "$T/conv.raw"
        # SIGTERM to the daemon itself (strace, $dpid, would only detach): strace then ends with it
        kill $(pgrep -P $dpid) 2>/dev/null || true
        wait $dpid 2>/dev/null || true
        spliced=$(grep -cE '(^|[[:space:]])(splice|sendfile)\(' "$T/strace.log" || true)
        if [ $zc = 0 ] && [ $via = tcp ]; then
            [ "$spliced" = 0 ] || fail "$via: $spliced splice/sendfile calls for a TCP client on this host (want copies)"
        else
            [ "$spliced" -gt 0 ] || fail "$via, VBD_NBD_LOCAL_ZERO_COPY=$zc: no splice/sendfile in the daemon's trace (want zero-copy)"
        fi
        port=$((port + 1))
    done
done
echo PASS
