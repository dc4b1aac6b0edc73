#!/bin/bash
# vbd-io beside qemu-io with its commands on standard input (no -c): the
# same input to both tools, each in its own copy of the same images, must
# give the same exit code, stdout (a prompt before each command, timing
# lines normalised) and stderr (the tool's name aside), and leave images
# qemu-img compare calls identical; and lines longer than qemu-io's
# 1023 bytes. (Split from io-parity.sh, which runs -c commands.)
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io
cd "$T"
io_parity_base
step "commands from standard input without -c (a prompt before each; blank lines, unknown commands, quit, the end of the input)"
stdin_same() { # INPUT ARGS...: both tools with no -c, INPUT (printf's format) on stdin
    stdin_pair "$1" "$@"
}
stdin_pair() { # QINPUT VINPUT ARGS...: stdin_same, QINPUT to qemu-io and VINPUT to vbd-io
    local qinput=$1 input=$2 t
    shift 2
    for t in q v; do rm -rf $t && cp -a base $t; done
    # shellcheck disable=SC2059 # the input is a printf format on purpose
    (cd q && printf "$qinput" | qemu-io "$@" >../q.out 2>../q.err; echo "exit $?" >>../q.out)
    # shellcheck disable=SC2059
    (cd v && printf "$input" | "$VBD_IO" "$@" >../v.out 2>../v.err; echo "exit $?" >>../v.out)
    sed -i -E -e 's/qemu-io/TOOL/g' -e 's/ops; [0-9:.]+( sec)? \(.*\)$/ops; T/' -e '$a\' q.out q.err
    sed -i -E -e 's/vbd-io/TOOL/g' -e 's/ops; [0-9:.]+( sec)? \(.*\)$/ops; T/' -e '$a\' v.out v.err
    tools_same "stdin: $input $*"
    for t in $(cd q && ls -A); do cmp -s q/$t v/$t || qemu-img compare -q q/$t v/$t || fail "stdin: $t differs: $input"; done
}
stdin_same 'write -P 0x11 0 4k\nread -P 0x11 0 4k\n\nfoo\nread -P 0x12 0 4k\nquit\nread 0 4k\n' -f raw a.raw
stdin_same 'write -P 0x11 0 4k\nread -v 0 16' -f qcow2 a.qcow2
stdin_same '' -f raw a.raw
stdin_same 'read 0 4k\n' -r -f qcow2 a.qcow2
stdin_same 'open -f raw a.raw\nread -P 0xab 0 4k\nclose\nread 0 1\n'
# Long lines: qemu-io 7.2 reads stdin with fgets into 1024 bytes, so a
# line of 1023 bytes or more runs as several commands (the pieces); vbd-io
# cut at 4 KiB the same way. A piece can be a command of its own (a write):
# vbd-io takes a line whole at any length. Up to qemu-io's limit both run
# the same; beyond it vbd-io runs what qemu-io runs for the same line
# without its padding.
pad=$(printf '%*s' 1000 '')
stdin_same "read -P 0xab 0${pad}4k\nwrite -P 0x33 4k${pad}4k\nread -P 0x33 4k 4k\n" -f raw a.raw
pad=$(printf '%*s' 5000 '')
stdin_pair 'read -P 0xab 0 4k\nwrite -P 0x33 4k 4k\nread -P 0x33 4k 4k\nread -v 0 16\n' \
    "read -P 0xab 0${pad}4k\nwrite -P 0x33 4k${pad}4k\nread -P 0x33 4k 4k\nread -v${pad}${pad}0 16\n" -f qcow2 a.qcow2

echo PASS
