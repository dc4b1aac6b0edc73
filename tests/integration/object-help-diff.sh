#!/bin/bash
# --object help and --object TYPE,help, as qemu-storage-daemon 7.2,
# qemu-nbd and qemu-img answer them: exit status 0, "List of user
# creatable objects:" with the types the vbd tool makes (each one of
# QEMU's, sorted as QEMU sorts them), "TYPE options:" with qsd's lines for
# that type (same names, types and order), less only the properties vbd
# refuses at object-add (named below, each checked refused); a type no
# tool makes (nosuch) gets the list, as in QEMU, and so does one QEMU
# makes and the vbd tool does not (main-loop; QEMU lists its options); a help
# that is not one (qom-type=help, JSON, help=on) is refused with the QEMU
# tool's exit status and words. Main's vbd-daemon and vbd-nbd refused
# --object help ("does not accept value 'help'") and TYPE,help ("'id' is
# missing"); main's vbd-img listed the types but refused TYPE,help.
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-nbd qemu-img
cd "$T"
ndiff=0
differ() { echo "DIFF $*"; ndiff=$((ndiff + 1)); }
# the properties vbd refuses (TYPE.NAME), left out of its help
refused="secret.iv secret.keyid tls-creds-x509.passwordid tls-creds-x509.sanity-check"
# run NAME CMD...: stdout in NAME.out, stderr (program name normalised) in NAME.err, status in NAME.rc
run() {
    local name=$1; shift
    timeout -k 5 60 "$@" </dev/null >"$name.out" 2>"$name.raw"
    echo $? >"$name.rc"
    sed -E 's#^([^ :]*/)?(qemu-storage-daemon|vbd-daemon|qemu-nbd|vbd-nbd|qemu-img|vbd-img):#PROG:#' "$name.raw" >"$name.err"
    ! grep -q -e Sanitizer -e 'runtime error' "$name.raw" || fail "$*: $(cat "$name.raw")"
}
# each QEMU tool and its vbd tool, as words before the --object (qemu-img: the info verb)
for pair in "qemu-storage-daemon|$VBD_DAEMON" "qemu-nbd|$VBD_NBD" "qemu-img info|$VBD_IMG info"; do
    q=${pair%%|*} v=${pair#*|}
    qn=${q%% *}
    for h in help '?' nosuch,help; do
        # shellcheck disable=SC2086 # $q, $v: the tool and its verb
        run q $q --object "$h"
        # shellcheck disable=SC2086
        run v $v --object "$h"
        [ "$(cat q.rc)" = 0 ] && [ "$(cat v.rc)" = 0 ] || differ "$qn --object $h: exit status $(cat q.rc), vbd $(cat v.rc): $(cat v.err)"
        [ "$(head -1 v.out)" = "List of user creatable objects:" ] || differ "$qn --object $h: vbd's first line: $(head -1 v.out)"
        tail -n +2 v.out | LC_ALL=C sort -c 2>/dev/null || differ "$qn --object $h: vbd's list is not sorted: $(cat v.out)"
        extra=$(comm -13 <(LC_ALL=C sort q.out) <(LC_ALL=C sort v.out))
        [ -z "$extra" ] || differ "$qn --object $h: vbd lists what QEMU does not: $extra"
    done
    types=$(tail -n +2 v.out | tr -d ' ')
    [ -n "$types" ] || differ "$qn: vbd lists no type"
    # a type QEMU makes and vbd does not: QEMU lists its options, vbd its types
    cp v.out list.out
    # shellcheck disable=SC2086
    run v $v --object main-loop,help
    [ "$(cat v.rc)" = 0 ] && cmp -s v.out list.out || differ "$qn --object main-loop,help: vbd's exit status $(cat v.rc), $(cat v.out)"
    for ty in $types iothread; do
        # the other spellings of a type's help once (iothread): each costs two tool starts
        forms=("$ty,help")
        [ "$ty" != iothread ] || forms+=("$ty,id=x,help" "qom-type=$ty,help")
        for h in "${forms[@]}"; do
            # shellcheck disable=SC2086
            run q $q --object "$h"
            # shellcheck disable=SC2086
            run v $v --object "$h"
            [ "$(cat q.rc)" = 0 ] && [ "$(cat v.rc)" = 0 ] || differ "$qn --object $h: exit status $(cat q.rc), vbd $(cat v.rc): $(cat v.err)"
            if ! grep -qx "$ty" <<<"$types"; then
                # a type this vbd tool does not make (vbd-img's iothread): the list
                [ "$(head -1 v.out)" = "List of user creatable objects:" ] || differ "$qn --object $h: $(cat v.out)"
                continue
            fi
            # qsd's lines less the refused ones, in qsd's order
            want=$(grep -v -x -F -f <(for r in $refused; do [ "${r%%.*}" = "$ty" ] && echo "  ${r#*.}=<$(grep -o "^  ${r#*.}=<[^>]*>" q.out | sed 's/.*=<//; s/>$//')>"; done; echo '#none#') q.out)
            [ "$(cat v.out)" = "$want" ] || differ "$qn --object $h:$(diff <(echo "$want") v.out | sed 's/^/    /')"
        done
    done
    # not a help request: the same refusal
    for h in qom-type=help '{"qom-type":"help"}' iothread,help=on; do
        # shellcheck disable=SC2086
        run q $q --object "$h"
        # shellcheck disable=SC2086
        run v $v --object "$h"
        [ "$(cat q.rc)" = "$(cat v.rc)" ] && [ "$(cat q.rc)" != 0 ] || differ "$qn --object $h: exit status $(cat q.rc), vbd $(cat v.rc)"
        [ "$qn" = qemu-img ] || cmp -s q.err v.err || differ "$qn --object $h:$(diff q.err v.err | sed 's/^/    /')"
    done
    step "$qn: --object help and TYPE,help as QEMU's (types: $(echo $types))"
done
# the properties left out are the ones vbd refuses
for r in $refused; do
    ty=${r%%.*} p=${r#*.}
    case $ty in
    secret) args="$ty,id=o,data=x,$p=x" ;;
    *) args="$ty,id=o,dir=$T,endpoint=server,$p=on" ;;
    esac
    run v "$VBD_DAEMON" --object "$args"
    [ "$(cat v.rc)" = 1 ] && grep -q -e "$p" v.err ||
        differ "vbd-daemon --object $args: exit status $(cat v.rc), $(cat v.err) (not refused for $p: list it in --object $ty,help)"
done
[ $ndiff = 0 ] || fail "$ndiff differences (above)"
echo PASS
