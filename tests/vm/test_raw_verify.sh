#!/bin/bash
# fio random write + crc32c verify on raw images: 1 and 2 queues, iodepth 1/32/128, bs 512 B .. 1 MiB,
# and the USER_COPY and NEED_GET_DATA data paths (the default one is zero copy where the
# kernel has it).
. "$(dirname "$0")/lib.sh"
need_cmd fio
mkimg $T/a.raw 64M
run() {  # run ADD-OPTS -- FIO-OPTS
  local add=() ; while [ "$1" != -- ]; do add+=("$1"); shift; done; shift
  ublk_add raw $T/a.raw $CACHE_OPT "${add[@]}" >/dev/null
  # The data path named must be the one the kernel set up: were the flag
  # dropped on the way, the default path would just be tested again.
  local want= flags
  case " ${add[*]} " in
    *" --user-copy "*) want=USER_COPY;;
    *" --need-get-data "*) want=NEED_GET_DATA;;
  esac
  if [ -n "$want" ]; then
    flags=$("$UBLKD" list -n $ID --json | jq -r '.[0].flags_names')
    grep -qw "$want" <<<"$flags" || fail "add ${add[*]}: device flags '$flags' lack $want"
  fi
  log "add ${add[*]}: fio $*"
  fio_verify "$DEV" --numjobs=1 "$@"
  ublk_del $ID
}
run -q 1 -- --iodepth=1 --bs=4k
run -q 1 -- --iodepth=32 --bsrange=512-1M
run -q 2 -- --iodepth=128 --bsrange=512-64k
run -q 2 -d 64 -- --iodepth=32 --bs=1M
run -q 1 --user-copy -- --iodepth=32 --bsrange=512-256k
run -q 1 --need-get-data -- --iodepth=32 --bsrange=4k-128k
# Two jobs on two queues, each on its own region.  Copying (--zero-copy=off):
# where the kernel has zero copy the default uses no tag buffers at all
# (test_zerocopy covers that path).
ublk_add raw $T/a.raw $CACHE_OPT -q 2 --zero-copy=off >/dev/null
fio_verify "$DEV" --numjobs=2 --offset_increment=16M --size=16M --iodepth=32 --bsrange=512-128k
# Tag buffers are registered with the queue's ring, so backing I/O into them
# pins nothing per request: the pages requests used stay pinned, once.
pid=$(ublk_pid $ID)
pin=$(awk '/^VmPin/{print $2}' /proc/$pid/status)
# The rings' own view: io_uring's fdinfo lists each registered buffer as
# "INDEX: 0xADDR/LEN" (empty slots otherwise), when it can take the ring's lock.
bufs=$(cat /proc/$pid/fdinfo/* 2>/dev/null | grep -cE '^ *[0-9]+: 0x[0-9a-f]+/[1-9]' || true)
log "daemon VmPin after fio: ${pin:-?} kB; registered buffers in io_uring fdinfo: $bufs"
if [ "${pin:-0}" -eq 0 ]; then
  [ "$bufs" -gt 0 ] || fail "no tag buffer is registered (VmPin ${pin:-?} kB, none in fdinfo)"
  log "kernel $(uname -r) registers the buffers but does not count them in VmPin"
fi
