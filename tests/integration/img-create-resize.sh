#!/bin/bash
# create (size suffixes, preallocation) and resize behave as qemu-img's.
source "$(dirname "$0")/lib.sh"
need qemu-img
for size in 512 1k 1M 1.5G 3T 1000001; do
    "$VBD_IMG" create -q -f raw "$T/v" "$size" || fail "vbd create $size"
    qemu-img create -q -f raw "$T/q" "$size"
    [ "$(stat -c %s "$T/v")" = "$(stat -c %s "$T/q")" ] || fail "size $size: vbd $(stat -c %s "$T/v") vs qemu $(stat -c %s "$T/q")"
done
out=$("$VBD_IMG" create -f raw "$T/v" 1G); [ "$out" = "Formatting '$T/v', fmt=raw size=1073741824" ] || fail "create message: $out"
for p in off falloc full; do
    must "$VBD_IMG" create -q -f raw -o preallocation=$p "$T/p-$p" 4M
    a=$(qemu-img info --output=json "$T/p-$p" | python3 -c 'import json,sys; print(json.load(sys.stdin)["actual-size"])')
    case $p in off) [ "$a" -le 8192 ] || fail "preallocation=off allocated $a" ;; *) [ "$a" -ge 4194304 ] || fail "preallocation=$p allocated only $a" ;; esac
done
must_fail_with "preallocation" "$VBD_IMG" create -q -f raw -o preallocation=metadata "$T/pm" 4M
step "resize"
qemu-img create -q -f raw "$T/r" 4M
must "$VBD_IMG" resize -f raw "$T/r" +4M >/dev/null
[ "$(stat -c %s "$T/r")" = 8388608 ] || fail "grow"
must_fail_with "Use the --shrink option" "$VBD_IMG" resize -f raw "$T/r" -1M
must "$VBD_IMG" resize -f raw --shrink "$T/r" 2M >/dev/null
[ "$(qemu-img info --output=json "$T/r" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')" = 2097152 ] || fail "shrink"
must "$VBD_IMG" resize -f raw --preallocation=full "$T/r" 6M >/dev/null
step "measure agrees with qemu-img for a fresh size"
diff <("$VBD_IMG" measure --output=json -O raw --size 1G) <(qemu-img measure --output=json -O raw --size 1G) || fail "measure differs"
step "-o help lists the options"
# as qemu-img: preallocation is the protocol's, listed when a file name is given
"$VBD_IMG" create -f raw -o help "$T/x.raw" | grep -q "^  preallocation=<str> " || fail "-o help"
echo ok
