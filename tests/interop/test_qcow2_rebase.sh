#!/bin/bash
# img rebase (qcow2 lifecycle issue, item 4) against qemu-img 7.2: each case
# runs both tools on copies of the same images (lifecycle-common.sh) and
# wants the same exit code and messages, clean checks from both checkers,
# the same guest view, and byte-identical files where qemu-img's result is
# deterministic.  Safe and unsafe mode, -b "" (flatten), a new backing
# file shorter and longer than the old one, a new backing in the old chain,
# a chain of 3, version 2 images, small clusters, persistent bitmaps (the
# extension survives), and the errors.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lifecycle-common.sh"
require_format qcow2

q() { "$QEMU_IMG" "$@" >/dev/null || fail "qemu-img $*"; }
io() { local f=$1; shift; "$QEMU_IO" "$@" "$f" >/dev/null || fail "qemu-io $f"; }

q create -f qcow2 old.qcow2 8M
io old.qcow2 -c 'write -P 1 0 8M'
q create -f qcow2 -b old.qcow2 -F qcow2 ov.qcow2
io ov.qcow2 -c 'write -P 2 1M 64k' -c 'write -P 3 3M 4k' -c 'write -z 5M 128k' -c 'write -P 4 7M 512'
q create -f qcow2 nb.qcow2 8M
io nb.qcow2 -c 'write -P 1 0 2M' -c 'write -P 9 6M 1M'
q create -f qcow2 short.qcow2 2M
io short.qcow2 -c 'write -P 1 0 1M'
q create -f raw nb.raw 8M
io nb.raw -f raw -c 'write -P 1 0 4M'
all="old.qcow2 ov.qcow2 nb.qcow2 short.qcow2 nb.raw"

# --- safe: the guest view is kept, byte for byte as qemu-img
op_both $all -- rebase -b nb.qcow2 -F qcow2 ov.qcow2
pattern_at u/ov.qcow2 6M 1M 1
pattern_at u/ov.qcow2 1M 64k 2
grep -q 'backing file: nb.qcow2' <("$QEMU_IMG" info u/ov.qcow2) || fail "backing not changed"
op_both $all -- rebase -b short.qcow2 -F qcow2 ov.qcow2        # new backing shorter
op_both $all -- rebase -b nb.raw -F raw ov.qcow2               # and another format
op_both $all -- rebase -p -b nb.qcow2 -F qcow2 ov.qcow2         # progress
op_both $all -- rebase -q -t none -T writethrough -b nb.qcow2 -F qcow2 ov.qcow2
# --- -b "": flatten (everything the old chain provides is copied)
op_both $all -- rebase -b "" ov.qcow2
grep -q 'backing file' <("$QEMU_IMG" info u/ov.qcow2) && fail "flatten left a backing file"
pattern_at u/ov.qcow2 0 1M 1
# --- unsafe: only the header
op_both $all -- rebase -u -b nb.qcow2 -F qcow2 ov.qcow2
op_both $all -- rebase -u -b "" ov.qcow2
op_both $all -- rebase -u ov.qcow2
op_both -x $all -- rebase -u -b renamed/elsewhere.qcow2 -F qcow2 ov.qcow2
# --- new backing longer than the old one: past the old end the image reads zeros
q create -f qcow2 old2.qcow2 1M
io old2.qcow2 -c 'write -P 1 0 1M'
q create -f qcow2 -b old2.qcow2 -F qcow2 ov2.qcow2 4M
op_both old2.qcow2 ov2.qcow2 nb.qcow2 -- rebase -b nb.qcow2 -F qcow2 ov2.qcow2
pattern_at u/ov2.qcow2 1M 3M 0
# --- a chain of 3: onto the bottom (the new backing is in the old chain) and out of it
q create -f qcow2 -b ov.qcow2 -F qcow2 top.qcow2
io top.qcow2 -c 'write -P 5 2M 64k'
op_both old.qcow2 ov.qcow2 top.qcow2 -- rebase -b old.qcow2 -F qcow2 top.qcow2
pattern_at u/top.qcow2 3M 4k 3
op_both old.qcow2 ov.qcow2 top.qcow2 nb.qcow2 -- rebase -b nb.qcow2 -F qcow2 top.qcow2
# relative names resolve from the image's directory
mkdir -p sub && cp ov.qcow2 old.qcow2 nb.qcow2 sub/
op_both sub -- rebase -b nb.qcow2 -F qcow2 sub/ov.qcow2
"$QEMU_IMG" compare -q u/sub/ov.qcow2 q/sub/ov.qcow2 || fail "sub/: results differ"
cmp -s u/sub/ov.qcow2 q/sub/ov.qcow2 || fail "sub/: not byte-identical"
# --- version 2 and small clusters
q create -f qcow2 -o compat=0.10 -b old.qcow2 -F qcow2 v2.qcow2
io v2.qcow2 -c 'write -P 6 0 64k' -c 'write -z 1M 64k'
op_both old.qcow2 v2.qcow2 nb.qcow2 -- rebase -b nb.qcow2 -F qcow2 v2.qcow2
op_both old.qcow2 v2.qcow2 nb.qcow2 -- rebase -u -b nb.qcow2 -F qcow2 v2.qcow2
q create -f qcow2 -o cluster_size=512 -b old.qcow2 -F qcow2 c512.qcow2
io c512.qcow2 -c 'write -P 7 1000 3000'
op_both old.qcow2 c512.qcow2 nb.qcow2 -- rebase -b nb.qcow2 -F qcow2 c512.qcow2
# --- persistent bitmaps: the extension survives, the bitmap stays listed
q create -f qcow2 -b old.qcow2 -F qcow2 bm.qcow2
q bitmap --add bm.qcow2 b0
io bm.qcow2 -c 'write -P 8 0 64k'
op_both -b old.qcow2 bm.qcow2 nb.qcow2 -- rebase -u -b nb.qcow2 -F qcow2 bm.qcow2
"$QEMU_IMG" info u/bm.qcow2 | grep -q 'name: b0' || fail "rebase -u lost the bitmap"
"$QEMU_IMG" info u/bm.qcow2 | grep -q 'in-use' && fail "rebase -u left the bitmap in use"
op_both -b old.qcow2 bm.qcow2 nb.qcow2 -- rebase -b nb.qcow2 -F qcow2 bm.qcow2
"$QEMU_IMG" info u/bm.qcow2 | grep -q 'name: b0' || fail "rebase lost the bitmap"
# --- errors
op_both $all -- rebase -b nb.qcow2 ov.qcow2                  # no -F: copies, then refuses
op_both $all -- rebase -u -b nb.qcow2 ov.qcow2
op_both $all -- rebase -b nosuch.qcow2 -F qcow2 ov.qcow2
op_both $all -- rebase -b nb.qcow2 -F nosuchfmt ov.qcow2
op_both $all -- rebase ov.qcow2
op_both $all -- rebase -b nb.qcow2 -F qcow2
op_both $all -- rebase -b nb.qcow2 -F qcow2 ov.qcow2 extra
op_both $all -- rebase -t bogus -b nb.qcow2 -F qcow2 ov.qcow2
op_both $all -- rebase -T bogus -b nb.qcow2 -F qcow2 ov.qcow2
op_both $all -- rebase -z -b nb.qcow2 ov.qcow2
op_both $all -- rebase -b
op_both $all -- rebase -b x -F raw nosuch.qcow2
op_both $all -- rebase -f raw -u -b x -F raw nb.raw                 # raw has no backing file
op_both $all -- rebase -u -b "$(printf 'a%.0s' $(seq 1024))" -F raw ov.qcow2
q create -f qcow2 -o cluster_size=512 small.qcow2 1M
op_both small.qcow2 -- rebase -u -b "$(printf 'b%.0s' $(seq 400))" -F raw small.qcow2
op_both -x small.qcow2 -- rebase -u -b "$(printf 'b%.0s' $(seq 300))" -F raw small.qcow2
exit 0
