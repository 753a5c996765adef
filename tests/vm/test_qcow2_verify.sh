#!/bin/bash
# qcow2 devices over images with a backing file (qcow2 and raw, made by
# qemu-img), with 1, 2 and 4 queues: fio random writes with crc32c verify,
# depths 1-128, block sizes 512 B - 1 MiB (partial clusters copy their
# other bytes from the backing file).  Then qemu-img check must be clean
# (no leaks after a clean del) and qemu-img must read what the device
# served, backing data included.  The 4-queue run goes through --blockdev
# with small caches (L2 slices evicted dirty), overlap-check=all and the
# backing named explicitly.
. "$(dirname "$0")/lib.sh"
need_cmd fio qemu-img qemu-io sha256sum
cd "$T"                          # fio writes verify state files to the cwd

# Backing files: 40 MiB of data in a 48 MiB image, shorter than the
# overlays (reads past their end are zeros).
qemu-img create -q -f qcow2 base.qcow2 48M
qemu-io -f qcow2 -c 'write -P 0x5a 0 40M' base.qcow2 >/dev/null || fail "qemu-io write to the backing file"
head -c 40M /dev/urandom > base.raw
truncate -s 48M base.raw

# done_with ID IMG FMT: the device's contents, then del, check and compare.
done_with() {
  local want got rc=0
  want=$(sha256sum < "$(bdev "$1")" | cut -d' ' -f1)
  ublk_del "$1"
  qemu-img check -q -f qcow2 "$2" >check.out 2>&1 || rc=$?
  [ $rc = 0 ] || { cat check.out; fail "$2: qemu-img check exit $rc after a clean del"; }
  qemu-img convert -f qcow2 -O raw "$2" out.raw
  got=$(sha256sum < out.raw | cut -d' ' -f1)
  rm -f out.raw
  [ "$want" = "$got" ] || fail "$2: qemu-img reads other data than the device served"
}

log "1 queue, qcow2 backing"
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 d1.qcow2 96M
id=$(ublk_add qcow2 "$T/d1.qcow2" -q 1 $CACHE_OPT)
dev=$(bdev "$id")
FIO_SIZE=64k fio_verify "$dev" --bs=512 --iodepth=1
FIO_SIZE=4M fio_verify "$dev" --offset=8M --bsrange=512-1M --iodepth=8
done_with "$id" d1.qcow2

log "2 queues, raw backing, 4k clusters"
qemu-img create -q -f qcow2 -o cluster_size=4096 -b base.raw -F raw d2.qcow2 96M
id=$(ublk_add qcow2 "$T/d2.qcow2" -q 2 $CACHE_OPT)
dev=$(bdev "$id")
# Each job owns its region (size <= offset_increment) so verify is exact.
FIO_SIZE=2M fio_verify "$dev" --bsrange=512-128k --iodepth=32 --numjobs=2 --offset_increment=16M
FIO_SIZE=4M fio_verify "$dev" --offset=40M --bs=1M --iodepth=4
done_with "$id" d2.qcow2

log "4 queues, --blockdev: small caches, overlap-check=all, explicit backing"
qemu-img create -q -f qcow2 -o cluster_size=512 -b base.qcow2 -F qcow2 d4.qcow2 96M
bd="driver=qcow2,file.driver=file,file.filename=$T/d4.qcow2,l2-cache-size=64k,refcount-cache-size=64k"
bd="$bd,overlap-check=all,backing.driver=qcow2,backing.file.driver=file,backing.file.filename=$T/base.qcow2"
id=$(ublk_add --blockdev "$bd" -q 4 $CACHE_OPT)
dev=$(bdev "$id")
# The kernel makes at most one queue per possible CPU (the suite's guest
# has 4 in make check-vm-7.3: VM_CPUS).
want=$(( $(nproc --all) < 4 ? $(nproc --all) : 4 ))
got=$(ls /sys/block/"$(basename "$dev")"/mq | wc -l)
[ "$got" = "$want" ] || fail "-q 4 on $(nproc --all) CPUs gave $got hardware queues, not $want"
[ "$want" = 4 ] || log "only $want CPUs: $want queues (VM_CPUS=4 for all 4)"
# 512 B clusters: an L2 slice (one cluster) covers 32 KiB, so 320 writes
# spread over 96 MiB touch more slices than the cache holds (256, its
# minimum), and dirty ones are evicted; refcount blocks likewise.
fio_verify "$dev" --bs=4k --iodepth=128 --numjobs=4 --size=24M --io_size=320k --offset_increment=24M
FIO_SIZE=2M fio_verify "$dev" --offset=16M --bsrange=512-1M --iodepth=64
done_with "$id" d4.qcow2
log "ok"
