#!/usr/bin/env python3
# Writes the seed corpus of fuzz-qcow2-write (tests/fuzz/corpus/qcow2-write/):
# one input per op kind and geometry.  The format is in fuzz-qcow2-write.c.
import os
import struct

W, RD, Z, D, C, F, B, R = 0, 1, 2, 3, 4, 5, 6, 7  # write, read, zeroes, discard, compressed, flush, batch, reopen
AOFF, ALEN, UNMAP, BIG = 8, 16, 32, 64


def hdr(cb=16, extl2=False, lazy=False, zstd=False, v2=False, backing=False, prealloc=False,
        small=False, wt=False, rc=16, yields=0, overlap=False, native=False, sectors=2048, cap=0,
        blen=200, seed=1):
    global CS
    CS = 1 << cb
    h1 = (extl2 << 0) | (lazy << 1) | (zstd << 2) | (v2 << 3) | (backing << 4) | \
         (prealloc << 5) | (small << 6) | (wt << 7)
    h2 = rc.bit_length() - 1 | (yields << 3) | (overlap << 5) | (native << 6)
    return [bytes([cb - 9, h1, h2]) + struct.pack(">H", sectors - 1) + bytes([cap, blen, seed])]


CS = 65536                                    # the cluster size of the seed being written


def op(kind, off, length, flags=0):
    # off: a fraction of the disk (0..1); length in bytes, as a fraction of
    # the longest the op may have (2 clusters, 16 with BIG, at most 1 MiB)
    longest = min(max(16 * CS, 256 << 10), 1 << 20) if flags & BIG else 2 * CS
    frac = min(max(length - 1, 0) * 65536 // longest, 65535)
    return bytes([kind | flags]) + struct.pack(">HH", min(int(off * 65536), 65535), frac)




mixed = lambda: [op(W, 0, 4096), op(W, 0.3, 70000, BIG), op(W, 0.31, 100), op(Z, 0.5, 65536, AOFF | ALEN),
         op(Z, 0.52, 3000, UNMAP), op(D, 0.3, 65536, AOFF | ALEN | BIG), op(F, 0, 1),
         op(W, 0.9, 5000), op(D, 0, 200000, BIG)]
seeds = {
    "write-64k": hdr() + mixed(),
    "c512-rc1": hdr(cb=9, rc=1, sectors=1024) + [op(W, i / 16, 700) for i in range(16)] +
                [op(Z, 0.25, 2048, AOFF | ALEN), op(D, 0.5, 4096, AOFF | ALEN | BIG)],
    "extl2": hdr(cb=15, extl2=True) + [op(W, 0.1, 1000), op(W, 0.1 + 1 / 64, 1500),
                                       op(Z, 0.2, 2048), op(D, 0.1, 32768, AOFF | ALEN),
                                       op(W, 0.4, 70000, BIG)],
    "lazy-reopen": hdr(cb=12, lazy=True) + [op(W, 0.1, 9000), op(R, 0, 1), op(W, 0.2, 4096),
                                            op(Z, 0.1, 4096, AOFF | UNMAP), op(R, 0, 1)],
    "zstd-compressed": hdr(zstd=True) + [op(C, 0.1, 65536), op(C, 0.5, 131072, BIG),
                                         op(W, 0.1, 300), op(C, 0.5, 65536, UNMAP)],
    "zlib-compressed": hdr(cb=12) + [op(C, i / 8, 4096) for i in range(8)] +
                       [op(D, 0, 8192, AOFF | ALEN | BIG), op(C, 0.999, 4096)],
    "v2": hdr(cb=12, v2=True) + [op(W, 0.3, 6000), op(Z, 0.3, 8192, AOFF | ALEN),
                                 op(D, 0.3, 8192, AOFF | ALEN), op(W, 0.6, 100)],
    "backing": hdr(cb=12, backing=True, blen=150) + [op(W, 0.1, 100), op(W, 0.7, 5000),
                                                     op(D, 0.1, 8192, AOFF | ALEN),
                                                     op(Z, 0.8, 300), op(C, 0.2, 4096)],
    "v2-backing": hdr(cb=10, v2=True, backing=True, blen=77) + [op(W, 0.1, 100),
                                                                op(D, 0, 65535, BIG), op(Z, 0.5, 2048)],
    "prealloc": hdr(cb=13, prealloc=True, sectors=512) + [op(W, 0.2, 700), op(Z, 0.2, 8192, AOFF | ALEN | UNMAP),
                                                          op(D, 0.5, 16384, AOFF | ALEN)],
    "small-cache-wt": hdr(cb=9, small=True, wt=True, rc=4, sectors=4096) +
                      [op(W, i / 20, 600) for i in range(20)] + [op(F, 0, 1)],
    "enospc": hdr(cb=12, cap=200) + [op(W, i / 12, 9000, BIG) for i in range(12)] +
              [op(D, 0, 65535, BIG), op(W, 0.5, 4096)],
    "rc64-c512-growth": hdr(cb=9, rc=64, sectors=8192) + [op(W, i / 16, 262144, BIG) for i in range(16)] +
                        [op(C, 0.5, 1024), op(D, 0.25, 262144, BIG)],
    "rc64-c512-growth-enospc": hdr(cb=9, rc=64, sectors=8192, cap=255) +
                               [op(W, i / 16, 262144, BIG) for i in range(16)] + [op(F, 0, 1)],
    "lazy-enospc": hdr(cb=12, lazy=True, cap=196) + [op(W, i / 8, 9000, BIG) for i in range(8)] +
                   [op(R, 0, 1), op(W, 0.9, 100)],
    "flaky-growth": hdr(cb=9, rc=64, sectors=8192, cap=160, seed=3) +
                    [op(W, i / 24, 65536, BIG) for i in range(24)] + [op(F, 0, 1), op(C, 0.5, 4096),
                                                                      op(D, 0.5, 65536, BIG)],
    "flaky-lazy-batch": hdr(cb=12, lazy=True, cap=170, yields=2, seed=5) +
                        [op(B, 0, 1, 16), op(W, 0.1, 9000), op(W, 0.5, 9000), op(Z, 0.3, 8192, AOFF),
                         op(C, 0.7, 4096)] + [op(W, i / 8, 5000) for i in range(8)] + [op(R, 0, 1)],
    "batch-read": hdr(cb=14, extl2=True, backing=True, yields=3, seed=9) +
                  [op(W, 0.3, 20000)] + [op(B, 0, 1, 16), op(RD, 0.3, 32768, AOFF), op(W, 0.31, 5000),
                                          op(D, 0.3, 16384, AOFF | ALEN), op(RD, 0.3, 32768)] +
                  [op(B, 0, 1, 8), op(W, 0.6, 3000), op(RD, 0.6, 4000), op(C, 0.6, 16384)],
    "zero-cow-native": hdr(native=True, yields=1) + [op(W, 0.1, 4096), op(W, 0.2, 100),
                                                     op(D, 0.1, 131072, AOFF | ALEN | BIG),
                                                     op(W, 0.15, 5000), op(Z, 0.3, 65536, AOFF | UNMAP),
                                                     op(W, 0.3, 3000), op(RD, 0, 65536, BIG)],
    "extl2-native-backing": hdr(cb=16, extl2=True, native=True, backing=True) +
                            [op(W, 0.1, 3000), op(W, 0.12, 100), op(D, 0.1, 65536, AOFF | ALEN),
                             op(W, 0.1, 2048, AOFF), op(C, 0.4, 65536)],
    "batch-overlap": hdr(cb=12, yields=2, seed=7) + [op(B, 0, 1, 16)] +
                     [op(W, 0.25, 1000), op(W, 0.25, 3000), op(Z, 0.6, 4096), op(D, 0.6, 8192, AOFF)] +
                     [op(B, 0, 1, 8), op(W, 0.5, 100), op(C, 0.5, 4096), op(W, 0.52, 200)],
    "rc64-overlap-all": hdr(cb=11, rc=64, overlap=True, yields=1) +
                        [op(W, i / 10, 3000) for i in range(10)] + [op(B, 0, 1), op(W, 0.1, 100),
                                                                    op(F, 0, 1)],
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "qcow2-write")
os.makedirs(out, exist_ok=True)
for name, parts in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(b"".join(parts))
