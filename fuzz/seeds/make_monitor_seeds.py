#!/usr/bin/env python3
"""Writes the seeds of the qmp and hmp targets: one file per command livemig's monitors
support (the tables in crates/monitor/src/cmd/mod.rs and crates/monitor/src/hmp/table.rs),
with typical arguments, plus whole sessions and framing corner cases.

qmp seeds: byte 0 = read size (low 6 bits, 0 = all at once) | 0x40 to pad the rest with blanks
           past the 1 MiB cap | 0x80 to start negotiated.
hmp seeds: byte 0 even = a connection read in pieces of (byte 0 >> 1) & 0x3f bytes, | 0x80 to
           pad it with blanks past the 1 MiB cap;
           byte 0 odd  = an args_type string, a newline, then a command line."""
import json, os

HERE = os.path.dirname(os.path.abspath(__file__))

CAPS = ["xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "compress", "events",
        "postcopy-ram", "x-colo", "release-ram", "block", "return-path",
        "pause-before-switchover", "multifd", "dirty-bitmaps", "postcopy-blocktime",
        "late-block-activate", "x-ignore-shared", "validate-uuid", "background-snapshot",
        "zero-copy-send", "postcopy-preempt", "ram-verify"]
PARAMS = {"announce-initial": 50, "announce-max": 550, "announce-rounds": 5,
          "announce-step": 100, "compress-level": 1, "compress-threads": 8,
          "compress-wait-thread": True, "decompress-threads": 2,
          "throttle-trigger-threshold": 50, "cpu-throttle-initial": 20,
          "cpu-throttle-increment": 10, "cpu-throttle-tailslow": False,
          "max-cpu-throttle": 99, "tls-creds": "", "tls-hostname": "", "tls-authz": "",
          "max-bandwidth": 33554432, "downtime-limit": 300, "x-checkpoint-delay": 20000,
          "block-incremental": False, "multifd-channels": 2, "multifd-compression": "zstd",
          "xbzrle-cache-size": 67108864, "max-postcopy-bandwidth": 0,
          "multifd-zlib-level": 1, "multifd-zstd-level": 1}

def q(name, args=None, id_=None):
    m = {"execute": name}
    if args is not None:
        m["arguments"] = args
    if id_ is not None:
        m["id"] = id_
    return json.dumps(m, separators=(",", ":"))

NEG = q("qmp_capabilities")
QMP = {
    "qmp_capabilities": [NEG, q("qmp_capabilities", {"enable": ["oob"]})],
    "migrate": [q("migrate", {"uri": "tcp:127.0.0.1:4444"}, 1),
                q("migrate", {"uri": "exec:cat > /dev/null", "blk": True, "inc": False,
                              "detach": True, "resume": False})],
    "migrate-incoming": [q("migrate-incoming", {"uri": "defer"}),
                         q("migrate-incoming", {"uri": "fd:in"})],
    "migrate_cancel": [q("migrate", {"uri": "unix:/tmp/x"}), q("migrate_cancel")],
    "query-migrate": [q("migrate", {"uri": "file:/tmp/x"}), q("query-migrate", id_="a"),
                      q("query-migrate"), q("query-migrate"), q("query-migrate")],
    "migrate-set-capabilities": [q("migrate-set-capabilities", {"capabilities": [
        {"capability": c, "state": i % 2 == 0} for i, c in enumerate(CAPS)]})],
    "query-migrate-capabilities": [q("query-migrate-capabilities")],
    "migrate-set-parameters": [q("migrate-set-parameters", PARAMS),
                               q("migrate-set-parameters", {"block-bitmap-mapping": [
                                   {"node-name": "n", "alias": "a", "bitmaps": [
                                       {"name": "b", "alias": "c"}]}]})],
    "query-migrate-parameters": [q("query-migrate-parameters")],
    "query-status": [q("query-status", id_={"x": [1, 2.5, None]})],
    "stop": [q("stop"), q("cont")],
    "cont": [q("cont")],
    "quit": [q("quit")],
    "getfd": [q("getfd", {"fdname": "fd0"})],
    "closefd": [q("closefd", {"fdname": "fd0"})],
    "human-monitor-command": [q("human-monitor-command",
                                {"command-line": "info migrate", "cpu-index": 0}),
                              q("human-monitor-command", {"command-line": "migrate tcp:h:1"})],
    "query-commands": [q("query-commands")],
    "query-version": [q("query-version")],
}

HMP = {
    "help": ["help", "help migrate", "? info", "help info status"],
    "info": ["info", "info migrate", "info migrate_capabilities", "info migrate_parameters",
             "info status", "info bogus"],
    "migrate": ['migrate -d tcp:127.0.0.1:4444', 'migrate -d -b -i "exec:cat > /dev/null"',
                "migrate unix:/tmp/m.sock", "migrate -r -d file:/tmp/x", "migrate -b -d x"],
    "migrate_cancel": ["migrate -d fd:out", "migrate_cancel"],
    "migrate_incoming": ["migrate_incoming defer", 'migrate_incoming "tcp:[::1]:0"'],
    "migrate_set_capability": ["migrate_set_capability %s %s" % (c, "on" if i % 2 else "off")
                               for i, c in enumerate(CAPS)],
    "migrate_set_parameter": ["migrate_set_parameter %s %s" % (k, (
        "on" if v is True else "off" if v is False else "1G" if k == "max-bandwidth"
        else v if v != "" else '""')) for k, v in PARAMS.items()],
    "stop": ["stop", "s", "cont"],
    "cont": ["c"],
    "quit": ["quit"],
    "getfd": ["getfd fd0"],
    "closefd": ["closefd fd0"],
}

SPECS = [
    ("detach:-d,blk:-b,inc:-i,resume:-r,uri:s", "-d -b tcp:h:1"),
    ("name:S?", "rest of the line"),
    ("n:i,size:o,t:T?,on:b", "(1+2)*3 64K 1.5ms on"),
    ("count:l.,mb:M,f:-fs?", ".0x10 ~4 -f value"),
    ("file:F,blob:B?", '"a \\"quoted\\" \\n string" x'),
]

def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

for name, reqs in QMP.items():
    body = "\n".join([NEG] + reqs).encode() + b"\n"
    write("qmp", name + ".json", b"\x00" + body)
every = [r for reqs in QMP.values() for r in reqs if r != q("quit")]
write("qmp", "session-split7.json", b"\x07" + "".join([NEG] + every).encode())
write("qmp", "negotiated-garbage.json",
      b"\x80" + b'{"execute":"stop"} [1,{"a":"\\u00e9\\"}"}] "str" 42 true } {"id":1} '
      + b'{"execute":5} {"execute":"x","arguments":[]} {"exec-oob":"stop"} {"bad"')
write("qmp", "deep.json", b"\x00" + b"[" * 1030)
write("qmp", "huge-value.json", b"\x40" + NEG.encode() + b'{"execute":"migrate","arguments":{"uri":"')

for name, lines in HMP.items():
    write("hmp", name + ".txt", b"\x00" + "\r\n".join(lines).encode() + b"\n")
every = [l for lines in HMP.values() for l in lines if l != "quit"]
write("hmp", "session-split5.txt", bytes([5 << 1]) + "\n".join(every).encode())
write("hmp", "huge-line.txt", b"\x80" + b"info status\nhelp migrate")
# A 1 MiB line read a byte at a time: was quadratic (minutes) before conn::Input kept its
# newline search position.
write("hmp", "slow-line.txt", b"\x82x")
for i, (spec, line) in enumerate(SPECS):
    write("hmp", "args_type-%d.txt" % i, b"\x01" + (spec + "\n" + line).encode())
