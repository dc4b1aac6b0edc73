# Helpers of the table-driven differential tests (img-diff-table.sh,
# io-diff-table.sh, img-hostile-diff.sh, io-hostile-diff.sh): each case line runs under a QEMU tool and under vbd's,
# each in its own fresh copy of the base/ files the line names. Sourced
# after lib.sh; the test sets base_files (the names in base/), line (the
# case being read) and known (its known difference's reason, if any).

# a case's @GLOB may leave images out: @c-!(a|b).* (extglob)
shopt -s extglob

# make_base_images [KINDS]: FORMATS, and in base/ one 4 MiB image of each
# made by qemu-img (q-FMT.FMT) and by vbd-img (v-FMT.FMT) (KINDS "q": only
# qemu-img's), with the same data and zeroes written by qemu-io into each
make_base_images() {
    local f k kinds=${1:-q v}
    FORMATS="raw qcow2 vmdk vhdx vpc vdi qed parallels"
    mkdir base
    for f in $FORMATS; do
        must qemu-img create -q -f $f base/q-$f.$f 4M
        [ "$kinds" = q ] || must "$VBD_IMG" create -q -f $f base/v-$f.$f 4M
        for k in $kinds; do
            must qemu-io -f $f -c 'write -P 1 0 64k' -c 'write -P 2 1M 512' -c 'write -z 2M 64k' base/$k-$f.$f >/dev/null
        done
    done
}

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
    # an overlay's backing file (img-diff-table's ov.qcow2)
    [ ! -e $k/ov.qcow2 ] || cp -a base/q-qcow2.qcow2 $k/
    (cd $k && "$tool" "$@" >../$k.out 2>../$k.err </dev/null; echo "exit $?" >>../$k.out)
    sed -i -e "s#${tool##*/}#TOOL#g" -e '$a\' $k.out $k.err
}

# parse_case_line: a "!REASON | CASE" line's REASON into known, then an
# "@GLOB CASE" line's GLOB into glob (default: every q-* and v-* image);
# line keeps the case
parse_case_line() {
    known= glob='[qv]-*'
    if [ "${line:0:1}" = '!' ]; then
        known=${line%%|*}
        known=${known#!}
        known=${known% }
        line=${line#*|}
        line=${line#"${line%%[! ]*}"} # "!REASON | @GLOB CASE" too
    fi
    case $line in @*) glob=${line%% *} glob=${glob#@} line=${line#* } ;; esac
}

# case_images: imgs, the images of base/ matching glob when the line names
# one (%i or %f), else one empty name (the case runs once)
case_images() {
    local i
    imgs=('')
    [[ $line != *%[if]* ]] || {
        imgs=()
        # shellcheck disable=SC2053 # a pattern
        for i in "${base_files[@]}"; do [[ $i != $glob ]] || imgs+=("$i"); done
    }
}

# known_difference TOOL ARGS...: for a case marked known (q.out and v.out
# written), vbd's tool did not crash and (unless the reason starts "not
# fixed") exits as QEMU's; true when the case was a known difference
known_difference() {
    local tool=$1
    shift
    [ -n "$known" ] || return 1
    ! grep -q '^exit 1[0-9][0-9]' v.out || fail "$tool $*: $(tail -1 v.out)"
    [ "$(tail -1 q.out)" = "$(tail -1 v.out)" ] || [[ $known == "not fixed"* ]] ||
        fail "$tool $*: $(tail -1 v.out), qemu's $(tail -1 q.out)"
    echo "known difference ($known): $*"
}

# check_verdicts_same WHAT OPTION... FILE: qemu-img check OPTION... gives
# q/FILE and v/FILE the same report (allocation figures aside) and exit code
check_verdicts_same() {
    local what=$1 f=${!#} k rc
    local -a opts=("${@:2:$#-2}") v=()
    for k in q v; do
        rc=0
        qemu-img check "${opts[@]}" $k/$f >$k.check 2>&1 || rc=$?
        v+=("$(sed '/^Image end offset/d; / allocated, .* fragmented, /d' $k.check; echo "exit $rc")")
    done
    [ "${v[0]}" = "${v[1]}" ] || fail "$what: $f: qemu-img check differs"
}

# feature_bits_same WHAT FILE: a qcow2 image left by both tools has the
# same feature bits in q/FILE and v/FILE (incompatible: dirty, corrupt;
# compatible; autoclear: what an open for writing clears), which qemu-img
# compare and check do not show
feature_bits_same() {
    local q v
    case $2 in *.qcow2) ;; *) return 0 ;; esac
    q=$(od -An -tx1 -j72 -N24 q/$2) v=$(od -An -tx1 -j72 -N24 v/$2)
    [ "$q" = "$v" ] || fail "$1: $2: qcow2 feature bits (header bytes 72-95) differ: vbd's $v, qemu's $q"
}

# img_case ARGS...: one qemu-img case (img-diff-table.sh,
# hostile-diff-table.sh): both tools side by side, the varying parts
# masked, tools_same, the images either wrote compared
img_case() {
    local f fiemap="python3 $VBD_ROOT/tests/integration/fiemap.py"
    # side by side: the two halves need not wait for each other
    side q qemu-img "$@" &
    side v "$VBD_IMG" "$@"
    wait $!
    ! grep -q -e 'Sanitizer' -e 'runtime error' v.err || fail "vbd-img $*: $(cat v.err)"
    # QEMU numbers its nodes without a name (#blockNNN) as it makes them
    sed -i -E -e '/^disk size: /d' -e '/"actual-size": /d' -e 's/#block[0-9]+/#blockN/g' \
        -e 's/^Run completed in [0-9.]+ seconds\.$/Run completed in T seconds./' q.out v.out q.err v.err
    known_difference vbd-img "$@" && return
    tools_same "$@"
    for f in $(cd q && ls -A); do
        [ -f q/$f ] && { [ ! -e base/$f ] || [ q/$f -nt base/$f ] || [ v/$f -nt base/$f ]; } || continue
        # an image QEMU cannot open (dd's vmdk of size 0): vbd's is one too,
        # with the same reason
        if ! (cd q && qemu-img info -U $f >/dev/null 2>&1); then
            [ "$(cd q && qemu-img info -U $f 2>&1)" = "$(cd v && qemu-img info -U $f 2>&1)" ] ||
                fail "$*: $f: qemu-img cannot open qemu-img's image, and vbd-img's otherwise"
            continue
        fi
        qemu-img compare -U -q q/$f v/$f || fail "$*: $f: qemu-img compare: not the same image"
        check_verdicts_same "$*" -U $f
        feature_bits_same "$*" $f
        # what create, resize and amend make is laid out as qemu-img lays
        # it out: a qcow2 image byte for byte (nothing in it is random),
        # others as qemu-img map sees them (host offsets too; a vhdx's
        # GUIDs and a vmdk's CID are random)
        # (AMEND_LAYOUT_SKIP: a glob of images whose amend is known to be
        # laid out otherwise, AMEND_LAYOUT_REASON why)
        case $1:$f in
        amend:${AMEND_LAYOUT_SKIP:-/})
            echo "$*: $f: same image, not laid out as qemu-img's (known: $AMEND_LAYOUT_REASON)" ;;
        create:*.qcow2 | resize:*.qcow2 | amend:*.qcow2)
            # (sparse-cmp.py: cmp reading only the allocated ranges, so
            # that images of terabytes compare in seconds)
            python3 "$VBD_ROOT/tests/integration/sparse-cmp.py" q/$f v/$f >/dev/null ||
                fail "$*: $f: not qemu-img's image byte for byte"
            # and the file takes its space where qemu-img's takes it (a
            # shrink discards what it frees)
            [ "$(cd q && $fiemap $f)" = "$(cd v && $fiemap $f)" ] ||
                fail "$*: $f: allocated otherwise: $(cd v && $fiemap $f), qemu-img's $(cd q && $fiemap $f)" ;;
        create:*.raw | resize:*.raw | amend:*) ;;
        create:* | resize:*)
            [ "$(cd q && qemu-img map -U --output=json $f 2>&1)" = "$(cd v && qemu-img map -U --output=json $f 2>&1)" ] ||
                fail "$*: $f: qemu-img map differs (host offsets)" ;;
        esac
    done
}

# io_case ARGS...: one qemu-io case (io-diff-table.sh, hostile-diff-table.sh):
# both tools side by side, the timing lines masked, tools_same, the images
# either left compared
io_case() {
    local f fmt
    # side by side: the two halves need not wait for each other
    side q qemu-io "$@" &
    side v "$VBD_IO" "$@"
    wait $!
    ! grep -q -e 'Sanitizer' -e 'runtime error' v.err v.out || fail "vbd-io $*: $(cat v.err)"
    # the timing line: elapsed time and rates differ run to run
    sed -i -E -e 's/ops; [0-9:.]+( sec)? \(.*\)$/ops; T/' \
        -e 's/^([0-9]+,[0-9]+),[0-9:.]+,[0-9.]+,[0-9.]+$/\1,T/' q.out v.out
    known_difference vbd-io "$@" && return
    tools_same "$@"
    for f in $(cd q && ls -A); do
        cmp -s q/$f v/$f && continue
        fmt=${f##*.}
        case " $FORMATS " in *" $fmt "*) ;; *) fail "$*: $f differs" ;; esac
        qemu-img compare -q -f $fmt -F $fmt q/$f v/$f || fail "$*: $f: qemu-img compare: not the same image"
        check_verdicts_same "$*" -f $fmt $f
        feature_bits_same "$*" $f
    done
}

# run_cases CASE-FUNCTION: every case line of stdin (the table) through
# CASE-FUNCTION, one case per image and format it names (see
# img-diff-table.sh); fails at the end if any differed, else prints PASS
run_cases() {
    local fn=$1 line known glob i F ncases=0 nfailed=0
    local -a imgs fmts args
    mapfile -t base_files < <(cd base && ls -A)
    while IFS= read -r line; do
        case $line in '' | '#'*) continue ;; esac
        # DIFF_TABLE_FILTER=REGEX: only the case lines it matches (to loop a few)
        [ -z "${DIFF_TABLE_FILTER:-}" ] || [[ $line =~ $DIFF_TABLE_FILTER ]] || continue
        parse_case_line
        if [ "$line" = '(no arguments)' ]; then set --; else eval "set -- $line"; fi
        case_images
        fmts=('')
        [[ $line != *%F* ]] || read -ra fmts <<<"$FORMATS"
        for i in "${imgs[@]}"; do
            for F in "${fmts[@]}"; do
                args=("${@//%i/$i}")
                args=("${args[@]//%f/${i##*.}}")
                # every case runs; a difference fails the test at the end
                ("$fn" "${args[@]//%F/$F}") || nfailed=$((nfailed + 1))
                ncases=$((ncases + 1))
            done
        done
    done
    [ $nfailed = 0 ] || fail "$nfailed of $ncases cases differ (above)"
    echo "PASS ($ncases cases)"
}

# poke_images: in base/, for each line of stdin "NAME FROM EDIT...", NAME a
# copy of base/FROM with each EDIT made: "OFFSET STRUCT VALUE" packs VALUE
# (a number, or a string for an "Ns" STRUCT) with python's struct at
# OFFSET, "size N" truncates or extends the file to N bytes, "vhdsum
# START LENGTH FIELD" writes at FIELD the VHD checksum of the LENGTH bytes
# at START (their one's complement sum, FIELD's 4 bytes taken as 0)
poke_images() {
    python3 -c '
import shutil, struct, sys
for line in sys.stdin:
    w = line.split()
    if not w or w[0].startswith("#"):
        continue
    name, edits = "base/" + w[0], w[2:]
    shutil.copyfile("base/" + w[1], name)
    with open(name, "r+b") as f:
        while edits:
            if edits[0] == "size":
                f.truncate(int(edits[1], 0))
            elif edits[0] == "vhdsum":
                start, length, field = (int(x, 0) for x in edits[1:4])
                f.seek(field)
                f.write(bytes(4))
                f.seek(start)
                total = sum(f.read(length))
                f.seek(field)
                f.write(struct.pack(">I", ~total & 0xffffffff))
                edits = edits[2:]
            else:
                f.seek(int(edits[0], 0))
                v = edits[2].encode() if edits[1].endswith("s") else int(edits[2], 0)
                f.write(struct.pack(edits[1], v))
                edits = edits[1:]
            edits = edits[2:]
'
}

# make_hostile_images: beside make_base_images' q-FMT.FMT images, copies
# with one header field or table entry changed, the scenarios of QEMU's
# iotests (read for the choice of fields; nothing copied): h-* are refused
# at the open by QEMU's tools, c-* are opened (damaged metadata inside, the
# dirty/corrupt/unknown feature bits, leaks and refcounts off by one).
# A 4 MiB qcow2 of 64 KiB clusters from qemu-img: refcount table at
# 0x10000, its block at 0x20000, L1 at 0x30000, the first L2 at 0x40000,
# data clusters 5 and 6, header length 112, the feature name table's first
# entry at 120.
make_hostile_images() {
    poke_images <<'HOSTILE'
# qcow2 header fields out of range (iotests 080, 036)
h-hdrlen-max.qcow2 q-qcow2.qcow2 100 >I 0xffffffff
h-hdrlen-big.qcow2 q-qcow2.qcow2 100 >I 0x7fffffff
h-hdrlen-short.qcow2 q-qcow2.qcow2 100 >I 72
h-ext-huge.qcow2 q-qcow2.qcow2 8 >Q 0xffffffffffffffff 112 >I 0x12345678 116 >I 0x7fffffff
h-ext-past.qcow2 q-qcow2.qcow2 8 >Q 116 112 >I 0x12345678 116 >I 0x7fffffff
h-ext-big.qcow2 q-qcow2.qcow2 112 >I 0x12345678 116 >I 0x7fffffff
h-reft-max.qcow2 q-qcow2.qcow2 56 >I 0xffffffff
h-reft-big.qcow2 q-qcow2.qcow2 56 >I 0x00020001
h-reft-zero.qcow2 q-qcow2.qcow2 56 >I 0
h-reft-odd.qcow2 q-qcow2.qcow2 48 >Q 0x1234567890abcdef
h-reft-far.qcow2 q-qcow2.qcow2 48 >Q 0xffffffffffff0000 56 >I 0x7f
h-snap-max.qcow2 q-qcow2.qcow2 60 >I 0xffffffff
h-snap-big.qcow2 q-qcow2.qcow2 60 >I 0x7fffffff
h-snap-far.qcow2 q-qcow2.qcow2 64 >Q 0xffffffffffff0000 60 >I 0xffff
h-snap-odd.qcow2 q-qcow2.qcow2 64 >Q 0x1234567890abcdef
h-snap-odd1.qcow2 q-qcow2.qcow2 64 >Q 0x1234567890abcdef 60 >I 1
h-l1-max.qcow2 q-qcow2.qcow2 36 >I 0xffffffff
h-l1-big.qcow2 q-qcow2.qcow2 36 >I 0x7fffffff
h-l1-zero.qcow2 q-qcow2.qcow2 36 >I 0
h-l1-far.qcow2 q-qcow2.qcow2 40 >Q 0x7fffffffffff0000 36 >I 0xffff
h-l1-odd.qcow2 q-qcow2.qcow2 40 >Q 0x1234567890abcdef 36 >I 1
h-size-huge.qcow2 q-qcow2.qcow2 24 >Q 0x7fffffffffffffff
h-backing-long.qcow2 q-qcow2.qcow2 8 >Q 0x1000 16 >I 0xffffffff
h-backing-far.qcow2 q-qcow2.qcow2 8 >Q 0x20000 16 >I 4
h-version4.qcow2 q-qcow2.qcow2 4 >I 4
h-version1.qcow2 q-qcow2.qcow2 4 >I 1
h-cbits8.qcow2 q-qcow2.qcow2 20 >I 8
h-cbits30.qcow2 q-qcow2.qcow2 20 >I 30
h-crypt-aes.qcow2 q-qcow2.qcow2 32 >I 1
h-crypt-bogus.qcow2 q-qcow2.qcow2 32 >I 7
h-refbits7.qcow2 q-qcow2.qcow2 96 >I 7
h-incompat63.qcow2 q-qcow2.qcow2 72 >Q 0x8000000000000000
h-incompat-3.qcow2 q-qcow2.qcow2 72 >Q 0xe000000000000000
h-incompat-named.qcow2 q-qcow2.qcow2 72 >Q 0x8000000000000000 121 B 63 122 46s Test-feature
h-incompat-mixed.qcow2 q-qcow2.qcow2 72 >Q 0xe000000000000000 121 B 61 122 46s test1
# qcow2 opened: feature bits (036, 039, 060), refcounts (039, 060),
# tables pointing into metadata or past the end (060, 080)
c-compat63.qcow2 q-qcow2.qcow2 80 >Q 0x8000000000000000
c-autoclear63.qcow2 q-qcow2.qcow2 88 >Q 0x8000000000000000
c-dirty.qcow2 q-qcow2.qcow2 72 >Q 1
c-corrupt.qcow2 q-qcow2.qcow2 72 >Q 2
c-dirty-leak.qcow2 q-qcow2.qcow2 72 >Q 1 size 0x80000 0x2000e >H 1
c-leak.qcow2 q-qcow2.qcow2 size 0x80000 0x2000e >H 1
c-ref0.qcow2 q-qcow2.qcow2 0x2000a >H 0
c-ref2.qcow2 q-qcow2.qcow2 0x2000a >H 2
c-l2-on-l1.qcow2 q-qcow2.qcow2 0x30000 >Q 0x8000000000030000
c-data-on-rb.qcow2 q-qcow2.qcow2 0x40000 >Q 0x8000000000020000
c-data-on-hdr.qcow2 q-qcow2.qcow2 0x40000 >Q 0x8000000000000000
c-data-far.qcow2 q-qcow2.qcow2 0x40000 >Q 0x8000000001000000
c-data-odd.qcow2 q-qcow2.qcow2 0x40000 >Q 0x8000000000050200
c-l2-odd.qcow2 q-qcow2.qcow2 0x30000 >Q 0x8000000000040200
c-l2-far.qcow2 q-qcow2.qcow2 0x30000 >Q 0x8000000001000000
c-compressed-huge.qcow2 q-qcow2.qcow2 0x40000 >Q 0xbfffffffffff0000
c-trunc.qcow2 q-qcow2.qcow2 size 0x58000
# vmdk (059), vdi (084), vpc, vhdx (headers and region tables, each
# twice), qed, parallels: header fields out of range, truncated files
h-vmdk-gran.vmdk q-vmdk.vmdk 20 <Q 0xffffffffffffffff
h-vmdk-gtes.vmdk q-vmdk.vmdk 44 <I 0xffffffff
h-vmdk-l1.vmdk q-vmdk.vmdk 16 <I 0xffffffff 44 <I 1
h-vmdk-version.vmdk q-vmdk.vmdk 4 <I 4
c-vmdk-gd-far.vmdk q-vmdk.vmdk 56 <Q 0xffffffffff
h-vmdk-trunc.vmdk q-vmdk.vmdk size 0x3000
c-vmdk-desc-far.vmdk q-vmdk.vmdk 28 <Q 0xffffffff
h-vdi-toolarge.vdi q-vdi.vdi 368 <Q 0x1fffff8010000
h-vdi-bii-small.vdi q-vdi.vdi 384 <I 3
h-vdi-bii-huge.vdi q-vdi.vdi 384 <I 0x1fffff81
h-vdi-bs-small.vdi q-vdi.vdi 376 <I 0xfffff
h-vdi-bs-big.vdi q-vdi.vdi 376 <I 0x110000
h-vdi-version.vdi q-vdi.vdi 68 <I 0x00020001
c-vdi-trunc.vdi q-vdi.vdi size 0x100000
h-vpc-cksum.vpc q-vpc.vpc 64 >I 0
h-vpc-bs0.vpc q-vpc.vpc 544 >I 0 vhdsum 512 1024 548
h-vpc-bs-odd.vpc q-vpc.vpc 544 >I 0x3000 vhdsum 512 1024 548
h-vpc-entries.vpc q-vpc.vpc 540 >I 0xffffffff vhdsum 512 1024 548
h-vpc-entries1.vpc q-vpc.vpc 540 >I 1 vhdsum 512 1024 548
h-vpc-bat-far.vpc q-vpc.vpc 528 >Q 0x7fffffffffff0000 vhdsum 512 1024 548
h-vpc-trunc.vpc q-vpc.vpc size 0x200000
c-vpc-dyncksum.vpc q-vpc.vpc 548 >I 0
c-vpc-type.vpc q-vpc.vpc 60 >I 9 vhdsum 0 512 64
c-vhdx-hdr1.vhdx q-vhdx.vhdx 0x10004 <I 0
h-vhdx-hdrs.vhdx q-vhdx.vhdx 0x10004 <I 0 0x20004 <I 0
h-vhdx-rt.vhdx q-vhdx.vhdx 0x30004 <I 0 0x40004 <I 0
h-vhdx-rt1.vhdx q-vhdx.vhdx 0x30004 <I 0
h-qed-cs.qed q-qed.qed 4 <I 3000
h-qed-ts.qed q-qed.qed 8 <I 0
c-qed-hs.qed q-qed.qed 12 <I 0
h-qed-feat.qed q-qed.qed 16 <Q 0x8000000000000000
c-qed-needcheck.qed q-qed.qed 16 <Q 2
h-qed-l1-odd.qed q-qed.qed 40 <Q 0x12345
h-qed-size.qed q-qed.qed 48 <Q 0x7fffffffffffffff
c-qed-autoclear.qed q-qed.qed 32 <Q 0x8000000000000000
h-par-tracks0.parallels q-parallels.parallels 28 <I 0
h-par-bat.parallels q-parallels.parallels 32 <I 0xffffffff
c-par-inuse.parallels q-parallels.parallels 44 <I 0x746F6E59
h-par-version.parallels q-parallels.parallels 16 <I 3
h-par-sectors.parallels q-parallels.parallels 36 <Q 0xffffffffffffffff
c-par-dataoff.parallels q-parallels.parallels 48 <I 1
HOSTILE
}
