#!/bin/bash
# vbd-img convert -t none into a raw target on a disk ($T; where $T is tmpfs
# the same steps take the inline path): the chunks' writes are submitted in
# guest order with several in flight (the next chunk's write does not wait
# for the completion of the one before), from 2 MiB huge-page buffers.
# Zero runs written between them (-n over other data), chunks of two
# sources, -m 1 / 16 and -W, a source that is not a whole number of chunks,
# and a write that fails while others are in flight, each against qemu-img.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io
src=$T/src.raw
qemu-img create -q -f raw "$src" 65M
qemu-io -f raw -c 'write -P 1 0 1M' -c 'write -P 2 10M 4k' -c 'write -P 0 20M 1M' -c 'write -P 3 30M 3M' \
    -c 'write -P 5 41M 6M' -c 'write -P 0 43M 1M' -c 'write -P 4 64M 1M' "$src" >/dev/null
for opt in "" "-m 1" "-m 16" "-m 16 -W"; do
    step "convert -t none -T none $opt into a new raw image: content and allocation as qemu-img's"
    rm -f "$T/dst.raw" "$T/ref.raw"
    # shellcheck disable=SC2086 # $opt is words
    convert_like_qemu "$opt" raw "$src" "$T/dst.raw" "$T/ref.raw" -t none -T none $opt -f raw -O raw "$src"
done
step "-t none -n over an image full of other data, two sources concatenated: as qemu-img's"
for out in "$T/two.raw" "$T/tworef.raw"; do
    qemu-img create -q -f raw "$out" 140M
    qemu-io -f raw -c 'write -P 9 0 140M' "$out" >/dev/null
done
convert_like_qemu "-n, two sources" raw "$T/tworef.raw" "$T/two.raw" "$T/tworef.raw" \
    -t none -T none -n -f raw -O raw "$src" "$src"
must qemu-io -f raw -c 'read -P 3 30M 3M' -c 'read -P 0 33M 8M' -c 'read -P 3 95M 3M' -c 'read -P 9 130M 10M' \
    "$T/two.raw" >"$T/out"
grep -q failed "$T/out" && fail "concatenation over data: $(cat "$T/out")"
step "-t none: a write that fails (blkdebug EIO) fails the convert, in qemu-img's words"
# sector 61440 (30 MiB): the source's 3 MiB of data there
qemu-img create -q -f raw "$T/fail.raw" 65M
opts="driver=raw,file.driver=blkdebug,file.image.driver=file,file.image.filename=$T/fail.raw"
opts+=",file.inject-error.0.event=write_aio,file.inject-error.0.errno=5,file.inject-error.0.sector=61440"
out=$("$VBD_IMG" convert -t none -T none -n -f raw --target-image-opts "$src" "$opts" 2>&1) && rc=0 || rc=$?
[ $rc = 1 ] || fail "convert to a failing target: exit $rc (qemu-img: 1): $out"
grep -qx "vbd-img: error while writing at byte 31457280: Input/output error" <<<"$out" || fail "not the write's error: $out"
echo ok
