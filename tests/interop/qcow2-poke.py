#!/usr/bin/env python3
"""qcow2-poke.py - read and damage qcow2 metadata at well-defined places, for
the check tests.  Offsets come from the image's own header and tables.

  qcow2-poke.py IMG l1 I [VALUE]          print (or set) L1 entry I
  qcow2-poke.py IMG l2 I J [VALUE]        print (or set) entry J of the L2 table of L1 entry I
  qcow2-poke.py IMG l2bitmap I J [VALUE]  the same for the extended-L2 bitmap
  qcow2-poke.py IMG rt I [VALUE]          refcount table entry I
  qcow2-poke.py IMG rc CLUSTER [VALUE]    refcount of host cluster CLUSTER
  qcow2-poke.py IMG hdr64 OFF [VALUE]     64-bit header field at byte OFF
  qcow2-poke.py IMG hdr32 OFF [VALUE]     32-bit header field at byte OFF
Values are numbers (0x.. allowed); printing gives 0x-hex.
"""
import struct
import sys


def rd(f, off, n):
    f.seek(off)
    b = f.read(n)
    return b + bytes(n - len(b))


def u64(f, off):
    return struct.unpack(">Q", rd(f, off, 8))[0]


def u32(f, off):
    return struct.unpack(">I", rd(f, off, 4))[0]


def w64(f, off, v):
    f.seek(off)
    f.write(struct.pack(">Q", v))


def main():
    img, what = sys.argv[1], sys.argv[2]
    args = [int(a, 0) & 0xffffffffffffffff for a in sys.argv[3:]]   # bash gives bit 63 as negative
    with open(img, "r+b") as f:
        cbits = u32(f, 20)
        cs = 1 << cbits
        version = u32(f, 4)
        order = u32(f, 96) if version >= 3 else 4
        incompat = u64(f, 72) if version >= 3 else 0
        esize = 16 if incompat & 16 else 8
        l1 = u64(f, 40)
        rt = u64(f, 48)
        mask = 0x00fffffffffffe00

        def put(off, n, v):
            if len(args) > n:
                w64(f, off, args[n])
            else:
                print("0x%x" % u64(f, off))

        if what == "l1":
            put(l1 + 8 * args[0], 1, None)
        elif what in ("l2", "l2bitmap"):
            l2 = u64(f, l1 + 8 * args[0]) & mask
            put(l2 + esize * args[1] + (8 if what == "l2bitmap" else 0), 2, None)
        elif what == "rt":
            put(rt + 8 * args[0], 1, None)
        elif what == "hdr64":
            put(args[0], 1, None)
        elif what == "hdr32":
            if len(args) > 1:
                f.seek(args[0])
                f.write(struct.pack(">I", args[1]))
            else:
                print("0x%x" % u32(f, args[0]))
        elif what == "rc":
            cl = args[0]
            per_block = cs * 8 >> order
            rb = u64(f, rt + 8 * (cl // per_block)) & ~0x1ff
            if not rb:
                sys.exit("no refcount block for cluster %d" % cl)
            i = cl % per_block
            bits = 1 << order
            if bits >= 8:
                n = bits // 8
                off = rb + i * n
                if len(args) > 1:
                    f.seek(off)
                    f.write(args[1].to_bytes(n, "big"))
                else:
                    print("0x%x" % int.from_bytes(rd(f, off, n), "big"))
            else:
                off = rb + i * bits // 8
                shift = (i * bits) % 8
                b = rd(f, off, 1)[0]
                m = ((1 << bits) - 1) << shift
                if len(args) > 1:
                    f.seek(off)
                    f.write(bytes([(b & ~m) | ((args[1] << shift) & m)]))
                else:
                    print("0x%x" % ((b & m) >> shift))
        else:
            sys.exit(__doc__)


main()
