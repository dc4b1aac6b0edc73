# Sourced by every interop test. Provides: $T (temp dir, removed at exit),
# VBD_IMG/VBD_IO/VBD_DAEMON paths, need CMD (skip with 77 if missing),
# fail MSG, must CMD..., qcheck IMG (qemu-img check must be clean).
set -u
VBD_BUILD=${VBD_BUILD:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/build}
VBD_ROOT=${VBD_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
VBD_IMG=$VBD_BUILD/src/tools/vbd-img
VBD_IO=$VBD_BUILD/src/tools/vbd-io
VBD_DAEMON=$VBD_BUILD/src/tools/vbd-daemon
VBD_CTL=$VBD_BUILD/src/tools/vbd-ctl
VBD_BENCH=$VBD_BUILD/src/tools/vbd-bench
T=$(mktemp -d "${TMPDIR:-/tmp}/vbd-test.XXXXXX")
_vbd_cleanup_cmds=""
on_exit() { _vbd_cleanup_cmds="$1; $_vbd_cleanup_cmds"; }
trap 'eval "$_vbd_cleanup_cmds"; rm -rf "$T"' EXIT

skip() { echo "SKIP: $*"; exit 77; }
need() { for c in "$@"; do command -v "$c" >/dev/null 2>&1 || skip "$c not installed"; done; }
fail() { echo "FAIL: $*" >&2; exit 1; }
must() { "$@" || fail "command failed ($?): $*"; }
# must_fail_with "substring" CMD...: the command must fail and its stderr mention substring.
must_fail_with() {
    local want=$1; shift
    local out rc
    out=$("$@" 2>&1); rc=$?
    [ $rc != 0 ] || fail "expected failure: $*"
    case "$out" in *"$want"*) ;; *) fail "error for '$*' lacks '$want': $out" ;; esac
    [ "$(printf '%s\n' "$out" | grep -c .)" -le 2 ] || fail "error for '$*' is not one line: $out"
}
qcheck() { # qemu-img check must report no errors and no leaks
    local out
    out=$(qemu-img check "$@" 2>&1) || fail "qemu-img check $*: $out"
}
step() { echo "--- $*"; }
