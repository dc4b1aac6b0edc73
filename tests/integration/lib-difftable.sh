# Helpers of the table-driven differential tests (img-diff-table.sh,
# io-diff-table.sh): each case line runs under a QEMU tool and under vbd's,
# each in its own fresh copy of the base/ files the line names. Sourced
# after lib.sh; the test sets base_files (the names in base/), line (the
# case being read) and known (its known difference's reason, if any).

# make_base_images: FORMATS, and in base/ one 4 MiB image of each made by
# qemu-img (q-FMT.FMT) and by vbd-img (v-FMT.FMT), with the same data and
# zeroes written by qemu-io into each
make_base_images() {
    local f k
    FORMATS="raw qcow2 vmdk vhdx vpc vdi qed parallels"
    mkdir base
    for f in $FORMATS; do
        must qemu-img create -q -f $f base/q-$f.$f 4M
        must "$VBD_IMG" create -q -f $f base/v-$f.$f 4M
        for k in q v; do
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
