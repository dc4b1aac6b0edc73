#!/bin/bash
# Seed corpora for the format fuzz targets: small images made by qemu-img
# (qcow2, vdi, vpc, qed, parallels, vmdk), by create_compressed_fs (cloop), and
# by the tests' own builders where Debian has no writer (bochs, dmg, and
# differencing VHDs); vhdx seeds are flag bytes for a target that builds its image. Each DIR/fuzz-FMT is filled once (idempotent); every
# seed stays under the targets' 4 MiB input limit.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)

# corpus NAME: cd into an empty $out/fuzz-NAME, or return 1 if it has seeds
corpus() {
    mkdir -p "$out/fuzz-$1"
    cd "$out/fuzz-$1"
    [ -z "$(ls -A .)" ]
}
io() { qemu-io -f "$1" "${@:3}" "$2" >/dev/null; }

if corpus qcow2; then
    # v2/v3, 512 B to 64 KiB clusters, extended L2, compression, a snapshot, a backing name
    qemu-img create -q -f qcow2 v3.qcow2 1M && io qcow2 v3.qcow2 -c "write -P 1 0 64k" -c "write -z 128k 64k"
    qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 1M && io qcow2 v2.qcow2 -c "write -P 2 4k 4k"
    qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=1 small.qcow2 256k
    io qcow2 small.qcow2 -c "write -P 3 1000 3000"
    qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=16k extl2.qcow2 1M
    io qcow2 extl2.qcow2 -c "write -P 4 4k 4k"
    # random bytes do not compress (qemu-img stores such clusters plain): text with random runs does
    { head -c 100000 /dev/urandom; python3 -c "print('some text that compresses ' * 4000, end='')"; } >raw.bin
    qemu-img convert -q -c -O qcow2 -f raw raw.bin comp.qcow2
    qemu-img convert -q -c -O qcow2 -o compression_type=zstd,cluster_size=4k -f raw raw.bin zstd.qcow2 && rm raw.bin
    # persistent bitmaps (a rw open loads, marks and at close stores them), 64-bit refcounts
    qemu-img create -q -f qcow2 -o cluster_size=4k,refcount_bits=64 bitmaps.qcow2 1M
    qemu-img bitmap --add -g 512 bitmaps.qcow2 b0 && qemu-img bitmap --add --disable bitmaps.qcow2 b1
    io qcow2 bitmaps.qcow2 -c "write -P 5 0 8k"
    qemu-img snapshot -c s1 v3.qcow2
    qemu-img create -q -f qcow2 -b v3.qcow2 -F qcow2 backed.qcow2
fi

if corpus vdi; then
    qemu-img create -q -f vdi empty.vdi 4M
    qemu-img create -q -f vdi dyn.vdi 4M && io vdi dyn.vdi -c "write -P 1 1000 3000" -c "write -P 2 3M 4k"
    qemu-img create -q -f vdi -o static=on static.vdi 2M && io vdi static.vdi -c "write -P 3 0 512"
fi

if corpus vpc; then
    qemu-img create -q -f vpc empty.vhd 4M
    qemu-img create -q -f vpc dyn.vhd 4M && io vpc dyn.vhd -c "write -P 1 1000 3000"
    qemu-img create -q -f vpc -o force_size=on forced.vhd 3M && io vpc forced.vhd -c "write -P 2 2M 4k"
    qemu-img create -q -f vpc -o subformat=fixed fixed.vhd 1M && io vpc fixed.vhd -c "write -P 3 0 4k"
    # differencing children (qemu-img cannot make one) over a one-block parent, with each locator kind
    qemu-img create -q -f vpc -o force_size=on parent.vhd 1M
    qemu-img convert -q -f vpc -O raw parent.vhd /tmp/vbd-seed-parent.$$.raw
    for loc in W2ru W2ku,MacX; do
        python3 "$root/tests/integration/vhd-diff.py" parent.vhd "diff-${loc%%,*}.vhd" /tmp/vbd-seed-parent.$$.raw \
            /tmp/vbd-seed-exp.$$.raw "$loc"
    done
    rm -f /tmp/vbd-seed-parent.$$.raw /tmp/vbd-seed-exp.$$.raw
fi

if corpus qed; then
    qemu-img create -q -f qed empty.qed 4M
    qemu-img create -q -f qed -o cluster_size=4k small.qed 1M && io qed small.qed -c "write -P 1 1000 9000" -c "write -z 64k 8k"
    qemu-img create -q -f qed data.qed 4M && io qed data.qed -c "write -P 2 0 64k" -c "write -P 3 3M 4k"
    qemu-img create -q -f qed -b data.qed -F qed backed.qed 4M && io qed backed.qed -c "write -P 4 128k 4k"
fi

if corpus parallels; then
    qemu-img create -q -f parallels empty.img 4M
    qemu-img create -q -f parallels -o cluster_size=4k small.img 1M && io parallels small.img -c "write -P 1 1000 9000"
    qemu-img create -q -f parallels data.img 4M && io parallels data.img -c "write -P 2 0 64k" -c "write -P 3 3M 4k"
fi

if corpus cloop; then
    head -c 100000 /dev/urandom >data.raw && head -c 200000 /dev/zero >>data.raw
    create_compressed_fs -q -B 65536 data.raw 64k.cloop >/dev/null 2>&1
    create_compressed_fs -q -B 4096 data.raw 4k.cloop >/dev/null 2>&1
    rm data.raw
fi

if corpus bochs; then
    python3 "$root/tests/integration/ro-images.py" bochs v2.img /dev/null v2 4096
    python3 "$root/tests/integration/ro-images.py" bochs v1.img /dev/null v1 32768
fi

if corpus dmg; then
    python3 "$root/tests/integration/ro-images.py" dmg rsrc.dmg /dev/null rsrc
    python3 "$root/tests/integration/ro-images.py" dmg xml.dmg /dev/null xml lzfse
fi

if corpus vmdk; then
    # monolithicSparse with and without zeroed grains, streamOptimized, a descriptor file
    qemu-img create -q -f vmdk sparse.vmdk 1M && io vmdk sparse.vmdk -c "write -P 1 0 64k" -c "write -P 2 300k 5000"
    qemu-img create -q -f vmdk -o zeroed_grain=on zg.vmdk 1M && io vmdk zg.vmdk -c "write -P 3 0 128k" -c "write -z 0 64k"
    # random bytes do not compress (qemu-img stores such clusters plain): text with random runs does
    { head -c 100000 /dev/urandom; python3 -c "print('some text that compresses ' * 4000, end='')"; } >raw.bin
    qemu-img convert -q -O vmdk -o subformat=streamOptimized -f raw raw.bin stream.vmdk && rm raw.bin
    printf '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 128 FLAT "x-flat.vmdk" 0\n' >desc.vmdk
fi

if corpus vhdx; then
    # the target builds a valid image itself; an input is a flags byte (1 dirty
    # log, 2/4/8 keep the header/region table/log checksums as mutated, 0x10
    # read-only, 0x20 open for check, 0x40 truncated, 0x80 differencing), then
    # a window selector and bytes XORed over the image's structures
    for s in 00 01 11 21 40 4100 80 90; do printf "$(echo $s | sed 's/../\\x&/g')" >"seed-$s"; done
fi

# inputs that once failed (tests/fuzz/regress/TARGET/) seed their target's corpus
for d in "$root"/tests/fuzz/regress/*/; do
    [ -d "$d" ] || continue
    t=$(basename "$d")
    mkdir -p "$out/fuzz-$t" && cp -n "$d"* "$out/fuzz-$t/"
done

exit 0
