#!/bin/bash
# qcow2 persistent dirty bitmaps on a device: an image with an enabled
# bitmap (64 KiB granules), another (4 KiB granules) and a disabled one is
# served with 2 queues; while it is, qemu-img sees the bitmaps in use; fio
# writes a region from two jobs at once, a direct write and a discard touch
# one granule each.  After `ublkd del` qemu-img check is clean, nothing is
# in use, and QEMU's export of each bitmap (qemu-nbd --bitmap, read with
# nbdinfo --map) holds exactly the granules written: the incremental backup
# a QEMU tool would take.
. "$(dirname "$0")/lib.sh"
need_cmd fio qemu-img qemu-nbd nbdinfo blkdiscard
cd "$T"

qemu-img create -q -f qcow2 d.qcow2 64M
qemu-img bitmap --add d.qcow2 b64k
qemu-img bitmap --add -g 4k d.qcow2 b4k
qemu-img bitmap --add d.qcow2 off
qemu-img bitmap --disable d.qcow2 off

# dirty RANGES of bitmap NAME in IMG, adjacent ones merged: "start+len ..."
dirty() {
  rm -f nbd.sock
  qemu-nbd -r -f qcow2 --bitmap="$2" -k "$T/nbd.sock" "$1" 2>nbd.err &
  local pid=$!
  wait_for test -S nbd.sock || { cat nbd.err; fail "qemu-nbd did not start"; }
  nbdinfo --map="qemu:dirty-bitmap:$2" "nbd+unix:///?socket=$T/nbd.sock" >map.out ||
    { kill $pid; fail "nbdinfo --map of $2"; }
  kill $pid 2>/dev/null; wait $pid 2>/dev/null
  awk '$4 == "dirty" { if (s != "" && $1 == s + l) { l += $2 } else { if (s != "") printf "%d+%d ", s, l; s = $1; l = $2 } }
       END { if (s != "") printf "%d+%d", s, l }' map.out
}

log "2 queues: fio from two jobs, a direct write, a discard"
id=$(ublk_add qcow2 "$T/d.qcow2" -q 2 $CACHE_OPT)
dev=$(bdev "$id")
qemu-img info -U d.qcow2 | grep -q 'in-use' || fail "bitmaps not in use while the device serves the image"
fio --name=w --filename="$dev" --direct=1 --ioengine=io_uring --rw=randwrite --bs=4k \
    --iodepth=16 --numjobs=2 --size=2M --offset=8M --offset_increment=2M --randrepeat=0 \
    --norandommap=0 --output-format=terse >/dev/null || fail "fio"
dd if=/dev/urandom of="$dev" bs=4k seek=$((40 * 256 + 1)) count=1 oflag=direct status=none ||
  fail "dd"
blkdiscard -o $((48 * 1024 * 1024)) -l $((1024 * 1024)) "$dev" || fail "blkdiscard"
ublk_del "$id"

qemu-img check -q d.qcow2 || fail "qemu-img check after del"
qemu-img info d.qcow2 | grep -q 'in-use' && fail "a bitmap still in use after del"
M=$((1024 * 1024))
want64k="$((8 * M))+$((4 * M)) $((40 * M))+65536 $((48 * M))+$M"
want4k="$((8 * M))+$((4 * M)) $((40 * M + 4096))+4096 $((48 * M))+$M"
got=$(dirty d.qcow2 b64k); [ "$got" = "$want64k" ] || fail "b64k: dirty $got, want $want64k"
got=$(dirty d.qcow2 b4k); [ "$got" = "$want4k" ] || fail "b4k: dirty $got, want $want4k"
got=$(dirty d.qcow2 off); [ -z "$got" ] || fail "disabled bitmap: dirty $got"
log "ok"
