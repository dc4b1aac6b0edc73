#!/bin/sh
# served.sh DAEMON IMG: whether a second daemon (qemu-storage-daemon or
# vbd-daemon) can export IMG, a raw image, writable over NBD: prints
# "DAEMON: served" or "DAEMON: refused" (what qmpdiff.py's '?sh' lines
# compare). Each writes its --pidfile once every --export serves, and
# exits at once when one is refused: no fixed wait either way (a 60 s
# timeout stood for "served" before).
d=$1 img=$2 name=${1##*/}
rm -f served.pid served.sock
"$d" --blockdev driver=file,node-name=f,filename="$img" --nbd-server addr.type=unix,addr.path=served.sock \
    --export type=nbd,id=e,node-name=f,writable=on --pidfile served.pid >/dev/null 2>&1 &
p=$!
for _ in $(seq 1200); do
    if [ -s served.pid ]; then
        kill $p
        wait $p
        echo "$name: served"
        exit 0
    fi
    if ! kill -0 $p 2>/dev/null; then
        wait $p
        echo "$name: refused"
        exit 0
    fi
    sleep 0.05
done
kill $p
echo "$name: neither served nor refused in 60 s"
