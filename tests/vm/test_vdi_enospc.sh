#!/bin/bash
# A full host file system (issue #10 item 3): a vdi image on a small tmpfs,
# served as /dev/ublkbN, is filled from the device by concurrent writes until
# the file system is full.  The writer gets ENOSPC (not EIO, not a hang), the
# daemon and the device live on, and after space is freed on the host the
# whole disk is written and read back, and qemu-img check calls the image
# clean: the allocations that failed left no hole behind.
. "$(dirname "$0")/lib.sh"
need_cmd fio qemu-img sha256sum dd

MiB=1048576
mkdir "$T/fs"
# 48 MiB: the image's metadata, a 24 MiB ballast file, room for ~23 MiB of data.
mount -t tmpfs -o size=48M tmpfs "$T/fs" || skip "cannot mount a tmpfs"
on_exit "umount -l '$T/fs'"
dd if=/dev/zero of="$T/fs/ballast" bs=1M count=24 status=none
qemu-img create -q -f vdi "$T/fs/disk.vdi" 32M
id=$(ublk_add vdi "$T/fs/disk.vdi" -q 2 $CACHE_OPT)
dev=$(bdev "$id")
pid=$(ublk_pid "$id")

log "fill $dev from two jobs, 16 writes in flight each, until the host fs is full"
set +e
fio --name=fill --filename="$dev" --direct=1 --ioengine=io_uring --rw=write --bs=1M \
    --iodepth=16 --numjobs=2 --offset_increment=16M --size=16M \
    --output-format=terse >"$T/fio.out" 2>"$T/fio.err"
rc=$?
set -e
[ "$rc" != 0 ] || fail "fio filled 32 MiB onto a 24 MiB file system without an error"
grep -q "No space left on device" "$T/fio.err" || { cat "$T/fio.err"; fail "the writer did not get ENOSPC"; }
grep -q "Input/output error" "$T/fio.err" && { cat "$T/fio.err"; fail "the writer got EIO, not ENOSPC"; }
log "fio: $(grep -c 'No space left' "$T/fio.err") ENOSPC error line(s)"
kill -0 "$pid" || fail "the daemon died on ENOSPC"
[ "$(ublk_state "$id")" = LIVE ] || fail "device state $(ublk_state "$id") after ENOSPC"
# A synchronous writer sees the same: dd stops with ENOSPC at some block.
set +e
dd if=/dev/urandom of="$dev" bs=1M iflag=fullblock oflag=direct status=none 2>"$T/dd.err"
set -e
grep -q "No space left on device" "$T/dd.err" || { cat "$T/dd.err"; fail "dd did not get ENOSPC"; }
# The device still reads (the blocks that made it and the ones that did not).
dd if="$dev" of=/dev/null bs=1M iflag=direct status=none || fail "reads fail after ENOSPC"
log "while full: $(qemu-img check -U -f vdi "$T/fs/disk.vdi" 2>&1 | tr '\n' ' ')"

log "free space on the host, write the whole disk, read it back"
rm "$T/fs/ballast"
head -c $((32 * MiB)) /dev/urandom >"$T/data"
want=$(sha256sum <"$T/data" | cut -d' ' -f1)
dd if="$T/data" of="$dev" bs=1M oflag=direct conv=fsync status=none || fail "writes fail after space was freed"
got=$(dd if="$dev" bs=1M iflag=direct status=none | sha256sum | cut -d' ' -f1)
[ "$got" = "$want" ] || fail "the device reads back different data"
kill -0 "$pid" || fail "the daemon died"
ublk_del "$id"
_lib_devs=()
: >"$T/.devs"

qemu-img check -f vdi "$T/fs/disk.vdi" >"$T/check.out" 2>&1 || { cat "$T/check.out"; fail "qemu-img check after ENOSPC"; }
"$UBLKD" img check -f vdi "$T/fs/disk.vdi" >"$T/check.out" 2>&1 || { cat "$T/check.out"; fail "ublkd img check"; }
off=$(od -A n -t u4 -j 344 -N 4 "$T/fs/disk.vdi" | tr -d ' ')
size=$(stat -c %s "$T/fs/disk.vdi")
[ "$size" = $((off + 32 * MiB)) ] || fail "image is $size bytes, expected $((off + 32 * MiB)) (32 slots)"
qemu-img convert -f vdi -O raw "$T/fs/disk.vdi" "$T/disk.raw"
[ "$(sha256sum <"$T/disk.raw" | cut -d' ' -f1)" = "$want" ] || fail "qemu-img reads different data"
log "ok"
