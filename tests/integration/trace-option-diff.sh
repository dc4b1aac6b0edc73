#!/bin/bash
# -T/--trace, as a command line written for qemu-storage-daemon or
# qemu-nbd passes it (a pattern, enable=, a list of events), is taken:
# vbd-daemon and vbd-nbd start and serve as the QEMU tool does with the
# same arguments (nbdinfo reads the export; qsd's monitor answers), with
# one warning line that vbd has no trace events (vbd-img has done so since
# its -T). A -T without its argument is refused by both, exit status 1.
# Main's vbd-daemon refused -T ("invalid option") and vbd-nbd refused it
# ("vbd has no QEMU trace events").
. "$(dirname "$0")/lib.sh"
need qemu-storage-daemon qemu-nbd nbdinfo python3
cd "$T"
truncate -s 1M disk.raw
# wait_up PID SOCK WHAT: SOCK listens (60 s), or PID ended (a refused option): fail with its stderr
wait_up() {
    for _ in $(seq 1200); do
        [ -S "$2" ] && return 0
        kill -0 "$1" 2>/dev/null || fail "$3 exited before it listened: $(cat "$4")"
        sleep 0.05
    done
    fail "$3: no socket $2"
}
n=0
for tr in "-T nbd_*" "--trace enable=nbd_send_reply" "-T nbd_co_send_simple_reply -T events=/dev/null"; do
    for tool in qsd vbd; do
        bin=qemu-storage-daemon
        [ $tool = vbd ] && bin=$VBD_DAEMON
        d=$T/d$n.$tool
        mkdir "$d"
        # shellcheck disable=SC2086 # $tr: the words of the option
        "$bin" $tr --blockdev driver=file,node-name=f,filename="$T/disk.raw" \
            --nbd-server addr.type=unix,addr.path="$d/nbd.sock" --export type=nbd,id=e,node-name=f,name=x \
            --chardev socket,id=m,path="$d/qmp.sock",server=on,wait=off --monitor m 2>"$d/err" &
        pid=$!
        wait_up $pid "$d/qmp.sock" "$bin $tr" "$d/err"
        wait_up $pid "$d/nbd.sock" "$bin $tr" "$d/err"
        nbdinfo --size "nbd+unix:///x?socket=$d/nbd.sock" >"$d/size" || fail "$tool $tr: nbdinfo: $(cat "$d/err")"
        [ "$(cat "$d/size")" = 1048576 ] || fail "$tool $tr: size $(cat "$d/size")"
        qmp_py "$d/qmp.sock" <<'PY' || fail "$tool $tr: QMP: $(cat "$d/err")"
ok("quit")
PY
        wait $pid || fail "$tool $tr: exit status $? after quit: $(cat "$d/err")"
        [ $tool = qsd ] || [ "$(grep -c . "$d/err")" = "$(grep -o -- '-T\|--trace' <<<"$tr" | wc -l)" ] ||
            fail "vbd-daemon $tr: not one warning a -T: $(cat "$d/err")"
        ! grep -q -e Sanitizer -e 'runtime error' "$d/err" || fail "vbd-daemon $tr: $(cat "$d/err")"
        # the same option on qemu-nbd / vbd-nbd
        nbd=qemu-nbd
        [ $tool = vbd ] && nbd=$VBD_NBD
        # shellcheck disable=SC2086
        "$nbd" $tr -f raw -k "$d/n2.sock" -x y --pid-file "$d/n2.pid" "$T/disk.raw" 2>"$d/err2" &
        npid=$!
        wait_up $npid "$d/n2.sock" "$nbd $tr" "$d/err2"
        nbdinfo --size "nbd+unix:///y?socket=$d/n2.sock" >"$d/size2" || fail "$nbd $tr: nbdinfo: $(cat "$d/err2")"
        [ "$(cat "$d/size2")" = 1048576 ] || fail "$nbd $tr: size $(cat "$d/size2")"
        # the one client gone: qemu-nbd without -t exits 0 by itself, as vbd-nbd
        wait $npid || fail "$nbd $tr: exit status $? after its client: $(cat "$d/err2")"
        ! grep -q -e Sanitizer -e 'runtime error' "$d/err2" || fail "vbd-nbd $tr: $(cat "$d/err2")"
        n=$((n + 1))
    done
    step "$tr: both daemons and both NBD servers served and stopped"
done
# -T without its argument: getopt's refusal, exit status 1, in both
for pair in "qemu-storage-daemon $VBD_DAEMON" "qemu-nbd $VBD_NBD"; do
    set -- $pair
    rcq=0 rcv=0
    timeout 60 "$1" -T </dev/null >/dev/null 2>&1 || rcq=$?
    timeout 60 "$2" -T </dev/null >/dev/null 2>"$T/miss.err" || rcv=$?
    [ $rcq = $rcv ] && [ $rcv = 1 ] || fail "-T without its argument: $1 exit status $rcq, $2 $rcv: $(cat "$T/miss.err")"
done
echo PASS
