#!/bin/bash
# vbd-img vs qemu-img on the verbs users time besides convert's main rows
# (bench/img-convert.sh): check and map of a big fragmented qcow2 with
# snapshots, info --backing-chain of a 20-deep chain, compare raw vs
# qcow2, commit, rebase (safe), convert -B / -c / of vmdk, vhdx and vdi
# sources, measure, resize --shrink, dd, bitmap --merge. Same images, one
# run, the tools alternating which goes first; medians of REPS runs.
# Ratio = qemu-img's wall time / vbd-img's (>1: vbd faster); "cpu" is the
# tool's user+system seconds (all threads). BASE=DIR: a second vbd build
# (e.g. a release build of main) timed in the same run ("base" columns),
# for A/B. Every image a verb writes is checked (qemu-img check) and its
# data compared (qemu-img compare) with what it must hold, every vbd run's
# exit code must be qemu-img's, and "out" says whether vbd-img's stdout
# was qemu-img's byte for byte ("=", else "DIFF"; file names are the same).
#   bench/img-verbs.sh [DIR...]   (default: /dev/shm and /var/tmp)
# CASES=REGEX: only the rows whose label matches. IMGDIR_KEEP=1: the
# images are made once per DIR (DIR/vbd-verbs-img) and kept for the next
# run (CASES='^$' only makes them, e.g. outside the bench lock).
set -euo pipefail
source "$(dirname "$0")/common.sh"
DIRS=${*:-/dev/shm /var/tmp}
BASE_IMG=
[ -z "${BASE:-}" ] || BASE_IMG=$BASE/src/tools/vbd-img
echo "machine: $(machine); load $(cut -d' ' -f1-3 /proc/loadavg); medians of $REPS runs${BASE:+; base: $BASE}"
if [ -n "$BASE_IMG" ]; then
    printf '%-10s %-26s %8s %8s %8s %6s %6s %7s %7s %7s %4s\n' where case "vbd s" "base s" "qemu s" ratio "base" "vbd cpu" "bas cpu" "qem cpu" out
else
    printf '%-10s %-26s %8s %8s %6s %7s %7s %4s\n' where case "vbd s" "qemu s" ratio "vbd cpu" "qem cpu" out
fi

# timed FILE CMD...: runs CMD (its stdout to FILE.out), writes "wall cpu rc" to FILE
timed() {
    python3 -c '
import os, sys, time
f = sys.argv[1]
fd = os.open(f + ".out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
t = time.monotonic()
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, fd, 1)])
_, st, ru = os.wait4(pid, 0)
w = time.monotonic() - t
open(f, "w").write("%.4f %.4f %d\n" % (w, ru.ru_utime + ru.ru_stime, os.waitstatus_to_exitcode(st)))' "$@"
}

# Images (made with qemu-img/qemu-io only)
make_images() {
    local I=$1
    mkdir -p "$I"
    cd "$I"
    [ -e done ] && return 0
    rm -f ./*
    # frag.qcow2: 8 GiB, 64K clusters, 1/3 allocated in runs of 1-32
    # clusters at scattered places, written in random order (host offsets
    # out of guest order); snapshot s1, then an eighth of the runs
    # written again (copied on write), snapshot s2, another eighth.
    # fragns.qcow2 (resize, bitmap): the same layout with a twelfth
    # allocated, no snapshots, a persistent bitmap b0 dirtied by the
    # writes and an empty disabled b1.
    qemu-img create -q -f qcow2 -o cluster_size=65536 frag.qcow2 8G
    qemu-img create -q -f qcow2 -o cluster_size=65536 fragns.qcow2 8G
    qemu-img bitmap --add fragns.qcow2 b0
    python3 - <<'PY'
import random, subprocess
C = 65536
def runs(seed, maxgap):
    random.seed(seed)
    n = (8 << 30) // C
    out, pos = [], 0
    while True:
        pos += random.randint(1, maxgap); ln = random.randint(1, 32)
        if pos + ln > n: break
        out.append((pos, ln)); pos += ln
    random.shuffle(out)
    return out
def write(img, part, p):
    args = ["qemu-io", "-f", "qcow2"]
    for s, ln in part:
        args += ["-c", "write -q -P %d %d %d" % (1 + (s + p) % 250, s * C, ln * C)]
    subprocess.run(args + [img], check=True, stdout=subprocess.DEVNULL)
r = runs(18, 64)
e = len(r) // 8
for p, part in enumerate((r, r[:e], r[e:2 * e])):
    write("frag.qcow2", part, p)
    if p < 2:
        subprocess.run(["qemu-img", "snapshot", "-c", "s%d" % (p + 1), "frag.qcow2"], check=True)
write("fragns.qcow2", runs(28, 360), 0)
PY
    qemu-img bitmap --add --disable fragns.qcow2 b1
    # data.raw: 1 GiB, in every 4 MiB 1 MiB of data (half of it
    # compressible text), 1 MiB of written zeroes, 2 MiB of hole
    python3 - <<'PY'
import os, random
M = 1 << 20
random.seed(7)
fd = os.open("data.raw", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, 1024 * M)
words = [bytes(random.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(random.randint(2, 9))) for _ in range(5000)]
for i in range(256):
    text = b" ".join(random.choice(words) for _ in range(M // 5))[:M // 2]
    text += b" " * (M // 2 - len(text))
    os.pwrite(fd, os.urandom(M // 2) + text, i * 4 * M)
    os.pwrite(fd, bytes(M), i * 4 * M + M)
os.close(fd)
PY
    qemu-img convert -f raw -O qcow2 data.raw data.qcow2
    cp data.qcow2 data-end.qcow2
    qemu-io -f qcow2 -c 'write -q -P 0x77 1073737216 512' data-end.qcow2
    qemu-img create -q -f raw small.raw 256M
    qemu-img dd -f raw -O raw bs=1M count=256 if=data.raw of=small.raw
    for f in vmdk vhdx vdi; do qemu-img convert -f raw -O $f data.raw data.$f; done
    # chain: c0 (64 MiB, 16 MiB of data) and 19 overlays, each writing 1 MiB somewhere
    qemu-img create -q -f qcow2 c0.qcow2 64M
    qemu-io -f qcow2 -c 'write -q -P 1 0 16M' c0.qcow2
    for i in $(seq 1 19); do
        qemu-img create -q -f qcow2 -b c$((i - 1)).qcow2 -F qcow2 c$i.qcow2
        qemu-io -f qcow2 -c "write -q -P $((i + 1)) $((i * 3))M 1M" c$i.qcow2
    done
    # commit: a 2 GiB base with data and an overlay holding 1 GiB (1 MiB in
    # every 2 MiB); rebase: an overlay of base.qcow2 onto base2.qcow2, which
    # differs from it in one 1 MiB of every 8 MiB
    qemu-img create -q -f qcow2 base.qcow2 2G
    qemu-io -f qcow2 -c 'write -q -P 0x11 0 1G' base.qcow2
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
    args=()
    for i in $(seq 0 1023); do args+=(-c "write -q -P $((i % 200 + 20)) $((i * 2 + 1))M 1M"); done
    qemu-io -f qcow2 "${args[@]}" top.qcow2
    cp base.qcow2 base2.qcow2
    args=()
    for i in $(seq 0 127); do args+=(-c "write -q -P 0x22 $((i * 8 + 2))M 1M"); done
    qemu-io -f qcow2 "${args[@]}" base2.qcow2
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 rtop.qcow2
    args=()
    for i in $(seq 0 255); do args+=(-c "write -q -P 0x33 $((i * 8))M 1M"); done
    qemu-io -f qcow2 "${args[@]}" rtop.qcow2
    sync
    touch done
}

# row LABEL PREP CHECK ARGS...: ARGS (a verb and its arguments, "$W" the
# work directory) timed for each tool; PREP (eval'd before every run,
# untimed) makes the work files, CHECK (eval'd after every run, untimed)
# fails when the result is wrong
row() {
    local label=$1 prep=$2 check=$3
    shift 3
    [[ $label =~ ${CASES:-.} ]] || return 0
    local tools=(vbd qemu) t r i
    [ -z "$BASE_IMG" ] || tools=(vbd base qemu)
    declare -A walls cpus
    for t in "${tools[@]}"; do walls[$t]=; cpus[$t]=; done
    for r in $(seq "$REPS"); do
        # rotate which tool goes first
        local order=()
        for i in "${!tools[@]}"; do order+=("${tools[$(((i + r) % ${#tools[@]}))]}"); done
        for t in "${order[@]}"; do
            local bin=qemu-img
            [ $t = vbd ] && bin=$VBD_IMG
            [ $t = base ] && bin=$BASE_IMG
            rm -rf "$W"; mkdir -p "$W"; eval "$prep"; sync
            timed "$T/$t" "$bin" "$@"
            read -r w c rc <"$T/$t"
            walls[$t]+="$w "; cpus[$t]+="$c "
            eval "$check" || { echo "$label: $t's result is wrong" >&2; exit 1; }
            cp "$T/$t.out" "$T/$t.last"; echo "$rc" >"$T/$t.rc"
        done
        for t in "${tools[@]}"; do
            [ "$(cat "$T/$t.rc")" = "$(cat "$T/qemu.rc")" ] || { echo "$label: $t exit $(cat "$T/$t.rc"), qemu-img's $(cat "$T/qemu.rc")" >&2; exit 1; }
        done
    done
    local same='=' m
    cmp -s "$T/vbd.last" "$T/qemu.last" || same=DIFF
    med() { tr ' ' '\n' <<<"$1" | grep . | median; }
    declare -A mw mc
    for t in "${tools[@]}"; do mw[$t]=$(med "${walls[$t]}"); mc[$t]=$(med "${cpus[$t]}"); done
    if [ -n "$BASE_IMG" ]; then
        printf '%-10s %-26s %8.3f %8.3f %8.3f %6.2f %6.2f %7.3f %7.3f %7.3f %4s\n' "$where" "$label" "${mw[vbd]}" "${mw[base]}" "${mw[qemu]}" \
            "$(echo "${mw[qemu]} / ${mw[vbd]}" | bc -l)" "$(echo "${mw[qemu]} / ${mw[base]}" | bc -l)" \
            "${mc[vbd]}" "${mc[base]}" "${mc[qemu]}" "$same"
    else
        printf '%-10s %-26s %8.3f %8.3f %6.2f %7.3f %7.3f %4s\n' "$where" "$label" "${mw[vbd]}" "${mw[qemu]}" \
            "$(echo "${mw[qemu]} / ${mw[vbd]}" | bc -l)" "${mc[vbd]}" "${mc[qemu]}" "$same"
    fi
    rm -rf "$W"
}

ok() { "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; return 1; }; }
for D in $DIRS; do
    # the file system's type names the row (the directory is in the header)
    where=$(stat -f -c %T "$D")
    echo "$where: $D"
    I=$D/vbd-verbs-img
    W=$D/vbd-verbs-work-$$
    T=$(mktemp -d "${TMPDIR:-/tmp}/img-verbs.XXXXXX")
    if [ -n "${IMGDIR_KEEP:-}" ]; then
        trap 'rm -rf "$W" "$T"' EXIT
    else
        trap 'rm -rf "$W" "$T" "$I"' EXIT
    fi
    (make_images "$I")
    row "check frag 8G" "" "" check "$I/frag.qcow2"
    row "check --output=json" "" "" check --output=json "$I/frag.qcow2"
    row "map frag 8G" "" "" map "$I/frag.qcow2"
    row "map --output=json" "" "" map --output=json "$I/frag.qcow2"
    row "info --backing-chain 20" "" "" info --backing-chain "$I/c19.qcow2"
    row "compare raw=qcow2" "" "" compare "$I/data.raw" "$I/data.qcow2"
    row "compare raw!=qcow2 (end)" "" "" compare "$I/data.raw" "$I/data-end.qcow2"
    row "commit 1G overlay" 'cp --sparse=always "$I/base.qcow2" "$I/top.qcow2" "$W"' \
        'ok qemu-img check "$W/base.qcow2" && ok qemu-img check "$W/top.qcow2" && ok qemu-img compare "$I/top.qcow2" "$W/base.qcow2"' \
        commit -q "$W/top.qcow2"
    row "rebase -b (safe)" 'cp --sparse=always "$I/rtop.qcow2" "$W"; ln -s "$I/base.qcow2" "$W/base.qcow2"' \
        'ok qemu-img check "$W/rtop.qcow2" && ok qemu-img compare "$I/rtop.qcow2" "$W/rtop.qcow2"' \
        rebase -b "$I/base2.qcow2" -F qcow2 "$W/rtop.qcow2"
    row "convert -B qcow2->qcow2" '' \
        'ok qemu-img check "$W/out.qcow2" && ok qemu-img compare "$I/top.qcow2" "$W/out.qcow2"' \
        convert -f qcow2 -O qcow2 -B "$I/base.qcow2" -F qcow2 "$I/top.qcow2" "$W/out.qcow2"
    for m in 1 2; do
        row "convert -c -m $m" '' 'ok qemu-img check "$W/out.qcow2" && ok qemu-img compare "$I/small.raw" "$W/out.qcow2"' \
            convert -c -m $m -f raw -O qcow2 "$I/small.raw" "$W/out.qcow2"
    done
    for f in vmdk vhdx vdi; do
        row "convert $f->raw" '' "ok qemu-img compare -f raw -F raw \"\$I/data.raw\" \"\$W/out.raw\"" \
            convert -f $f -O raw "$I/data.$f" "$W/out.raw"
    done
    row "measure -O qcow2 frag" "" "" measure -O qcow2 "$I/frag.qcow2"
    # what the shrink must leave: the first 4 GiB of the image
    first4g="json:{\"driver\": \"raw\", \"size\": 4294967296, \"file\": {\"driver\": \"qcow2\", \"file\": {\"driver\": \"file\", \"filename\": \"$I/fragns.qcow2\"}}}"
    row "resize --shrink 8G->4G" 'cp --sparse=always "$I/fragns.qcow2" "$W"' \
        'ok qemu-img check "$W/fragns.qcow2" && ok qemu-img compare "$first4g" "$W/fragns.qcow2"' \
        resize -q --shrink -f qcow2 "$W/fragns.qcow2" 4G
    row "dd bs=1M qcow2->raw" '' 'ok qemu-img compare -f qcow2 -F raw "$I/data.qcow2" "$W/out.raw"' \
        dd -f qcow2 -O raw bs=1M if="$I/data.qcow2" of="$W/out.raw"
    # merged: b1 then holds b0's bits (the image's qemu-img map through
    # each bitmap compared would need an NBD export; check and both names)
    row "bitmap --merge" 'cp --sparse=always "$I/fragns.qcow2" "$W"' \
        'ok qemu-img check "$W/fragns.qcow2" && [ "$(qemu-img info --output=json "$W/fragns.qcow2" | grep -c "\"name\": \"b[01]\"")" = 2 ]' \
        bitmap --merge b0 -f qcow2 "$W/fragns.qcow2" b1
    rm -rf "$W" "$T"
    [ -n "${IMGDIR_KEEP:-}" ] || rm -rf "$I"
done
