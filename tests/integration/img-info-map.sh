#!/bin/bash
# vbd-img info/map --output=json agree with qemu-img on sparse, fully
# allocated and holey images, made by either tool.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
cmpjson() { # a b: parsed JSON must be equal
    python3 -c 'import json,sys; a=json.load(open(sys.argv[1])); b=json.load(open(sys.argv[2])); sys.exit(0 if a==b else 1)' "$1" "$2" \
        || { diff "$1" "$2"; fail "JSON differs: $3"; }
}
check_img() { # image fmt label
    "$VBD_IMG" info --output=json -f "$2" "$1" >"$T/v.json" || fail "vbd-img info failed on $3"
    qemu-img info --output=json -f "$2" "$1" >"$T/q.json"
    cmpjson "$T/v.json" "$T/q.json" "info $3"
    "$VBD_IMG" map --output=json -f "$2" "$1" >"$T/v.json" || fail "vbd-img map failed on $3"
    qemu-img map --output=json -f "$2" "$1" >"$T/q.json"
    cmpjson "$T/v.json" "$T/q.json" "map $3"
    "$VBD_IMG" map -f "$2" "$1" >"$T/v.txt"; qemu-img map -f "$2" "$1" >"$T/q.txt"
    diff "$T/v.txt" "$T/q.txt" || fail "human map differs on $3"
    "$VBD_IMG" info -f "$2" "$1" >"$T/v.txt"; qemu-img info -f "$2" "$1" >"$T/q.txt"
    diff "$T/v.txt" "$T/q.txt" || fail "human info differs on $3"
}
for maker in qemu vbd; do
    if [ $maker = qemu ]; then mk() { qemu-img create -q -f raw "$@"; }; else mk() { "$VBD_IMG" create -q -f raw "$@"; }; fi
    step "$maker: sparse"
    mk "$T/sparse.raw" 100M
    check_img "$T/sparse.raw" raw "$maker sparse"
    step "$maker: holes"
    mk "$T/holes.raw" 64M
    must qemu-io -f raw -c 'write -P 1 0 1M' -c 'write -P 2 5M 4k' -c 'write -P 3 63M 1M' -c 'write -z 7M 64k' "$T/holes.raw" >/dev/null
    check_img "$T/holes.raw" raw "$maker holes"
    step "$maker: fully allocated"
    mk -o preallocation=full "$T/full.raw" 8M
    check_img "$T/full.raw" raw "$maker full"
    step "$maker: falloc"
    mk -o preallocation=falloc "$T/falloc.raw" 8M
    check_img "$T/falloc.raw" raw "$maker falloc"
    step "$maker: odd size"
    mk "$T/odd.raw" 1000001
    check_img "$T/odd.raw" raw "$maker odd size"
done
step "qcow2 with a relative backing file in another directory"
# qemu-img resolves the name against the overlay's directory (its
# "full-backing-filename", "actual path" in human output), not the cwd.
mkdir -p "$T/sub"
must qemu-img create -q -f qcow2 "$T/sub/base.qcow2" 10M
must qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$T/sub/top.qcow2"
(cd "$T" && check_img sub/top.qcow2 qcow2 "relative backing") || exit 1
echo ok
