# Sourced by every interop test. Provides: $T (temp dir, removed at exit),
# VBD_IMG/VBD_IO/VBD_DAEMON/VBD_NBD paths, need CMD (skip with 77 if missing),
# fail MSG, must CMD..., qcheck IMG (qemu-img check must be clean).
set -u
VBD_BUILD=${VBD_BUILD:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/build}
VBD_ROOT=${VBD_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
export VBD_ROOT # qmp_py's python reads it; a test run alone (not from run.sh) has it too
VBD_IMG=$VBD_BUILD/src/tools/vbd-img
VBD_IO=$VBD_BUILD/src/tools/vbd-io
VBD_DAEMON=$VBD_BUILD/src/tools/vbd-daemon
VBD_NBD=$VBD_BUILD/src/tools/vbd-nbd
VBD_CTL=$VBD_BUILD/src/tools/vbd-ctl
VBD_BENCH=$VBD_BUILD/src/tools/vbd-bench
# the tests' python NBD clients and servers import nbdproto from here
export PYTHONPATH=$VBD_ROOT/tests/integration${PYTHONPATH:+:$PYTHONPATH}
T=$(mktemp -d "${TMPDIR:-/tmp}/vbd-test.XXXXXX")
_vbd_cleanup_cmds=""
on_exit() { _vbd_cleanup_cmds="$1; $_vbd_cleanup_cmds"; }
# Every process the test starts inherits VBD_TEST_TAG (its own $T), and the
# kills of the exit's cleanup reach only processes that carry it. A PID
# given to on_exit is often reaped long before the test ends (the test
# stopped that process itself), and on a busy host the PID then names
# another program: pid_max 32768 wraps in minutes under make check with
# other jobs, and an exit's "kill -9 $pid" took down a test running beside
# it (nbdkit, killed mid-test; seen looping daemon-stop-hung.sh).
export VBD_TEST_TAG=$T
_vbd_ours() { # PID: the process carries this test's tag
    local env x
    mapfile -d '' env 2>/dev/null </proc/"$1"/environ || return 1
    for x in "${env[@]}"; do [ "$x" = "VBD_TEST_TAG=$T" ] && return 0; done
    return 1
}
# At exit, once the on_exit commands ran, every process the test started
# and left running (a step failed before the test stopped its daemon,
# server or client) is killed, with its children: a background process is
# gone when the test ends whether or not it was registered. on_exit stays
# for a gentler stop (tgtd, a guest) and for what left this shell's tree
# (--fork, --daemonize: registered by their PID files). Each one stopped
# before its children are listed, so that none is added meanwhile; the
# list is a file, not $(...), whose subshell would be a child too.
_vbd_kill_tree() {
    local c kids
    [ "$1" = $$ ] || kill -STOP "$1" 2>/dev/null
    pgrep -P "$1" >"$T/.children.$1"
    mapfile -t kids <"$T/.children.$1"
    for c in "${kids[@]}"; do _vbd_kill_tree "$c"; done
    [ "$1" = $$ ] || kill -KILL "$1" 2>/dev/null
}
# What left this shell's tree (--fork, --daemonize) and was not stopped by
# its on_exit command still carries the tag: killed last.
_vbd_kill_tagged() {
    local d p
    for d in /proc/[0-9]*; do
        p=${d#/proc/}
        [ "$p" = $$ ] || [ "$p" = "$BASHPID" ] && continue
        _vbd_ours "$p" && builtin kill -KILL "$p" 2>/dev/null
    done
    return 0
}
_vbd_exit() {
    kill() { # the cleanup's kill: PIDs of other programs are left alone
        local a args=() pids=0 ours=0
        for a; do
            case $a in
            [0-9]*) pids=$((pids + 1)); _vbd_ours "$a" && ours=$((ours + 1)) && args+=("$a") ;;
            *) args+=("$a") ;;
            esac
        done
        [ $pids = 0 ] || [ $ours -gt 0 ] || return 1
        builtin kill "${args[@]}"
    }
    eval "$_vbd_cleanup_cmds"
    unset -f kill
    disown -a 2>/dev/null
    _vbd_kill_tree $$
    _vbd_kill_tagged
    rm -rf "$T"
}
trap _vbd_exit EXIT

skip() { echo "SKIP: $*"; exit 77; }
need() { for c in "$@"; do command -v "$c" >/dev/null 2>&1 || skip "$c not installed"; done; }
fail() { echo "FAIL: $*" >&2; exit 1; }
must() { "$@" || fail "command failed ($?): $*"; }
# fail_with_daemon_log WHAT: the first 60 lines of $T/daemon.log, without
# the vhost-user front end's connection, capacity and BACKEND_REQ lines,
# then fail WHAT (for the tests whose Python harness drives the daemon:
# what the daemon said when the harness failed)
fail_with_daemon_log() {
    grep -v "front end\|capacity\|BACKEND_REQ" "$T/daemon.log" | head -60
    fail "$1"
}
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
# gen_pki DIR: a CA (DIR/ca-cert.pem) and, each beside a copy of it, a server
# certificate for localhost/127.0.0.1 (DIR/server), a client certificate
# O=vbd,CN=vbd-test-client (DIR/client) and a second one
# O=vbd,CN=vbd-other-client (DIR/client2), in QEMU's file names. Needs certtool.
gen_pki() {
    local d=$1 who f cn
    mkdir -p "$d/server" "$d/client" "$d/client2"
    certtool --generate-privkey --key-type=ecdsa --outfile "$d/ca-key.pem" 2>/dev/null || fail "certtool"
    printf 'cn = vbd test CA %s\nca\ncert_signing_key\nexpiration_days = 2\n' "$d" >"$d/ca.info"
    certtool --generate-self-signed --load-privkey "$d/ca-key.pem" --template "$d/ca.info" \
        --outfile "$d/ca-cert.pem" 2>/dev/null || fail "certtool CA"
    printf 'organization = vbd\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n' >"$d/server.info"
    for who in server client client2; do
        f=${who%2}
        if [ "$who" != server ]; then
            cn=vbd-test-client
            [ "$who" = client2 ] && cn=vbd-other-client
            printf 'organization = vbd\ncn = %s\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 2\n' \
                "$cn" >"$d/$who.info"
        fi
        certtool --generate-privkey --key-type=ecdsa --outfile "$d/$who/$f-key.pem" 2>/dev/null
        certtool --generate-certificate --load-ca-certificate "$d/ca-cert.pem" --load-ca-privkey "$d/ca-key.pem" \
            --load-privkey "$d/$who/$f-key.pem" --template "$d/$who.info" --outfile "$d/$who/$f-cert.pem" \
            2>/dev/null || fail "certtool $who"
        cp "$d/ca-cert.pem" "$d/$who/"
    done
}
# wait_lock_free [qemu-img info options] IMG: wait until a reader can take
# the image lock. After a writer that used io_uring is killed, the kernel
# drops the file references of its ring only after the process is reaped,
# so the image lock can outlive the process by some milliseconds; poll for
# it instead of racing it. Returns at once on an error that is not a lock
# conflict (the caller's own check reports it); fails after ~60 s.
lock_waits=0
wait_lock_free() {
    local out i
    for i in $(seq 1200); do
        out=$(qemu-img info "$@" 2>&1) && { [ $i = 1 ] || lock_waits=$((lock_waits + 1)); return 0; }
        case "$out" in *"lock"*) sleep 0.05 ;; *) return 0 ;; esac
    done
    fail "image lock still held 60 s after its writer was reaped: $out"
}
# mixed_data FILE SEED: 6 MiB of real-looking content (text, random bytes
# and zero runs, deterministic from SEED): compresses like a disk image,
# unlike a pattern that fits any compressed cluster in one sector.
mixed_data() {
    python3 - "$1" "$2" <<'PY'
import random, sys
r = random.Random(int(sys.argv[2])); out = bytearray()
while len(out) < 6 << 20:
    k = r.randrange(3); n = r.randrange(1000, 200000)
    out += bytes(n) if k == 0 else r.randbytes(n) if k == 1 else (b'line %d of some text, ' % r.randrange(1000)) * (n // 24)
open(sys.argv[1], 'wb').write(out[:6 << 20])
PY
}
# mixed_disk FILE MIB AT...: a raw image FILE of MIB MiB with mixed_data
# seed 1 at the first AT MiB, seed 2 at the second and so on, zeroes
# elsewhere: the source disk of the stress and job tests
mixed_disk() {
    local f=$1 seed=0 at
    truncate -s "$2M" "$f" || fail "truncate $f"
    shift 2
    for at in "$@"; do
        seed=$((seed + 1))
        mixed_data "$f.m$seed" $seed && dd if="$f.m$seed" of="$f" bs=1M seek="$at" conv=notrunc status=none ||
            fail "mixed data into $f"
        rm -f "$f.m$seed"
    done
}
# need_stress: sets STRESS, the model-based stress test (tests/stress/vbd-stress)
need_stress() {
    STRESS=$VBD_BUILD/tests/stress/vbd-stress
    [ -x "$STRESS" ] || fail "no $STRESS (build the tree first)"
}
# stress_setup RAW MIB AT2: the start of the stress tests on a source
# disk (job-backup-stress, job-crash-backup, filter-stress): STRESS set
# (need_stress), in $T (the current directory from now on) a raw disk RAW
# of MIB MiB (mixed_disk, data at 1 MiB and at AT2 MiB) and its copy
# base.qcow2; a vbd-daemon left in $dpid is killed at exit.
stress_setup() {
    need_stress
    cd "$T" || fail "cd $T"
    mixed_disk "$1" "$2" 1 "$3"
    must qemu-img convert -q -f raw -O qcow2 "$1" base.qcow2
    on_exit 'kill -9 $dpid 2>/dev/null'
}
# The filter tests under mutations in flight on the same bytes
# (filter-overlap-stress, filter-group-overlap-stress):
# overlap_stress_setup SEED OPS: stress_setup (base.raw of 32 MiB, data at
# 1 and 20 MiB, its copy base.qcow2; $T the current directory), SEED and
# OPS set, COMMON: vbd-stress's options of a run (--overlap, OPS requests,
# 48 in flight on 4 hot clusters that move every 32)
overlap_stress_setup() {
    stress_setup base.raw 32 20
    SEED=$1 OPS=$2
    COMMON=(--overlap --ops "$OPS" --qd 48 --hot 4 --hot-move 32)
}
# overlapped LOG: the run issued mutations over others in flight on the
# same bytes (else it tested nothing)
overlapped() {
    local over
    over=$(sed -n 's/^vbd-stress: overlap: \([0-9]*\) of .*/\1/p' "$1")
    [ "${over:-0}" -gt 0 ] || fail "$1: no mutation met another on the same bytes (tested nothing)"
    echo "$1: $over mutations over another in flight on the same bytes"
}
# cor_stack: in the current directory base.qcow2 (a copy of ../base.qcow2)
# and an empty qcow2 overlay top.qcow2 over it; COR_NODES: the --blockdev
# options of qcow2 nodes base and top (backing: base) and copy-on-read cor
# over top (bottom: base, so that a discard may expose the base)
cor_stack() {
    cp ../base.qcow2 base.qcow2 || fail "copy of base.qcow2"
    must qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
    COR_NODES=(--blockdev qcow2,node-name=base,file.driver=file,file.filename="$PWD/base.qcow2"
        --blockdev qcow2,node-name=top,file.driver=file,file.filename="$PWD/top.qcow2",backing=base
        --blockdev copy-on-read,node-name=cor,file=top,bottom=base)
}
# cor_stack_check SHADOW: after the run, the overlay checks clean and reads
# as the model SHADOW, the base checks clean and is unchanged
cor_stack_check() {
    qcheck top.qcow2
    qcheck base.qcow2
    must qemu-img compare -q -f qcow2 -F raw top.qcow2 "$1"
    must qemu-img compare -q -f qcow2 -F raw base.qcow2 ../base.raw
}
# quorum_raw_children OPTS N: s0.raw, s1.raw and s2.raw (copies of
# ../base.raw) in the current directory, and Q: the options of a quorum
# (vote-threshold 2, then OPTS) whose first N children are raw nodes over
# the first N copies, child 1 through the thread pool (the caller adds
# the others)
quorum_raw_children() {
    local i
    for i in 0 1 2; do cp ../base.raw s$i.raw || fail "copy of base.raw"; done
    Q="driver=quorum,vote-threshold=2$1"
    for ((i = 0; i < $2; i++)); do
        Q="$Q,children.$i.driver=raw,children.$i.file.driver=file,children.$i.file.filename=$PWD/s$i.raw"
    done
    Q="$Q,children.1.file.aio=threads"
}
# The restart-stress tests (nbd-client-restart-stress, iscsi-restart-stress):
# a protocol node whose server is killed and started again twice under two
# vbd-stress runs, then the server's image checked against their models.
# window_stress_disk FILE: FILE of 2 x $WIN random bytes, its copy init.raw
# and its halves a.init and b.init (the two windows' models start there).
window_stress_disk() {
    head -c $((2 * WIN)) /dev/urandom >"$1"
    cp "$1" init.raw
    head -c $WIN "$1" >a.init
    tail -c $WIN "$1" >b.init
}
# window_stress_start NODE BLOCKDEV ASEED BSEED [B-ARGS...]: in the current
# directory, vbd-daemon (dpid, daemon.log) with the protocol node NODE
# (BLOCKDEV) cut into two raw windows of $WIN bytes: a over vhost-user-blk
# on $VU (2 queues on iothread io0: the node stays on the main loop,
# requests hop), b over NBD on $S; then vbd-stress on each (QD 64, seeds
# ASEED and BSEED, models from a.init and b.init into a.shadow and
# b.shadow; apid/bpid, a.log/b.log; B-ARGS added to b's). STRESS set.
window_stress_start() {
    local node=$1 blockdev=$2 aseed=$3 bseed=$4
    shift 4
    rm -f "$S" "$VU"
    "$VBD_DAEMON" --object iothread,id=io0 --blockdev "$blockdev" \
        --blockdev driver=raw,node-name=a,file="$node",offset=0,size=$WIN \
        --blockdev driver=raw,node-name=b,file="$node",offset=$WIN,size=$WIN \
        --export type=vhost-user-blk,id=e0,node-name=a,addr.type=unix,addr.path="$VU",writable=on,num-queues=2,iothread=io0 \
        --nbd-server addr.type=unix,addr.path="$S" --export type=nbd,id=e1,node-name=b,name=b,writable=on \
        2>daemon.log &
    dpid=$!
    on_exit "kill -9 $dpid 2>/dev/null"
    wait_sock "$S" "$dpid" daemon.log
    wait_sock "$VU" "$dpid" daemon.log
    "$STRESS" --seed "$aseed" --ops 1000000 --qd 64 --align 512 --init a.init --shadow-out a.shadow \
        --vhost-user "$VU" --queues 2 >a.log 2>&1 &
    apid=$!
    "$STRESS" --seed "$bseed" --ops 1000000 --qd 64 "$@" --init b.init --shadow-out b.shadow \
        --nbd "nbd+unix:///b?socket=$S" --conns 4 >b.log 2>&1 &
    bpid=$!
}
# window_stress_rounds DISK RESTART LINE: twice, once writes reached DISK
# (it differs from init.raw; then the kill falls among requests in
# flight), the command RESTART (kill the server, an outage, start it
# again) and a wait for the daemon's log line LINE (the reconnect).
window_stress_rounds() {
    local round
    for round in 1 2; do
        for _ in $(seq 400); do cmp -s "$1" init.raw || break; sleep 0.05; done
        sleep 0.5
        kill -0 $apid 2>/dev/null || fail "vbd-stress (vhost-user) ended before the kill: $(tail -5 a.log)"
        kill -0 $bpid 2>/dev/null || fail "vbd-stress (NBD) ended before the kill: $(tail -5 b.log)"
        $2
        wait_log daemon.log "$3" $round "$dpid" || fail "no reconnect $round: $(tail -5 daemon.log)"
    done
}
# window_stress_finish WHAT DISK: both runs stopped (within 120 s) and
# passed, the daemon exits 0 after SIGTERM with no sanitizer report, and
# each window of DISK equals its model (WHAT names the case in failures).
window_stress_finish() {
    sleep 0.5 # requests on the last connection too
    kill -USR1 $apid $bpid
    for _ in $(seq 1200); do kill -0 $apid 2>/dev/null || kill -0 $bpid 2>/dev/null || break; sleep 0.1; done
    kill -0 $apid 2>/dev/null && fail "vbd-stress (vhost-user) still runs 120 s after its end was asked: $(tail -5 daemon.log)"
    kill -0 $bpid 2>/dev/null && fail "vbd-stress (NBD) still runs 120 s after its end was asked: $(tail -5 daemon.log)"
    wait $apid || fail "vbd-stress over vhost-user across $1: $(tail -8 a.log)"
    wait $bpid || fail "vbd-stress over NBD across $1: $(tail -8 b.log)"
    kill -TERM $dpid; wait $dpid || fail "vbd-daemon exited with $?: $(tail -5 daemon.log)"
    ! grep -q Sanitizer daemon.log || fail "$(cat daemon.log)"
    grep -h " ops (" a.log b.log
    cmp <(head -c $WIN "$2") a.shadow || fail "$1: the vhost-user window differs from its model"
    cmp <(tail -c $WIN "$2") b.shadow || fail "$1: the NBD window differs from its model"
}
# stress_init SEED AT: the start of the stress tests on a raw image
# (export-readd-stress, snapshot-stress, throttle-toggle-stress,
# reopen-stress): STRESS set (need_stress), in $T (the current directory
# from now on) init.raw of 16 MiB with mixed_data SEED at AT MiB, zeroes
# elsewhere; a vbd-daemon left in $dpid is killed at exit. (stress_setup:
# the same shape on a mixed_disk with its qcow2 copy.) Their Python
# harnesses drive vbd-stress with tests/qmp/stress.py.
stress_init() {
    need_stress
    cd "$T" || fail "cd $T"
    truncate -s 16M init.raw || fail "truncate init.raw"
    mixed_data m1 "$1" && dd if=m1 of=init.raw bs=1M seek="$2" conv=notrunc status=none || fail "mixed data into init.raw"
    on_exit 'kill -9 $dpid 2>/dev/null'
}
# stress_transport TR ID NODE [DIR]: the export of the stress tests' daemon
# and vbd-stress's way to it, in DIR (default: the current directory):
# exp (an --export value, id ID, of node NODE, writable) and target
# (vbd-stress's words, relative to DIR). TR vhost: vhost-user-blk on
# vu.sock, 2 queues on iothread io0 (the daemon has it); nbd: export "disk"
# of an NBD server on nbd.sock (the daemon's --nbd-server), 4 connections.
stress_transport() {
    case $1 in
    vhost)
        exp=type=vhost-user-blk,id=$2,node-name=$3,addr.type=unix,addr.path=${4:-$PWD}/vu.sock,writable=on,num-queues=2,iothread=io0
        target="--vhost-user vu.sock --queues 2" ;;
    nbd)
        exp=type=nbd,id=$2,node-name=$3,name=disk,writable=on
        target="--nbd nbd+unix:///disk?socket=nbd.sock --conns 4" ;;
    *) fail "stress_transport: no transport '$1'" ;;
    esac
}
# stress_daemon EXPORTS NODE ARGS...: vbd-daemon (start_daemon: dpid,
# $T/daemon.log) for the tests that drive node NODE through its exports
# under load (vbd-stress, as a guest and an NBD client at once): iothread
# io0, the QMP monitor "mon" on $S ($T/qmp.sock unless set), ARGS (the
# --blockdev options of the graph, any other option), then NODE's exports
# (stress_transport's, in $T): EXPORTS both: vhost-user-blk e0 on
# $T/vu.sock (2 rings on io0) and NBD export e1 "disk" of an NBD server on
# $T/nbd.sock; vhost or nbd: that one alone. Returns once each serves.
stress_daemon() {
    local which=$1 node=$2 exports=()
    shift 2
    case $which in both | vhost | nbd) ;; *) fail "stress_daemon: no exports '$which' (both, vhost, nbd)" ;; esac
    S=${S:-$T/qmp.sock}
    rm -f "$T/vu.sock" "$T/nbd.sock"
    if [ "$which" != nbd ]; then
        stress_transport vhost e0 "$node" "$T"
        exports+=(--export "$exp")
    fi
    if [ "$which" != vhost ]; then
        stress_transport nbd e1 "$node"
        exports+=(--nbd-server "addr.type=unix,addr.path=$T/nbd.sock" --export "$exp")
    fi
    start_daemon --object iothread,id=io0 --chardev socket,id=mon,path="$S",server=on,wait=off --monitor chardev=mon \
        "$@" "${exports[@]}"
    [ "$which" = nbd ] || wait_sock "$T/vu.sock" "$dpid" "$T/daemon.log"
    [ "$which" = vhost ] || wait_sock "$T/nbd.sock" "$dpid" "$T/daemon.log"
}
# scenario_dir NAME: a fresh $T/NAME, the current directory from now on
scenario_dir() { rm -rf "${T:?}/$1" && mkdir "$T/$1" && cd "$T/$1" || fail "cannot make $T/$1"; }
# on_copies IMG ARGS...: run qemu-img ARGS on a copy IMG.q and vbd-img ARGS
# on a copy IMG.v, where an argument @ stands for the copy; exit statuses
# in qrc/vrc, output in q.out/v.out (in the current directory).
on_copies() {
    local img=$1 a t; shift
    for t in q v; do
        cp "$img" "$img.$t"
        local args=()
        for a in "$@"; do [ "$a" = @ ] && args+=("$img.$t") || args+=("$a"); done
        if [ $t = q ]; then
            qemu-img "${args[@]}" >q.out 2>&1; qrc=$?
        else
            "$VBD_IMG" "${args[@]}" >v.out 2>&1; vrc=$?
        fi
    done
}
# A vbd tool beside its QEMU one, same command line (img-parity.sh,
# io-parity.sh): tools_run QEMU-TOOL VBD-TOOL ARGS... runs each with ARGS
# in its own fresh copy of base/ (q/, v/): stdout and "exit N" in
# q.out/v.out, stderr in q.err/v.err, each tool's name replaced by TOOL.
# tools_same ARGS... (ARGS only name the case) then fails the test unless
# both gave the same output, exit status and files left.
tools_run() {
    local qt=$1 vt=$2 t
    shift 2
    for t in q v; do
        rm -rf $t && cp -a base $t
    done
    (cd q && "$qt" "$@" >../q.out 2>../q.err </dev/null; echo "exit $?" >>../q.out)
    (cd v && "$vt" "$@" >../v.out 2>../v.err </dev/null; echo "exit $?" >>../v.out)
    # the QEMU tools end some hints without a newline
    sed -i -e "s/${qt##*/}/TOOL/g" -e '$a\' q.out q.err
    sed -i -e "s/${vt##*/}/TOOL/g" -e '$a\' v.out v.err
}
tools_same() {
    diff -u q.out v.out || fail "stdout/exit differ: $*"
    diff -u q.err v.err || fail "stderr differs: $*"
    [ "$(cd q && ls -A)" = "$(cd v && ls -A)" ] ||
        fail "files left differ: $*: qemu $(cd q && ls -A | xargs), vbd $(cd v && ls -A | xargs)"
}
# vbd-img create beside qemu-img create (img-parity-create.sh,
# img-parity-layout.sh), in the current directory whose base/ holds the
# images the cases name: create_same ARGS...: qemu-img create ARGS and vbd-img create ARGS alike, each
# side in its copy of base/ (q/, v/) at the same time (the test is short
# processes one after the other); each image both made is the same to
# qemu-img info
create_side() { # K TOOL ARGS...: one tool's run, its images described in K.info
    local k=$1 tool=$2 f
    shift 2
    rm -rf $k
    # base/ only for a command line that names what is in it (most make a
    # new file: a copy costs a process or two a case on a loaded host)
    case " $* " in
    *a.qcow2* | *a.raw* | *a.vmdk* | *a.qed* | *exist.qcow2* | *dir/*) cp -a base $k ;;
    *) mkdir $k ;;
    esac
    (cd $k && "$tool" create "$@" >../$k.out 2>../$k.err </dev/null; echo "exit $?" >>../$k.out)
    sed -i -e "s#$tool#TOOL#g" -e "s/qemu-img\|vbd-img/TOOL/g" -e '$a\' $k.out $k.err
    : >$k.info
    for f in $(cd $k && ls -A); do
        [ -f $k/$f ] && [ $k/$f -nt base/$f ] || continue
        (cd $k && qemu-img info -U "$f" 2>&1 | grep -v -e '^disk size' -e 'cid:') >>$k.info
    done
}
create_same() {
    create_side q qemu-img "$@" &
    create_side v "$VBD_IMG" "$@"
    wait $!
    diff -u q.out v.out || fail "stdout/exit differ: create $*"
    diff -u q.err v.err || fail "stderr differs: create $*"
    [ "$(cd q && ls -A)" = "$(cd v && ls -A)" ] || fail "files left differ: create $*: $(cd q && ls -A | xargs) / $(cd v && ls -A | xargs)"
    diff q.info v.info || fail "create $*: qemu-img info of the images made differs"
}
# create_same_layout ARGS...: create_same, and each file both made is as long in both,
# and each image the same to qemu-img map (host offsets too) and check:
# vbd-img lays a new image out as qemu-img does
create_same_layout() {
    create_same "$@"
    local f
    for f in $(cd q && ls -A); do
        [ -f q/$f ] && [ q/$f -nt base/$f ] || continue
        [ "$(stat -c %s q/$f)" = "$(stat -c %s v/$f)" ] ||
            fail "create $*: $f is $(stat -c %s q/$f) bytes from qemu-img, $(stat -c %s v/$f) from vbd-img"
        case $f in *.raw | d | *-f[0-9][0-9][0-9].vmdk) continue ;; esac
        for c in "map --output=json" check; do
            # shellcheck disable=SC2086 # $c is words
            [ "$(cd q && qemu-img $c -U $f 2>&1)" = "$(cd v && qemu-img $c -U $f 2>&1)" ] ||
                fail "create $*: qemu-img $c of $f differs"
        done
    done
}

# vbd-img beside qemu-img on every format vbd writes (img-parity-formats.sh,
# img-parity-check.sh): img_formats_base makes base/ with one 16 MiB image
# of each (IMG_FORMATS: NAME:FORMAT:CREATE-OPTIONS, data at 0 and 5M,
# zeroes at 10M) and ov.qcow2 over v3.qcow2. img_same ARGS... is tools_run
# qemu-img vbd-img ARGS then tools_same, the space a fresh copy takes on
# disk masked (the file system's delayed allocation, not the tool's);
# img_unchanged ARGS... also wants every file as it was (written nothing).
IMG_FORMATS="v2.qcow2:qcow2:compat=0.10 v3.qcow2:qcow2: xl2.qcow2:qcow2:extended_l2=on r.raw:raw: s.vmdk:vmdk:
             x.vhdx:vhdx: p.vpc:vpc: d.vdi:vdi: e.qed:qed:"
img_formats_base() {
    local e i f o
    mkdir base || fail "mkdir base"
    for e in $IMG_FORMATS; do
        IFS=: read -r i f o <<<"$e"
        must qemu-img create -q -f "$f" ${o:+-o "$o"} base/$i 16M
        must qemu-io -f "$f" -c 'write -P 1 0 1M' -c 'write -P 2 5M 64k' -c 'write -z 10M 64k' base/$i >/dev/null
    done
    must qemu-img create -q -f qcow2 -b v3.qcow2 -F qcow2 base/ov.qcow2
    must qemu-io -f qcow2 -c 'write -P 3 512k 64k' base/ov.qcow2 >/dev/null
}
# qcow2_set_refcount FILE CLUSTER VALUE: write the 16-bit refcount entry of
# CLUSTER in the first refcount block (reftable[0]) of a qcow2 image (tests
# that make leaks and corruptions for check)
qcow2_set_refcount() {
    python3 - "$@" <<'PY'
import struct, sys
f = open(sys.argv[1], 'r+b'); k = int(sys.argv[2]); v = int(sys.argv[3])
f.seek(48); rt = struct.unpack('>Q', f.read(8))[0]
f.seek(rt); rb = struct.unpack('>Q', f.read(8))[0]
f.seek(rb + 2 * k); f.write(struct.pack('>H', v))
PY
}
img_same() {
    tools_run qemu-img "$VBD_IMG" "$@"
    sed -i -E -e '/^disk size: /d' -e '/"actual-size": /d' q.out v.out
    tools_same "$@"
}
img_unchanged() {
    img_same "$@"
    local f
    # (cp -a keeps the times: only a file written since can differ)
    for f in $(cd base && ls -A); do
        [ ! v/$f -nt base/$f ] || cmp -s base/$f v/$f || fail "vbd-img $*: $f changed"
    done
}
# vbd-io beside qemu-io (io-parity.sh, io-parity-cmds.sh): io_parity_base
# makes base/ in the current directory with a.raw and a.qcow2 (1 MiB each,
# 0xab in their first 64 KiB); io_same ARGS... runs both tools with ARGS in
# fresh copies of base/ (tools_run), the timing lines' times and rates
# masked, then tools_same, and each file left in q/ must equal its copy in
# v/ (qemu-img compare, *.vmdk as vmdk; qcow2 and vmdk also in qemu-img
# map, host offsets aside, unless io_map=no).
io_parity_base() {
    mkdir base || fail "mkdir base"
    must qemu-img create -q -f raw base/a.raw 1M
    must qemu-img create -q -f qcow2 base/a.qcow2 1M
    must qemu-io -f raw -c 'write -P 0xab 0 64k' base/a.raw >/dev/null
    must qemu-io -f qcow2 -c 'write -P 0xab 0 64k' base/a.qcow2 >/dev/null
}
io_same() {
    tools_run qemu-io "$VBD_IO" "$@"
    # the timing line: elapsed time and rates differ run to run
    # (qemu-io writes "0:00:01.19" without " sec" from a second on)
    sed -i -E -e 's/ops; [0-9:.]+( sec)? \(.*\)$/ops; T/' \
        -e 's/^([0-9]+,[0-9]+),[0-9:.]+,[0-9.]+,[0-9.]+$/\1,T/' q.out v.out
    tools_same "$@"
    local f fmt
    for f in $(cd q && ls -A); do
        case $f in *.qcow2) fmt=qcow2 ;; *.vmdk) fmt=vmdk ;; *.vhdx) fmt=vhdx ;; *.parallels) fmt=parallels ;; *) fmt=raw ;; esac
        # files equal byte for byte are equal images (most raw cases;
        # qemu-img compare costs a process each)
        cmp -s q/$f v/$f && continue
        # raw: what the file system reports for zeroed ranges (unwritten
        # extents, dirty pages) depends on writeback timing, so only qcow2's
        # own allocation is compared; where clusters land in the file is not
        [ $fmt = raw ] || [ "${io_map:-}" = no ] || [ "$(qemu-img map -f $fmt --output=json q/$f | sed 's/, "offset": [0-9]*//')" = \
            "$(qemu-img map -f $fmt --output=json v/$f | sed 's/, "offset": [0-9]*//')" ] ||
            fail "map of $f differs: $*"
        qemu-img compare -q -f $fmt -F $fmt q/$f v/$f || fail "$f differs: $*"
    done
}
# convert_like_qemu WHAT CMP-FMT CMP-IMG DST REF ARGS...: vbd-img convert
# ARGS DST and qemu-img convert ARGS REF (the same arguments, stdout
# dropped), then same_as_ref. same_as_ref WHAT CMP-FMT CMP-IMG DST REF: the
# raw image DST holds what CMP-IMG (format CMP-FMT) holds and is allocated
# as REF (qemu-img map); WHAT names the case in a failure.
convert_like_qemu() {
    local what=$1 cfmt=$2 cimg=$3 dst=$4 ref=$5
    shift 5
    must "$VBD_IMG" convert "$@" "$dst" >/dev/null
    must qemu-img convert "$@" "$ref" >/dev/null
    same_as_ref "$what" "$cfmt" "$cimg" "$dst" "$ref"
}
same_as_ref() {
    must qemu-img compare -f "$2" -F raw "$3" "$4" >/dev/null
    diff <(qemu-img map --output=json -f raw "$4") <(qemu-img map --output=json -f raw "$5") ||
        fail "$1: allocation differs from qemu-img convert's"
}
# map_shape FMT IMG: qemu-img map of IMG without host offsets (depth,
# present, zero, data), adjacent entries alike merged: allocation compared
# with qemu-img's output where the layout on the host may differ
map_shape() {
    qemu-img map --output=json -f "$1" "$2" | python3 -c '
import json, sys
out = []
for e in json.load(sys.stdin):
    k = (e["depth"], e["present"], e["zero"], e["data"])
    if out and out[-1][2:] == list(k) and out[-1][0] + out[-1][1] == e["start"]:
        out[-1][1] += e["length"]
    else:
        out.append([e["start"], e["length"], *k])
for o in out:
    print(*o)'
}
# stop_process PID: SIGSTOP, then wait until every thread of PID is stopped.
# kill returns before the group stop reaches the other threads: one that a
# request wakes first may still answer it (a daemon that reacts within a
# millisecond saw nbdkit answer its flush after "kill -STOP").
stop_process() {
    kill -STOP "$1" || fail "cannot stop $1"
    local t st all
    for _ in $(seq 6000); do
        all=1
        for t in /proc/"$1"/task/*; do
            st=$(sed 's/^.*) //' "$t/stat" 2>/dev/null | cut -c1)
            [ -z "$st" ] || [ "$st" = T ] || [ "$st" = t ] || { all=0; break; }
        done
        [ $all = 1 ] && return 0
        sleep 0.01
    done
    fail "process $1 did not stop"
}
# qmp_py SOCK: runs the Python statements on stdin with m, a negotiated QMP
# session on SOCK, and ok(cmd, **args), which returns the command's
# "return" and fails the test (exit 1, the error on stderr) on an error.
qmp_py() {
    python3 - <<PY
import json, os, sys
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from qmp import QMP
m = QMP("$1", negotiate=True)
def ok(cmd, **a):
    r = m.cmd(cmd, a)
    if "error" in r:
        print(f"FAIL: {cmd} {a}: {r['error']}", file=sys.stderr); sys.exit(1)
    return r["return"]
$(cat)
PY
}
# start_monitored BINARY ARGS...: BINARY (vbd-daemon of some build: ASan,
# ThreadSanitizer) with a QMP monitor m0 on $S before ARGS, in the
# background until $S appears (60 s); pid in $dpid, stderr in
# $T/daemon.log (started afresh)
start_monitored() {
    local bin=$1
    shift
    rm -f "$S"
    : >"$T/daemon.log"
    "$bin" --chardev socket,id=m0,path="$S",server=on,wait=off --monitor m0 "$@" 2>>"$T/daemon.log" &
    dpid=$!
    for _ in $(seq 1200); do [ -S "$S" ] && return; kill -0 $dpid 2>/dev/null || break; sleep 0.05; done
    cat "$T/daemon.log"
    fail "vbd-daemon ($bin) did not start"
}
# stop_behind_hung_command SIGNAL KIT_SOCK KIT_PID: SIGTERM stops the
# daemon while a QMP command hangs with SIGNALs queued behind it (the end
# of daemon-sighup-graph and daemon-sigusr1-graph, whose signals' work
# takes the QMP commands' lock on a coroutine of its own: the main
# coroutine must never wait for that lock). nbdkit (KIT_PID, listening on
# KIT_SOCK) is stopped; a vbd-daemon (start_monitored) gets a blockdev-add
# of an nbd node on KIT_SOCK, whose open waits for the greeting a stopped
# nbdkit never sends (seen in its listen backlog), holding the lock; two
# SIGNALs, each taken by the main coroutine (-v), then SIGTERM: the stop's
# hint after 5 s, a second SIGTERM exits with status 1, no sanitizer report.
stop_behind_hung_command() {
    local sig=$1 kit=$2 hung rc
    stop_process "$3"
    start_monitored "$VBD_DAEMON" -v --blockdev driver=null-co,node-name=n0,size=1M
    python3 - "$S" "$kit" <<'PY' &
import json, os, sys, time
sys.path.insert(0, os.environ["VBD_ROOT"] + "/tests/qmp")
from qmp import QMP
m = QMP(sys.argv[1], negotiate=True)
# nbdkit takes no connection while stopped: the open waits for its greeting, holding the commands' lock
m.send_raw(json.dumps({"execute": "blockdev-add", "arguments": {"driver": "nbd", "node-name": "hung",
           "server": {"type": "unix", "path": sys.argv[2]}}}) + "\n")
time.sleep(3600)  # keeps the monitor's connection; killed at the end
PY
    hung=$!
    _hung_backlog() { ss -xlHn 2>/dev/null | awk -v s="$kit" '$5 == s && $3 > 0' | grep -q .; }
    # generous: at load 40 a python start, a QMP session and the command took over a minute
    for _ in $(seq 6000); do _hung_backlog && break; kill -0 $hung 2>/dev/null || break; sleep 0.05; done
    _hung_backlog || { cat "$T/daemon.log"; fail "the blockdev-add never reached the stopped nbdkit"; }
    # one SIGNAL, then another once the main coroutine took the first (-v
    # says so; the walk waits for the lock): sent together with SIGTERM,
    # the main coroutine saw all three at once and stopped first, and a
    # main coroutine that waited for the lock itself passed unseen
    local n
    for n in 1 2; do
        kill -"$sig" $dpid
        for _ in $(seq 6000); do [ "$(grep -c "SIG$sig taken" "$T/daemon.log")" -ge $n ] && break; kill -0 $dpid 2>/dev/null || break; sleep 0.05; done
        [ "$(grep -c "SIG$sig taken" "$T/daemon.log")" -ge $n ] ||
            { cat "$T/daemon.log"; fail "SIG$sig $n behind the hung command not taken in 300 s (the main coroutine waits?)"; }
    done
    kill -TERM $dpid
    for _ in $(seq 6000); do grep -q "still stopping after 5 s" "$T/daemon.log" && break; kill -0 $dpid 2>/dev/null || break; sleep 0.05; done
    grep -q "still stopping after 5 s" "$T/daemon.log" ||
        { cat "$T/daemon.log"; fail "SIGTERM behind the hung command and the ${sig}s did not start the stop (no hint in 300 s)"; }
    kill -TERM $dpid
    wait $dpid
    rc=$?
    dpid=
    [ $rc = 1 ] || { cat "$T/daemon.log"; fail "exit status $rc after the second SIGTERM, want 1"; }
    grep -q "second signal while stopping" "$T/daemon.log" || fail "no line for the second signal"
    ! grep -q -e Sanitizer -e "runtime error" "$T/daemon.log" || { cat "$T/daemon.log"; fail "sanitizer report"; }
    kill $hung 2>/dev/null
    wait $hung 2>/dev/null
}
# qmpdiff SCRIPT [OPTION VALUE]...: tests/qmp/SCRIPT.jsonl run by
# qmpdiff.py against vbd-daemon and qemu-storage-daemon 7.2, each started
# with these daemon options ({DIR}: the daemon's own directory); the
# errors' texts compared too where a line is marked exact. A difference
# fails the test. QMPDIFF_V=-v prints every line.
qmpdiff() {
    local script=$1 a both=()
    shift
    for a in "$@"; do both+=(--both "$a"); done
    VBD_DAEMON=$VBD_DAEMON QMPDIFF_ERROR_TEXT=1 python3 "$VBD_ROOT/tests/qmp/qmpdiff.py" ${QMPDIFF_V:-} \
        "$VBD_ROOT/tests/qmp/$script.jsonl" "${both[@]}" || fail "qmpdiff $script: vbd-daemon and qemu-storage-daemon differ (above)"
}
# qmpdiff_nulls SCRIPT: qmpdiff with the null-co nodes n0 and n1 (64 MiB)
qmpdiff_nulls() {
    qmpdiff "$1" --blockdev driver=null-co,node-name=n0,size=67108864 --blockdev driver=null-co,node-name=n1,size=67108864
}
# qmpdiff_job_chain SCRIPT: qmpdiff with the chain base <- mid <- top and a
# target tgt (qcow2 over file nodes f*, images made by the script in {DIR})
qmpdiff_job_chain() {
    qmpdiff "$1" \
        --blockdev "driver=file,node-name=fbase,filename={DIR}/base.qcow2" \
        --blockdev '{"driver":"qcow2","node-name":"base","file":"fbase","backing":null}' \
        --blockdev "driver=file,node-name=fmid,filename={DIR}/mid.qcow2" \
        --blockdev '{"driver":"qcow2","node-name":"mid","file":"fmid","backing":"base"}' \
        --blockdev "driver=file,node-name=ftop,filename={DIR}/top.qcow2" \
        --blockdev '{"driver":"qcow2","node-name":"top","file":"ftop","backing":"mid"}' \
        --blockdev "driver=file,node-name=ftgt,filename={DIR}/tgt.qcow2" \
        --blockdev '{"driver":"qcow2","node-name":"tgt","file":"ftgt","backing":null}'
}
# wait_log FILE PATTERN [COUNT [PID [LOG]]]: wait (up to ~60 s) until FILE
# has COUNT (default 1) lines matching the fixed string PATTERN; returns 1
# if not. A peer may write its log line after the client already saw the
# failure it logs. PID: the process that writes it; once it is gone (and
# the lines are not there) the test fails at once, with LOG's tail
# (default FILE).
wait_log() {
    local pid=${4:-} log=${5:-$1}
    for _ in $(seq 1200); do
        [ "$(grep -cF -- "$2" "$1")" -ge "${3:-1}" ] && return 0
        [ -z "$pid" ] || _waited_alive "$pid" ||
            { [ "$(grep -cF -- "$2" "$1")" -ge "${3:-1}" ] && return 0; _waited_fail "no line '$2' in $1" "$pid" "$log"; }
        sleep 0.05
    done
    return 1
}
# A vbd-io that takes its commands one at a time, each when the test gets
# there (after a server restart, before a kill), instead of a vbd-io
# "sleep" that what the test does meanwhile must fit in.
# io_start OUT ARGS...: vbd-io ARGS in the background (pid in iopid),
# reading its commands from a pipe (fd 7 of the test's shell), its output
# (each command after a "vbd-io> " prompt) in OUT. io_cmd CMD...: sends
# the commands. io_wait ERE [N]: waits (up to 60 s) until N (default 1)
# lines of OUT, prompts aside, start with ERE, vbd-io still running.
# io_end: "quit" (not the pipe's end: a process started since holds fd 7
# too); then wait $iopid for its exit status (1 if a command failed).
io_start() {
    io_out=$1
    shift
    rm -f "$T/io.cmds"
    mkfifo "$T/io.cmds" || fail "mkfifo $T/io.cmds"
    "$VBD_IO" "$@" <"$T/io.cmds" >"$io_out" 2>&1 &
    iopid=$!
    exec 7>"$T/io.cmds"
}
io_cmd() {
    # SIGPIPE ignored in a subshell: a vbd-io that ended fails the write
    # (and the test, with its output) instead of killing the shell unsaid
    (trap '' PIPE && printf '%s\n' "$@" >&7) 2>/dev/null || fail "vbd-io ended before '$*': $(cat "$io_out")"
}
io_wait() {
    for _ in $(seq 1200); do
        [ "$(sed 's/^\(vbd-io> \)*//' "$io_out" | grep -cE "^($1)")" -ge "${2:-1}" ] && return 0
        kill -0 $iopid 2>/dev/null || fail "vbd-io ended before its result '$1': $(cat "$io_out")"
        sleep 0.05
    done
    fail "no result '$1' from vbd-io in 60 s: $(cat "$io_out")"
}
io_end() {
    io_cmd quit
    exec 7>&-
}
# The waits for a server to come up take the PID of the process that makes
# what they wait for (wait_sock SOCK PID [LOG], wait_port PORT PID [LOG],
# wait_log FILE PATTERN [COUNT [PID [LOG]]]): once that process is gone
# there is nothing left to wait for, and the wait fails at once with its
# exit status and the tail of its log (LOG, else the file its stderr went
# to when the wait began) instead of after its whole limit with only "no
# socket" to say (a daemon that refused its command line was waited for
# 60 s, and its own error was never printed). Without a PID they wait out
# their limit as before (a socket made by a process the test cannot name).
# _waited_log PID: the regular file PID's stderr goes to, if any
_waited_log() {
    local l
    l=$(readlink "/proc/$1/fd/2" 2>/dev/null) && [ -f "$l" ] && echo "$l"
}
# _waited_alive PID: the process runs (a zombie does not: an exited child
# of another shell, not yet reaped)
_waited_alive() {
    local st
    # builtins only: it runs at every turn of a wait
    { read -r st <"/proc/$1/stat"; } 2>/dev/null || return 1
    st=${st##*) }
    [ -n "$st" ] && [ "${st:0:1}" != Z ]
}
# _waited_fail WHAT PID LOG: the log's tail, then fail: PID is gone, WHAT
# never came (its exit status where PID is this shell's child)
_waited_fail() {
    local what=$1 pid=$2 log=$3 rc status
    wait "$pid" 2>/dev/null
    rc=$?
    status="exit status $rc"
    [ $rc != 127 ] || status="not this shell's child: exit status unknown"
    if [ -n "$log" ] && [ -f "$log" ]; then
        echo "--- the last lines of $log:" >&2
        tail -n 20 "$log" >&2
    fi
    fail "$what: process $pid exited first ($status)"
}
wait_sock() {
    local sock=$1 pid=${2:-} log=${3:-}
    [ -n "$log" ] || [ -z "$pid" ] || log=$(_waited_log "$pid")
    for _ in $(seq 1200); do
        [ -S "$sock" ] && return 0
        [ -z "$pid" ] || _waited_alive "$pid" || { [ -S "$sock" ] && return 0; _waited_fail "no socket $sock" "$pid" "$log"; }
        sleep 0.05
    done
    [ -z "$log" ] || { echo "--- the last lines of $log:" >&2; tail -n 20 "$log" >&2; }
    fail "no socket $sock after 60 s${pid:+ (process $pid still runs)}"
}
# free_port [N]: a TCP port P with P..P+N-1 (default 1) free on 127.0.0.1,
# below the kernel's ephemeral range (32768 and up here) so that no
# outgoing connection is handed it before the test's server binds it; a
# random pick of 20000+RANDOM could land on a listener or an ephemeral
# port of another program and fail the test by chance.
free_port() {
    python3 - "${1:-1}" <<'PY'
import random, socket, sys
n = int(sys.argv[1])
lo = 20000
try:
    hi = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0]) - n
except OSError:
    hi = 32767 - n
if hi <= lo:
    lo, hi = 1024, 60000 - n
for _ in range(200):
    p = random.randint(lo, hi)
    socks = []
    try:
        for q in range(p, p + n):
            s = socket.socket()
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
            s.bind(("127.0.0.1", q))
    except OSError:
        continue
    finally:
        for s in socks:
            s.close()
    print(p)
    sys.exit(0)
sys.exit("free_port: no free run of %d ports" % n)
PY
}
wait_port() {
    local port=$1 pid=${2:-} log=${3:-}
    [ -n "$log" ] || [ -z "$pid" ] || log=$(_waited_log "$pid")
    for _ in $(seq 1200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        [ -z "$pid" ] || _waited_alive "$pid" || _waited_fail "nothing listens on port $port" "$pid" "$log"
        sleep 0.05
    done
    [ -z "$log" ] || { echo "--- the last lines of $log:" >&2; tail -n 20 "$log" >&2; }
    fail "nothing listens on port $port after 60 s${pid:+ (process $pid still runs)}"
}
# vbd-daemon in the background until its socket $S appears (log: $T/daemon.log,
# started afresh each time); stop_daemon: SIGTERM, exit status 0, socket
# removed, no sanitizer report.
dpid=
start_daemon() {
    rm -f "$S"
    : >"$T/daemon.log"
    "$VBD_DAEMON" "$@" 2>>"$T/daemon.log" &
    dpid=$!
    for _ in $(seq 600); do [ -S "$S" ] && return; kill -0 $dpid 2>/dev/null || break; sleep 0.1; done
    cat "$T/daemon.log"; fail "vbd-daemon did not start: $*"
}
stop_daemon() {
    kill -TERM $dpid; wait $dpid; local rc=$?
    [ $rc = 0 ] || { cat "$T/daemon.log"; fail "vbd-daemon exited with $rc after SIGTERM"; }
    [ ! -e "$S" ] || fail "socket left behind after SIGTERM"
    ! grep -q "Sanitizer" "$T/daemon.log" || { cat "$T/daemon.log"; fail "sanitizer report"; }
    dpid=
}
# start_watched_daemon ARGS...: start_daemon with a QMP monitor m0 on
# $T/m0.sock ($S) before ARGS, for the tests that watch the daemon's RSS
# and fds (tests/qmp/procwatch.py): ASan's quarantine (256 MiB by default)
# kept at 4 MiB, where freed memory would read as growth; it still catches
# a use after free. Killed at exit.
start_watched_daemon() {
    S=$T/m0.sock
    on_exit '[ -z "$dpid" ] || kill -9 $dpid 2>/dev/null'
    ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}:quarantine_size_mb=4" start_daemon \
        --chardev socket,id=m0,path="$S",server=on,wait=off --monitor m0 "$@"
}
# nbd_qsd_vbd NODE-OPTS CMD...: in the current directory, src/ copied to q/
# and v/, qemu-io runs the commands CMD... over NBD into qemu-storage-daemon
# serving q/img.qcow2 and vbd-daemon serving v/img.qcow2 (a file node and a
# qcow2 node on it, NODE-OPTS such as ",discard=unmap" appended to both; each
# daemon runs in its copy, where a relative data file name leads). Output and
# "exit N" in q.out/v.out, timings masked; fails unless they agree and each
# daemon exits 0 after SIGTERM with no sanitizer report (logs $T/q.log,
# $T/v.log). The caller compares the copies left.
nbd_qsd_vbd() {
    local nopts=$1 args=() c t d pid
    shift
    for c in "$@"; do args+=(-c "$c"); done
    for t in q v; do
        rm -rf $t && cp -a src $t
        rm -f "$T/$t.sock"
        d=qemu-storage-daemon
        [ $t = v ] && d=$VBD_DAEMON
        (cd $t && exec "$d" --blockdev driver=file,node-name=f0,filename="$PWD/img.qcow2$nopts" \
            --blockdev driver=qcow2,node-name=d0,file=f0"$nopts" --nbd-server addr.type=unix,addr.path="$T/$t.sock" \
            --export type=nbd,id=e0,node-name=d0,name=disk,writable=on 2>"$T/$t.log") &
        pid=$!
        on_exit "kill -9 $pid 2>/dev/null"
        wait_sock "$T/$t.sock" "$pid" "$T/$t.log"
        qemu-io -f raw "${args[@]}" "nbd+unix:///disk?socket=$T/$t.sock" >$t.out 2>&1
        echo "exit $?" >>$t.out
        kill -TERM $pid
        wait $pid || fail "$d exited with $? after SIGTERM: $(tail -5 "$T/$t.log")"
        ! grep -q Sanitizer "$T/$t.log" || { cat "$T/$t.log"; fail "sanitizer report"; }
    done
    sed -i -E -e 's/ops; [0-9:.]+( sec)? \(.*\)$/ops; T/' q.out v.out
    diff -u q.out v.out || fail "NBD output differs: $*"
}
# nbd_outage_server MODE ADDR: the scripted NBD server of the client's
# reconnect tests (nbd-outage-server.py: the client's open answered and
# closed at once, later connections as MODE says) on ADDR, a unix socket
# path or tcp:PORT, in the background; pid in lpid (killed at exit), its
# log in $T/srv.log (started afresh). Returns once it listens (not by a
# probe: that would be the connection taken for the open).
nbd_outage_server() {
    rm -f "$T/srv.log" "$2"
    touch "$T/srv.log"
    python3 "$VBD_ROOT/tests/integration/nbd-outage-server.py" "$1" "$2" "$T/srv.log" &
    lpid=$!
    on_exit "kill $lpid 2>/dev/null"
    wait_log "$T/srv.log" listening 1 "$lpid" || fail "the scripted NBD server did not start"
}
# nbd_via unix|tcp PORT: the names of one transport for the export "disk"
# served at $T/s.sock or 127.0.0.1:PORT: addr (nbd_raw_daemon's ADDR), where
# (nbdproto.py's unix:PATH / tcp:HOST:PORT) and U (the NBD URI).
nbd_via() {
    if [ "$1" = unix ]; then
        addr=$T/s.sock where="unix:$T/s.sock" U="nbd+unix:///disk?socket=$T/s.sock"
    else
        addr=tcp:$2 where="tcp:127.0.0.1:$2" U="nbd://127.0.0.1:$2/disk"
    fi
}
# nbd_raw_daemon [-l LOG] [-o NODE-OPTS] [-w "CMD ARGS"] IMG ADDR [ARGS...]: vbd-daemon in
# the background serving the raw image IMG over NBD (file node file0, raw
# node disk0 on it, NODE-OPTS such as ",discard=unmap" appended to both) at
# ADDR, a unix socket path or tcp:PORT (127.0.0.1). ARGS: the rest of the
# command line (exports of disk0, more nodes); none: disk0 exported writable
# as "disk". Returns once the socket exists or the port accepts, fails if
# the daemon exits first; pid in $dpid (killed at exit; stop_daemon stops
# it when ADDR is $S and LOG the default), stderr in LOG (default
# $T/daemon.log, started afresh). -w: the daemon runs as CMD ARGS vbd-daemon
# ..., CMD ARGS split at blanks (a wrapper such as bench/syscall-tax OPTS --
# that execs its command, so $dpid is the daemon's pid).
nbd_raw_daemon() {
    local log=$T/daemon.log opts= img addr nbd sock= port= wrap=()
    while :; do
        case $1 in -l) log=$2; shift 2 ;; -o) opts=$2; shift 2 ;; -w) read -ra wrap <<<"$2"; shift 2 ;; *) break ;; esac
    done
    img=$1 addr=$2; shift 2
    case $addr in
    tcp:*) port=${addr#tcp:} nbd=addr.type=inet,addr.host=127.0.0.1,addr.port=${addr#tcp:} ;;
    *) sock=$addr nbd=addr.type=unix,addr.path=$addr; rm -f "$sock" ;;
    esac
    [ $# -gt 0 ] || set -- --export type=nbd,id=e0,node-name=disk0,name=disk,writable=on
    : >"$log"
    "${wrap[@]}" "$VBD_DAEMON" --blockdev driver=file,node-name=file0,filename="$img$opts" \
        --blockdev driver=raw,node-name=disk0,file=file0$opts --nbd-server "$nbd" "$@" 2>>"$log" &
    dpid=$!
    on_exit "kill -9 $dpid 2>/dev/null"
    for _ in $(seq 1200); do
        if [ -n "$port" ]; then
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        else
            [ -S "$sock" ] && return 0
        fi
        kill -0 $dpid 2>/dev/null || break
        sleep 0.05
    done
    cat "$log"; fail "vbd-daemon did not start: NBD on $addr"
}
# Several vbd-daemons at once (each its own options, e.g. one per disk of a
# guest): start_named NAME ARGS... runs vbd-daemon ARGS in the background
# until $T/NAME.sock (which ARGS must name) appears; stderr in $T/NAME.log
# (started afresh each time), pid in dpids[NAME]. stop_named NAME: as stop_daemon.
declare -A dpids=()
on_exit 'for p in "${dpids[@]}"; do kill -9 $p 2>/dev/null; done'
start_named() {
    local n=$1 s=$T/$1.sock; shift
    rm -f "$s"
    : >"$T/$n.log"
    "$VBD_DAEMON" "$@" 2>>"$T/$n.log" &
    dpids[$n]=$!
    for _ in $(seq 600); do [ -S "$s" ] && return; kill -0 ${dpids[$n]} 2>/dev/null || break; sleep 0.1; done
    cat "$T/$n.log"; fail "vbd-daemon $n did not start: $*"
}
stop_named() {
    local n=$1 rc
    kill -TERM ${dpids[$n]}; wait ${dpids[$n]}; rc=$?
    unset "dpids[$n]"
    [ $rc = 0 ] || { cat "$T/$n.log"; fail "vbd-daemon $n exited with $rc after SIGTERM"; }
    [ ! -e "$T/$n.sock" ] || fail "vbd-daemon $n: socket left behind after SIGTERM"
    ! grep -q "Sanitizer" "$T/$n.log" || { cat "$T/$n.log"; fail "vbd-daemon $n: sanitizer report"; }
}
# The job tests' daemon, in the current directory: $1 = vbd (vbd-daemon) or
# qsd (qemu-storage-daemon 7.2) with QMP on qmp.sock and node $2 exported
# writable as "disk" on nbd.sock; $3...: its --blockdev arguments. Sets
# dpid; its stderr goes to daemon.log. job_daemon_stop NAME: SIGTERM, it
# must exit 0 with no sanitizer report.
job_daemon_start() {
    local bin=$VBD_DAEMON node=$2
    [ "$1" = qsd ] && bin=qemu-storage-daemon
    shift 2
    "$bin" --chardev socket,id=q,path="$PWD/qmp.sock",server=on,wait=off --monitor chardev=q "$@" \
        --nbd-server "addr.type=unix,addr.path=$PWD/nbd.sock" \
        --export type=nbd,id=e0,node-name=$node,name=disk,writable=on 2>daemon.log &
    dpid=$!
    wait_sock "$PWD/nbd.sock" "$dpid" daemon.log
}
job_daemon_stop() {
    kill -TERM $dpid; wait $dpid; local rc=$?
    dpid=
    [ $rc = 0 ] || fail "$1 exited with $rc: $(tail -5 daemon.log)"
    ! grep -q Sanitizer daemon.log || fail "$1: $(cat daemon.log)"
}
# job_stress_scenario NAME MIB: the start of each scenario of the job
# stress tests (job-backup-stress, job-crash-backup): in a fresh
# scenario_dir NAME, src.qcow2 (a copy of $T/base.qcow2), an empty qcow2
# target tgt.qcow2 and a fleecing overlay fleece.qcow2 over src.qcow2 (MIB
# MiB each), and vbd-daemon with qcow2 node src, QMP on qmp.sock and an NBD
# server on nbd.sock without exports (the scenario adds its own); pid in
# dpid, stderr in daemon.log. Returns once QMP listens.
job_stress_scenario() {
    scenario_dir "$1"
    cp ../base.qcow2 src.qcow2 || fail "copy of base.qcow2"
    must qemu-img create -q -f qcow2 tgt.qcow2 "$2M"
    must qemu-img create -q -f qcow2 -b "$PWD/src.qcow2" -F qcow2 fleece.qcow2 "$2M"
    "$VBD_DAEMON" --chardev socket,id=q,path="$PWD/qmp.sock",server=on,wait=off --monitor chardev=q \
        --blockdev "$(qcow2_node src)" --nbd-server "addr.type=unix,addr.path=$PWD/nbd.sock" 2>daemon.log &
    dpid=$!
    wait_sock "$PWD/qmp.sock" "$dpid" daemon.log
}
# qcow2_node NAME [BACKING]: the blockdev JSON of qcow2 node NAME on
# $PWD/NAME.qcow2; BACKING: its backing, a node name or null (none); without
# it the image's own. qcow2_node_in DIR NAME [BACKING]: on DIR/NAME.qcow2
# (qmpdiff's {DIR}).
qcow2_node_in() {
    local b=
    [ $# -gt 2 ] && { [ "$3" = null ] && b=',"backing":null' || b=',"backing":"'"$3"'"'; }
    echo '{"driver":"qcow2","node-name":"'"$2"'","file":{"driver":"file","filename":"'"$1/$2"'.qcow2"}'"$b"'}'
}
qcow2_node() { qcow2_node_in "$PWD" "$@"; }
# The model-based stress test (tests/stress/vbd-stress) on FMT images in $PWD:
# in process for each cluster size of CSLIST and each I/O mode, then over NBD
# (vbd-daemon, 4 connections) at cluster size NBD_CS. Each image is made by
# `qemu-img create -f FMT OPTS s.img 8M` (%cs% in OPTS becomes the cluster
# size) and filled from a random init.raw; after each run it must check clean
# (unless CHECK is "nocheck": qemu-img has none for the format) and hold what
# the model's shadow copy says.
# stress_format FMT "CSLIST" NBD_CS "OPTS" [nocheck]
stress_format() {
    local fmt=$1 cslist=$2 nbd_cs=$3 opts=$4 check=${5:-check} cs io n=0 out
    local stress=$VBD_BUILD/tests/stress/vbd-stress
    [ -x "$stress" ] || fail "no $stress (build the tree first)"
    head -c 3M /dev/urandom >init.raw && truncate -s 8M init.raw
    _stress_image() {
        # shellcheck disable=SC2086 # OPTS are words
        must qemu-img create -q -f "$fmt" ${opts//%cs%/$1} s.img 8M
        must qemu-img convert -q -n -f raw -O "$fmt" init.raw s.img
    }
    _stress_check() {
        [ "$check" = nocheck ] || qcheck -f "$fmt" s.img
        must qemu-img compare -q -f "$fmt" -F raw s.img shadow.raw
    }
    for cs in $cslist; do
        for io in "" "-t none" "-i threads"; do
            n=$((n + 1))
            _stress_image $cs
            # shellcheck disable=SC2086 # $io is words
            out=$(timeout -k 10 600 "$stress" --seed $((100 + n)) --ops 1500 --cluster-size $cs --init init.raw \
                  --shadow-out shadow.raw $io -f "$fmt" s.img 2>&1) ||
                fail "vbd-stress $fmt cs=$cs [$io] seed=$((100 + n)): $(echo "$out" | tail -5)"
            _stress_check
        done
    done
    _stress_image $nbd_cs
    "$VBD_DAEMON" --blockdev "driver=file,node-name=f0,filename=$PWD/s.img" --blockdev "driver=$fmt,node-name=d0,file=f0" \
        --nbd-server "addr.type=unix,addr.path=$PWD/nbd.sock" --export "type=nbd,id=n0,node-name=d0,name=disk,writable=on" \
        2>daemon.log &
    local spid=$!
    on_exit "kill -9 $spid 2>/dev/null"
    wait_sock "$PWD/nbd.sock" "$spid" daemon.log
    out=$(timeout -k 10 600 "$stress" --seed 200 --ops 1500 --cluster-size $nbd_cs --init init.raw --shadow-out shadow.raw \
          --nbd "nbd+unix:///disk?socket=$PWD/nbd.sock" --conns 4 2>&1) ||
        fail "vbd-stress $fmt over NBD seed=200: $(echo "$out" | tail -5)"
    kill -TERM $spid
    wait $spid || fail "vbd-daemon exited with $? after SIGTERM: $(tail -5 daemon.log)"
    ! grep -q Sanitizer daemon.log || fail "vbd-daemon: $(cat daemon.log)"
    rm -f "$PWD/nbd.sock"
    _stress_check
}
