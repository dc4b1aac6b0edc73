# Sourced on the host by run-guest.sh and the guest tests. pick_accel
# [KERNEL] sets ACCEL (kvm or tcg) and ACCEL_WHY (one line: why that one).
# VBD_ACCEL=kvm|tcg forces one (kvm fails when KVM is not usable); unset or
# auto: kvm when /dev/kvm opens read-write, QEMU can start a KVM machine on
# it and KERNEL (default: the newest /boot/vmlinuz-*) boots under KVM up to
# its "no root fs" panic, else tcg. A device node can exist without working
# virtualisation behind it: in some VMs QEMU starts and the BIOS runs under
# KVM but a kernel hangs. The boot probe's verdict is kept per user, kernel
# and host boot in the guest cache.
# kernel_boots ACCEL KERNEL [SECONDS]: KERNEL, without an initrd, gets as
# far as its panic about the root fs within SECONDS (default 60: a KVM
# boot takes about one; a TCG one on a loaded host can take minutes) and
# -no-reboot then ends QEMU
kernel_boots() {
    local out
    out=$(timeout -k 5 "${3:-60}" qemu-system-x86_64 -accel "$1" -machine pc -cpu max -m 128M -nodefaults -nographic \
        -no-reboot -kernel "$2" -append "console=ttyS0 no_timer_check panic=-1" -serial stdio </dev/null 2>&1)
    case "$out" in *"Kernel panic - not syncing: VFS: Unable to mount root fs"*) return 0 ;; esac
    return 1
}
kvm_usable() { # [KERNEL]; sets KVM_WHY
    if [ ! -c /dev/kvm ]; then KVM_WHY="/dev/kvm does not exist"; return 1; fi
    if ! { exec {fd}<>/dev/kvm; } 2>/dev/null; then
        KVM_WHY="/dev/kvm cannot be opened read-write by $(id -un)"; return 1
    fi
    exec {fd}>&-
    local out
    if ! out=$(echo quit | qemu-system-x86_64 -accel kvm -machine none -nodefaults -display none -monitor stdio 2>&1 >/dev/null); then
        KVM_WHY="QEMU cannot use /dev/kvm: $(printf '%s' "$out" | tail -1)"; return 1
    fi
    local kernel=${1:-$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -1)}
    [ -r "$kernel" ] || { KVM_WHY="/dev/kvm is usable (no kernel to boot-test it)"; return 0; }
    local cache=${VBD_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vbd-guest}
    local key
    key=$cache/kvm-probe.$(id -u).$(cat /proc/sys/kernel/random/boot_id 2>/dev/null).${kernel##*/}
    if [ ! -s "$key" ]; then
        mkdir -p "$cache"
        if kernel_boots kvm "$kernel"; then
            echo "ok" >"$key.$$"
        else
            echo "a kernel does not boot under KVM (no panic from ${kernel##*/} without a root fs in 60 s)" >"$key.$$"
        fi
        mv "$key.$$" "$key"
    fi
    if [ "$(cat "$key")" != ok ]; then KVM_WHY=$(cat "$key"); return 1; fi
    KVM_WHY="/dev/kvm is usable"
}
pick_accel() { # [KERNEL]
    case "${VBD_ACCEL:-auto}" in
        tcg) ACCEL=tcg ACCEL_WHY="VBD_ACCEL=tcg" ;;
        kvm) kvm_usable "$@" || { echo "VBD_ACCEL=kvm but $KVM_WHY" >&2; return 1; }
             ACCEL=kvm ACCEL_WHY="VBD_ACCEL=kvm, $KVM_WHY" ;;
        auto) if kvm_usable "$@"; then ACCEL=kvm; else ACCEL=tcg; fi; ACCEL_WHY=$KVM_WHY ;;
        *) echo "VBD_ACCEL must be kvm, tcg or auto, not '$VBD_ACCEL'" >&2; return 1 ;;
    esac
}
