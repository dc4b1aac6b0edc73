#!/bin/bash
# A unix socket of vbd-daemon (NBD server, vhost-user-blk export) appears
# only once it accepts: a client that waits for the file and connects at
# once is never refused. SOCKET_CYCLES (default 200) daemon starts; each
# time a client spins on both paths and connects the moment one shows up
# (the NBD one must greet it), then SIGTERM must remove both sockets and
# leave no temporary name behind.
. "$(dirname "$0")/lib.sh"
need python3
cd "$T"
must "$VBD_IMG" create -q -f raw d.raw 1M
mkdir sock
python3 - "$VBD_DAEMON" "${SOCKET_CYCLES:-200}" <<'PY' || fail "see above"
import os, signal, socket, subprocess, sys, time
daemon, cycles = sys.argv[1], int(sys.argv[2])
nbd, vu = 'sock/nbd.sock', 'sock/vu.sock'
cmd = [daemon, '--blockdev', 'driver=file,node-name=f0,filename=d.raw',
       '--blockdev', 'driver=raw,node-name=d0,file=f0',
       '--nbd-server', 'addr.type=unix,addr.path=' + nbd,
       '--export', 'type=nbd,id=e0,node-name=d0,name=d0',
       '--export', 'type=vhost-user-blk,id=e1,node-name=d0,addr.type=unix,addr.path=' + vu]
log = open('daemon.log', 'w')
def bad(msg):
    log.close()
    sys.stdout.write(open('daemon.log').read())
    print('FAIL: ' + msg)
    sys.exit(1)
for cyc in range(1, cycles + 1):
    p = subprocess.Popen(cmd, stderr=log)
    pending = {nbd, vu}
    deadline = time.monotonic() + 60
    while pending:
        for path in list(pending):
            if not os.path.exists(path):
                continue
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                if path == nbd:
                    s.settimeout(60)
                    greeting = s.recv(8, socket.MSG_WAITALL)
                    if greeting != b'NBDMAGIC':
                        bad('cycle %d: %s greeted with %r' % (cyc, path, greeting))
            except OSError as e:
                p.kill()
                bad('cycle %d: %s exists but connect failed: %s' % (cyc, path, e))
            s.close()
            pending.discard(path)
        if p.poll() is not None:
            bad('cycle %d: vbd-daemon exited with %d before both sockets appeared' % (cyc, p.returncode))
        if time.monotonic() > deadline:
            p.kill()
            bad('cycle %d: sockets %s did not appear in 60 s' % (cyc, sorted(pending)))
    p.send_signal(signal.SIGTERM)
    rc = p.wait()
    if rc != 0:
        bad('cycle %d: vbd-daemon exited with %d after SIGTERM' % (cyc, rc))
    left = os.listdir('sock')
    if left:
        bad('cycle %d: left behind in the socket directory: %s' % (cyc, left))
print('%d daemon starts: every socket accepted the moment it appeared' % cycles)
PY
! grep -q Sanitizer daemon.log || { cat daemon.log; fail "sanitizer report"; }
# a socket that cannot be made: one line naming the path and the reason, nothing left behind
must_fail_with "Failed to bind socket to $T/none/n.sock: No such file or directory" "$VBD_DAEMON" \
    --blockdev driver=file,node-name=f0,filename=d.raw --nbd-server addr.type=unix,addr.path="$T/none/n.sock"
long=$T/sock/$(printf 'x%.0s' $(seq 110))
must_fail_with "socket path '$long' is too long" "$VBD_DAEMON" --drive file=d.raw,format=raw --vhost-user "$long"
[ -z "$(ls -A sock)" ] || fail "left behind after failed starts: $(ls -A sock)"
