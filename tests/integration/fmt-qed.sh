#!/bin/bash
# QED (issue 16): images made by qemu-img (cluster_size, table_size, a
# backing file) read by vbd as by qemu; images written by vbd (convert,
# in-place writes, concurrent allocating writes) clean for qemu-img check
# and identical for qemu-img compare; the need-check flag repaired on a
# read-write open; hostile headers refused with one line.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

# patterns at unaligned offsets crossing cluster (and, for small tables, L2 table) boundaries
QWRITES=(-c 'write -P 0x11 1000 70000' -c 'write -P 0x22 131000 5000' -c 'write -P 0x33 1048570 300000'
         -c 'write -z 2097152 65536' -c 'write -P 0x44 3145000 1000')
QREADS=(-c 'read -P 0x11 1000 70000' -c 'read -P 0x22 131000 5000' -c 'read -P 0x33 1048570 300000'
        -c 'read -P 0 2097152 65536' -c 'read -P 0x44 3145000 1000' -c 'read -P 0 4000000 4096')

for opts in "cluster_size=4k,table_size=2" "cluster_size=64k,table_size=4" "cluster_size=1M,table_size=16" "cluster_size=16k,table_size=2"; do
    step "qemu-img made ($opts): read"
    img=$T/q.qed
    must qemu-img create -q -f qed -o "$opts" "$img" 5M
    must qemu-io -f qed "${QWRITES[@]}" "$img" >/dev/null
    must "$VBD_IMG" convert -O raw "$img" "$T/v.raw"
    must qemu-img convert -O raw "$img" "$T/q.raw"
    cmp -s "$T/v.raw" "$T/q.raw" || fail "vbd-img convert of $opts differs from qemu-img's"
    out=$("$VBD_IO" -f qed "${QREADS[@]}" "$img" 2>&1) || fail "vbd-io misreads the patterns ($opts): $out"
    "$VBD_IO" -f qed -c 'read -P 0x12 1000 4k' "$img" >/dev/null 2>&1 && fail "vbd-io accepted a wrong pattern"
    python3 - "$img" "$VBD_IMG" <<'EOF' || fail "vbd-img info differs from qemu-img info ($opts)"
import json, subprocess, sys
img, vbd = sys.argv[1], sys.argv[2]
q = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", img]))
v = json.loads(subprocess.check_output([vbd, "info", "--output=json", img]))
for k in ("virtual-size", "format", "cluster-size", "dirty-flag"):
    if q.get(k) != v.get(k):
        sys.exit(f"{k}: qemu {q.get(k)!r} vbd {v.get(k)!r}")
EOF
    vm=$("$VBD_IMG" map --output=json "$img") || fail "vbd-img map"
    qm=$(qemu-img map --output=json "$img")
    [ "$vm" = "$qm" ] || fail "vbd-img map differs from qemu-img map ($opts)"

    step "vbd writes into it ($opts) = qemu-io's writes"
    cp "$img" "$T/v.qed"
    cp "$img" "$T/w.qed"
    W=(-c 'write -P 0x55 4000000 200000' -c 'write -P 0x66 70000 3000' -c 'write -P 0x77 1500000 9')
    must "$VBD_IO" -f qed "${W[@]}" \
        -c 'aio_write -P 0x88 4500000 3000' -c 'aio_write -P 0x99 4503000 3000' -c 'aio_write -P 0xaa 4501000 100' \
        -c 'aio_flush' "$T/v.qed" >/dev/null
    must qemu-io -f qed "${W[@]}" -c 'write -P 0x88 4500000 3000' -c 'write -P 0x99 4503000 3000' \
        -c 'write -P 0xaa 4501000 100' "$T/w.qed" >/dev/null
    qcheck -f qed "$T/v.qed"
    must qemu-img compare -q -f qed -F qed "$T/v.qed" "$T/w.qed"

    step "vbd-img convert raw -> qed ($opts)"
    must "$VBD_IMG" convert -O qed -o "$opts" "$T/q.raw" "$T/c.qed"
    qcheck -f qed "$T/c.qed"
    must qemu-img compare -q -f raw -F qed "$T/q.raw" "$T/c.qed"
    [ "$(qemu-img info --output=json "$T/c.qed" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cluster-size"])')" = \
      "$(qemu-img info --output=json "$img" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cluster-size"])')" ] ||
        fail "cluster_size not honoured ($opts)"
done

step "backing files (probed qcow2, raw with backing_fmt)"
must qemu-img create -q -f qcow2 "$T/base.qcow2" 5M
must qemu-io -f qcow2 -c 'write -P 0x5b 0 5M' "$T/base.qcow2" >/dev/null
must qemu-img create -q -f raw "$T/base.raw" 3M
must qemu-io -f raw -c 'write -P 0x6c 0 3M' "$T/base.raw" >/dev/null
for b in "base.qcow2 qcow2" "base.raw raw"; do
    set -- $b
    must "$VBD_IMG" create -q -f qed -o "backing_file=$1,backing_fmt=$2" "$T/ov.qed" 5M
    [ "$(qemu-img info --output=json "$T/ov.qed" | python3 -c 'import json,sys; print(json.load(sys.stdin)["backing-filename"])')" = "$1" ] ||
        fail "qemu-img does not see the backing file of a vbd-made qed"
    # every key but full-backing-filename: vbd-img info does not resolve it against the image's directory
    # for any format (qcow2 alike), a generic matter outside this driver
    python3 - "$T/ov.qed" "$VBD_IMG" <<'EOF' || fail "vbd-img info of a qed backed by $2 differs from qemu-img's"
import json, subprocess, sys
img, vbd = sys.argv[1], sys.argv[2]
q = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", img]))
v = json.loads(subprocess.check_output([vbd, "info", "--output=json", img]))
q.pop("full-backing-filename"); v.pop("full-backing-filename")
if q != v:
    sys.exit(f"qemu {q!r}\nvbd  {v!r}")
EOF
    cp "$T/ov.qed" "$T/ow.qed"
    W=(-c 'write -P 0x21 70000 5000' -c 'write -P 0x22 2999000 3000' -c 'write -P 0x23 4100000 1000')
    must "$VBD_IO" -f qed "${W[@]}" "$T/ov.qed" >/dev/null
    must qemu-io -f qed "${W[@]}" "$T/ow.qed" >/dev/null
    qcheck -f qed "$T/ov.qed"
    must qemu-img compare -q -f qed -F qed "$T/ov.qed" "$T/ow.qed"
    must "$VBD_IMG" convert -O raw "$T/ov.qed" "$T/v.raw"
    must qemu-img convert -O raw "$T/ow.qed" "$T/q.raw"
    cmp -s "$T/v.raw" "$T/q.raw" || fail "backed qed ($2) reads differently"
done

step "resize: grow, shrink refused"
must qemu-img create -q -f qed "$T/r.qed" 5M
must qemu-io -f qed -c 'write -P 0x41 5238000 4000' "$T/r.qed" >/dev/null
must "$VBD_IMG" resize "$T/r.qed" 9M >/dev/null
[ "$(qemu-img info --output=json "$T/r.qed" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')" = 9437184 ] ||
    fail "qemu-img does not see the grown size"
must qemu-io -f qed -c 'read -P 0x41 5238000 4000' -c 'read -P 0 5242880 4194304' "$T/r.qed" >/dev/null
qcheck -f qed "$T/r.qed"
must_fail_with "Shrinking images is currently not supported" "$VBD_IMG" resize --shrink "$T/r.qed" 4M

step "need-check flag: set while writing, repaired on a read-write open"
must qemu-img create -q -f qed "$T/d.qed" 4M
must qemu-io -f qed -c 'write -P 0x31 0 128k' "$T/d.qed" >/dev/null
# a crash after the header was marked and a table entry was written that points past the file's end
python3 - "$T/d.qed" <<'EOF'
import struct, sys
f = open(sys.argv[1], "r+b")
h = f.read(64)
cs, ts = struct.unpack_from("<II", h, 4)
feat, = struct.unpack_from("<Q", h, 16)
l1off, = struct.unpack_from("<Q", h, 40)
f.seek(16); f.write(struct.pack("<Q", feat | 2))
f.seek(l1off); l2, = struct.unpack("<Q", f.read(8))
f.seek(l2 + 8 * 10); f.write(struct.pack("<Q", 1 << 40))
EOF
cp "$T/d.qed" "$T/e.qed"
qemu-img check --output=json "$T/d.qed" >"$T/q.json" 2>&1
"$VBD_IMG" check --output=json "$T/d.qed" >"$T/v.json" 2>&1; rc=$?
[ $rc = 2 ] || fail "vbd-img check of a corrupt qed exited $rc, not 2"
cmp -s "$T/q.json" "$T/v.json" || fail "vbd-img check differs from qemu-img check: $(diff "$T/q.json" "$T/v.json")"
must "$VBD_IMG" check -q -r all "$T/e.qed"
qcheck -f qed "$T/e.qed"
[ "$(qemu-img info --output=json "$T/e.qed" | python3 -c 'import json,sys; print(json.load(sys.stdin)["dirty-flag"])')" = False ] ||
    fail "vbd-img check -r all left the need-check flag set"
[ "$("$VBD_IMG" info --output=json "$T/d.qed" | python3 -c 'import json,sys; print(json.load(sys.stdin)["dirty-flag"])')" = True ] ||
    fail "vbd-img info does not show the need-check flag"
must "$VBD_IO" -f qed -c 'write -P 0x32 1M 4k' "$T/d.qed" >/dev/null
qcheck -f qed "$T/d.qed"
[ "$(qemu-img info --output=json "$T/d.qed" | python3 -c 'import json,sys; print(json.load(sys.stdin)["dirty-flag"])')" = False ] ||
    fail "the need-check flag is still set after a clean close"
must qemu-io -f qed -c 'read -P 0x31 0 128k' -c 'read -P 0x32 1M 4k' "$T/d.qed" >/dev/null

step "hostile headers: one line, exit 1"
must qemu-img create -q -f qed -o backing_file=base.raw,backing_fmt=raw "$T/h.qed" 4M
must qemu-io -f qed -c 'write -P 1 0 64k' "$T/h.qed" >/dev/null
corrupt() { # OFFSET STRUCTFMT VALUE
    cp "$T/h.qed" "$T/bad.qed"
    python3 -c "import struct,sys; f=open(sys.argv[1],'r+b'); f.seek($1); f.write(struct.pack('<$2', $3))" "$T/bad.qed"
}
for c in "4 I 3000 cluster_size" "4 I 0 cluster_size" "8 I 32 table_size" "12 I 0 header_size" \
         "40 Q 1<<62 l1_table_offset" "40 Q 65537 l1_table_offset" "48 Q (1<<63)+512 image_size" "48 Q 1000 image_size" \
         "56 I 0xffffff00 backing_filename" "60 I 0xffffffff backing_filename" "16 Q 0x100 features"; do
    set -- $c
    corrupt "$1" "$2" "$3"
    for tool in info convert; do
        if [ $tool = info ]; then cmd=("$VBD_IMG" info "$T/bad.qed"); else cmd=("$VBD_IMG" convert -O raw "$T/bad.qed" "$T/o.raw"); fi
        out=$("${cmd[@]}" 2>&1); rc=$?
        [ $rc = 1 ] || fail "corrupt $4: $tool exit $rc: $out"
        [ "$(printf '%s\n' "$out" | grep -c .)" = 1 ] || fail "corrupt $4: not one line: $out"
        case "$out" in *"$4"* | *QED*) ;; *) fail "corrupt $4: error does not name it: $out" ;; esac
    done
done
# an L2 entry past the end: reading it fails with an error, no crash
cp "$T/h.qed" "$T/bad.qed"
python3 - "$T/bad.qed" <<'EOF'
import struct, sys
f = open(sys.argv[1], "r+b")
f.seek(40); l1off, = struct.unpack("<Q", f.read(8))
f.seek(l1off); l2, = struct.unpack("<Q", f.read(8))
f.seek(l2); f.write(struct.pack("<Q", 1 << 50))
EOF
out=$("$VBD_IMG" convert -O raw "$T/bad.qed" "$T/o.raw" 2>&1) && fail "a bad L2 entry was read"
case "$out" in *AddressSanitizer* | *runtime\ error*) fail "sanitizer: $out" ;; esac
# a run of contiguous entries whose second cluster lies past the file's end: an error, not a short read
must qemu-img create -q -f qed "$T/run.qed" 4M
must qemu-io -f qed -c 'write -P 7 0 64k' "$T/run.qed" >/dev/null
python3 - "$T/run.qed" <<'EOF'
import struct, sys
f = open(sys.argv[1], "r+b")
f.seek(40); l1off, = struct.unpack("<Q", f.read(8))
f.seek(l1off); l2, = struct.unpack("<Q", f.read(8))
f.seek(0, 2); end = f.tell()
f.seek(l2); f.write(struct.pack("<QQ", end - 65536, end))  # the file's last cluster, then one past it
EOF
out=$("$VBD_IO" -f qed -c 'read 0 64k' "$T/run.qed" 2>&1) || fail "the valid cluster is not readable: $out"
out=$("$VBD_IO" -f qed -c 'read 0 128k' "$T/run.qed" 2>&1) && fail "a table entry past the file's end was read: $out"
case "$out" in *AddressSanitizer* | *runtime\ error*) fail "sanitizer: $out" ;; esac

step "rebase of a qed overlay (safe and -u; raw, qcow2 and no backing file): the same file as qemu-img's"
cd "$T"
must qemu-img create -q -f raw rb-a.raw 8M
must qemu-io -f raw -c 'write -P 1 0 1M' -c 'write -P 2 5M 64k' rb-a.raw >/dev/null
must qemu-img create -q -f qcow2 rb-b.qcow2 8M
must qemu-io -f qcow2 -c 'write -P 3 512k 1M' rb-b.qcow2 >/dev/null
must qemu-img create -q -f qed -b rb-a.raw -F raw rb-o.qed
must qemu-io -f qed -c 'write -P 5 1M 64k' rb-o.qed >/dev/null
for args in "-b rb-b.qcow2 -F qcow2" "-u -b rb-b.qcow2 -F qcow2" "-u -b rb-a.raw -F raw" "-b ''" "-u -b ''"; do
    cp rb-o.qed rb-q.qed && cp rb-o.qed rb-v.qed
    eval "qemu-img rebase $args rb-q.qed" || fail "qemu-img rebase $args failed"
    eval "\"\$VBD_IMG\" rebase $args rb-v.qed" || fail "vbd-img rebase $args of a qed overlay failed"
    cmp rb-q.qed rb-v.qed || fail "rebase $args: the qed file differs from qemu-img's"
    must qemu-img check -q rb-v.qed
done

step "the model-based stress test (tests/stress/vbd-stress) on qed images (4 KiB and 64 KiB clusters), in process and over NBD"
cd "$T"
stress_format qed "4096 65536" 65536 "-o cluster_size=%cs%"
echo ok
