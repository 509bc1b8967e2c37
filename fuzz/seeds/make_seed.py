#!/usr/bin/env python3
"""Writes the seeds of the stream_loader target into seeds/stream_loader/:
full.bin: a small stream with every record kind (header, configuration, command, ram
START/PART, block START, a FULL section of the target's sample "dev" description with its
subsection, EOF and a trailer); the target has no drives, so loading stops at the block section.
devices.bin: a stream the target loads completely (see below)."""
import struct, os

def be16(v): return struct.pack(">H", v)
def be32(v): return struct.pack(">I", v)
def be64(v): return struct.pack(">Q", v & 0xffffffffffffffff)
def cstr(s): return bytes([len(s)]) + s.encode()

s = b"QEVM" + be32(3)
s += b"\x07" + be32(13) + b"pc-i440fx-7.2"
s += b"\x08" + be16(1) + be16(0)
s += b"\x01" + be32(2) + cstr("ram") + be32(0) + be32(4)
s += be64(0x10000 | 4) + cstr("pc.ram") + be64(0x10000) + be64(0x10) + b"\x7e" + be32(2)
s += b"\x02" + be32(2)
s += be64(0x8) + cstr("pc.ram") + bytes(range(256)) * 16
s += be64(0x1022) + b"\x00"
s += be64(0x2060) + b"\x01" + be16(3) + b"\x00\x01\x55"
s += be64(0x10) + b"\x7e" + be32(2)
s += b"\x01" + be32(1) + cstr("block") + be32(0) + be32(1)
s += be64((50 << 9) | 4) + be64(9) + cstr("drv0") + be64(2) + b"\x7e" + be32(1)
s += b"\x04" + be32(7) + cstr("dev") + be32(0) + be32(3)
s += be32(2) + be32(1) + be32(2)          # count, regs[2]
s += b"\x02" + b"ab" + b"\x00" * 3       # len, data, pad
s += be64(-1)                            # timer
s += be16(5) + b"\x01"                   # inner
s += be16(1) + be16(2) + be16(3) + be16(4)  # arr
s += b"\x01" + be16(7) + b"\x00" + b"\x00"  # queue: one element, end
s += be64(1) + be64(2)                   # bits
s += b"\x05" + cstr("dev/extra") + be32(1) + be64(5)
s += b"\x7e" + be32(7)
s += b"\x00" + b"\x06" + be32(2) + b"{}"

def write(name, data):
    out = os.path.join(os.path.dirname(__file__), "stream_loader", name)
    with open(out, "wb") as f:
        f.write(data)
    print(out, len(data))

write("full.bin", s)

# devices.bin: a stream the target's registry loads completely (no block section: the target
# has no drives): return path open + PING, ram START/PART/END, globalstate, timer, dev, EOF.
d = b"QEVM" + be32(3)
d += b"\x07" + be32(13) + b"pc-i440fx-7.2"
d += b"\x08" + be16(1) + be16(0)
d += b"\x08" + be16(2) + be16(4) + be32(7)
d += b"\x01" + be32(2) + cstr("ram") + be32(0) + be32(4)
d += be64(0x10000 | 4) + cstr("pc.ram") + be64(0x10000) + be64(0x10) + b"\x7e" + be32(2)
d += b"\x02" + be32(2)
d += be64(0x8) + cstr("pc.ram") + bytes(range(256)) * 16
d += be64(0x1022) + b"\x00"
d += be64(0x2060) + b"\x01" + be16(3) + b"\x00\x01\x55"
d += be64(0x10) + b"\x7e" + be32(2)
d += b"\x03" + be32(2) + be64(0xf022) + b"\x00" + be64(0x10) + b"\x7e" + be32(2)
d += b"\x04" + be32(3) + cstr("globalstate") + be32(0) + be32(1)
d += be32(7) + b"paused".ljust(100, b"\x00") + b"\x7e" + be32(3)
d += b"\x04" + be32(4) + cstr("timer") + be32(0) + be32(2)
d += be64(123456789) + b"\x00" * 8 + be64(-42) + b"\x7e" + be32(4)
dev = s[s.index(b"\x04" + be32(7) + cstr("dev")):s.index(b"\x7e" + be32(7)) + 5]
d += dev
d += b"\x00" + b"\x06" + be32(2) + b"{}"
write("devices.bin", d)
