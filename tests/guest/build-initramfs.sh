#!/bin/bash
# Builds the guest's base initramfs from installed Debian packages
# (busybox-static and the virtio/ext4 modules of linux-image-amd64) into a
# cache, rebuilding only when an input changed. Prints "KVER IMAGE".
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PATH=$PATH:/usr/sbin:/sbin
cache=${VBD_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vbd-guest}
modules="virtio_pci virtio_blk ext4 crc32c_generic"
kver=${VBD_KVER:-}
if [ -z "$kver" ]; then
    for k in $(ls /lib/modules 2>/dev/null | sort -V); do
        [ -r "/boot/vmlinuz-$k" ] && kver=$k
    done
fi
[ -n "$kver" ] || { echo "build-initramfs: no kernel with /boot/vmlinuz-* and /lib/modules (apt-get install linux-image-amd64)" >&2; exit 1; }
bb=$(command -v busybox) || { echo "build-initramfs: busybox not found (apt-get install busybox-static)" >&2; exit 1; }
ldd "$bb" >/dev/null 2>&1 && { echo "build-initramfs: $bb is not static (apt-get install busybox-static)" >&2; exit 1; }

# the inputs' contents, not their paths: checkouts in other directories share the cache
key=$({ echo "$kver $modules"; for f in "$bb" "$here/init.sh" "$here/guest-lib.sh"; do sha256sum <"$f"; done
        stat -c '%s %Y' "/lib/modules/$kver/modules.dep"; } | sha256sum | cut -c1-32)
# named by its key: checkouts with different init.sh/guest-lib.sh running guests
# at once each keep their own (one name for all made a guest boot another's init)
out=$cache/$kver/base.$key.cpio.gz
if [ -s "$out" ]; then
    echo "$kver $out"; exit 0
fi
mkdir -p "$cache/$kver"
st=$(mktemp -d "$cache/stage.XXXXXX")
trap 'rm -rf "$st"' EXIT
mkdir -p "$st"/{bin,dev,etc,proc,sys,tmp,mnt,lib/modules}
cp "$bb" "$st/bin/busybox"
for a in $("$bb" --list); do [ "$a" = busybox ] || ln -s busybox "$st/bin/$a"; done
install -m 755 "$here/init.sh" "$st/init"
install -m 644 "$here/guest-lib.sh" "$st/lib/vbd.sh"
# modules in load order, dependencies first
for ko in $(modprobe -S "$kver" --show-depends -a $modules | awk '$1 == "insmod" && !seen[$2]++ { print $2 }'); do
    n=$(basename "$ko"); n=${n%%.ko*}.ko
    case "$ko" in
        *.ko) cp "$ko" "$st/lib/modules/$n" ;;
        *.ko.xz) xz -dc "$ko" >"$st/lib/modules/$n" ;;
        *.ko.zst) zstd -qdc "$ko" >"$st/lib/modules/$n" ;;
        *.ko.gz) gzip -dc "$ko" >"$st/lib/modules/$n" ;;
    esac
    echo "$n" >>"$st/etc/modules"
done
# guests started at once (tests of several checkouts) may build it at once: each renames its own copy in
(cd "$st" && find . -mindepth 1 | sort | cpio -o -H newc -R 0:0 --quiet | gzip -6) >"$out.tmp.$$"
mv "$out.tmp.$$" "$out"
echo "$kver $out"
