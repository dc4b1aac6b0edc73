# Sourced by tests/integration/qcow2-stress.sh and tests/stress/soak.sh.
# stress_case KIND TRANSPORT SEED OPS DIR: creates an image of KIND with
# qemu-img in DIR (fresh), runs vbd-stress against it through TRANSPORT
# (lib: in process; nbd: vbd-daemon's NBD export, 4 connections; vhost:
# vbd-daemon's vhost-user-blk export, 4 queues on 2 iothreads), then checks
# with qemu-img: check clean, compare identical to the shadow, and for
# kinds with an internal snapshot `snapshot -a` back and compare with the
# content at snapshot time. Returns 0 on success; on failure prints why
# (with the seed) and returns 1. OPS may be "Ns" for a time limit.
# STRESS_EXTRA: more vbd-stress options (--no-zeroes, --no-discard, --zero-heavy);
# STRESS_QD: requests in flight (default 16).
# Kinds of the other formats vbd writes (STRESS_FMT_KINDS: vdi, vpc, qed,
# parallels, vmdk, vhdx with the options that change their layout) run the
# same way; their images start three quarters unallocated and the hot
# clusters move every few requests (--hot-move), as these formats allocate
# a block only once. stress_crash_case runs one over NBD and kills the
# daemon with SIGKILL in the middle (see there).
# Transport qemu-nbd (not in the default list) runs the same load against
# QEMU's qcow2 driver: a check that the harness only flags real bugs.
# Needs: VBD_BUILD, qemu-img, qemu-io, python3.

# (both lists may be narrowed from the environment)
STRESS_KINDS=${STRESS_KINDS:-"c512 c4k c64k c2m ext64k ext16k-backing ext64k-backing ext2m-backing rc1 rc64 lazy zlib zstd
snapshot snapshot-ext backing-chain data-file data-file-raw ext-data-file-backing bitmaps c512-rc64 zlib-ext"}
STRESS_TRANSPORTS=${STRESS_TRANSPORTS:-"lib nbd vhost"}
STRESS_FMT_KINDS=${STRESS_FMT_KINDS:-"vdi-dynamic vdi-static vpc-dynamic vpc-fixed qed-c4k qed-c64k qed-backing
parallels parallels-c64k vmdk-sparse vmdk-zeroed-grain vmdk-2g vmdk-stream vmdk-backing vhdx-1m vhdx-8m vhdx-fixed vmdk-split"}
STRESS_BIN=${STRESS_BIN:-$VBD_BUILD/tests/stress/vbd-stress}
STRESS_DAEMON=${STRESS_DAEMON:-$VBD_BUILD/src/tools/vbd-daemon}

# Real-looking data (text, random bytes, zero runs, short repeats, small
# integers): compressible in parts, not in others, so compressed clusters
# span many sectors. Deterministic for a seed.
stress_data() { # FILE SIZE SEED
    python3 - "$1" "$2" "$3" <<'EOF'
import random, sys
path, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = random.Random(seed)
words = ("the block layer keeps a cluster of data in memory while the guest writes its file system journal "
         "refcount table offset header snapshot backing chain discard flush zero allocate copy on write "
         "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt").split()
out = bytearray()
small = bytes(b % 13 for b in range(256))  # random small numbers: compressible, not trivially
# words, one in eight ending a sentence, picked by a random byte each (a
# random.choices() call per sentence made this 6x slower: 1.5 s for 16 MiB,
# a third of a qcow2-stress run's time)
tokens = [words[i % len(words)] + (".\n" if i % 8 == 7 else " ") for i in range(256)]
while len(out) < size:
    kind = r.randrange(6)
    n = r.choice((512, 1500, 4096, 9000, 65536, 200000))
    if kind == 0:
        text = ""
        while len(text) < n:
            text += "".join(map(tokens.__getitem__, r.randbytes(n // 4 + 16)))
        out += text.encode()[:n]
    elif kind == 1:
        out += r.randbytes(n)
    elif kind == 2:
        out += bytes(n)
    elif kind == 3:
        out += bytes(r.randrange(1, 256) for _ in range(r.randrange(1, 9))) * (n // 4)
    elif kind == 4:
        out += r.randbytes(n).translate(small)
    else:
        out += bytes(n) if r.randrange(2) else r.randbytes(n // 2) + bytes(n - n // 2)
open(path, "wb").write(bytes(out[:size]))
EOF
}

# The other formats: sets the same variables (and fmt, hot_move), makes
# DIR/img.FMT with qemu-img create, and its first quarter data with
# qemu-img convert -n (the rest stays unallocated).
stress_make_fmt() { # KIND DIR SEED
    local kind=$1 d=$2 seed=$3 opts="" back=""
    fmt=${kind%%-*} cs=65536 sub=0 snap=0 backraw="" size=$((16 << 20)) hot_move=64 once=0
    case $kind in
    vdi-dynamic) cs=$((1 << 20)) size=$((32 << 20)) ;;
    vdi-static) cs=$((1 << 20)) size=$((32 << 20)) opts=static=on ;;
    vpc-dynamic) cs=$((2 << 20)) size=$((32 << 20)) opts=subformat=dynamic ;; # CHS geometry: the last block is partial
    vpc-fixed) opts=subformat=fixed ;;
    qed-c4k) cs=4096 opts=cluster_size=4k,table_size=2 ;; # 4 MiB per L2 table: new tables on the way
    qed-c64k) ;;
    qed-backing) back=raw ;;
    parallels) cs=$((1 << 20)) size=$((32 << 20)) ;;
    parallels-c64k) opts=cluster_size=64k ;;
    vmdk-sparse) ;;
    vmdk-zeroed-grain) opts=zeroed_grain=on ;;
    vmdk-2g) opts=subformat=twoGbMaxExtentSparse ;;
    # a descriptor naming four 4 MiB extents, sparse, flat, sparse, sparse:
    # requests cross from one extent file into the next
    vmdk-split) ;;
    # every write of a grain appends it deflated; as QEMU's, a grain is written once and whole
    vmdk-stream) opts=subformat=streamOptimized once=1 ;;
    vmdk-backing) back=vmdk ;;
    vhdx-1m) cs=$((1 << 20)) size=$((32 << 20)) opts=block_size=1M ;;
    vhdx-8m) cs=$((2 << 20)) size=$((32 << 20)) opts=block_size=8M ;; # four requests' clusters to one block
    vhdx-fixed) cs=$((1 << 20)) size=$((32 << 20)) opts=subformat=fixed ;;
    *) echo "stress: unknown image kind '$kind' (known: $STRESS_KINDS $STRESS_FMT_KINDS)" >&2; return 1 ;;
    esac
    img=$d/img.$fmt
    stress_data "$d/data.raw" $((size / 4)) "$seed" || return 1
    truncate -s "$size" "$d/data.raw" || return 1
    if [ -n "$back" ]; then
        # an empty top over a full base: every partial write copies from the backing file
        stress_data "$d/back.raw" "$size" $((seed + 1)) || return 1
        if [ $back = raw ]; then
            cp "$d/back.raw" "$d/base.raw"
        else
            qemu-img convert -q -f raw -O "$back" "$d/back.raw" "$d/base.$back" || return 1
        fi
        qemu-img create -q -f "$fmt" -b "$d/base.$back" -F "$back" ${opts:+-o "$opts"} "$img" "$size" || return 1
        cp "$d/back.raw" "$d/init.raw"
        backraw=$d/back.raw
        return 0
    fi
    if [ $kind = vmdk-split ]; then
        stress_vmdk_split "$d" "$size" || return 1
    else
        qemu-img create -q -f "$fmt" ${opts:+-o "$opts"} "$img" "$size" || return 1
    fi
    # the virtual size may be rounded (vpc's geometry): the content is that long
    local vsize
    vsize=$(qemu-img info -f "$fmt" --output=json "$img" | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p' | head -1)
    truncate -s "$vsize" "$d/data.raw" || return 1
    size=$vsize
    qemu-img convert -q -n --target-is-zero -f raw -O "$fmt" "$d/data.raw" "$img" || return 1
    cp "$d/data.raw" "$d/init.raw"
}

# DIR/img.vmdk: a descriptor of SIZE/4-byte extents, sparse, flat,
# sparse, sparse (each sparse one made by qemu-img as a twoGbMaxExtentSparse
# extent file)
stress_vmdk_split() { # DIR SIZE
    local d=$1 size=$2 q=$(($2 / 4)) i
    qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse "$d/tmpl.vmdk" "$q" || return 1
    for i in 1 3 4; do cp "$d/tmpl-s001.vmdk" "$d/img-s00$i.vmdk" || return 1; done
    truncate -s "$q" "$d/img-f002.vmdk" || return 1
    rm -f "$d/tmpl.vmdk" "$d/tmpl-s001.vmdk"
    printf '%s\n' '# Disk DescriptorFile' version=1 CID=1234abcd parentCID=ffffffff \
        'createType="twoGbMaxExtentSparse"' '' '# Extent description' \
        "RW $((q / 512)) SPARSE \"img-s001.vmdk\"" "RW $((q / 512)) FLAT \"img-f002.vmdk\" 0" \
        "RW $((q / 512)) SPARSE \"img-s003.vmdk\"" "RW $((q / 512)) SPARSE \"img-s004.vmdk\"" '' \
        '# The Disk Data Base' '#DDB' '' 'ddb.virtualHWVersion = "4"' 'ddb.adapterType = "ide"' >"$d/img.vmdk"
}

# Sets in the caller: fmt img cs sub snap backraw size hot_move once (1: --write-once); creates
# DIR/img.qcow2 (DIR/img.FMT for the other formats), DIR/init.raw (content
# before the run), DIR/back.raw if there is a backing chain (what a discard
# may expose).
stress_make() { # KIND DIR SEED
    local kind=$1 d=$2 seed=$3 opts="" src
    case $kind in vdi-* | vpc-* | qed-* | parallels* | vmdk-* | vhdx-*) stress_make_fmt "$@"; return ;; esac
    fmt=qcow2 img=$d/img.qcow2 cs=65536 sub=0 snap=0 backraw="" size=$((16 << 20)) hot_move=0 once=0
    local fill=
    case $kind in
    c512) cs=512 size=$((4 << 20)) ;;
    # a refcount table cluster covers only 2 MiB of the file: 4.5 MiB of
    # data first (qemu-img grows the table to 2 clusters, 4 MiB, with data
    # after it; the file just under 4 MiB), then the file grows past that
    # under the requests (new ground every 64): the table grows under them
    c512-rc64) cs=512 opts=refcount_bits=64 hot_move=64 fill=$((9 << 19)) ;;
    c4k) cs=4096 ;;
    c64k) ;;
    c64k-backing) ;;
    v2) opts=compat=0.10 ;;
    v2-backing) opts=compat=0.10 ;;
    c2m) cs=$((2 << 20)) size=$((32 << 20)) ;;
    ext64k) sub=1 opts=extended_l2=on ;;
    ext16k-backing) cs=16384 sub=1 opts=extended_l2=on ;;
    ext64k-backing) sub=1 opts=extended_l2=on ;;
    ext2m-backing) cs=$((2 << 20)) size=$((32 << 20)) sub=1 opts=extended_l2=on ;;
    ext-data-file-backing) sub=1 opts=extended_l2=on,data_file=$d/img.data ;;
    rc1) opts=refcount_bits=1 ;;
    rc64) opts=refcount_bits=64 ;;
    lazy) opts=lazy_refcounts=on ;;
    zlib | zstd) opts=compression_type=$kind ;;
    # compressed clusters in an image with subclusters: partial writes,
    # zeroes and discards of a subcluster of a compressed cluster
    zlib-ext) sub=1 opts=compression_type=zlib,extended_l2=on ;;
    snapshot) snap=1 ;;
    snapshot-ext) cs=32768 sub=1 snap=1 opts=extended_l2=on ;;
    backing-chain) ;;
    data-file) opts=data_file=$d/img.data ;;
    data-file-raw) opts=data_file=$d/img.data,data_file_raw=on ;;
    bitmaps) ;;
    *) echo "stress: unknown image kind '$kind' (known: $STRESS_KINDS $STRESS_FMT_KINDS)" >&2; return 1 ;;
    esac
    opts=cluster_size=$cs${opts:+,$opts}
    stress_data "$d/data.raw" "${fill:-$size}" "$seed" || return 1
    truncate -s "$size" "$d/data.raw" || return 1
    case $kind in
    *-backing)
        # an empty top over a full base: every partial write copies from backing
        qemu-img convert -q -f raw -O qcow2 "$d/data.raw" "$d/base.qcow2" || return 1
        qemu-img create -q -f qcow2 -b "$d/base.qcow2" -F qcow2 -o "$opts" "$img" || return 1
        cp "$d/data.raw" "$d/init.raw"
        backraw=$d/data.raw
        ;;
    backing-chain)
        # base (data) <- mid (patterns over part of it) <- top (more patterns)
        qemu-img convert -q -f raw -O qcow2 "$d/data.raw" "$d/base.qcow2" || return 1
        qemu-img create -q -f qcow2 -b "$d/base.qcow2" -F qcow2 -o cluster_size=32768 "$d/mid.qcow2" || return 1
        qemu-io -f qcow2 -c "write -P 0x11 1M 3M" -c "write -z 5M 1M" -c "discard 7M 512k" -c "write -P 0x12 9000 70000" \
            "$d/mid.qcow2" >/dev/null || return 1
        qemu-img create -q -f qcow2 -b "$d/mid.qcow2" -F qcow2 -o "$opts" "$img" || return 1
        qemu-io -f qcow2 -c "write -P 0x21 2M 1M" -c "write -z 3M 64k" -c "write -P 0x22 12345 4096" "$img" >/dev/null || return 1
        qemu-img convert -q -f qcow2 -O raw "$d/mid.qcow2" "$d/back.raw" || return 1
        qemu-img convert -q -f qcow2 -O raw "$img" "$d/init.raw" || return 1
        backraw=$d/back.raw
        ;;
    zlib | zstd | zlib-ext)
        qemu-img convert -q -c -f raw -O qcow2 -o "$opts" "$d/data.raw" "$img" || return 1
        qemu-img info "$img" | grep -q "compression type: ${kind%-ext}" || { echo "stress: $img is not ${kind%-ext}-compressed" >&2; return 1; }
        cp "$d/data.raw" "$d/init.raw"
        ;;
    *)
        qemu-img create -q -f qcow2 -o "$opts" "$img" "$size" || return 1
        qemu-img convert -q -n --target-is-zero -f raw -O qcow2 "$d/data.raw" "$img" || return 1
        cp "$d/data.raw" "$d/init.raw"
        ;;
    esac
    if [ $snap = 1 ]; then
        qemu-img snapshot -c s0 "$img" || return 1
    fi
    if [ $kind = bitmaps ]; then
        qemu-img bitmap --add "$img" b0 && qemu-img bitmap --add -g 4096 "$img" b1 &&
            qemu-img bitmap --add "$img" b2 --disable || return 1
    fi
    return 0
}

# qemu-img check of $img clean; a format QEMU cannot check (vpc) passes
stress_check() { # KIND TRANSPORT SEED
    local out rc=0
    out=$(qemu-img check -f "$fmt" "$img" 2>&1) || rc=$?
    [ $rc = 0 ] && return 0
    [ $rc = 63 ] && case $out in *"does not support checks"*) return 0 ;; esac
    echo "stress: FAILED kind=$1 transport=$2 seed=$3: qemu-img check (exit $rc):" >&2
    echo "$out" | tail -20 >&2
    return 1
}

_stress_dpid=
_stress_start_daemon() { # DIR SOCKET daemon-args...
    local d=$1 sock=$2; shift 2
    rm -f "$sock"
    "$STRESS_DAEMON" "$@" 2>"$d/daemon.log" &
    _stress_dpid=$!
    for _ in $(seq 600); do
        [ -S "$sock" ] && return 0
        kill -0 $_stress_dpid 2>/dev/null || break
        sleep 0.1
    done
    echo "stress: vbd-daemon did not start: $*" >&2
    cat "$d/daemon.log" >&2
    kill -9 $_stress_dpid 2>/dev/null; wait $_stress_dpid 2>/dev/null; _stress_dpid=
    return 1
}
_stress_stop_daemon() { # DIR
    [ -n "$_stress_dpid" ] || return 0
    kill -TERM $_stress_dpid; wait $_stress_dpid; local rc=$?
    _stress_dpid=
    if [ $rc != 0 ] || grep -q Sanitizer "$1/daemon.log"; then
        echo "stress: vbd-daemon exited with $rc after SIGTERM" >&2
        tail -40 "$1/daemon.log" >&2
        return 1
    fi
}
stress_kill_daemon() { [ -n "$_stress_dpid" ] && kill -9 $_stress_dpid 2>/dev/null; _stress_dpid=; }

# stress_run KIND TRANSPORT SEED OPS: stress_case in $T/case with its
# "ok"/"FAIL" line; counts into the caller's failures and total.
stress_run() {
    if stress_case "$1" "$2" "$3" "$4" "$T/case"; then
        echo "ok   $1/$2 seed=$3 ($STRESS_LAST_OPS ops, $STRESS_LAST_VARIANT)"
    else
        echo "FAIL $1/$2 seed=$3"
        failures=$((failures + 1))
    fi
    total=$((total + ${STRESS_LAST_OPS:-0}))
}
stress_case() { # KIND TRANSPORT SEED OPS DIR
    local kind=$1 tr=$2 seed=$3 ops=$4 d=$5 rc=0 limit out
    # transport "crash": stress_crash_case (OPS is not used: it runs until the kill)
    [ "$tr" = crash ] && { stress_crash_case "$kind" "$seed" "$d"; return; }
    STRESS_LAST_OPS=0 STRESS_LAST_VARIANT=""
    rm -rf "$d" && mkdir -p "$d" || return 1
    stress_make "$kind" "$d" "$seed" || { echo "stress: cannot create image kind $kind" >&2; return 1; }
    # a request that never completes must not hang make check: the guard
    # is 10 minutes beyond the run's own limit (a safety net, not a timing test)
    local guard=600
    case $ops in
    *s) limit="--seconds ${ops%s}" guard=$((${ops%s} + 600)) ;;
    *) limit="--ops $ops" ;;
    esac
    local run=(timeout -k 10 "$guard" "$STRESS_BIN")
    local args=(--seed "$seed" $limit --cluster-size "$cs" --init "$d/init.raw" --shadow-out "$d/shadow.raw")
    [ $sub = 1 ] && args+=(--subclusters)
    [ -n "$backraw" ] && args+=(--backing "$backraw")
    [ "$hot_move" != 0 ] && args+=(--hot-move "$hot_move")
    [ "$once" = 1 ] && args+=(--write-once)
    args+=(${STRESS_EXTRA:-}) # e.g. --no-zeroes or --no-discard, to narrow a failure down
    # the seed also picks the I/O path under the image: page cache and
    # io_uring, O_DIRECT (the generic layer's alignment and serialisation of
    # unaligned requests), or the thread pool
    local lib_io=() file_io=""
    case $((seed % 3)) in
    1) lib_io=(-t none) file_io=,cache.direct=on STRESS_LAST_VARIANT="cache.direct=on" ;;
    2) lib_io=(-i threads) file_io=,aio=threads STRESS_LAST_VARIANT="aio=threads" ;;
    *) STRESS_LAST_VARIANT="io_uring, page cache" ;;
    esac
    # compressed writes of whole clusters next to the other requests
    # (not with --overlap: a refused compressed write has no place in its model)
    case " ${STRESS_EXTRA:-} " in *" --overlap "*) ;; *) case $kind in zlib | zstd | zlib-ext | c4k) lib_io+=(--compress) ;; esac ;; esac
    local node=(--blockdev "driver=file,node-name=f0,filename=$img,discard=unmap$file_io"
        --blockdev "driver=$fmt,node-name=d0,file=f0,discard=unmap")
    # STRESS_ALIGN=N: the image's file is cache.direct=on behind a blkdebug
    # node with align=N (a disk of N-byte logical blocks): what the format
    # writes in smaller pieces is a read-modify-write of N-byte blocks
    local lib_img=(-f "$fmt" "$img")
    if [ -n "${STRESS_ALIGN:-}" ]; then
        STRESS_LAST_VARIANT="cache.direct=on, align=$STRESS_ALIGN"
        lib_io=()
        node=(--blockdev "driver=file,node-name=f0,filename=$img,discard=unmap,cache.direct=on"
            --blockdev "driver=blkdebug,node-name=a0,image=f0,align=$STRESS_ALIGN,discard=unmap"
            --blockdev "driver=$fmt,node-name=d0,file=a0,discard=unmap")
        lib_img=(--image-opts "driver=$fmt,discard=unmap,file.driver=blkdebug,file.align=$STRESS_ALIGN,file.discard=unmap,file.image.driver=file,file.image.filename=$img,file.image.cache.direct=on,file.image.discard=unmap")
    fi
    case $tr in
    lib)
        "${run[@]}" "${args[@]}" "${lib_io[@]}" --qd "${STRESS_QD:-16}" "${lib_img[@]}" >"$d/stress.log" 2>&1 || rc=1
        ;;
    nbd)
        _stress_start_daemon "$d" "$d/nbd.sock" "${node[@]}" --nbd-server "addr.type=unix,addr.path=$d/nbd.sock" \
            --export "type=nbd,id=n0,node-name=d0,name=disk,writable=on" || return 1
        "${run[@]}" "${args[@]}" --qd "${STRESS_QD:-16}" --nbd "nbd+unix:///disk?socket=$d/nbd.sock" --conns 4 >"$d/stress.log" 2>&1 || rc=1
        _stress_stop_daemon "$d" || rc=1
        ;;
    nbd-io)
        # the NBD export with iothread=io0: the node moves there and the
        # connections are served on it (not in the default list)
        _stress_start_daemon "$d" "$d/nbd.sock" --object iothread,id=io0 "${node[@]}" --nbd-server "addr.type=unix,addr.path=$d/nbd.sock" \
            --export "type=nbd,id=n0,node-name=d0,name=disk,writable=on,iothread=io0" || return 1
        "${run[@]}" "${args[@]}" --qd "${STRESS_QD:-16}" --nbd "nbd+unix:///disk?socket=$d/nbd.sock" --conns 4 >"$d/stress.log" 2>&1 || rc=1
        _stress_stop_daemon "$d" || rc=1
        ;;
    both)
        # one node under a vhost-user-blk export (4 rings on 2 iothreads: the
        # graph on io0) and an NBD export at once, the workers alternating
        # (not in the default list)
        _stress_start_daemon "$d" "$d/vu.sock" --object iothread,id=io0 --object iothread,id=io1 "${node[@]}" \
            --nbd-server "addr.type=unix,addr.path=$d/nbd.sock" --export "type=nbd,id=n0,node-name=d0,name=disk,writable=on" \
            --export "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=$d/vu.sock,writable=on,num-queues=4,iothread.0=io0,iothread.1=io1" ||
            return 1
        "${run[@]}" "${args[@]}" --qd "${STRESS_QD:-16}" --vhost-user "$d/vu.sock" --queues 4 --nbd "nbd+unix:///disk?socket=$d/nbd.sock" --conns 2 >"$d/stress.log" 2>&1 || rc=1
        _stress_stop_daemon "$d" || rc=1
        ;;
    vhost)
        _stress_start_daemon "$d" "$d/vu.sock" --object iothread,id=io0 --object iothread,id=io1 "${node[@]}" \
            --export "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=$d/vu.sock,writable=on,num-queues=4,iothread.0=io0,iothread.1=io1" ||
            return 1
        "${run[@]}" "${args[@]}" --qd "${STRESS_QD:-16}" --vhost-user "$d/vu.sock" --queues 4 >"$d/stress.log" 2>&1 || rc=1
        _stress_stop_daemon "$d" || rc=1
        ;;
    qemu-nbd)
        # the same load against QEMU's qcow2 driver: a check of the harness,
        # not in the default list. Without write-zeroes: QEMU 7.2 itself
        # loses data and corrupts refcounts when write-zeroes meet other
        # writes in flight on the same cluster (its other requests pass).
        rm -f "$d/q.sock"
        qemu-nbd --persistent --shared=8 -f "$fmt" --discard=unmap --cache=writeback -k "$d/q.sock" -x disk "$img" \
            2>"$d/daemon.log" &
        _stress_dpid=$!
        for _ in $(seq 600); do [ -S "$d/q.sock" ] && break; kill -0 $_stress_dpid 2>/dev/null || break; sleep 0.1; done
        "${run[@]}" "${args[@]}" --no-zeroes --qd 16 --nbd "nbd+unix:///disk?socket=$d/q.sock" --conns 4 >"$d/stress.log" 2>&1 || rc=1
        _stress_stop_daemon "$d" || rc=1
        ;;
    *) echo "stress: unknown transport '$tr' (known: $STRESS_TRANSPORTS qemu-nbd)" >&2; return 1 ;;
    esac
    STRESS_LAST_OPS=$(sed -n 's/.* seed=[0-9]* \([0-9]*\) ops .*/\1/p' "$d/stress.log" | tail -1)
    if [ $rc != 0 ]; then
        echo "stress: FAILED kind=$kind transport=$tr seed=$seed ($STRESS_LAST_VARIANT) (vbd-stress):" >&2
        tail -30 "$d/stress.log" >&2
        return 1
    fi
    stress_check "$kind" "$tr" "$seed" || return 1
    out=$(qemu-img compare -f "$fmt" -F raw "$img" "$d/shadow.raw" 2>&1) || {
        echo "stress: FAILED kind=$kind transport=$tr seed=$seed: the image differs from the shadow: $out" >&2
        return 1
    }
    if [ $kind = bitmaps ]; then
        out=$(qemu-img info --output=json "$img")
        case $out in *in-use*) echo "stress: FAILED kind=$kind transport=$tr seed=$seed: a bitmap is left in-use" >&2; return 1 ;; esac
        case $out in *'"name": "b2"'*) ;; *) echo "stress: FAILED kind=$kind transport=$tr seed=$seed: bitmap b2 is gone" >&2; return 1 ;; esac
    fi
    if [ $snap = 1 ]; then
        out=$(qemu-img snapshot -a s0 "$img" 2>&1 && qemu-img compare -f qcow2 -F raw "$img" "$d/init.raw" 2>&1) || {
            echo "stress: FAILED kind=$kind transport=$tr seed=$seed: after snapshot -a s0 the image differs from the content at snapshot time: $out" >&2
            return 1
        }
        out=$(qemu-img check "$img" 2>&1) || {
            echo "stress: FAILED kind=$kind transport=$tr seed=$seed: qemu-img check after snapshot -a:" >&2
            echo "$out" | tail -20 >&2
            return 1
        }
    fi
    return 0
}

# stress_hot_cases SEED_BASE KIND...: stress_case for each kind in process
# and over NBD (OPS, STRESS_EXTRA and STRESS_QD as set by the caller),
# fixed seeds from SEED_BASE (seed % 3 picks the I/O path under the image),
# one line per run with the line's extra from stress_note_fn if the caller
# defines it; fails the test naming how to replay a failed run.
stress_hot_cases() {
    local base=$1 kind tr seed note failures=0 n=0
    shift
    for kind in "$@"; do
        for tr in lib nbd; do
            n=$((n + 1))
            seed=$((base + 3 * n + n % 3))
            if stress_case "$kind" "$tr" "$seed" "$OPS" "$T/case"; then
                note=
                declare -F stress_note_fn >/dev/null && note=$(stress_note_fn "$T/case")
                echo "ok   $kind/$tr seed=$seed ($STRESS_LAST_OPS ops, $STRESS_LAST_VARIANT$note)"
            else
                echo "FAIL $kind/$tr seed=$seed"
                failures=$((failures + 1))
            fi
        done
    done
    [ $failures = 0 ] || fail "$failures of $n runs failed (replay one: STRESS_EXTRA='$STRESS_EXTRA' STRESS_QD=$STRESS_QD tests/stress/soak.sh --kind KIND --transport T --seed S --ops $OPS build-asan)"
}

# stress_masked_cmp RAW SHADOW MASK WHAT: RAW equals SHADOW wherever MASK
# has a zero byte (MASK: vbd-stress --mask-out).
stress_masked_cmp() {
    python3 - "$@" <<'EOF'
import sys
got, want, mask = (open(p, "rb").read() for p in sys.argv[1:4])
what = sys.argv[4]
if len(got) != len(want):
    sys.exit(f"stress: {what}: {len(got)} bytes, the shadow has {len(want)}")
diff = (int.from_bytes(got, "little") ^ int.from_bytes(want, "little")) & ~int.from_bytes(mask, "little")
if diff:
    first = ((diff & -diff).bit_length() - 1) // 8
    bad = sum(1 for i in range(len(want)) if mask[i] == 0 and got[i] != want[i])
    sys.exit(f"stress: {what}: {bad} durable bytes lost, the first at {first}: expected 0x{want[first]:02x}, got 0x{got[first]:02x}")
EOF
}

# stress_crash_case KIND SEED DIR: the image of KIND behind vbd-daemon's NBD
# export, vbd-stress with 4 connections (STRESS_QD requests in flight) in
# crash mode; once it has issued STRESS_CRASH_AFTER requests the daemon gets
# SIGKILL with requests in flight. Then: qemu-img check (leaks allowed; a
# parallels image is left "not closed correctly" by design, a vhdx one may
# hold a log to replay: both are repaired with check -r all first, as QEMU
# wants), qemu-img convert and vbd-img
# convert must both hold every durable byte (completed before an
# acknowledged flush, or FUA), and vbd goes on writing the image in
# process (check clean, compare identical). Returns 0 on success.
# STRESS_STOP_SIGNAL=TERM: the daemon is stopped with SIGTERM instead
# (requests in flight: it finishes them, flushes and closes the images):
# it exits 0, qemu-img check is clean (no leak, nothing to repair) and
# every write that completed is there (vbd-stress --clean-stop).
stress_crash_case() {
    local kind=$1 seed=$2 d=$3 rc=0 out spid file_io="" sig=${STRESS_STOP_SIGNAL:-KILL}
    STRESS_LAST_OPS=0 STRESS_LAST_VARIANT="SIG$sig"
    rm -rf "$d" && mkdir -p "$d" || return 1
    stress_make "$kind" "$d" "$seed" || { echo "stress: cannot create image kind $kind" >&2; return 1; }
    case $((seed % 3)) in
    1) file_io=,cache.direct=on STRESS_LAST_VARIANT="SIG$sig, cache.direct=on" ;;
    2) file_io=,aio=threads STRESS_LAST_VARIANT="SIG$sig, aio=threads" ;;
    esac
    local node=(--blockdev "driver=file,node-name=f0,filename=$img,discard=unmap$file_io"
        --blockdev "driver=$fmt,node-name=d0,file=f0,discard=unmap")
    if [ -n "${STRESS_ALIGN:-}" ]; then # as in stress_case
        STRESS_LAST_VARIANT="SIG$sig, cache.direct=on, align=$STRESS_ALIGN"
        node=(--blockdev "driver=file,node-name=f0,filename=$img,discard=unmap,cache.direct=on"
            --blockdev "driver=blkdebug,node-name=a0,image=f0,align=$STRESS_ALIGN,discard=unmap"
            --blockdev "driver=$fmt,node-name=d0,file=a0,discard=unmap")
    fi
    _stress_start_daemon "$d" "$d/nbd.sock" "${node[@]}" --nbd-server "addr.type=unix,addr.path=$d/nbd.sock" \
        --export "type=nbd,id=n0,node-name=d0,name=disk,writable=on" || return 1
    local args=(--seed "$seed" --cluster-size "$cs" --init "$d/init.raw" --shadow-out "$d/shadow.raw" --mask-out "$d/mask.raw"
        --crash-ready "$d/ready" --crash-after "${STRESS_CRASH_AFTER:-400}" --qd "${STRESS_QD:-16}")
    [ -n "$backraw" ] && args+=(--backing "$backraw")
    [ "$hot_move" != 0 ] && args+=(--hot-move "$hot_move")
    [ "$once" = 1 ] && args+=(--write-once)
    [ $sig = TERM ] && args+=(--clean-stop)
    timeout -k 10 600 "$STRESS_BIN" "${args[@]}" --nbd "nbd+unix:///disk?socket=$d/nbd.sock" --conns 4 >"$d/stress.log" 2>&1 &
    spid=$!
    while [ ! -e "$d/ready" ] && kill -0 $spid 2>/dev/null; do sleep 0.02; done
    local drc=0
    kill -$sig $_stress_dpid 2>/dev/null
    wait $_stress_dpid 2>/dev/null || drc=$?
    _stress_dpid=
    wait $spid || rc=$?
    if [ $sig = TERM ] && [ $drc != 0 ]; then
        echo "stress: FAILED kind=$kind SIGTERM seed=$seed ($STRESS_LAST_VARIANT): vbd-daemon exited with $drc:" >&2
        tail -30 "$d/daemon.log" >&2
        return 1
    fi
    STRESS_LAST_OPS=$(sed -n 's/.*server is gone.* after \([0-9]*\) requests/\1/p' "$d/stress.log" | tail -1)
    if [ $rc != 0 ] || [ ! -e "$d/ready" ]; then
        echo "stress: FAILED kind=$kind crash seed=$seed ($STRESS_LAST_VARIANT) (vbd-stress exit $rc):" >&2
        tail -30 "$d/stress.log" >&2
        return 1
    fi
    if grep -q Sanitizer "$d/daemon.log"; then
        echo "stress: FAILED kind=$kind crash seed=$seed: the daemon's sanitizer spoke before the kill:" >&2
        tail -40 "$d/daemon.log" >&2
        return 1
    fi
    rc=0
    out=$(qemu-img check -f "$fmt" "$img" 2>&1) || rc=$?
    # a daemon that stopped on SIGTERM closed the image: nothing to repair, no leak
    if [ $sig = TERM ] && [ $rc != 0 ] && ! { [ $rc = 63 ] && [[ $out = *"does not support checks"* ]]; }; then
        echo "stress: FAILED kind=$kind SIGTERM seed=$seed ($STRESS_LAST_VARIANT): qemu-img check after the daemon's stop (exit $rc):" >&2
        echo "$out" | tail -20 >&2
        return 1
    fi
    if [ $fmt = parallels ] && [ $rc = 2 ] && grep -q "not closed correctly" <<<"$out"; then
        rc=0
        out=$(qemu-img check -r all -f "$fmt" "$img" 2>&1) || rc=$?
    fi
    # killed between a vhdx log entry and its BAT write: qemu-img (and vbd-img)
    # open it read-only only after the log's replay, which check -r all does
    if [ $fmt = vhdx ] && [ $rc != 0 ] && grep -q "log that needs to be replayed" <<<"$out"; then
        rc=0
        out=$(qemu-img check -r all -f "$fmt" "$img" 2>&1) || rc=$?
    fi
    # killed between a vdi allocation's header count and its map entry (the
    # order QEMU's vdi writes them in too, so that a crash can only leave a
    # reserved, unused block, never a map entry past the count): qemu-img
    # check calls the lower count of map entries an error; it is a leak
    if [ $fmt = vdi ] && [ $rc = 2 ] && [ "$(grep -c '^ERROR' <<<"$out")" = 1 ] &&
        [[ $out =~ "ERROR: allocated blocks mismatch, is "([0-9]+)", should be "([0-9]+) ]] &&
        [ "${BASH_REMATCH[1]}" -lt "${BASH_REMATCH[2]}" ]; then
        rc=3
    fi
    case $rc in
    0 | 3) ;; # leaked space is what a crash may leave
    63) case $out in *"does not support checks"*) ;; *) rc=1 ;; esac ;;
    *) rc=1 ;;
    esac
    if [ $rc = 1 ]; then
        echo "stress: FAILED kind=$kind crash seed=$seed ($STRESS_LAST_VARIANT): qemu-img check after SIGKILL:" >&2
        echo "$out" | tail -20 >&2
        return 1
    fi
    out=$(qemu-img convert -f "$fmt" -O raw "$img" "$d/q.raw" 2>&1 &&
        stress_masked_cmp "$d/q.raw" "$d/shadow.raw" "$d/mask.raw" "qemu-img convert after SIGKILL" 2>&1 &&
        "$VBD_BUILD/src/tools/vbd-img" convert -f "$fmt" -O raw "$img" "$d/v.raw" 2>&1 &&
        stress_masked_cmp "$d/v.raw" "$d/shadow.raw" "$d/mask.raw" "vbd-img convert after SIGKILL" 2>&1) || {
        echo "stress: FAILED kind=$kind crash seed=$seed ($STRESS_LAST_VARIANT): $out" >&2
        return 1
    }
    # vbd writes on from what the crash left (qed: its need-check repair first)
    timeout -k 10 600 "$STRESS_BIN" --seed $((seed + 1)) --ops 300 --cluster-size "$cs" --init "$d/q.raw" \
        --shadow-out "$d/shadow2.raw" ${backraw:+--backing "$backraw"} $([ "$once" = 1 ] && echo --write-once) --qd "${STRESS_QD:-16}" -f "$fmt" "$img" \
        >"$d/stress2.log" 2>&1 || {
        echo "stress: FAILED kind=$kind crash seed=$seed: vbd-stress on the image after the crash:" >&2
        tail -30 "$d/stress2.log" >&2
        return 1
    }
    # leaks the crash left stay (QEMU's qed repair on open keeps them too): exit 3 passes
    rc=0
    out=$(qemu-img check -f "$fmt" "$img" 2>&1) || rc=$?
    case $rc in 0 | 3) ;; 63) case $out in *"does not support checks"*) ;; *) rc=1 ;; esac ;; *) rc=1 ;; esac
    if [ $rc = 1 ]; then
        echo "stress: FAILED kind=$kind crash seed=$seed: qemu-img check after the crash and more writes:" >&2
        echo "$out" | tail -20 >&2
        return 1
    fi
    out=$(qemu-img compare -f "$fmt" -F raw "$img" "$d/shadow2.raw" 2>&1) || {
        echo "stress: FAILED kind=$kind crash seed=$seed: after the crash and more writes the image differs from the shadow: $out" >&2
        return 1
    }
    return 0
}
