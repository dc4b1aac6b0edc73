#!/bin/bash
# vbd-img compare and qemu-img compare agree: same exit code and message.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io
qemu-img create -q -f raw "$T/a" 8M
qemu-io -f raw -c 'write -P 1 1M 64k' "$T/a" >/dev/null
cp "$T/a" "$T/same"; cp --sparse=never "$T/a" "$T/dense"
cp "$T/a" "$T/diff"; qemu-io -f raw -c 'write -P 2 3M 512' "$T/diff" >/dev/null
cp "$T/a" "$T/big"; qemu-img resize -q -f raw "$T/big" 16M
cp "$T/big" "$T/bigdiff"; qemu-io -f raw -c 'write -P 9 12M 4k' "$T/bigdiff" >/dev/null
qemu-img create -q -f raw "$T/zero" 8M
# the known-zero side on either hand (only the other side is read): "a diff", "diff a", "zero a", "dense diff"
for args in "a same" "a dense" "a diff" "diff a" "dense diff" "a big" "a bigdiff" "bigdiff a" "a zero" "zero a" "-s a big" "-s a same" "-s a dense"; do
    set -- $args
    opts=""; [ "$1" = -s ] && { opts=-s; shift; }
    v=$("$VBD_IMG" compare $opts -f raw -F raw "$T/$1" "$T/$2" 2>&1); vr=$?
    q=$(qemu-img compare $opts -f raw -F raw "$T/$1" "$T/$2" 2>&1); qr=$?
    step "compare $opts $1 $2: vbd=$vr qemu=$qr"
    [ $vr = $qr ] || fail "exit codes differ for $args: vbd $vr ($v), qemu $qr ($q)"
    [ "$v" = "$q" ] || fail "messages differ for $args: vbd '$v', qemu '$q'"
done
v=$("$VBD_IMG" compare "$T/a" "$T/missing" 2>&1); [ $? = 2 ] || fail "compare with a missing file must exit 2: $v"
echo ok
