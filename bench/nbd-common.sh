# The set-up shared by bench/nbd.sh and bench/nbd-row.sh (sourced after
# common.sh): the image, one server at a time on CPU 0, the fio client on
# CPU 1. The caller owns $dir (a directory on /dev/shm), $PORT and the EXIT
# trap that kills $spid.

# nbd_image: $dir/disk.raw, 1 GiB of 0x5a (allocated, so every server reads data, not holes)
nbd_image() {
    img=$dir/disk.raw
    qemu-img create -q -f raw "$img" 1G
    qemu-io -f raw -c 'write -P 0x5a 0 1G' "$img" >/dev/null
}

# serve SERVER TRANSPORT: vbd, qemu-nbd or nbdkit exporting $img as "disk"
# (writable) on $dir/s.sock or 127.0.0.1:$PORT; sets URI and spid, returns
# once the server answers. SERVE_CPU: the CPUs the server runs on (default
# 0; empty: not pinned, as bench/nbd-client-ab.sh wants). NBD_NULL=1 (vbd
# and nbdkit): a 1 GiB disk that stores nothing (vbd's null-co with
# read-zeroes, nbdkit's null plugin) in place of $img: what a client gets
# from the server with its I/O taken away (a bound for the rows a server's
# own work cannot move)
serve() {
    local s=$1 t=$2 sock=$dir/s.sock pin=(taskset -c "${SERVE_CPU-0}")
    local vdisk=(--blockdev driver=file,node-name=f0,filename="$img" --blockdev driver=raw,node-name=d0,file=f0) kdisk=(file "$img")
    [ -z "${NBD_NULL-}" ] || { vdisk=(--blockdev driver=null-co,node-name=d0,size=1G,read-zeroes=on); kdisk=(null 1G); }
    [ -n "${SERVE_CPU-0}" ] || pin=()
    rm -f "$sock"
    local addr="addr.type=unix,addr.path=$sock" uri="nbd+unix:///disk?socket=$sock"
    [ $t = tcp ] && addr="addr.type=inet,addr.host=127.0.0.1,addr.port=$PORT" uri="nbd://127.0.0.1:$PORT/disk"
    case $s in
        # VBD_NBD_IOTHREAD=1: the export (and its node) on an iothread;
        # VBD_NBD_POLL_MAX_NS=N: on an iothread with poll-max-ns=N (the bound of
        # the connection's busy-poll)
        vbd) local iot=() eiot=
             [ -z "${VBD_NBD_IOTHREAD-}${VBD_NBD_POLL_MAX_NS-}" ] || { iot=(--object iothread,id=io0${VBD_NBD_POLL_MAX_NS:+,poll-max-ns=$VBD_NBD_POLL_MAX_NS}); eiot=,iothread=io0; }
             "${pin[@]}" "${TAX[@]}" "$VBD_DAEMON" "${iot[@]}" "${vdisk[@]}" \
                 --nbd-server "$addr" --export type=nbd,id=e0,node-name=d0,name=disk,writable=on$eiot >/dev/null 2>&1 & ;;
        qemu-nbd) if [ $t = unix ]; then "${pin[@]}" "${TAX[@]}" qemu-nbd -f raw -x disk -k "$sock" --persistent --shared=8 "$img" >/dev/null 2>&1 &
                  else "${pin[@]}" "${TAX[@]}" qemu-nbd -f raw -x disk -b 127.0.0.1 -p $PORT --persistent --shared=8 "$img" >/dev/null 2>&1 & fi ;;
        nbdkit) if [ $t = unix ]; then "${pin[@]}" "${TAX[@]}" nbdkit -f -U "$sock" -e disk "${kdisk[@]}" >/dev/null 2>&1 &
                else "${pin[@]}" "${TAX[@]}" nbdkit -f -i 127.0.0.1 -p $PORT -e disk "${kdisk[@]}" >/dev/null 2>&1 & fi ;;
    esac
    spid=$!
    for _ in $(seq 100); do nbdinfo --size "$uri" >/dev/null 2>&1 && break; sleep 0.05; done
    URI=$uri
}
stop() { kill $spid 2>/dev/null; wait $spid 2>/dev/null || true; spid=; sleep 0.2; }

# fio_run URI RW BS DEPTH: fio's nbd engine (libnbd) for $SECS s; prints
# "IOPS CLIENT-CPU% REQUESTS" (CPU: fio's own usr+sys), with FIO_LAT=1 also
# " P50 P99" (completion latency, ns)
fio_run() {
    taskset -c 1 "${TAX[@]}" fio --name=b --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" --iodepth="$4" --time_based --runtime="$SECS" \
        --size=1G --output-format=json 2>/dev/null |
        python3 -c "import json,sys; t=sys.stdin.read(); j=json.loads(t[t.index('{'):])['jobs'][0]; d='write' if '$2'.endswith('write') else 'read'; p=j[d]['clat_ns'].get('percentile', {}); print(round(j[d]['iops']), round(j['usr_cpu']+j['sys_cpu']), j[d]['total_ios'], *([p.get('50.000000', 0), p.get('99.000000', 0)] if '${FIO_LAT-}' else []))"
}
