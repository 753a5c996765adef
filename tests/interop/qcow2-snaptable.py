#!/usr/bin/python3
"""qcow2-snaptable.py - damage a qcow2 snapshot table at well-defined places,
for the check tests.  One call does several images (python start-up is slow
on some hosts):

  qcow2-snaptable.py SRC DST OP [ARGS] [-- SRC DST OP [ARGS] ...]

copies SRC to DST, then on DST:
  extra I N        entry I gets N bytes of extra data (known fields kept up
                   to N, zeros past them); the table is rewritten in place
  l1off I V        entry I's L1 table offset set to V
  l1size I V       entry I's L1 size set to V
  offset V         the header's snapshot table offset set to V
  many N NAME      the table moved past the end of the file and filled up
                   to N entries (extra 16 bytes, empty L1, id = index + 1,
                   NAME bytes of zeros as name); refcounts moved with it
"""
import shutil
import struct
import sys


def rd(f, off, n):
    f.seek(off)
    b = f.read(n)
    return b + bytes(n - len(b))


def parse(f):
    nb, off = struct.unpack(">IQ", rd(f, 60, 12))
    ents, o = [], off
    for _ in range(nb):
        o = (o + 7) & ~7
        h = rd(f, o, 40)
        l1o, l1s, ids, nms, ds, dn, vc, vs, es = struct.unpack(">QIHHIIQII", h)
        extra = rd(f, o + 40, es)
        idv = rd(f, o + 40 + es, ids)
        nm = rd(f, o + 40 + es + ids, nms)
        ents.append([l1o, l1s, ds, dn, vc, vs, extra, idv, nm])
        o += 40 + es + ids + nms
    return off, ents


def build(ents):
    b = b""
    for l1o, l1s, ds, dn, vc, vs, extra, idv, nm in ents:
        b += bytes(-len(b) % 8)
        b += struct.pack(">QIHHIIQII", l1o, l1s, len(idv), len(nm), ds, dn, vc, vs, len(extra))
        b += extra + idv + nm
    return b


def set_rc(f, cl, v=1):
    cbits = struct.unpack(">I", rd(f, 20, 4))[0]
    order = struct.unpack(">I", rd(f, 96, 4))[0]
    assert order == 4, "refcount_bits=16 only"
    per = (1 << cbits) // 2
    rt = struct.unpack(">Q", rd(f, 48, 8))[0]
    rb = struct.unpack(">Q", rd(f, rt + 8 * (cl // per), 8))[0] & ~0x1ff
    assert rb, "no refcount block"
    f.seek(rb + 2 * (cl % per))
    f.write(struct.pack(">H", v))


def one(src, dst, op, args):
    if src != dst:
        shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        off, ents = parse(f)
        if op == "many":
            n, namelen = args
            cbits = struct.unpack(">I", rd(f, 20, 4))[0]
            cs = 1 << cbits
            size = struct.unpack(">Q", rd(f, 24, 8))[0]
            f.seek(0, 2)
            start = (f.tell() + cs - 1) & ~(cs - 1)
            old = build(ents)
            f.seek(start)
            f.write(old)
            o = (start + len(old) + 7) & ~7
            for i in range(len(ents), n):
                idv = str(i + 1).encode()
                f.seek(o)
                f.write(struct.pack(">QIHHIIQII", 0, 0, len(idv), namelen, 0, 0, 0, 0, 16) +
                        struct.pack(">QQ", 0, size) + idv)
                o = (o + 40 + 16 + len(idv) + namelen + 7) & ~7
            f.truncate(max(o, f.seek(0, 2)))
            f.truncate((f.seek(0, 2) + cs - 1) & ~(cs - 1))
            for cl in range(off // cs, (off + len(old) + cs - 1) // cs):
                set_rc(f, cl, 0)
            for cl in range(start // cs, (o + cs - 1) // cs):
                set_rc(f, cl)
            f.seek(60)
            f.write(struct.pack(">IQ", n, start))
            return
        if op == "offset":
            f.seek(64)
            f.write(struct.pack(">Q", args[0]))
            return
        i, v = args
        e = ents[i]
        if op == "extra":
            e[6] = (e[6] + bytes(v))[:v]
        elif op == "l1off":
            e[0] = v
        elif op == "l1size":
            e[1] = v
        else:
            sys.exit(__doc__)
        f.seek(off)
        f.write(build(ents))


def main():
    argv = sys.argv[1:]
    while argv:
        cut = argv.index("--") if "--" in argv else len(argv)
        src, dst, op, *rest = argv[:cut]
        one(src, dst, op, [int(a, 0) for a in rest])
        argv = argv[cut + 1:]


main()
