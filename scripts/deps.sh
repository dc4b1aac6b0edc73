#!/bin/sh
# Install the Debian packages vbd needs to build, test and demo.
# Idempotent and quick when everything is present (one dpkg-query call).
set -e
PKGS="build-essential pkg-config meson ninja-build clang liburing-dev zlib1g-dev libzstd-dev
libjson-c-dev libgnutls28-dev libxml2-dev qemu-utils qemu-system-x86 nbdkit libnbd-bin fio
busybox-static linux-image-amd64 kmod cpio gnutls-bin bc"
missing=""
for p in $PKGS; do
    st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$st" in *"install ok installed"*) ;; *) missing="$missing $p" ;; esac
done
[ -z "$missing" ] && exit 0
echo "deps: installing:$missing"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
# INITRD=No: the guest tests boot the kernel with our own initramfs; skip
# building the distribution's initrd (about a minute).
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive INITRD=No apt-get install -y -qq --no-install-recommends $missing
