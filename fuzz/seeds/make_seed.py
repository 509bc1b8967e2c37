#!/usr/bin/env python3
"""Writes seeds/stream_loader/full.bin: a small valid stream for the stream_loader target
(header, configuration, command, ram START/PART, block START, a FULL section of the target's
sample "dev" description with its subsection, EOF and a trailer)."""
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

out = os.path.join(os.path.dirname(__file__), "stream_loader", "full.bin")
with open(out, "wb") as f:
    f.write(s)
print(out, len(s))
