#!/bin/bash
# A qcow2 write that fails in the file under it (blkdebug injects one EIO
# into the Nth write the allocation makes: the new L2 table, the refcount
# flush, the L1 entry, the data) reports the error, and the next write to
# that range allocates again and succeeds: qemu-io reads the data back and
# qemu-img check finds no error and no leak. Through blkdebug the qcow2
# file grows as it does on a plain file (writes past its end used to fail
# with EINVAL there, the first symptom of this bug).
. "$(dirname "$0")/lib.sh"
need qemu-io qemu-img
cd "$T" || exit 1
B="driver=qcow2,file.driver=blkdebug,file.image.driver=file,file.image.filename=$T/a.qcow2"

# check_image: what a user checks after the retries
check_image() {
    qemu-img check a.qcow2 >"$T/check.out" 2>&1 || fail "$1: qemu-img check: $(cat "$T/check.out")"
    grep -q "No errors were found on the image." "$T/check.out" || fail "$1: qemu-img check: $(cat "$T/check.out")"
    must qemu-io -f qcow2 -c "read -P 0x22 64k 4k" -c "read -P 0 0 64k" -c "read -P 0 68k 956k" \
        -c "read -P 0x33 1M 4k" -c "read -P 0x44 2M 128k" a.qcow2 >/dev/null
}

step "no error injected: the qcow2 file grows through blkdebug"
must qemu-img create -q -f qcow2 a.qcow2 4M
must "$VBD_IO" --image-opts "$B" -c "write -P 0x22 64k 4k" -c "write -P 0x33 1M 4k" -c "write -P 0x44 2M 128k" >/dev/null
check_image "no error"

for skip in 0 1 2 3 4 5; do
    step "the write number $skip of a first allocation fails once: the retry allocates again"
    must qemu-img create -q -f qcow2 a.qcow2 4M
    "$VBD_IO" --image-opts "$B,file.inject-error.0.event=write_aio,file.inject-error.0.once=on,file.inject-error.0.x-skip=$skip" \
        -c "write -P 0x11 64k 4k" -c "write -P 0x22 64k 4k" -c "read -P 0x22 64k 4k" \
        -c "write -P 0x33 1M 4k" -c "write -P 0x44 2M 128k" >"$T/v.out" 2>&1
    grep -v "ops;" "$T/v.out" | tr '\n' '|' | grep -qx "write failed: Input/output error|wrote 4096/4096 bytes at offset 65536|read 4096/4096 bytes at offset 65536|wrote 4096/4096 bytes at offset 1048576|wrote 131072/131072 bytes at offset 2097152|" ||
        fail "x-skip=$skip: $(cat "$T/v.out")"
    check_image "x-skip=$skip"
done

step "as QEMU: the first data write fails under qemu-io too, and its retry succeeds"
must qemu-img create -q -f qcow2 a.qcow2 4M
qemu-io --image-opts "$B,file.inject-error.0.event=write_aio,file.inject-error.0.once=on" \
    -c "write -P 0x11 64k 4k" -c "write -P 0x22 64k 4k" 2>&1 | grep -v "ops;" >"$T/q.out"
must qemu-img create -q -f qcow2 a.qcow2 4M
"$VBD_IO" --image-opts "$B,file.inject-error.0.event=write_aio,file.inject-error.0.once=on" \
    -c "write -P 0x11 64k 4k" -c "write -P 0x22 64k 4k" 2>&1 | grep -v "ops;" >"$T/v.out"
diff -u "$T/q.out" "$T/v.out" || fail "vbd-io and qemu-io differ"

step "a table shared with an internal snapshot: a failed copy leaves the snapshot's table, the retry copies again"
for skip in 0 1 2 3; do
    must qemu-img create -q -f qcow2 a.qcow2 4M
    must qemu-io -f qcow2 -c "write -P 0x55 0 128k" a.qcow2 >/dev/null
    must qemu-img snapshot -c s1 a.qcow2
    "$VBD_IO" --image-opts "$B,file.inject-error.0.event=write_aio,file.inject-error.0.once=on,file.inject-error.0.x-skip=$skip" \
        -c "write -P 0x66 64k 4k" -c "write -P 0x66 64k 4k" >"$T/v.out" 2>&1
    grep -v "ops;" "$T/v.out" | tr '\n' '|' | grep -qx "write failed: Input/output error|wrote 4096/4096 bytes at offset 65536|" ||
        fail "snapshot, x-skip=$skip: $(cat "$T/v.out")"
    qemu-img check a.qcow2 >"$T/check.out" 2>&1 && grep -q "No errors were found on the image." "$T/check.out" ||
        fail "snapshot, x-skip=$skip: qemu-img check: $(cat "$T/check.out")"
    must qemu-io -f qcow2 -c "read -P 0x55 0 64k" -c "read -P 0x66 64k 4k" -c "read -P 0x55 68k 60k" a.qcow2 >/dev/null
    must qemu-img snapshot -a s1 a.qcow2
    must qemu-io -f qcow2 -c "read -P 0x55 0 128k" a.qcow2 >/dev/null
done
echo OK
