# Sourced by bench/vhost-user.sh and bench/vhost-user-ab.sh: starts a
# vhost-user-blk server (vbd-daemon or qemu-storage-daemon, same options) on
# CPU 0 with a null (read-zeroes) or file ($img, page cache) node on $sock;
# IOTHREAD=1: in an iothread; sets spid and returns once the socket is there.
serve() { # server-binary node-kind queues
    local bin=$1 kind=$2 nq=$3
    rm -f "$sock"
    local nodes=(--blockdev driver=null-co,node-name=disk0,size=1073741824,read-zeroes=on)
    [ "$kind" = file ] && nodes=(--blockdev driver=file,node-name=file0,filename="$img",cache.direct=off
                                 --blockdev driver=raw,node-name=disk0,file=file0)
    local iot=() iot_opt=
    [ "${IOTHREAD:-0}" = 1 ] && iot=(--object iothread,id=io0) iot_opt=,iothread=io0
    taskset -c 0 "${TAX[@]}" "$bin" "${iot[@]}" "${nodes[@]}" \
        --export type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,addr.path="$sock",writable=on,num-queues="$nq"$iot_opt \
        >/dev/null 2>&1 &
    spid=$!
    for _ in $(seq 100); do [ -S "$sock" ] && return; sleep 0.05; done
    echo "server $bin did not start" >&2; exit 1
}
