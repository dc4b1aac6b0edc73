#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes a qmpdiff script that gives every member of a few commands a
value of the wrong JSON type (and enums a value they do not have), the
other members valid, from qemu-storage-daemon 7.2's own schema (which names
every integer type "int": ranges are not derived here):

    gen-wrong-types.py QMP_SOCKET_OF_A_RUNNING_QSD >diff-wrong-types.jsonl
    gen-wrong-types.py --more QMP_SOCKET >diff-wrong-types-more.jsonl

--more: the other commands (MORE), and for each also its request without
each required member in turn and with a member it does not have.

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

# --more: the commands a qsd script sends besides BASES' (none of them
# finds what it names, so even the valid request changes nothing)
MORE = [
    ("blockdev-del", {"node-name": "z9"}),
    ("blockdev-reopen", {"options": [{"driver": "null-co", "node-name": "n1"}]}),
    ("block-job-set-speed", {"device": "j9", "speed": 0}),
    ("block-job-pause", {"device": "j9"}),
    ("block-job-resume", {"device": "j9"}),
    ("block-job-complete", {"device": "j9"}),
    ("block-job-cancel", {"device": "j9", "force": False}),
    ("block-job-finalize", {"id": "j9"}),
    ("block-job-dismiss", {"id": "j9"}),
    ("job-pause", {"id": "j9"}),
    ("job-resume", {"id": "j9"}),
    ("job-complete", {"id": "j9"}),
    ("job-finalize", {"id": "j9"}),
    ("job-dismiss", {"id": "j9"}),
    ("block-export-del", {"id": "e9", "mode": "safe"}),
    ("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "{DIR}/n9.sock"}}}),
    ("nbd-server-remove", {"name": "x9", "mode": "safe"}),
    ("qom-list", {"path": "/nope"}),
    ("qom-get", {"path": "/nope", "property": "type"}),
    ("qom-set", {"path": "/nope", "property": "type", "value": 1}),
    ("chardev-add", {"id": "c9", "backend": {"type": "null", "data": {}}}),
    ("chardev-remove", {"id": "c9"}),
    ("chardev-change", {"id": "c9", "backend": {"type": "null", "data": {}}}),
    ("query-named-block-nodes", {"flat": True}),
    ("block-dirty-bitmap-remove", {"node": "n0", "name": "b9"}),
    ("block-dirty-bitmap-clear", {"node": "n0", "name": "b9"}),
    ("block-dirty-bitmap-enable", {"node": "n0", "name": "b9"}),
    ("block-dirty-bitmap-disable", {"node": "n0", "name": "b9"}),
    ("block-dirty-bitmap-merge", {"node": "n0", "target": "b9", "bitmaps": ["b8"]}),
    ("x-debug-block-dirty-bitmap-sha256", {"node": "n0", "name": "b9"}),
    ("blockdev-snapshot", {"node": "n0", "overlay": "z9"}),
    ("blockdev-snapshot-internal-sync", {"device": "z9", "name": "s9"}),
    ("blockdev-snapshot-delete-internal-sync", {"device": "z9", "name": "s9"}),
    ("transaction", {"actions": []}),
    ("object-del", {"id": "io9"}),
    ("change-backing-file", {"device": "z9", "image-node-name": "z9", "backing-file": "x"}),
    ("blockdev-create", {"job-id": "j9", "options": {"driver": "file", "filename": "{DIR}/c9", "size": 0}}),
    ("ringbuf-write", {"device": "r9", "data": "x"}),
    ("ringbuf-read", {"device": "r9", "size": 1}),
    ("block-export-add", {"type": "nbd", "id": "x9", "node-name": "z9"}),
    ("query-block-jobs", {}),
    ("query-jobs", {}),
    ("query-block-exports", {}),
    ("query-chardev", {}),
    ("x-debug-query-block-graph", {}),
    ("query-blockstats", {}),
    ("query-block", {}),
]


def main():
    more = sys.argv[1] == "--more"
    m = QMP(sys.argv[-1], negotiate=True)
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
    for cmd, base in MORE if more else BASES:
        arg_type = cmds[cmd]["arg-type"]
        print(f"# {cmd} {json.dumps(base)}")
        if more:
            for mem in members(arg_type, base):
                if "default" not in mem and mem["name"] in base and mem["name"] not in ("driver", "qom-type", "type"):
                    args = {k: v for k, v in base.items() if k != mem["name"]}
                    print(json.dumps({"execute": cmd, "arguments": args}, separators=(",", ":")) + "  # exact")
            args = dict(base, **{"no-such-member": 1})
            print(json.dumps({"execute": cmd, "arguments": args}, separators=(",", ":")) + "  # exact")
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
