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
# difference (run; only the exit status compared, unless REASON starts
# "not fixed"; REASON printed).
# Runtime (ASan): 16-50 s at load 10-22, up to 4.5 min at load 35.
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
        # the exit status is the same unless the difference is not fixed yet
        [ "$(tail -1 q.out)" = "$(tail -1 v.out)" ] || [[ $known == "not fixed"* ]] ||
            fail "vbd-io $*: $(tail -1 v.out), qemu's $(tail -1 q.out)"
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
# what each format reports, on the images vbd-img made, through both tools
@v-* -f %f -c map -c 'alloc 0 4M' -c 'alloc 2M 64k' -c length -c info %i
# reads, writes, zeroes, vectors, aio, truncate, flush on every format
@q-* -f %f -c 'read -P 1 0 64k' -c 'read -P 2 1M 512' -c 'read -P 0 2M 64k' -c 'write -P 5 4k 4k' -c 'read -P 5 4k 4k' -c 'writev -P 6 64k 512 1k' -c 'readv -P 6 64k 512 1k' -c 'aio_write -P 7 128k 4k' -c aio_flush -c 'read -P 7 128k 4k' -c 'write -z 0 64k' -c 'read -P 0 0 64k' -c 'truncate 8M' -c length -c flush %i
@q-* -f %f -c 'discard 0 64k' -c 'read -P 0 0 64k' -c 'alloc 0 64k' %i
!README: vmdk (sparse) and vdi (dynamic): write -z over an unallocated grain or block leaves it unallocated (qemu-io writes zeroes into a new one) | -f vmdk -c 'write -z -u 64k 64k' -c map q-vmdk.vmdk

# the command line's options
-r -f qcow2 -c 'write 0 1' -c 'read -P 1 0 1' v-qcow2.qcow2
-n -f raw -c 'read -P 1 0 4k' -c 'write -P 3 4k 4k' q-raw.raw
-t none -i native -f qcow2 -c 'write -P 4 0 4k' -c 'read -P 4 0 4k' q-qcow2.qcow2
-U -r -f vpc -c 'read -P 1 0 1' q-vpc.vpc
--image-opts -c 'read -P 1 0 1' -c 'write -P 9 0 1' driver=vhdx,file.filename=v-vhdx.vhdx
-c 'open -o driver=qed v-qed.qed' -c 'read -P 1 0 1' -c close -c 'read 0 1'
# read-only=on without -r: refused at the open
--image-opts -c 'read 0 1' driver=qcow2,file.filename=q-qcow2.qcow2,read-only=on
-c 'open -o read-only=on,driver=vdi q-vdi.vdi' -c 'read 0 1'

# errors: the command line's, the commands'
-f raw -c 'read 0 1' nosuch
-f qcow2 -c 'read 0 1' q-raw.raw
-f bogus -c 'read 0 1' q-raw.raw
-t bogus -c 'read 0 1' q-raw.raw
!README: the usage text (printed for two file names, exit 1 both) is vbd-io's | -c length q-qcow2.qcow2 q-raw.raw
-f raw -c 'truncate x' -c 'discard' -c 'discard x 1' -c 'alloc' -c 'alloc x' -c 'map 1' -c 'aio_read x 1' -c 'writev 0' -c 'flush 1' q-raw.raw
CASES
[ $nfailed = 0 ] || fail "$nfailed of $ncases cases differ (above)"
echo "PASS ($ncases cases)"
