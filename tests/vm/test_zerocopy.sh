#!/bin/bash
# Zero copy (--zero-copy; UBLK_F_AUTO_BUF_REG, UBLK_F_SUPPORT_ZERO_COPY: Linux 6.15+).
# Where the kernel has it (7.3): the default picks auto buffer registration;
# raw (auto and per-request REGISTER_IO_BUF, buffered and O_DIRECT), vdi and
# qcow2 pass fio verify and an ext4 round trip with --zero-copy=on; raw moves
# no byte through the daemon (no bounce, no ring copy in `list`), while reads
# of never-written vdi blocks are zero-filled through the ring (counted).
# Where it lacks it (6.12): auto copies, and on/register fail saying what
# they need; the zero-copy data path itself needs VM_KERNEL=7.3.
# vm-timeout: 600
. "$(dirname "$0")/lib.sh"
need_cmd fio jq mkfs.ext4 e2fsck qemu-img md5sum
cd "$T"                          # fio writes verify state files to the cwd
feats=$("$UBLKD" features)
zc_mode() { "$UBLKD" list -n "$1" --json | jq -r '.[0].zero_copy // error("no zero_copy")'; }
# zc_stat ID FIELD: a counter once the daemon has published it (each second).
zc_stat() { sleep 1.2; ublk_stat_top "$1" "$2"; }
ublk_stat_top() { "$UBLKD" list -n "$1" --json | jq -r ".[0].stats.$2 // error(\"no counter $2\")"; }
mkimg a.raw 64M

if ! grep -qw 'UBLK_F_ZERO_COPY\|UBLK_F_AUTO_BUF_REG' <<<"$feats"; then
  for m in on register; do
    if out=$("$UBLKD" add raw a.raw $CACHE_OPT --zero-copy=$m 2>&1); then
      fail "--zero-copy=$m was accepted by a kernel without zero copy: $out"
    fi
    log "--zero-copy=$m refused: $out"
    grep -q "lacks zero copy.*6.15" <<<"$out" || fail "--zero-copy=$m: the error does not say what is missing: $out"
  done
  ublk_add raw a.raw $CACHE_OPT >/dev/null
  [ "$(zc_mode $ID)" = off ] || fail "default on a kernel without zero copy: $(zc_mode $ID), not off"
  fio_verify "$DEV" --iodepth=16 --bsrange=4k-64k
  log "kernel $(uname -r) has no ublk zero copy: checked that auto copies and on/register fail;" \
      "the zero-copy data path is tested on Linux 6.15+ (VM_KERNEL=7.3)"
  exit 0
fi

# fs_roundtrip TYPE IMAGE ADD-OPTS...: mkfs, files, remount, compare, fsck of the image.
fs_roundtrip() {
  local type=$1 img=$2; shift 2
  ublk_add "$type" "$img" "$@" >/dev/null
  mkfs.ext4 -q -F "$DEV" || fail "$type: mkfs.ext4 failed"
  mkdir -p mnt
  mount "$DEV" mnt || fail "$type: mount failed"
  dd if=/dev/urandom of=mnt/big bs=1M count=12 status=none
  for i in $(seq 20); do echo "file $i" > mnt/f$i; done
  local sum; sum=$(md5sum < mnt/big)
  umount mnt
  mount "$DEV" mnt || fail "$type: second mount failed"
  [ "$(md5sum < mnt/big)" = "$sum" ] || { umount mnt; fail "$type: data differs after remount"; }
  [ "$(cat mnt/f20)" = "file 20" ] || { umount mnt; fail "$type: small file differs"; }
  umount mnt
  ublk_del $ID
  if [ "$type" = raw ]; then
    e2fsck -fn "$img" >/dev/null || fail "$type: e2fsck found problems in the image"
  else
    qemu-img convert -f "$type" -O raw "$img" fs.raw || fail "$type: qemu-img cannot read the image"
    e2fsck -fn fs.raw >/dev/null || fail "$type: e2fsck found problems in the image"
    rm -f fs.raw
  fi
}

# raw, default (auto): auto buffer registration, nothing crosses the daemon.
ublk_add raw a.raw $CACHE_OPT -q 2 >/dev/null
[ "$(zc_mode $ID)" = auto-buf-reg ] || fail "default zero copy is $(zc_mode $ID), not auto-buf-reg"
log "raw, auto-buf-reg, 2 queues: fio verify"
fio_verify "$DEV" --iodepth=32 --bsrange=512-256k
[ "$(zc_stat $ID zc_bounced)" = 0 ] || fail "raw: $(ublk_stat_top $ID zc_bounced) requests bounced"
[ "$(ublk_stat_top $ID zc_ring_copies)" = 0 ] || fail "raw: $(ublk_stat_top $ID zc_ring_copies) ring copies"
[ "$(ublk_stat_top $ID read.ops)" -gt 0 ] || fail "raw: no reads counted"
ublk_del $ID

# raw, O_DIRECT on the backing file, and the per-request registration path.
for opts in "--cache=none --zero-copy=on" "$CACHE_OPT --zero-copy=register"; do
  ublk_add raw a.raw $opts >/dev/null
  want=auto-buf-reg; case $opts in *register*) want=register;; esac
  [ "$(zc_mode $ID)" = $want ] || fail "raw $opts: zero copy is $(zc_mode $ID), not $want"
  log "raw $opts: fio verify"
  fio_verify "$DEV" --iodepth=32 --bsrange=4k-128k
  fio_verify "$DEV" --iodepth=4 --bs=1M --rw=randrw
  [ "$(zc_stat $ID zc_bounced)" = 0 ] || fail "raw $opts: requests bounced"
  ublk_del $ID
done

# vdi: never-written blocks read as zeros through the ring; allocated ones pass through.
qemu-img create -q -f vdi a.vdi 128M
ublk_add vdi a.vdi $CACHE_OPT --zero-copy=on >/dev/null
[ "$(zc_mode $ID)" = auto-buf-reg ] || fail "vdi: zero copy is $(zc_mode $ID)"
cmp -n 4M "$DEV" /dev/zero || fail "vdi: a fresh image does not read as zeros"
[ "$(zc_stat $ID zc_ring_copies)" -gt 0 ] || fail "vdi: reads of unallocated blocks were not zero-filled through the ring"
log "vdi: fio verify"
FIO_SIZE=16M fio_verify "$DEV" --iodepth=32 --bsrange=4k-256k
ublk_del $ID
qemu-img check -q -f vdi a.vdi || fail "vdi: qemu-img check after fio"

qemu-img create -q -f qcow2 a.qcow2 128M
ublk_add qcow2 a.qcow2 $CACHE_OPT --zero-copy=on >/dev/null
log "qcow2: fio verify"
FIO_SIZE=16M fio_verify "$DEV" --iodepth=32 --bsrange=4k-256k
ublk_del $ID
qemu-img check -q -f qcow2 a.qcow2 || fail "qcow2: qemu-img check after fio"

log "ext4 round trips with --zero-copy=on"
rm -f a.raw a.vdi a.qcow2
mkimg a.raw 128M
fs_roundtrip raw a.raw $CACHE_OPT --zero-copy=on
qemu-img create -q -f vdi a.vdi 128M
fs_roundtrip vdi a.vdi $CACHE_OPT --zero-copy=on
qemu-img create -q -f qcow2 a.qcow2 128M
fs_roundtrip qcow2 a.qcow2 $CACHE_OPT --zero-copy=on
log "ok"
