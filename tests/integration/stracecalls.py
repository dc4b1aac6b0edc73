# SPDX-License-Identifier: MIT
"""The calls of an `strace -f` log (one line per call, prefixed by the pid;
a call another thread interrupted comes as '<unfinished ...>' and '<...
NAME resumed>' lines, joined here), for the tests that order syncs and
writes (flush-skip.sh, flush-cover.sh)."""
import re


def read_calls(path):
    """[(name, args, entry line, exit line, result)], in the order the calls
    ended; line numbers index the log (a call's entry is before its exit)."""
    pending = {}  # pid -> (name, args, entry line)
    calls = []
    for i, line in enumerate(open(path)):
        m = re.match(r'(\d+)\s+(.*)$', line.rstrip('\n'))
        if not m:
            continue
        pid, rest = m.groups()
        if rest.startswith('---') or rest.startswith('+++'):
            continue  # signals and exits
        r = re.match(r'<\.\.\. (\w+) resumed>(.*?)\)?\s*= (.*)$', rest)
        if r:
            if pid in pending:
                name, args, entry = pending.pop(pid)
                calls.append((name, args, entry, i, r.group(3)))
            continue
        u = re.match(r'(\w+)\((.*) <unfinished \.\.\.>$', rest)
        if u:
            pending[pid] = (u.group(1), u.group(2), i)
            continue
        c = re.match(r'(\w+)\((.*)\)\s*= (.*)$', rest)
        if c:
            calls.append((c.group(1), c.group(2), i, i, c.group(3)))
    return calls
