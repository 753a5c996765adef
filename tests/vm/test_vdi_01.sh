#!/bin/bash
# vdi device, two queues: fio random-write + verify from several jobs at once
# (allocating writes into new blocks race across the queue threads), then
# the image is checked by qemu-img and its contents compared with what the
# device returned.
. "$(dirname "$0")/lib.sh"
need_cmd fio qemu-img sha256sum

qemu-img create -q -f vdi "$T/disk.vdi" 256M
id=$(ublk_add vdi "$T/disk.vdi" -q 2 $CACHE_OPT)
dev=$(bdev "$id")
cd "$T"                          # fio writes verify state files to the cwd
log "fio verify on $dev (vdi, 2 queues)"
# Each job owns its region (size <= offset_increment) so verify is exact.
# 32 new 1 MiB blocks per job: enough for allocations to race, small enough for TCG.
FIO_SIZE=32M fio_verify "$dev" --bs=4k --iodepth=32 --numjobs=4 --offset_increment=64M
FIO_SIZE=48M fio_verify "$dev" --bs=256k --iodepth=8 --numjobs=2 --offset_increment=128M --rw=randrw
want=$(sha256sum < "$dev" | cut -d' ' -f1)
ublk_del "$id"
_lib_devs=()
qemu-img check -f vdi "$T/disk.vdi" || fail "qemu-img check after fio"
got=$(qemu-img convert -f vdi -O raw "$T/disk.vdi" "$T/disk.raw" && sha256sum < "$T/disk.raw" | cut -d' ' -f1)
[ "$want" = "$got" ] || fail "qemu-img reads different data than the device returned"
log "ok"
