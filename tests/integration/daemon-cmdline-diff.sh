#!/bin/bash
# A command line that qemu-storage-daemon 7.2 refuses is refused by
# vbd-daemon with the same exit status and the same error line(s) on stderr
# (the program name normalised): a script that checks either daemon's
# startup error sees the same thing. Each case below is shell words ({D} is
# a directory of the run); a trailing '# rc-only: REASON' compares only the
# exit status (a deliberate difference in the text, printed).
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon
cd "$T"
mkdir -p qsd/dir vbd/dir
truncate -s 1M qsd/disk.raw vbd/disk.raw

# run NAME BIN ARGS...: stderr normalised in $T/NAME.err, status in $T/NAME.rc
run() {
    local name=$1 bin=$2; shift 2
    timeout -k 5 60 "$bin" "$@" </dev/null >"$name.out" 2>"$name.raw"
    echo $? >"$name.rc"
    sed -E -e "s|$T/$name|{D}|g" -e 's#^([^ :]*/)?(qemu-storage-daemon|vbd-daemon):#PROG:#' "$name.raw" >"$name.err"
}

ndiff=0
while IFS= read -r line; do
    case "$line" in '' | '#'*) continue ;; esac
    args=${line%%  # rc-only:*}
    why=
    [ "$args" = "$line" ] || why=${line#*  # rc-only: }
    eval "set -- ${args//\{D\}/$T/qsd}"
    run qsd qemu-storage-daemon "$@"
    eval "set -- ${args//\{D\}/$T/vbd}"
    run vbd "$VBD_DAEMON" "$@"
    ! grep -q -e Sanitizer -e 'runtime error' vbd.raw || fail "vbd-daemon $args: $(cat vbd.raw)"
    if [ "$(cat qsd.rc)" != "$(cat vbd.rc)" ]; then
        echo "DIFF $args: exit status qsd $(cat qsd.rc), vbd $(cat vbd.rc)"
        ndiff=$((ndiff + 1))
    elif ! cmp -s qsd.err vbd.err; then
        if [ -n "$why" ]; then
            echo "deliberate $args ($why)"
        else
            echo "DIFF $args:"
            diff qsd.err vbd.err | sed 's/^/    /'
            ndiff=$((ndiff + 1))
        fi
    fi
    [ "$(cat qsd.rc)" != 0 ] || fail "case '$args' started qemu-storage-daemon: not a refused command line"
done <<'CASES'
# getopt's own errors
--bogus
-x
--blockdev
--pidfile
--export
extra
--blockdev driver=null-co,node-name=a extra
# option values
--blockdev driver=nope,node-name=x
--blockdev driver=file,node-name=x
--blockdev driver=file,node-name=x,filename=/nonexistent/vbd
--blockdev driver=file,node-name=x,filename={D}/disk.raw --blockdev driver=file,node-name=x,filename={D}/disk.raw
# what the file and host_device drivers take: a directory (opened for
# writing: EISDIR; read-only: not a regular file), a character device, a file
--blockdev driver=file,node-name=x,filename={D}/dir
--blockdev driver=file,node-name=x,filename={D}/dir,read-only=on
--blockdev driver=file,node-name=x,filename=/dev/null
--blockdev driver=file,node-name=x,filename=/dev/zero,read-only=on
--blockdev driver=host_device,node-name=x,filename={D}/disk.raw
--blockdev driver=host_device,node-name=x,filename={D}/dir
--blockdev driver=host_device,node-name=x,filename={D}/dir,read-only=on
--blockdev driver=host_device,node-name=x,filename={D}/nofile
--export type=nbd,id=e,node-name=zz
--nbd-server addr.type=unix
--object foo,id=x
--monitor chardev=nochar
--blockdev driver=null-co
--blockdev null-co,node-name=a,bogus=1  # rc-only: vbd names the driver that has no such option (qsd: "Parameter 'bogus' is unexpected")
--blockdev driver=null-co,node-name=a --export type=nbd,id=e,node-name=a
--blockdev driver=null-co,node-name=a --nbd-server addr.type=unix,addr.path={D}/n.sock --export type=nbd,id=e,node-name=b
--chardev socket,id=c,path=/nonexistent/vbd/s,server=on,wait=off
--nbd-server addr.type=unix,addr.path=/nonexistent/vbd/s
--pidfile /nonexistent/vbd/pid
--export id=e,node-name=a
--blockdev driver=null-co,node-name=a --export type=nbd,node-name=a
--blockdev driver=null-co,node-name=a --export type=floppy,id=e,node-name=a
--nbd-server addr.type=unix,addr.path={D}/a.sock --nbd-server addr.type=unix,addr.path={D}/b.sock
# node names: --blockdev is blockdev-add, its check of the name included
--blockdev driver=null-co,node-name=1a
--blockdev driver=null-co,node-name=a@b
--blockdev driver=null-co,node-name=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
# --export's implied key is type
--blockdev driver=null-co,node-name=a --export nbd,id=e,node-name=a
--blockdev driver=null-co,node-name=a --export vhost-user-blk,id=e,node-name=a
--blockdev driver=null-co,node-name=a --export floppy,id=e,node-name=a
--blockdev driver=null-co,node-name=a --export nbd,id=e
--blockdev driver=null-co,node-name=a --export vhost-user-blk,id=e,node-name=a,addr.type=unix
--blockdev driver=null-co,node-name=a --export vhost-user-blk,id=e,node-name=a,addr.path={D}/v.sock
# --nbd-server is QAPI's NbdServerOptions (addr a SocketAddress)
# a file node without its filename (the schema says so before the driver)
--blockdev driver=file,node-name=x
--blockdev driver=qcow2,node-name=x,file.driver=file
--nbd-server addr.type=inet
--nbd-server addr.type=inet,addr.host=127.0.0.1
--nbd-server addr.path={D}/n.sock
--nbd-server addr.type=bogus
--nbd-server addr.type=vsock
--nbd-server max-connections=2
--nbd-server addr.type=unix,addr.path={D}/n.sock,max-connections=abc
--nbd-server addr.type=unix,addr.path={D}/n.sock,max-connections=-1
--nbd-server addr.type=unix,addr.path={D}/n.sock,bogus=1
--nbd-server addr.type=unix,addr.path={D}/n.sock,addr.host=x
--nbd-server addr.type=unix,addr.path={D}/n.sock,addr.tight=maybe
--nbd-server addr.type=unix,addr.path={D}/n.sock,tls-creds=nope
--nbd-server addr.type=inet,addr.host=127.0.0.1,addr.port=abc
# keyval's help request ("help" or "?" as a bare word): none to give
--blockdev help
--blockdev driver=file,help
--blockdev driver=file,node-name=x,?
--export type=nbd,help
--export help
--nbd-server help
--nbd-server addr.type=inet,help
--monitor help
# inet options checked as QEMU's (the listening itself: nbd-server-inet-diff.sh)
--nbd-server addr.type=inet,addr.host=127.0.0.1,addr.port=1,addr.ipv4=off,addr.ipv6=off
--nbd-server addr.type=inet,addr.host=localhost,addr.port=1,addr.numeric=on
--nbd-server addr.type=inet,addr.host=127.0.0.1,addr.port=1,addr.to=x
--nbd-server addr.type=inet,addr.host=127.0.0.1,addr.port=1,addr.ipv4=maybe
--nbd-server addr.type=fd,addr.str=99  # rc-only: vbd listens on unix and inet sockets only
# --object is object-add (keyval's strings read as QEMU's keyval visitor does)
--object tls-creds-x509,id=t,dir={D},endpoint=server
--object tls-creds-x509,id=t,dir={D},endpoint=client
--object tls-creds-x509,id=t,dir=/nonexistent/vbd,endpoint=server
--object tls-creds-x509,id=t,endpoint=server
--object tls-creds-x509,id=t,dir={D},endpoint=bogus
--object tls-creds-x509,id=t,dir={D},endpoint=server,verify-peer=maybe
--object tls-creds-x509,id=t,dir={D},endpoint=server,bogus=1
--object tls-creds-psk,id=t,dir={D},endpoint=server
--object tls-creds-psk,id=t,endpoint=client
--object tls-creds-anon,id=t,endpoint=server,loaded=on
--object iothread
--object iothread,id=1x
--object iothread,id=i,bogus=1
--object iothread,id=i,poll-max-ns=-1
--object iothread,id=i,poll-max-ns=abc
--object iothread,id=i --object iothread,id=i
--object secret,id=s
--object secret,id=s,data=x,file={D}/disk.raw
--object secret,id=s,file=/nonexistent/vbd
--object secret,id=s,data=x,format=bogus
--object throttle-group
--object throttle-group,id=g,limits.iops-total=abc
--object throttle-group,id=g,limits.foo=1
--object authz-simple,id=a
--object authz-list,id=a,policy=bogus
--object authz-list,id=a,rules.0.match=x,rules.0.policy=allow,rules.0.format=regex
--object authz-pam,id=a,service=login
--object id=x
--object qom-type=iothread
# --chardev stdio (one only, not with --daemonize) and --monitor's options
--chardev stdio,id=m --chardev stdio,id=n
--chardev stdio,id=m --chardev stdio,id=m
--chardev stdio,id=m --monitor m --daemonize
--chardev stdio,id=m,bogus=1
--chardev stdio
--chardev stdio,id=m,signal=maybe  # rc-only: vbd's boolean options all name the value given (", not 'maybe'")
--chardev stdio,id=m --monitor m,pretty=maybe  # rc-only: the same
--chardev stdio,id=m --monitor m,mode=readline
# keyval, not QemuOpts: no bare flags in --blockdev, --export, --monitor, --nbd-server, --object
--blockdev driver=file,node-name=n,filename={D}/disk.raw,read-only
--blockdev driver=file,node-name=n,filename={D}/disk.raw --export nbd,id=e,node-name=n,writable
--chardev stdio,id=m --monitor m,pretty
--nbd-server addr.type=unix,addr.path={D}/s.sock,tls
--object iothread,id=io0,bogus
CASES

# a file the user may not open (root opens anything: run as nobody)
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null && setpriv --reuid=nobody --regid=nogroup --clear-groups true 2>/dev/null; then
    chmod 755 "$T" qsd vbd
    for d in qsd vbd; do
        cp $d/disk.raw $d/private.raw
        chmod 600 $d/private.raw
    done
    for ro in off on; do
        for d in qsd vbd; do
            bin=qemu-storage-daemon
            [ $d = qsd ] || bin=$VBD_DAEMON
            run $d setpriv --reuid=nobody --regid=nogroup --clear-groups "$bin" \
                --blockdev "driver=file,node-name=x,filename=$T/$d/private.raw,read-only=$ro"
        done
        if [ "$(cat qsd.rc)" != "$(cat vbd.rc)" ] || ! cmp -s qsd.err vbd.err; then
            echo "DIFF a file nobody may open (read-only=$ro): status qsd $(cat qsd.rc), vbd $(cat vbd.rc)"
            diff qsd.err vbd.err | sed 's/^/    /'
            ndiff=$((ndiff + 1))
        fi
        grep -q "Permission denied" vbd.err || fail "EACCES: $(cat vbd.err)"
    done
fi

# host_device on a character device is taken (QEMU's hdev): /dev/null and
# /dev/zero, under raw, exported over NBD: what nbdinfo sees is alike
# (size 0: where lseek(SEEK_END) lands)
if command -v nbdinfo >/dev/null; then
    for dev in /dev/null /dev/zero; do
        for d in qsd vbd; do
            bin=qemu-storage-daemon
            [ $d = qsd ] || bin=$VBD_DAEMON
            rm -f $d/c.sock
            "$bin" --blockdev driver=host_device,node-name=h,filename=$dev --blockdev driver=raw,node-name=r,file=h \
                --nbd-server addr.type=unix,addr.path="$T/$d/c.sock" --export type=nbd,id=e,node-name=r,name=r,writable=on \
                2>$d.dev.log &
            p=$!
            on_exit "kill -9 $p 2>/dev/null"
            for _ in $(seq 600); do [ -S $d/c.sock ] && break; kill -0 $p 2>/dev/null || break; sleep 0.05; done
            nbdinfo --json "nbd+unix:///r?socket=$T/$d/c.sock" | grep -v '"uri"' >$d.dev.json ||
                fail "$d: host_device $dev not served: $(cat $d.dev.log)"
            kill -TERM $p
            wait $p || fail "$d: host_device $dev: exit status $? after SIGTERM: $(cat $d.dev.log)"
        done
        ! grep -q -e Sanitizer -e 'runtime error' vbd.dev.log || fail "sanitizer report: $(cat vbd.dev.log)"
        grep -q '"export-size": 0' vbd.dev.json || fail "host_device $dev: $(cat vbd.dev.json)"
        diff qsd.dev.json vbd.dev.json || fail "host_device $dev: nbdinfo sees another export than qsd's"
    done
fi

# --pidfile of a daemon that runs: the file is locked, a second daemon
# given it refuses to start (qsd's words) and leaves it alone; made 0600
for d in qsd vbd; do
    bin=qemu-storage-daemon
    [ $d = qsd ] || bin=$VBD_DAEMON
    "$bin" --pidfile "$T/$d/run.pid" 2>"$T/$d.first" &
    first=$!
    on_exit "kill -9 $first 2>/dev/null"
    for _ in $(seq 600); do [ -s "$T/$d/run.pid" ] && break; kill -0 $first 2>/dev/null || break; sleep 0.05; done
    [ "$(cat "$T/$d/run.pid" 2>/dev/null)" = $first ] || fail "$d: no PID file with its PID"
    stat -c %a "$T/$d/run.pid" >"$d.mode"
    run $d "$bin" --pidfile "$T/$d/run.pid"
    [ "$(cat "$T/$d/run.pid")" = $first ] || fail "$d: the second daemon changed the first one's PID file"
    kill -TERM $first
    wait $first || fail "$d: exit status $? after SIGTERM: $(cat "$T/$d.first")"
    [ ! -e "$T/$d/run.pid" ] || fail "$d: PID file left after SIGTERM"
done
if [ "$(cat qsd.rc)" != "$(cat vbd.rc)" ] || ! cmp -s qsd.err vbd.err || ! cmp -s qsd.mode vbd.mode; then
    echo "DIFF a second daemon on a locked --pidfile: status qsd $(cat qsd.rc), vbd $(cat vbd.rc); mode qsd $(cat qsd.mode), vbd $(cat vbd.mode)"
    diff qsd.err vbd.err | sed 's/^/    /'
    ndiff=$((ndiff + 1))
fi
! grep -q -e Sanitizer -e 'runtime error' vbd.raw vbd.first || fail "sanitizer report: $(cat vbd.raw vbd.first)"
[ $ndiff = 0 ] || fail "$ndiff command lines differ (above)"
echo PASS
