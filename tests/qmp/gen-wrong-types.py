#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes a qmpdiff script that gives every member of a few commands a
value of the wrong JSON type (and enums a value they do not have), the
other members valid, from qemu-storage-daemon 7.2's own schema (which names
every integer type "int": ranges are not derived here):

    gen-wrong-types.py QMP_SOCKET_OF_A_RUNNING_QSD >diff-wrong-types.jsonl

Each line is marked "# exact": run with QMPDIFF_ERROR_TEXT=1 the error's
words must be qsd's. Nested object members (blockdev-add's branches, an
export's addr) are visited one level down.
"""
import json
import sys

sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from qmp import QMP  # noqa: E402

# valid arguments of each command (the nodes the script's daemons are started with: n0, n1)
BASES = [
    ("blockdev-add", {"driver": "file", "node-name": "f9", "filename": "{DIR}/nonexistent.img", "cache": {"direct": False}}),
    ("blockdev-add", {"driver": "null-co", "node-name": "z9", "size": 1048576}),
    ("blockdev-add", {"driver": "raw", "node-name": "r9", "file": "n1"}),
    ("blockdev-add", {"driver": "qcow2", "node-name": "q9", "file": "n1"}),
    ("blockdev-add", {"driver": "throttle", "node-name": "t9", "file": "n1", "throttle-group": "nope"}),
    ("blockdev-add", {"driver": "copy-on-read", "node-name": "c9", "file": "n1"}),
    ("block-dirty-bitmap-add", {"node": "n0", "name": "b9"}),
    ("block_resize", {"node-name": "n1", "size": 1048576}),
    ("block-stream", {"job-id": "j9", "device": "n1"}),
    ("block-commit", {"job-id": "j9", "device": "n1"}),
    ("blockdev-mirror", {"job-id": "j9", "device": "n0", "target": "n1", "sync": "full"}),
    ("blockdev-backup", {"job-id": "j9", "device": "n0", "target": "n1", "sync": "full"}),
    ("block-set-write-threshold", {"node-name": "n0", "write-threshold": 0}),
    ("x-blockdev-set-iothread", {"node-name": "n1", "iothread": None}),
    ("job-cancel", {"id": "j9"}),
    ("nbd-server-add", {"device": "n0"}),
    ("block-export-add", {"type": "vhost-user-blk", "id": "v9", "node-name": "n1",
                          "addr": {"type": "unix", "path": "{DIR}/v9.sock"}}),
    ("object-add", {"qom-type": "iothread", "id": "io9"}),
    ("object-add", {"qom-type": "throttle-group", "id": "tg9"}),
]


def main():
    m = QMP(sys.argv[1], negotiate=True)
    schema = {e["name"]: e for e in m.execute("query-qmp-schema")}
    cmds = {e["name"]: e for e in schema.values() if e["meta-type"] == "command"}

    def members(tname, base):
        """Members of an object type, with the branch base selects."""
        t = schema[tname]
        if t["meta-type"] != "object":
            return []
        out = list(t["members"])
        tag = t.get("tag")
        if tag and tag in base:
            for v in t.get("variants", []):
                if v["case"] == base[tag]:
                    out += members(v["type"], base)
        return out

    def kind(tname):
        t = schema[tname]
        mt = t["meta-type"]
        if mt == "builtin":
            return t["json-type"], tname
        return mt, tname

    def wrongs(tname):
        mt, name = kind(tname)
        t = schema[tname]
        if mt == "string" or mt == "enum":
            vals = [1, {}]
            if mt == "enum":
                vals.append("no-such-value")
            return vals
        if mt in ("int", "number"):
            vals = ["1", True]
            if mt == "int":
                vals.append(1.5)
            return vals
        if mt == "boolean":
            return ["on", 1]
        if mt == "object":
            return ["x", []]
        if mt == "array":
            return ["x", {}]
        if mt == "alternate":
            return [True, []]
        return []

    seen = set()
    for cmd, base in BASES:
        arg_type = cmds[cmd]["arg-type"]
        print(f"# {cmd} {json.dumps(base)}")
        for mem in members(arg_type, base):
            name, tname = mem["name"], mem["type"]
            if name in ("driver", "qom-type", "type"):
                continue  # the discriminator picks the branch: its wrong values are one case each below
            for v in wrongs(tname):
                args = dict(base)
                args[name] = v
                line = json.dumps({"execute": cmd, "arguments": args}, separators=(",", ":"))
                if line in seen:
                    continue
                seen.add(line)
                print(f"{line}  # exact")
            # one level down: an object member's own members get wrong values, the rest of it absent
            t = schema[tname]
            if t["meta-type"] == "object" and name in base and isinstance(base[name], dict):
                for sub in members(tname, base[name]):
                    if sub["name"] == "type":
                        continue
                    for v in wrongs(sub["type"]):
                        inner = dict(base[name])
                        inner[sub["name"]] = v
                        args = dict(base)
                        args[name] = inner
                        line = json.dumps({"execute": cmd, "arguments": args}, separators=(",", ":"))
                        if line not in seen:
                            seen.add(line)
                            print(f"{line}  # exact")


main()
