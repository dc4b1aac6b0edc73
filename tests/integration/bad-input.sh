#!/bin/bash
# Bad input gets one clear line naming the thing and the reason, and the
# exit codes qemu-img uses; nothing is written.
source "$(dirname "$0")/lib.sh"
need qemu-img
qemu-img create -q -f raw "$T/ok.raw" 1M
must_fail_with "Could not open '$T/missing'" "$VBD_IMG" info "$T/missing"
must_fail_with "No such file or directory" "$VBD_IO" -c 'read 0 512' "$T/missing"
mkdir "$T/dir"
# qemu-img's words: read-only, a directory is not a regular file; read-write, open(2) fails
must_fail_with "Could not open '$T/dir': 'file' driver requires '$T/dir' to be a regular file" "$VBD_IMG" info "$T/dir"
must_fail_with "Could not open '$T/dir': Could not open '$T/dir': Is a directory" "$VBD_IMG" resize "$T/dir" 1M
# a character device is opened by host_device, as qemu-img's probe does: size 0
[ "$("$VBD_IMG" info --output=json /dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')" = 0 ] ||
    fail "vbd-img info /dev/null"
must_fail_with "Unknown driver 'foo'" "$VBD_IMG" info -f foo "$T/ok.raw"
must_fail_with "Unknown file format 'foo'" "$VBD_IMG" create -f foo "$T/new" 1M
must_fail_with "does not support the option 'bogus'" "$VBD_IO" --image-opts -c 'length' "driver=raw,bogus=1,file.filename=$T/ok.raw"
must_fail_with "Block protocol 'file' doesn't support the option 'bogus'" "$VBD_IMG" info --image-opts "driver=raw,file.driver=file,file.filename=$T/ok.raw,file.bogus=on"
must_fail_with "Invalid image size" "$VBD_IMG" create -f raw "$T/q" 1Q
must_fail_with "Invalid image size" "$VBD_IMG" create -f raw "$T/q" -- -1
must_fail_with "Invalid image size" "$VBD_IMG" create -f raw "$T/q" 99999999999999999999
must_fail_with "Invalid image size" "$VBD_IMG" create -f raw "$T/q" 9E
[ -e "$T/q" ] && fail "a failed create left a file behind"
must_fail_with "Invalid cache option" "$VBD_IO" -t sometimes -c 'length' "$T/ok.raw"
must_fail_with "Invalid aio option" "$VBD_IO" -i posix -c 'length' "$T/ok.raw"
must_fail_with "--output must be used with human or json" "$VBD_IMG" info --output=xml "$T/ok.raw"
must_fail_with "Command not found" "$VBD_IMG" frobnicate
must_fail_with "Parameter 'size': Invalid size 'abc'" "$VBD_IO" --image-opts -c length "driver=raw,size=abc,file.filename=$T/ok.raw"
must_fail_with "The sum of offset" "$VBD_IO" --image-opts -c length "driver=raw,offset=512k,size=1M,file.filename=$T/ok.raw"
# a \u0000 escape would end the name where vbd reads it as a C string (ok.raw\u0000x naming ok.raw)
must_fail_with "U+0000 (NUL) in a string" "$VBD_IMG" info "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"$T/ok.raw\\u0000x\"}}"
must_fail_with "U+0000 (NUL) in a string" "$VBD_IO" --image-opts -c length "{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"$T/ok.raw\\u0000\"}}"
must_fail_with "Could not open '$T/ok.raw\\u0000x'" "$VBD_IMG" info "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"$T/ok.raw\\\\u0000x\"}}"
step "offsets past the end fail, the file is unchanged"
sum=$(md5sum <"$T/ok.raw")
# as qemu-io: EIO
must_fail_with "write failed: Input/output error" "$VBD_IO" -f raw -c 'write 1M 512' "$T/ok.raw"
must_fail_with "read failed: Input/output error" "$VBD_IO" -f raw -c 'read 1020k 8k' "$T/ok.raw"
[ "$(stat -c %s "$T/ok.raw")" = 1048576 ] || fail "file grew"
step "writes to a read-only image are refused"
must_fail_with "Block node is read-only" "$VBD_IO" -f raw -r -c 'write 0 512' "$T/ok.raw"
must_fail_with "read-only" "$VBD_IO" -f raw -U -c 'write 0 512' "$T/ok.raw"
[ "$(md5sum <"$T/ok.raw")" = "$sum" ] || fail "a refused write changed the image"
step "check on raw: qemu-img's exit code"
"$VBD_IMG" check -f raw "$T/ok.raw" >/dev/null 2>&1; v=$?
qemu-img check -f raw "$T/ok.raw" >/dev/null 2>&1; q=$?
[ $v = $q ] || fail "check exit code $v, qemu-img $q"
step "O_DIRECT on tmpfs: works here, or one clear line"
if [ -d /dev/shm ]; then
    f=/dev/shm/vbd-direct-$$.raw; on_exit "rm -f $f"
    qemu-img create -q -f raw "$f" 1M
    out=$("$VBD_IO" -f raw -t none -c 'write -P 7 0 4k' -c 'read -P 7 0 4k' "$f" 2>&1)
    rc=$?
    if [ $rc != 0 ]; then case "$out" in *"O_DIRECT"*) ;; *) fail "unclear O_DIRECT error: $out" ;; esac; fi
fi
step "as root, permission checks do not apply; a read-only mount would be needed"
echo ok
