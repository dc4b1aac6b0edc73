#!/bin/bash
# resize --shrink of a qcow2 image cut off at every point, with the writes
# a crash may or may not have kept: every image a crash can leave is
# consistent (qemu-img check: no corruption; leaked clusters allowed), and
# its first NEW bytes read as before the shrink (the shrink never changes
# them). strace -f (VBD_NO_IO_URING=1: every write is a pool thread's
# syscall; -e write=all: the bytes each pwritev wrote) records the image's
# writes, punched holes, truncates and fdatasyncs in order; what was
# written before an fdatasync is on the disk after it. For the crash
# between two fdatasyncs (or after the last) the image is the original
# with every change before the first of them applied, plus any subset of
# the changes between them: all subsets of up to 4, else none, all, each
# one alone and all but each one (writes between two syncs may reach the
# disk in any order). Cases: a partial L2 table, persistent bitmaps (one
# enabled, one disabled); L2 tables dropped whole (2G -> 512M); clusters a
# snapshot shares.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io strace python3
cd "$T"
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" VBD_NO_IO_URING=1

# crash_points IMAGE NEW: shrink a copy of IMAGE to NEW bytes, traced, then
# check every image a crash can leave
crash_points() {
    local img=$1 new=$2
    cp --sparse=always "$img" run.qcow2
    strace -f -qq -y --seccomp-bpf -o run.st -e trace=pwrite64,pwritev,pwritev2,fallocate,ftruncate,fdatasync,fsync \
        -e write=all "$VBD_IMG" resize -q --shrink -f qcow2 "$T/run.qcow2" "$new" >run.out 2>&1 ||
        fail "resize --shrink $img: $(tail -3 run.out)"
    qcheck run.qcow2
    python3 - run.st "$T/run.qcow2" "$img" "$new" <<'PY' || fail "$img: a crash leaves a broken image"
import itertools, os, re, shutil, subprocess, sys
trace, path, orig, new = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ops, cur = [], None   # ('w', off, bytes) ('p', off, len) ('t', size) ('s',)
for line in open(trace):
    if line.startswith(' | ') and cur is not None:
        cur[2].extend(bytes.fromhex(''.join(line[10:59].split())))
        continue
    if line.startswith(' * '):
        continue
    cur = None
    m = re.match(r'\d+\s+(\w+)\(\d+<([^>]*)>(.*)', line)
    if not m or m.group(2) != path or 'unfinished' in line:
        if m and m.group(2) == path and 'unfinished' in line:
            sys.exit('split syscall in the trace: %s' % line)
        continue
    name, rest = m.group(1), m.group(3)
    if not re.search(r'= 0*\d+$', rest.strip()) or re.search(r'= -1', rest):
        sys.exit('failed syscall: %s' % line)
    if name in ('fdatasync', 'fsync'):
        ops.append(('s',))
    elif name in ('pwritev', 'pwritev2', 'pwrite64'):
        # pwritev2's last argument is its flags
        a = re.search(r', (\d+)(?:, [^,()]+)?\) += (\d+)$' if name == 'pwritev2' else r', (\d+)\) += (\d+)$',
                      line.rstrip())
        cur = ['w', int(a.group(1)), bytearray(), int(a.group(2))]
        ops.append(cur)
    elif name == 'fallocate':
        a = re.search(r', (\S+), (\d+), (\d+)\) += 0$', line)
        if 'PUNCH_HOLE' not in a.group(1):
            sys.exit('unexpected fallocate: %s' % line)
        ops.append(('p', int(a.group(2)), int(a.group(3))))
    elif name == 'ftruncate':
        ops.append(('t', int(re.search(r', (\d+)\) += 0$', line).group(1))))
for o in ops:
    if o[0] == 'w' and len(o[2]) != o[3]:
        sys.exit('a write of %d bytes at %d dumped as %d' % (o[3], o[1], len(o[2])))
syncs = [i for i, o in enumerate(ops) if o[0] == 's']
if not syncs:
    sys.exit('no fdatasync in the trace')

def apply(f, o):
    if o[0] == 'w':
        os.pwrite(f, bytes(o[2]), o[1])
    elif o[0] == 'p':
        end = min(o[1] + o[2], os.fstat(f).st_size)
        for p in range(o[1], end, 1 << 20):
            os.pwrite(f, bytes(min(1 << 20, end - p)), p)
    elif o[0] == 't':
        os.ftruncate(f, o[1])

first = 'json:{"driver": "raw", "size": %d, "file": {"driver": "qcow2", "file": {"driver": "file", "filename": "%s"}}}'
states, bounds = 0, [-1] + syncs + [len(ops)]
for k in range(len(bounds) - 1):
    done = [o for o in ops[:bounds[k] + 1] if o[0] != 's']
    pend = [o for o in ops[bounds[k] + 1:bounds[k + 1]] if o[0] != 's']
    n = len(pend)
    if n <= 4:
        subsets = [c for r in range(n + 1) for c in itertools.combinations(range(n), r)]
    else:
        subsets = [(), tuple(range(n))] + [(i,) for i in range(n)] + [tuple(j for j in range(n) if j != i) for i in range(n)]
    for sub in subsets:
        states += 1
        shutil.copyfile(orig, 'crash.qcow2')
        f = os.open('crash.qcow2', os.O_RDWR)
        for o in done + [pend[i] for i in sub]:
            apply(f, o)
        os.close(f)
        c = subprocess.run(['qemu-img', 'check', 'crash.qcow2'], capture_output=True, text=True)
        if c.returncode not in (0, 3):  # 3: leaked clusters only
            sys.exit('crash after sync %d of %d with writes %s of %d kept: qemu-img check exit %d:\n%s' %
                     (k, len(syncs), list(sub), n, c.returncode, (c.stdout + c.stderr)[-1500:]))
        r = subprocess.run(['qemu-img', 'compare', '-q', first % (new, os.path.abspath(orig)),
                            first % (new, os.path.abspath('crash.qcow2'))], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit('crash after sync %d with writes %s of %d kept: the first %d bytes changed: %s' %
                     (k, list(sub), n, new, r.stdout + r.stderr))
print('%d fdatasyncs, %d changes, %d crash images checked' % (len(syncs), len(ops) - len(syncs), states))
PY
}

step "a table kept in part, persistent bitmaps b0 (enabled) and b1 (disabled): 256M -> 128M"
must qemu-img create -q -f qcow2 a.qcow2 256M
must qemu-img bitmap --add a.qcow2 b0
args=()
for i in $(seq 0 47); do args+=(-c "write -q -P $((i + 1)) $((i * 5 + 1))M 512k"); done
must qemu-io -f qcow2 "${args[@]}" a.qcow2
must qemu-img bitmap --add --disable a.qcow2 b1
crash_points a.qcow2 $((128 << 20))

step "L2 tables dropped whole: 2G -> 512M, bitmaps"
must qemu-img create -q -f qcow2 b.qcow2 2G
must qemu-img bitmap --add b.qcow2 b0
args=()
for i in $(seq 0 15); do args+=(-c "write -q -P $((i + 1)) $((i * 128 + 3))M 256k"); done
must qemu-io -f qcow2 "${args[@]}" b.qcow2
crash_points b.qcow2 $((512 << 20))

step "clusters a snapshot shares (their counts go down, not to 0): 1G -> 300M"
must qemu-img create -q -f qcow2 c.qcow2 1G
args=()
for i in $(seq 0 15); do args+=(-c "write -q -P $((i + 1)) $((i * 60 + 2))M 1M"); done
must qemu-io -f qcow2 "${args[@]}" c.qcow2
must qemu-img snapshot -c s1 c.qcow2
must qemu-io -f qcow2 -c 'write -q -P 99 700M 1M' -c 'write -q -P 98 200M 1M' c.qcow2
crash_points c.qcow2 $((300 << 20))
echo OK
