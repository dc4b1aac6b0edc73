#!/bin/bash
# The raw driver's offset/size window: the client sees only the window and
# bytes outside it are never touched.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io
img=$T/disk.raw
qemu-img create -q -f raw "$img" 8M
qemu-io -f raw -c 'write -P 0xee 0 8M' "$img" >/dev/null
before=$(dd if="$img" bs=1M count=2 2>/dev/null | md5sum)
after_tail=$(dd if="$img" bs=1M skip=6 2>/dev/null | md5sum)
opts="driver=raw,offset=2M,size=4M,file.filename=$img"
[ "$("$VBD_IO" --image-opts -c length "$opts")" = "4 MiB" ] || fail "window length"
must "$VBD_IO" --image-opts -c 'write -P 0x11 0 4M' -c 'write -P 0x22 1000 3000' "$opts" >/dev/null
must_fail_with "write failed: Input/output error" "$VBD_IO" --image-opts -c 'write -P 0x33 4M 512' "$opts"
must_fail_with "write failed: Input/output error" "$VBD_IO" --image-opts -c 'write -P 0x33 4190000 10000' "$opts"
[ "$(dd if="$img" bs=1M count=2 2>/dev/null | md5sum)" = "$before" ] || fail "bytes before the window changed"
[ "$(dd if="$img" bs=1M skip=6 2>/dev/null | md5sum)" = "$after_tail" ] || fail "bytes after the window changed"
qemu-io -f raw -c 'read -P 0x11 2M 1000' -c 'read -P 0x22 2098152 3000' -c 'read -P 0x11 2101152 4M-4096' "$img" >"$T/o" 2>&1
grep -q failed "$T/o" && { cat "$T/o"; fail "window data not where qemu-io expects it"; }
# the size a multiple of 512 (QEMU refuses others: "Specified size is not multiple of 512"), the offset not
step "unaligned window over an O_DIRECT file does read-modify-write"
f=/dev/shm/vbd-win-$$.raw; on_exit "rm -f $f"
qemu-img create -q -f raw "$f" 1M
must "$VBD_IO" -t none --image-opts -c 'write -P 0x44 0 1000' "driver=raw,offset=1001,size=10240,file.filename=$f" >/dev/null
must qemu-io -f raw -c 'read -P 0 0 1001' -c 'read -P 0x44 1001 1000' -c 'read -P 0 2001 2047' "$f" >"$T/o"
grep -q failed "$T/o" && fail "RMW through O_DIRECT wrote the wrong bytes"
echo ok
