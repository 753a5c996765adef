#!/bin/bash
# img commit (qcow2 lifecycle issue, item 5) against qemu-img 7.2: both
# tools on copies of the same images (lifecycle-common.sh); the same exit
# code and messages, clean checks from both checkers, the same guest view,
# and byte-identical files where qemu-img's result is deterministic (the
# base, and the overlay qemu-img empties).  Afterwards the base reads as the
# overlay did, and the emptied overlay still reads the same through it.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lifecycle-common.sh"
require_format qcow2

q() { "$QEMU_IMG" "$@" >/dev/null || fail "qemu-img $*"; }
io() { local f=$1; shift; "$QEMU_IO" "$@" "$f" >/dev/null || fail "qemu-io $f"; }

q create -f qcow2 base.qcow2 8M
io base.qcow2 -c 'write -P 1 0 8M'
q create -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
io mid.qcow2 -c 'write -P 2 1M 1M' -c 'write -z 6M 64k'
q create -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
io top.qcow2 -c 'write -P 3 1536k 64k' -c 'write -P 4 3M 4k' -c 'write -z 5M 128k' -c 'write -P 5 7M 512'
"$QEMU_IMG" convert -O raw top.qcow2 want.raw
"$QEMU_IMG" convert -O raw mid.qcow2 want-mid.raw
chain="base.qcow2 mid.qcow2 top.qcow2"

# --- into the immediate backing file; top is emptied and reads the same
op_both -b $chain -- commit top.qcow2
"$QEMU_IMG" compare -q -F raw u/mid.qcow2 want.raw || fail "mid does not read as top did"
"$QEMU_IMG" compare -q -F raw u/top.qcow2 want.raw || fail "emptied top reads differently"
[ "$(stat -c %s u/top.qcow2)" -lt 300000 ] || fail "top was not emptied"
cmp -s u/top.qcow2 q/top.qcow2 || fail "emptied top differs byte for byte from qemu-img's"
op_both -p -b $chain -- commit -p top.qcow2
op_both -b $chain -- commit -q -t none top.qcow2
op_both -b $chain -- commit -r 100M top.qcow2
# --- -d keeps the overlay
op_both -b $chain -- commit -d top.qcow2
"$QEMU_IMG" compare -q -F raw u/top.qcow2 want.raw || fail "-d: top reads differently"
# --- -b: a chain of 3 into its bottom (implies -d); mid is untouched
op_both -b $chain -- commit -b base.qcow2 top.qcow2
"$QEMU_IMG" compare -q -F raw u/base.qcow2 want.raw || fail "-b: base does not read as top did"
cmp -s u/mid.qcow2 mid.qcow2 || fail "-b: mid changed"
op_both -b $chain -- commit -b mid.qcow2 top.qcow2
mkdir -p sub && cp $chain sub/
op_both -b sub -- commit -b base.qcow2 sub/top.qcow2         # relative to the image's directory
"$QEMU_IMG" compare -q u/sub/base.qcow2 q/sub/base.qcow2 || fail "sub/: base differs"
# --- version 2 (no make_empty rebuild: clusters are discarded), 512-byte clusters
q create -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 v2.qcow2
io v2.qcow2 -c 'write -P 6 0 64k' -c 'write -P 7 2M 4k'
op_both -b base.qcow2 v2.qcow2 -- commit v2.qcow2
q create -f qcow2 -o cluster_size=512 -b base.qcow2 -F qcow2 c512.qcow2
io c512.qcow2 -c 'write -P 7 1000 3000'
op_both -b base.qcow2 c512.qcow2 -- commit c512.qcow2
# --- a raw base
q create -f raw rbase.raw 8M
io rbase.raw -f raw -c 'write -P 1 0 4M'
q create -f qcow2 -b rbase.raw -F raw rtop.qcow2
io rtop.qcow2 -c 'write -P 8 1M 1M' -c 'write -z 3M 64k'
op_both -b rbase.raw rtop.qcow2 -- commit rtop.qcow2
cmp -s u/rbase.raw q/rbase.raw || fail "raw base differs"
cmp -s u/rtop.qcow2 q/rtop.qcow2 || fail "emptied rtop differs byte for byte from qemu-img's"
# --- persistent bitmaps in the overlay and in the base survive
q create -f qcow2 -b base.qcow2 -F qcow2 bm.qcow2
q bitmap --add bm.qcow2 b0
io bm.qcow2 -c 'write -P 9 0 64k'
op_both -b base.qcow2 bm.qcow2 -- commit bm.qcow2
"$QEMU_IMG" info u/bm.qcow2 | grep -q 'name: b0' || fail "commit lost the overlay's bitmap"
cp base.qcow2 bmbase.qcow2
q bitmap --add bmbase.qcow2 b1
q create -f qcow2 -b bmbase.qcow2 -F qcow2 bmtop.qcow2
io bmtop.qcow2 -c 'write -P 9 0 64k'
op_both -b bmbase.qcow2 bmtop.qcow2 -- commit bmtop.qcow2
"$QEMU_IMG" info u/bmbase.qcow2 | grep -q 'name: b1' || fail "commit lost the base's bitmap"
# --- errors
op_both -b $chain -- commit base.qcow2                       # no backing file
op_both -b $chain -- commit -b nosuch.qcow2 top.qcow2
op_both -b $chain -- commit -b top.qcow2 top.qcow2
op_both -b $chain -- commit nosuch.qcow2
op_both -b $chain -- commit
op_both -b $chain -- commit top.qcow2 extra
op_both -b $chain -- commit -t bogus top.qcow2
op_both -b $chain -- commit -r bogus top.qcow2
op_both -b $chain -- commit -r -1 top.qcow2
op_both -b $chain -- commit -z top.qcow2
op_both -b $chain -- commit -b
exit 0
