#!/bin/bash
# vbd-img beside qemu-img 7.2 on damaged images (lib-difftable.sh
# make_hostile_images: a header field or table entry of each format out of
# range, the scenarios of QEMU's iotests 036, 039, 059, 060, 080, 084),
# table-driven as img-diff-table.sh: the same exit code, stdout and stderr
# (the message naming what is wrong), and what check -r all leaves the same
# image to qemu-img compare and check, with the same qcow2 feature bits
# (the repair clears the corrupt bit, the read-write open unknown
# autoclear bits).
# h-* images: refused at the open by qemu-img; c-* images: opened (info,
# check and its repair). The known differences are vbd's on purpose
# (README, "vbd-img on damaged images").
# Runtime (ASan): 23 s at load 28; 5-9 min under nice 19 beside six other tests at load 33-40.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib-difftable.sh"
need qemu-img qemu-io python3
cd "$T"
make_base_images q
make_hostile_images
run_cases img_case <<'CASES'
@h-!(crypt-aes|vhdx-rt|vhdx-rt1).* info -f %f %i
@c-!(qed-needcheck|vmdk-desc-far|vmdk-gd-far|vpc-dyncksum|vpc-type).* info --output=json -f %f %i
@c-!(l2-odd|vmdk-desc-far|vmdk-gd-far|vpc-dyncksum|vpc-type).* check -f %f %i
@c-!(data-odd|data-on-rb|l2-odd|l2-on-l1|ref0|vmdk-desc-far|vmdk-gd-far|vpc-dyncksum|vpc-type).* check -r all -f %f %i

!not fixed: no encryption (README): qemu-img describes an AES-encrypted qcow2 without its key, vbd-img refuses it | @h-crypt-aes.qcow2 info -f %f %i
!both refuse both region tables damaged; qemu-img's message is a bare "Invalid argument", vbd-img's names the region table | @h-vhdx-rt.vhdx info -f %f %i
!not fixed: one VHDX region table copy damaged: vbd reads the other (as it does a header copy), qemu-img refuses the image | @h-vhdx-rt1.vhdx info -f %f %i
!vbd-img's dirty-flag is qed's need-check bit (qemu-img 7.2 says false) | @c-qed-needcheck.qed info --output=json -f %f %i
# refused at the open by vbd (qemu-img opens them, reads zeroes where the
# metadata lies past the end, and fails writes): a vmdk descriptor or grain
# directory past the end of the file, a VHD dynamic header whose checksum
# is wrong or a footer naming an unknown disk type
!not fixed: vbd refuses the image at the open (README) | @c-@(vmdk-desc-far|vmdk-gd-far|vpc-dyncksum|vpc-type).* info --output=json -f %f %i
!not fixed: vbd refuses the image at the open (README) | @c-@(vmdk-desc-far|vmdk-gd-far|vpc-dyncksum|vpc-type).* check -f %f %i
!not fixed: vbd refuses the image at the open (README) | @c-@(vmdk-desc-far|vmdk-gd-far|vpc-dyncksum|vpc-type).* check -r all -f %f %i
# qcow2 tables that are unaligned or lie on other metadata: both find the
# image corrupt (exit 2), their counts differ (qemu-img reads the L2 table
# at its unaligned offset: 129 errors); their repairs differ
!qcow2 L2 table at an unaligned offset: corrupt to both, counted otherwise | @c-l2-odd.qcow2 check -f %f %i
!qcow2 L2 table at an unaligned offset: corrupt to both, counted and repaired otherwise | @c-l2-odd.qcow2 check -r all -f %f %i
!not fixed: an L2 table on the L1 table: qemu-img check -r all stops (exit 1), vbd-img repairs it (a clean image, exit 0) | @c-l2-on-l1.qcow2 check -r all -f %f %i
!a data cluster on the refcount block: both repair it to a clean image, the end offsets differ | @c-data-on-rb.qcow2 check -r all -f %f %i
!an unaligned data cluster: the same report and exit (2) after the repair; neither repaired image passes qemu-img compare | @c-data-odd.qcow2 check -r all -f %f %i
!README: a cluster in use whose refcount is 0: vbd-img repairs the count in place, qemu-img rebuilds the refcount structure | @c-ref0.qcow2 check -r all -f %f %i
CASES
