#!/bin/sh
# Install the Debian packages vbd needs to build, test and demo.
# Idempotent and quick when everything is present (one dpkg-query call).
set -e
# Beyond a debootstrap minbase Debian 12 with make: the build, the peers the
# tests run against, the guest's kernel and busybox, and the tools the
# scripts call: python3, ca-certificates (the system CA store the nbds://
# client falls back to), file (nbdinfo runs it to describe the content),
# python3-libnbd (libnbd's module: tests/integration/nbdsweep.py).
PKGS="build-essential pkg-config meson ninja-build clang liburing-dev zlib1g-dev libzstd-dev
libjson-c-dev libgnutls28-dev libbz2-dev cloop-utils libxml2-dev qemu-utils qemu-system-x86 nbdkit libnbd-bin python3-libnbd fio
busybox-static linux-image-amd64 kmod cpio gnutls-bin bc python3 ca-certificates file
librbd-dev librados-dev ceph-mon ceph-osd ceph-mgr ceph-common qemu-block-extra
libiscsi-dev libiscsi-bin tgt
libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients"
missing=""
for p in $PKGS; do
    st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$st" in *"install ok installed"*) ;; *) missing="$missing $p" ;; esac
done
[ -z "$missing" ] && exit 0
echo "deps: installing:$missing"
SUDO=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "deps: missing:$missing; run as root, or install sudo" >&2; exit 1; }
    SUDO=sudo
fi
# INITRD=No: the guest tests boot the kernel with our own initramfs; skip
# building the distribution's initrd (about a minute).
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive INITRD=No apt-get install -y -qq --no-install-recommends $missing
