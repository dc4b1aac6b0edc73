#!/bin/bash
# QMP on the daemon's stdin and stdout (--chardev stdio,id=m --monitor m,
# the way a script drives qemu-storage-daemon through a pipe) and
# --monitor pretty=on, against qemu-storage-daemon 7.2 with the same
# requests (tests/qmp/stdio_diff.py says what is compared): each message's
# text exactly QEMU's layout, the same replies and events, quit's reply
# when stdin ends right after quit (main's daemon refused --chardev stdio
# and pretty=on; with stdio and without the fix in serve_client it lost
# quit's reply every time), and a daemon that runs on after its stdin
# ends without quit; --chardev in QemuOpts' short-form booleans (server,nowait)
# taken with qsd's warnings.
. "$(dirname "$0")/lib.sh"
need python3 qemu-storage-daemon
python3 "$VBD_ROOT/tests/qmp/stdio_diff.py" "$T" qemu-storage-daemon "$VBD_DAEMON" || fail "QMP over stdio differs from qsd's (above)"
echo PASS
