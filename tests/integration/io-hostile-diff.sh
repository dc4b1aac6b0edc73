#!/bin/bash
# vbd-io beside qemu-io 7.2 on damaged images (lib-difftable.sh
# make_hostile_images: a header field or table entry of each format out of
# range, the scenarios of QEMU's iotests 036, 039, 059, 060, 080, 084),
# table-driven as io-diff-table.sh: the same exit code, stdout and stderr
# (the message naming what is wrong, the data read), and the images either
# left the same to qemu-img compare and check, with the same qcow2 feature
# bits (a write that would land on metadata marks the image corrupt; an
# open for writing clears unknown autoclear bits, repairs a dirty image).
# h-* images: refused at the open by qemu-io; c-* images: opened, read and
# written. The known differences are vbd's on purpose (README, "vbd-img on
# damaged images").
# Runtime (ASan): 19 s at load 28; 5-7 min under nice 19 beside six other tests at load 33-40.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib-difftable.sh"
need qemu-img qemu-io python3
cd "$T"
make_base_images q
make_hostile_images
run_cases io_case <<'CASES'
@h-!(crypt-aes|vhdx-rt|vhdx-rt1).* -r -f %f -c 'read -P 1 0 4k' %i
@c-!(compressed-huge|data-odd|l2-far|l2-odd|vmdk-desc-far|vmdk-gd-far|vpc-dyncksum|vpc-type).* -r -f %f -c 'read -P 1 0 4k' -c 'read -P 2 1M 512' -c 'read -P 0 2M 64k' %i
@c-!(compressed-huge|data-odd|data-on-rb|l2-far|l2-odd|l2-on-l1|vmdk-desc-far|vmdk-gd-far|vpc-dyncksum|vpc-type).* -f %f -c 'write -P 9 0 4k' -c 'read -P 9 0 4k' -c 'write -P 8 3M 4k' -c 'read -P 8 3M 4k' %i

!no encryption (README): refused by both, in other words | @h-crypt-aes.qcow2 -r -f %f -c 'read -P 1 0 4k' %i
!both refuse both region tables damaged; qemu-io's message is a bare "Invalid argument", vbd-io's names the region table | @h-vhdx-rt.vhdx -r -f %f -c 'read -P 1 0 4k' %i
!not fixed: one VHDX region table copy damaged: vbd reads the other (as it does a header copy), qemu-io refuses the image | @h-vhdx-rt1.vhdx -r -f %f -c 'read -P 1 0 4k' %i
!not fixed: vbd refuses the image at the open (README) | @c-@(vmdk-desc-far|vmdk-gd-far|vpc-dyncksum|vpc-type).* -r -f %f -c 'read -P 1 0 4k' -c 'read -P 2 1M 512' -c 'read -P 0 2M 64k' %i
!not fixed: vbd refuses the image at the open (README) | @c-@(vmdk-desc-far|vmdk-gd-far|vpc-dyncksum|vpc-type).* -f %f -c 'write -P 9 0 4k' -c 'read -P 9 0 4k' -c 'write -P 8 3M 4k' -c 'read -P 8 3M 4k' %i
# a compressed cluster that cannot be inflated, an L2 table past the end of
# the file: vbd-io's read fails (EIO), qemu-io returns zeroes or whatever
# inflating gave (the pattern check fails); exit 1 both
!README: a read through qcow2 metadata that cannot be right fails | @c-@(compressed-huge|l2-far).qcow2 -r -f %f -c 'read -P 1 0 4k' -c 'read -P 2 1M 512' -c 'read -P 0 2M 64k' %i
!README: a read through qcow2 metadata that cannot be right fails | @c-compressed-huge.qcow2 -f %f -c 'write -P 9 0 4k' -c 'read -P 9 0 4k' -c 'write -P 8 3M 4k' -c 'read -P 8 3M 4k' %i
# an L2 table past the end of the file: qemu-io writes into it there
# (clusters no refcount counts, free to be allocated again); vbd-io marks
# the image corrupt and refuses the write
!not fixed: README: vbd refuses a write through an L2 table past the end of the file | @c-l2-far.qcow2 -f %f -c 'write -P 9 0 4k' -c 'read -P 9 0 4k' -c 'write -P 8 3M 4k' -c 'read -P 8 3M 4k' %i
# unaligned tables and clusters: the same reads fail, the messages differ
# (qemu-io: once, "Image is corrupt: ..."; vbd-io: each time, its words)
!README: vbd's own words for a corrupt qcow2 table or cluster, on each request | @c-@(data-odd|l2-odd).qcow2 -r -f %f -c 'read -P 1 0 4k' -c 'read -P 2 1M 512' -c 'read -P 0 2M 64k' %i
# a write that would land on metadata or at an unaligned place: refused by
# both and the image marked corrupt; then qemu-io's device is gone (every
# request: "No medium found"), vbd-io refuses writes and still reads
!README: after the corrupt mark vbd-io still reads | @c-@(data-odd|data-on-rb|l2-odd|l2-on-l1).qcow2 -f %f -c 'write -P 9 0 4k' -c 'read -P 9 0 4k' -c 'write -P 8 3M 4k' -c 'read -P 8 3M 4k' %i
CASES
