# Sourced by bench/vhost-user.sh, bench/vhost-user-ab.sh and
# bench/vhost-user-probe.sh.

# The two costs that bound the null-node 64K rows on this host, for the
# header (bench/wake-cost.c, ~0.2 s): what the server pays for a call-eventfd
# write that wakes the client asleep on CPU 1 and how long the client then
# takes to run, a write nobody waits on, and one 64 KiB fill over the 1- and
# 2-queue QD8 rows' buffers. Nothing if the helper is not built.
host_costs() {
    local w=$VBD_BUILD/bench/wake-cost
    [ -x "$w" ] && echo "; $("$w" || true)"
    return 0
}

# The scratch every script runs its servers in: a temp dir in /dev/shm (sets
# dir, sock, img), with a 1 GiB raw image full of data (in the page cache, as
# a guest's disk that has been written) when the node kind is file, and a trap
# that kills the server still running (spid) and removes the dir on exit
# (spid may name a server already gone: set -e stops a trap at a failing kill).
scratch() { # name node-kind
    dir=$(mktemp -d "/dev/shm/vbd-vu-$1.XXXXXX")
    sock=$dir/vu.sock img=$dir/disk.raw
    spid=
    trap '[ -z "$spid" ] || { kill $spid 2>/dev/null || true; wait $spid 2>/dev/null || true; }; rm -rf "$dir"' EXIT
    if [ "$2" = file ]; then
        qemu-img create -q -f raw "$img" 1G
        qemu-io -f raw -c 'write -P 0x5a 0 1G' "$img" >/dev/null
    fi
}

# The server's command line (vbd-daemon's and qsd's are the same) into the
# array server_args: a null (read-zeroes) or file ($img) node, IOTHREAD=1 its
# export in an iothread. serve() and bench/vhost-user-count.sh start with it.
server_cmdline() { # node-kind queues
    local kind=$1 nq=$2
    local nodes=(--blockdev driver=null-co,node-name=disk0,size=1073741824,read-zeroes=on)
    [ "$kind" = file ] && nodes=(--blockdev driver=file,node-name=file0,filename="$img",cache.direct=off
                                 --blockdev driver=raw,node-name=disk0,file=file0)
    local iot=() iot_opt=
    [ "${IOTHREAD:-0}" = 1 ] && iot=(--object iothread,id=io0) iot_opt=,iothread=io0
    server_args=("${iot[@]}" "${nodes[@]}"
        --export type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,addr.path="$sock",writable=on,num-queues="$nq"$iot_opt)
}

# Starts a vhost-user-blk server (vbd-daemon or qemu-storage-daemon, same options) on
# CPU 0 with a null (read-zeroes) or file ($img, page cache) node on $sock;
# IOTHREAD=1: in an iothread; sets spid and returns once the socket is there.
serve() { # server-binary node-kind queues
    local bin=$1 server_args
    rm -f "$sock"
    server_cmdline "$2" "$3"
    taskset -c 0 "${TAX[@]}" "$bin" "${server_args[@]}" >/dev/null 2>&1 &
    spid=$!
    for _ in $(seq 100); do [ -S "$sock" ] && return; sleep 0.05; done
    echo "server $bin did not start" >&2; exit 1
}
