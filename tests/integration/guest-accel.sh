#!/bin/bash
# test-timeout: 2700 (run.sh: two TCG guests that may each take --timeout 1200)
# The guest tests run under KVM exactly where /dev/kvm is usable and fall
# back to TCG elsewhere. The choice (tests/guest/accel.sh) is checked against
# an independent probe of /dev/kvm (open read-write, KVM_GET_API_VERSION,
# KVM_CREATE_VM; refused anyway if a kernel does not boot on it), as this
# user and as nobody; then a guest boots on a vbd
# vhost-user-blk disk with KVM hidden (/dev/null bound over /dev/kvm in a
# private mount namespace: the automatic choice must fall back to TCG) and,
# where KVM is usable, with the automatic choice; the guest's kernel says
# which hypervisor it runs on.
. "$(dirname "$0")/lib.sh"
need qemu-system-x86_64 qemu-img python3
G=$VBD_ROOT/tests/guest
ls /boot/vmlinuz-* >/dev/null 2>&1 || skip "no guest kernel (linux-image-amd64)"
. "$G/accel.sh"
kvm_really_usable() {
    python3 - <<'PY'
import fcntl, os, sys
try:
    fd = os.open('/dev/kvm', os.O_RDWR | os.O_CLOEXEC)
    if fcntl.ioctl(fd, 0xAE00) != 12:       # KVM_GET_API_VERSION
        sys.exit(1)
    os.close(fcntl.ioctl(fd, 0xAE01, 0))    # KVM_CREATE_VM
except OSError:
    sys.exit(1)
PY
}

step "the automatic choice agrees with /dev/kvm"
pick_accel || fail "pick_accel failed"
if kvm_really_usable; then
    # a VM can be created; KVM is still refused when a kernel does not boot on it
    case "$ACCEL: $ACCEL_WHY" in
        "kvm: /dev/kvm is usable" | "tcg: a kernel does not boot under KVM"*) ;;
        *) fail "/dev/kvm can create a VM, but picked $ACCEL ($ACCEL_WHY)" ;;
    esac
else
    [ "$ACCEL" = tcg ] || fail "/dev/kvm cannot create a VM, but picked $ACCEL ($ACCEL_WHY)"
fi
want=$ACCEL
# the boot probe behind that choice accepts a kernel that boots (here under TCG)
kernel=$(ls /boot/vmlinuz-* | sort -V | tail -1)
kernel_boots tcg "$kernel" 600 || fail "the KVM boot probe does not see $kernel boot under TCG either"
echo "picked $ACCEL: $ACCEL_WHY"
auto_why=$ACCEL_WHY
VBD_ACCEL=tcg pick_accel && [ $ACCEL = tcg ] || fail "VBD_ACCEL=tcg did not pick tcg"
if [ $want = kvm ]; then
    VBD_ACCEL=kvm pick_accel && [ $ACCEL = kvm ] || fail "VBD_ACCEL=kvm did not pick kvm"
else
    must_fail_with "VBD_ACCEL=kvm but " bash -c ". '$G/accel.sh'; VBD_ACCEL=kvm pick_accel"
fi
must_fail_with "VBD_ACCEL must be kvm, tcg or auto, not 'hvf'" bash -c ". '$G/accel.sh'; VBD_ACCEL=hvf pick_accel"

if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null && [ -c /dev/kvm ]; then
    step "as nobody"
    as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
    got=$(as_nobody bash -c ". '$G/accel.sh'; pick_accel && echo \"\$ACCEL: \$ACCEL_WHY\"") || fail "pick_accel as nobody"
    if as_nobody bash -c 'exec 3<>/dev/kvm' 2>/dev/null; then
        echo "(nobody may open /dev/kvm: $got)"
    else
        case "$got" in "tcg: /dev/kvm cannot be opened read-write by nobody") ;; *) fail "as nobody: $got" ;; esac
        echo "$got"
    fi
fi

img=$T/disk.img
must qemu-img create -q -f raw "$img" 64M
S=$T/vu.sock
on_exit '[ -n "$dpid" ] && kill -9 $dpid 2>/dev/null'
start_daemon --blockdev driver=file,node-name=file0,filename="$img" --blockdev driver=raw,node-name=disk0,file=file0 \
    --export "type=vhost-user-blk,id=exp0,addr.type=unix,addr.path=$S,node-name=disk0,writable=on"
# the block workload, after a line naming the hypervisor the guest's kernel found
{ echo '. /lib/vbd.sh; log "hypervisor: $(dmesg | grep -o -m1 "Hypervisor detected: .*" || echo none)"'
  cat "$G/workloads/basic.sh"; } >"$T/workload.sh"
boot() { # EXPECTED_ACCEL [command prefix]: the guest passes under that accelerator
    local want=$1; shift
    "$@" "$G/run-guest.sh" --vhost-user "$S" --timeout 1200 --workload "$T/workload.sh" >"$T/guest.out" 2>&1 ||
        { cat "$T/guest.out"; fail "guest under $want"; }
    cat "$T/guest.out"
    grep -q "^run-guest: accel $want " "$T/guest.out" || fail "run-guest did not say it used $want"
    grep -q "^run-guest: PASS (vhost-user, $want, " "$T/guest.out" || fail "no PASS under $want"
    if [ $want = kvm ]; then
        grep -q "hypervisor: Hypervisor detected: KVM" "$T/guest.out" || fail "the guest does not run on KVM"
    else
        ! grep -q "hypervisor: Hypervisor detected: KVM" "$T/guest.out" || fail "the TCG guest runs on KVM"
    fi
}
hide_kvm=
if unshare -m true 2>/dev/null; then
    hide_kvm="unshare -m"
elif unshare -rm true 2>/dev/null; then
    hide_kvm="unshare -rm"
fi
if [ -n "$hide_kvm" ]; then
    step "KVM hidden: the automatic choice falls back to TCG and the guest runs"
    boot tcg $hide_kvm bash -c 'mount --bind /dev/null /dev/kvm 2>/dev/null || [ ! -e /dev/kvm ] || exit 9; exec "$@"' hide
else
    step "TCG forced (no private mount namespace here to hide /dev/kvm)"
    boot tcg env VBD_ACCEL=tcg
fi
grep -q "^run-guest: accel tcg (QEMU cannot use /dev/kvm\|^run-guest: accel tcg (/dev/kvm does not exist\|^run-guest: accel tcg (VBD_ACCEL=tcg" \
    "$T/guest.out" || fail "the fallback did not say why"
if [ $want = kvm ]; then
    step "KVM usable: the automatic choice boots the guest under KVM"
    boot kvm
else
    echo "(KVM not usable here: $auto_why; the KVM boot is not run)"
fi
stop_daemon
echo OK
