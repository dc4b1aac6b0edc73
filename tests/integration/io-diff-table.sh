#!/bin/bash
# vbd-io beside qemu-io 7.2, table-driven: every case below is one line,
# qemu-io's command line (shell words). Both tools run it, each in its own
# fresh copy of base/ (lib.sh tools_run), and must give the same exit
# code, stdout (timing lines masked) and stderr (the tool's name aside),
# and leave images that qemu-img compare calls the same.
# base/ holds one image of each format (raw, qcow2, vmdk, vhdx, vpc, vdi,
# qed, parallels) made by qemu-img (q-FMT.FMT) and by vbd-img (v-FMT.FMT),
# 0x01 in their first 64 KiB, 0x02 in the 512 bytes at 1 MiB, zeroes
# written at 2 MiB.
#
# A case line: [@GLOB] ARGS...; %i in ARGS stands for each image of base/
# whose name matches GLOB (default every q-* and v-* image), one case per
# image, %f for its format. "!REASON | CASE": a known, intended
# difference (run, not compared; REASON printed).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io
cd "$T"
FORMATS="raw qcow2 vmdk vhdx vpc vdi qed parallels"
mkdir base
for f in $FORMATS; do
    must qemu-img create -q -f $f base/q-$f.$f 4M
    must "$VBD_IMG" create -q -f $f base/v-$f.$f 4M
    for k in q v; do
        must qemu-io -f $f -c 'write -P 1 0 64k' -c 'write -P 2 1M 512' -c 'write -z 2M 64k' base/$k-$f.$f >/dev/null
    done
done
printf 'abc' >base/pat

# side K TOOL ARGS...: TOOL ARGS in K/, a copy of the files of base/ that
# ARGS name (a copy of all costs processes a case on a loaded host);
# stdout and "exit N" in K.out, stderr in K.err, the tool's name as TOOL
side() {
    local k=$1 tool=$2 a f
    shift 2
    rm -rf $k && mkdir $k
    for f in "${base_files[@]}"; do
        for a; do
            case $a in *"$f"*) cp -a base/$f $k/ && break ;; esac
        done
    done
    (cd $k && "$tool" "$@" >../$k.out 2>../$k.err </dev/null; echo "exit $?" >>../$k.out)
    sed -i -e "s#${tool##*/}#TOOL#g" -e '$a\' $k.out $k.err
}
run_case() {
    local f fmt
    # side by side: the two halves need not wait for each other
    side q qemu-io "$@" &
    side v "$VBD_IO" "$@"
    wait $!
    ! grep -q -e 'Sanitizer' -e 'runtime error' v.err v.out || fail "vbd-io $*: $(cat v.err)"
    # the timing line: elapsed time and rates differ run to run
    sed -i -E -e 's/ops; [0-9:.]+( sec)? \(.*\)$/ops; T/' \
        -e 's/^([0-9]+,[0-9]+),[0-9:.]+,[0-9.]+,[0-9.]+$/\1,T/' q.out v.out
    if [ -n "$known" ]; then
        grep -q '^exit 1[0-9][0-9]' v.out && fail "vbd-io $*: $(tail -1 v.out)"
        echo "known difference ($known): $*"
        return
    fi
    tools_same "$@"
    for f in $(cd q && ls -A); do
        cmp -s q/$f v/$f && continue
        fmt=${f##*.}
        case " $FORMATS " in *" $fmt "*) ;; *) fail "$*: $f differs" ;; esac
        qemu-img compare -q -f $fmt -F $fmt q/$f v/$f || fail "$*: $f: qemu-img compare: not the same image"
        [ "$(qemu-img check -f $fmt q/$f 2>&1 | sed '/^Image end offset/d; / allocated, .* fragmented, /d'; echo $?)" = \
          "$(qemu-img check -f $fmt v/$f 2>&1 | sed '/^Image end offset/d; / allocated, .* fragmented, /d'; echo $?)" ] ||
            fail "$*: $f: qemu-img check differs"
    done
}

mapfile -t base_files < <(cd base && ls -A)
ncases=0 nfailed=0
while IFS= read -r line; do
    case $line in '' | '#'*) continue ;; esac
    known=
    if [ "${line:0:1}" = '!' ]; then
        known=${line%%|*}
        known=${known#!}
        known=${known% }
        line=${line#*|}
    fi
    glob='[qv]-*'
    case $line in @*) glob=${line%% *} glob=${glob#@} line=${line#* } ;; esac
    eval "set -- $line"
    imgs=('')
    [[ $line != *%[if]* ]] || {
        imgs=()
        # shellcheck disable=SC2053 # a pattern
        for i in "${base_files[@]}"; do [[ $i != $glob ]] || imgs+=("$i"); done
    }
    for i in "${imgs[@]}"; do
        args=("${@//%i/$i}")
        # every case runs; a difference fails the test at the end
        (run_case "${args[@]//%f/${i##*.}}") || nfailed=$((nfailed + 1))
        ncases=$((ncases + 1))
    done
done <<'CASES'
# reads and writes on every format, made by either tool
-f %f -c 'read -P 1 0 64k' -c 'read -P 2 1M 512' -c 'read -P 0 2M 64k' -c 'read -P 0 3M 1M' %i
-f %f -c 'read -v 1M 32' -c 'read -vq 1M 16' %i
-f %f -c 'write -P 5 4k 4k' -c 'read -P 5 4k 4k' -c 'write -P 6 3M 1k' %i
-f %f -c 'write -z 0 64k' -c 'read -P 0 0 64k' -c 'write -z -u 64k 64k' %i
-f %f -c 'writev -P 6 0 512 1k' -c 'readv -P 6 0 512 1k' -c 'readv -v 1M 16 16' %i
-f %f -c 'aio_write -P 7 64k 4k' -c aio_flush -c 'aio_read -P 7 64k 4k' -c aio_flush %i
-f %f -c 'discard 0 64k' -c 'read 0 64k' %i
-f %f -c map %i
-f %f -c 'alloc 0 4M' -c 'alloc 1M 1' -c 'alloc 2M 64k' -c 'alloc 4M 1' %i
-f %f -c length %i
-f %f -c info %i
-f %f -c 'truncate 8M' -c length -c 'truncate 2M' -c length %i
-f %f -c flush -c 'write -f 0 512' %i
-f %f -c 'write -P 8 4M 1' -c 'read 4M 1' -c 'write 4095k 2k' %i
-f %f -c 'write -c 0 64k' %i
-r -f %f -c 'write 0 1' -c 'read -P 1 0 1' %i
-n -f %f -c 'read -P 1 0 4k' -c 'write -P 3 4k 4k' %i
-t none -i native -f %f -c 'write -P 4 0 4k' -c 'read -P 4 0 4k' %i
-i io_uring -f %f -c 'write -P 4 0 4k' -c 'read -P 4 0 4k' %i
-U -r -f %f -c 'read 0 1' %i
--image-opts -c 'read -P 1 0 1' -c 'write -P 9 0 1' driver=%f,file.filename=%i
-c 'open -o driver=%f %i' -c 'read -P 1 0 1' -c close -c 'read 0 1'
-c 'open -r %i' -c 'write 0 1' -c info
# the command line and the commands' own errors
-f raw -c 'read 0 1' nosuch
-f qcow2 -c 'read 0 1' q-raw.raw
-f bogus -c 'read 0 1' q-raw.raw
-t bogus -c 'read 0 1' q-raw.raw
-i bogus -c 'read 0 1' q-raw.raw
-d bogus -c 'read 0 1' q-raw.raw
-c 'read 0 1' -c 'length' q-raw.raw
-c length q-qcow2.qcow2 q-raw.raw
-f raw -c 'truncate x' -c 'truncate' -c 'discard' -c 'discard x 1' -c 'alloc' -c 'alloc x' -c 'map 1' q-raw.raw
-f raw -c 'aio_write' -c 'aio_read' -c 'aio_read x 1' -c 'readv' -c 'writev 0' -c 'flush 1' -c 'length 1' -c 'info 1' q-raw.raw
-f qcow2 -c 'discard -q 0 64k' -c 'discard -C 0 64k' -c 'discard 0 x' -c 'discard 1M 3M' q-qcow2.qcow2
-f raw -c 'read -P 1 -C 0 1' -c 'write -u 0 1' -c 'write -z -c 0 64k' q-raw.raw
CASES
[ $nfailed = 0 ] || fail "$nfailed of $ncases cases differ (above)"
echo "PASS ($ncases cases)"
