#!/bin/bash
# GnuTLS, libxml2, libiscsi and librbd are loaded when first used, not
# linked (src/util/dynlib.h, rbd.c): the tools' runs that use none of
# them load none (ld.so's own trace, LD_DEBUG=libs), a running daemon maps
# none until TLS credentials (GnuTLS, only it) or an iscsi node (libiscsi)
# ask for them; a library that cannot be loaded is one line naming what
# needed it and the file, not a tool that cannot start. (iscsi.sh,
# rbd.sh, nbd-tls*.sh and libvirt-disk.sh test the drivers themselves.)
. "$(dirname "$0")/lib.sh"
need python3 qemu-img
cd "$T"
heavy='lib(gnutls|xml2|iscsi|rbd|rados)\.so'
# a LUN nobody serves: port 1 is privileged, so nothing of a test listens
# there and the connection is refused at once, after the library is loaded
lun=iscsi://127.0.0.1:1/iqn.2000-01.com.example:none/0
qemu-img create -q -f qcow2 img.qcow2 4M
truncate -s 4M disk.raw

step "vbd-img and vbd-io verbs on local images load none of the heavy libraries"
# ld_trace TOOL ARGS...: the libraries ld.so looked for (at start or dlopen)
# (one file per process, in ld.txt; its stderr in err)
ld_trace() {
    local rc=0
    rm -rf "$T/ld" && mkdir "$T/ld" || fail "cannot make $T/ld"
    LD_DEBUG=libs LD_DEBUG_OUTPUT="$T/ld/trace" "$@" >/dev/null 2>"$T/err" || rc=$?
    cat "$T"/ld/trace.* >"$T/ld.txt"
    return $rc
}
for cmd in "$VBD_IMG info img.qcow2" "$VBD_IMG map --output=json img.qcow2" \
    "$VBD_IMG convert -f qcow2 -O raw img.qcow2 out.raw" "$VBD_IO -f raw -c read\ 0\ 4k disk.raw"; do
    eval "ld_trace $cmd" || fail "$cmd: $(cat err)"
    grep -qE "find library=libjson-c" ld.txt || fail "$cmd: no ld.so trace (LD_DEBUG=libs) to look at"
    ! grep -E "find library=$heavy" ld.txt || fail "$cmd loaded a library it does not use"
done

step "an nbds:// URI loads GnuTLS, an iscsi:// one libiscsi, only when used"
ld_trace "$VBD_IMG" info nbds://127.0.0.1:1/x && fail "vbd-img info of an nbds:// URI on port 1 succeeded"
grep -q "find library=libgnutls.so" ld.txt || fail "nbds:// did not load GnuTLS: $(cat err)"
! grep -E "find library=lib(xml2|iscsi|rbd)" ld.txt || fail "nbds:// loaded more than GnuTLS"
ld_trace "$VBD_IMG" info "$lun" && fail "vbd-img info of an iSCSI LUN on port 1 succeeded"
grep -q "Connection refused" err || fail "iscsi on port 1: not refused: $(cat err)"
grep -q "find library=libiscsi.so" ld.txt || fail "iscsi:// did not load libiscsi"
! grep -E "find library=lib(gnutls|xml2|rbd)" ld.txt || fail "iscsi:// loaded more than libiscsi"

step "a daemon maps GnuTLS at the first TLS credentials and libiscsi at the first iscsi node"
mapped() { grep -oE "/lib[a-z0-9_.+-]*\.so[.0-9]*" /proc/"$dpid"/maps | sort -u | grep -E "$heavy" | sed 's,.*/,,; s/\.so.*/.so/' | tr '\n' ' '; }
S=$T/qmp.sock
start_monitored "$VBD_DAEMON" --blockdev driver=file,node-name=f,filename=disk.raw
qmp_py "$S" <<'PY'
ok("query-named-block-nodes")
PY
[ -z "$(mapped)" ] || fail "the daemon maps $(mapped)before anything asked for them"
qmp_py "$S" <<'PY'
ok("object-add", **{"qom-type": "tls-creds-anon", "id": "t", "endpoint": "server"})
PY
[ "$(mapped)" = "libgnutls.so " ] || fail "after tls-creds-anon the daemon maps '$(mapped)', not GnuTLS alone"
qmp_py "$S" <<'PY'
r = m.cmd("blockdev-add", {"driver": "iscsi", "node-name": "i", "transport": "tcp", "portal": "127.0.0.1:1",
                            "target": "iqn.2000-01.com.example:none", "lun": 0})
assert "Connection refused" in r["error"]["desc"], r
PY
[ "$(mapped)" = "libgnutls.so libiscsi.so " ] || fail "after an iscsi node the daemon maps '$(mapped)'"
kill "$dpid"
wait "$dpid"

step "a library that cannot be loaded: one line naming what needed it and the file"
mkdir broken
: >broken/libiscsi.so.7
: >broken/libgnutls.so.30
: >broken/libxml2.so.2
echo '<disk type="file" device="disk"><source file="disk.raw"/><target dev="vda"/></disk>' >disk.xml
# one_line WANT CMD...: CMD fails (exit 1) with exactly the line WANT on stderr
one_line() {
    local want=$1 rc=0
    shift
    LD_LIBRARY_PATH=$T/broken "$@" >out.txt 2>err.txt || rc=$?
    [ $rc = 1 ] || fail "$*: exit status $rc, not 1: $(cat err.txt)"
    [ "$(cat err.txt)" = "$want" ] || fail "$*: said '$(cat err.txt)', not '$want'"
}
one_line "vbd-img: Could not open '$lun': Block driver 'iscsi' not available: $T/broken/libiscsi.so.7: file too short" \
    "$VBD_IMG" info "$lun"
one_line "vbd-img: Could not open 'nbds://127.0.0.1:1/x': TLS not available: $T/broken/libgnutls.so.30: file too short" \
    "$VBD_IMG" info nbds://127.0.0.1:1/x
one_line "vbd-daemon: --object tls-creds-anon,id=t,endpoint=server: TLS not available: $T/broken/libgnutls.so.30: file too short" \
    "$VBD_DAEMON" --object tls-creds-anon,id=t,endpoint=server
one_line "vbd-daemon: --libvirt-disk disk.xml: libvirt XML not available: $T/broken/libxml2.so.2: file too short" \
    "$VBD_DAEMON" --libvirt-disk disk.xml
# and what does not need them is not stopped by them
LD_LIBRARY_PATH=$T/broken must "$VBD_IMG" info img.qcow2 >/dev/null
echo PASS
