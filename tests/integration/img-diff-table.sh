#!/bin/bash
# vbd-img beside qemu-img 7.2, table-driven: every case below is one line,
# the command line after the tool's name. Both tools run it, each in its
# own fresh copy of base/ (lib.sh tools_run), and must give the same exit
# code, stdout and stderr (the tool's name aside; disk sizes and timings
# masked), leave the same files, and every image either wrote must be the
# same image to qemu-img compare, with the same qemu-img check verdict.
# base/ holds one image of each format vbd writes (raw, qcow2, vmdk, vhdx,
# vpc, vdi, qed, parallels) made by qemu-img (q-FMT.FMT) and the same made
# by vbd-img (v-FMT.FMT), data and zeroes written by qemu-io, plus a
# read-only image and one that a qemu-nbd holds (its lock).
#
# A case line: [@GLOB] ARGS... (shell words). %i in ARGS stands for each
# image of base/ whose name matches GLOB (default: every q-* and v-* image),
# one case per image, %f for its format; %F stands for each format in turn.
# "(no arguments)": the tool alone. A line "!REASON | CASE" is a known,
# intended difference: both run (vbd-img may not crash), the output is not
# compared, REASON is printed. Every case runs; the test fails at the end
# if any differed (each difference printed as diff -u, qemu-img's first).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io qemu-nbd
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
must qemu-img create -q -f qcow2 -b q-qcow2.qcow2 -F qcow2 base/ov.qcow2
must qemu-io -f qcow2 -c 'write -P 3 512k 64k' base/ov.qcow2 >/dev/null
# outside base/ (named ../NAME by the cases, from q/ and v/): read-only, and
# one a qemu-nbd holds open for writing (its lock)
must qemu-img create -q -f qcow2 ro.qcow2 4M
chmod a-w ro.qcow2
must qemu-img create -q -f qcow2 locked.qcow2 4M
must qemu-nbd --fork --pid-file "$T/nbd.pid" -k "$T/nbd.sock" -f qcow2 "$T/locked.qcow2"
on_exit "kill \$(cat '$T/nbd.pid' 2>/dev/null) 2>/dev/null"

# one case: tools_run, the varying parts masked, tools_same, the images
# either wrote compared
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
    # ov.qcow2's backing file
    [ ! -e $k/ov.qcow2 ] || cp -a base/q-qcow2.qcow2 $k/
    (cd $k && "$tool" "$@" >../$k.out 2>../$k.err </dev/null; echo "exit $?" >>../$k.out)
    sed -i -e "s#${tool##*/}#TOOL#g" -e '$a\' $k.out $k.err
}
run_case() {
    local f
    # side by side: the two halves need not wait for each other
    side q qemu-img "$@" &
    side v "$VBD_IMG" "$@"
    wait $!
    ! grep -q -e 'Sanitizer' -e 'runtime error' v.err || fail "vbd-img $*: $(cat v.err)"
    sed -i -E -e '/^disk size: /d' -e '/"actual-size": /d' \
        -e 's/^Run completed in [0-9.]+ seconds\.$/Run completed in T seconds./' q.out v.out
    if [ -n "$known" ]; then
        grep -q '^exit 1[0-9][0-9]' v.out && fail "vbd-img $*: $(tail -1 v.out)"
        echo "known difference ($known): $*"
        return
    fi
    tools_same "$@"
    for f in $(cd q && ls -A); do
        [ -f q/$f ] && { [ ! -e base/$f ] || [ q/$f -nt base/$f ] || [ v/$f -nt base/$f ]; } || continue
        qemu-img compare -U -q q/$f v/$f || fail "$*: $f: qemu-img compare: not the same image"
        [ "$(qemu-img check -U q/$f 2>&1 | sed '/^Image end offset/d; / allocated, .* fragmented, /d'; echo $?)" = \
          "$(qemu-img check -U v/$f 2>&1 | sed '/^Image end offset/d; / allocated, .* fragmented, /d'; echo $?)" ] ||
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
    if [ "$line" = '(no arguments)' ]; then set --; else eval "set -- $line"; fi
    imgs=('') fmts=('')
    [[ $line != *%[if]* ]] || {
        imgs=()
        # shellcheck disable=SC2053 # a pattern
        for i in "${base_files[@]}"; do [[ $i != $glob ]] || imgs+=("$i"); done
    }
    [[ $line != *%F* ]] || read -ra fmts <<<"$FORMATS"
    for i in "${imgs[@]}"; do
        for F in "${fmts[@]}"; do
            args=("${@//%i/$i}")
            args=("${args[@]//%f/${i##*.}}")
            # every case runs; a difference fails the test at the end
            (run_case "${args[@]//%F/$F}") || nfailed=$((nfailed + 1))
            ncases=$((ncases + 1))
        done
    done
done <<'CASES'
# the command line itself
(no arguments)
bogus
-x
-T
!qemu-img prints its help text; vbd-img's lists its own verbs and formats | --help
!the version and copyright lines name each program's own | --version
help
!vbd has no trace events: -T is taken and ignored, with vbd's warning (qemu-img warns of each event it lacks) | -T foo info q-raw.raw

# info, map, check: every format, made by either tool
info %i
info --output=json %i
map %i
map --output=json %i
check %i
check --output=json %i
# the write verbs on every format
resize %i +1M
resize --shrink -f %f %i 1M
snapshot -l %i
snapshot -c s1 %i
bitmap --add %i b1
amend -o size=8M %i
rebase -u -b q-raw.raw -F raw %i
commit %i
measure -O qcow2 %i
measure --output=json -O raw %i
convert -O raw %i n.raw
convert -O qcow2 %i n.qcow2
@q-qcow2.qcow2 convert -O %F %i n.img
@q-raw.raw convert -O %F %i n.img
dd -O raw if=%i of=n.raw bs=64k count=3
bench -c 4 %i
compare %i q-raw.raw
compare -s %i q-raw.raw
bench -c 4 -w -d 2 -s 4k %i
# a format named that is not the image's
@q-qcow2.qcow2 info -f %F %i
@q-raw.raw info -f %F %i
@q-vpc.vpc check -f %F %i
# images: a backing chain, read-only, locked by a qemu-nbd
info --backing-chain ov.qcow2
info --backing-chain --output=json ov.qcow2
map --output=json ov.qcow2
commit -d ov.qcow2
commit -p ov.qcow2
rebase -b q-raw.raw -F raw ov.qcow2
rebase -b '' ov.qcow2
compare ov.qcow2 q-qcow2.qcow2
convert -B q-qcow2.qcow2 -F qcow2 -O qcow2 ov.qcow2 n.qcow2
info ../ro.qcow2
resize ../ro.qcow2 8M
check -r all ../ro.qcow2
snapshot -c s ../ro.qcow2
bitmap --add ../ro.qcow2 b
amend -o lazy_refcounts=on ../ro.qcow2
info ../locked.qcow2
info -U ../locked.qcow2
check ../locked.qcow2
map ../locked.qcow2
map -U --output=json ../locked.qcow2
resize ../locked.qcow2 8M
compare ../locked.qcow2 q-qcow2.qcow2
compare -U ../locked.qcow2 q-qcow2.qcow2
convert -O raw ../locked.qcow2 n.raw
convert -U -O raw ../locked.qcow2 n.raw
snapshot -l ../locked.qcow2
bitmap --add ../locked.qcow2 b
measure -O qcow2 ../locked.qcow2
dd if=../locked.qcow2 of=n.raw
bench -c 1 ../locked.qcow2
# sizes as qemu-img reads them
create -f raw n.raw 1.5k
create -f raw n.raw 1b
create -f raw n.raw 1T
create -f qcow2 n.qcow2 1P
create -f raw n.raw 1e3
create -f raw n.raw 0.5M
create -f qcow2 n.qcow2 -o cluster_size=3k 1M
create -f %F n.img 1.5M
create -f %F -o preallocation=full n.img 1M
create -f %F -o preallocation=off n.img 1M
# --object secret, -q
info --object secret,id=s0,data=x q-qcow2.qcow2
info --object secret,id=s0 q-qcow2.qcow2
info --object bogus,id=x q-qcow2.qcow2
info --object help
check -q q-qcow2.qcow2
convert -q -O raw q-qcow2.qcow2 n.raw
CASES
[ $nfailed = 0 ] || fail "$nfailed of $ncases cases differ (above)"
echo "PASS ($ncases cases)"
