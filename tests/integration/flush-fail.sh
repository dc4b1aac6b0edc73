#!/bin/bash
# A failed fdatasync makes every later flush of the file fail, as QEMU's
# file-posix (page_cache_inconsistent): Linux marks the page cache's pages
# that it could not write back clean and reports the error once, so the
# next fdatasync succeeds although the writes never reached the disk; a
# flush that then succeeded would tell the guest (or qemu-img, or an NBD
# client) that its writes are durable when they are lost. With
# cache=none the writes do not go through the page cache: a failed sync is
# reported and the next one tried (QEMU the same).
# The fault: a shim (LD_PRELOAD) whose fdatasync fails with EIO once, at
# the Nth call of the process, without syncing (the pool's syscall; vbd's
# io_uring is switched off, QEMU's pool is its default). qemu-nbd and
# vbd-nbd serve the same raw file under it, and an NBD client (nbdproto)
# sends the same writes and flushes to each and prints each reply's error:
# the same on both. Then vbd-daemon's NBD export (the same file driver
# under a daemon): the flushes after the failed one fail, the daemon warns
# once.
. "$(dirname "$0")/lib.sh"
need qemu-nbd qemu-img cc python3
cd "$T"
export VBD_NO_IO_URING=1
# the shim comes first in the list of libraries: ASan must be told that this is fine
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"
cat >shim.c <<'EOF'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>
/* fdatasync fails once with EIO, at call number $FAIL_FDATASYNC of the process */
int fdatasync(int fd)
{
    static int calls;
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    const char *at = getenv("FAIL_FDATASYNC");
    if (at && __atomic_add_fetch(&calls, 1, __ATOMIC_SEQ_CST) == atoi(at)) {
        errno = EIO;
        return -1;
    }
    return real(fd);
}
EOF
must cc -shared -fPIC -O1 -o shim.so shim.c -ldl
SHIM=$T/shim.so

# client SOCKET: writes and flushes; one line per request, its error (0: none)
client() {
    python3 - "$1" <<'EOF'
import sys
import nbdproto as p
s = p.connect(sys.argv[1], timeout=600)
p.handshake(s, 'disk')
cookie = 0
def req(name, typ, off=0, data=b''):
    global cookie
    cookie += 1
    s.sendall(p.request(typ, cookie, off, len(data)) + data)
    magic, err, c = __import__('struct').unpack('>IIQ', p.recvn(s, 16))
    assert magic == p.SIMPLE_REPLY_MAGIC and c == cookie, (hex(magic), c)
    print(name, err)
req('write', p.CMD_WRITE, 0, b'\1' * 65536)
req('flush', p.CMD_FLUSH)
req('flush', p.CMD_FLUSH)
req('write', p.CMD_WRITE, 65536, b'\2' * 65536)
req('flush', p.CMD_FLUSH)
req('flush', p.CMD_FLUSH)
req('write', p.CMD_WRITE, 4096, b'\3' * 512)
req('flush', p.CMD_FLUSH)
s.sendall(p.request(p.CMD_DISC, 0, 0, 0))
EOF
}

# serve K CACHE N SERVER: SERVER (qemu-nbd or vbd-nbd) on a fresh raw
# file with fdatasync call N failing; the client's lines in K.out
serve() {
    local k=$1 cache=$2 n=$3 srv=$4 pid
    rm -f "$k.sock" "$k.raw"
    must qemu-img create -q -f raw "$k.raw" 1M
    LD_PRELOAD=$SHIM FAIL_FDATASYNC=$n "$srv" -f raw --cache="$cache" --aio=threads -k "$T/$k.sock" -x disk "$k.raw" \
        2>"$k.err" &
    pid=$!
    wait_sock "$T/$k.sock"
    client "unix:$T/$k.sock" >"$k.out" || fail "$k: the client failed: $(cat "$k.err")"
    wait $pid # one client, no --persistent: the server ends with it
}

for cache in writeback none; do
    for n in 1 2; do
        step "cache=$cache, fdatasync $n fails"
        serve q "$cache" $n qemu-nbd
        serve v "$cache" $n "$VBD_NBD"
        cat v.out v.err
        diff -u q.out v.out || fail "cache=$cache, fdatasync $n failing: vbd-nbd's replies differ from qemu-nbd's"
    done
done
# what the cases showed: a flush after the failed one fails, except with O_DIRECT
serve v writeback 1 "$VBD_NBD"
[ "$(grep -c "^flush 5" v.out)" = 5 ] || fail "writeback: a flush after the failed one succeeded: $(cat v.out)"
serve v none 1 "$VBD_NBD"
[ "$(grep -c "^flush 5" v.out)" = 1 ] || fail "cache=none: a flush after the failed one failed: $(cat v.out)"

step "vbd-daemon's NBD export: the flushes after a failed fdatasync fail"
must qemu-img create -q -f raw d.raw 1M
S=$T/qmp.sock
LD_PRELOAD=$SHIM FAIL_FDATASYNC=1 start_daemon --chardev "socket,id=mon,path=$S,server=on,wait=off" --monitor chardev=mon \
    --blockdev "driver=file,node-name=f0,filename=$T/d.raw,aio=threads" \
    --nbd-server "addr.type=unix,addr.path=$T/d.sock" --export "type=nbd,id=n0,node-name=f0,name=disk,writable=on"
wait_sock "$T/d.sock"
client "unix:$T/d.sock" >d.out || fail "the client of the daemon failed"
cat d.out
[ "$(grep -c "^flush 5" d.out)" = 5 ] || fail "vbd-daemon: a flush after the failed one succeeded: $(cat d.out)"
[ "$(grep -c "fdatasync failed (Input/output error)" "$T/daemon.log")" = 1 ] || fail "not one warning: $(cat "$T/daemon.log")"
kill -TERM $dpid
wait $dpid
dpid=
! grep -q Sanitizer "$T/daemon.log" || { cat "$T/daemon.log"; fail "sanitizer report"; }
echo "PASS"
