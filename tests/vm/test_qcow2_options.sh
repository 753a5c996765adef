#!/bin/bash
# qcow2 options through `ublkd add --blockdev` (the cache sizes, backing and
# overlap-check are in test_qcow2_verify): an external data file named by
# data-file.*, discard=ignore (discards change nothing) against the
# default (they free clusters), pass-discard-request=off (clusters freed in
# the image, the file keeps its blocks), and a bad value refused with a
# message before any device exists.
. "$(dirname "$0")/lib.sh"
need_cmd qemu-img blkdiscard jq sha256sum
cd "$T"

disk_size() { qemu-img info -U --output=json "$1" | jq '.["actual-size"]'; }
mapped() { qemu-img map -U --output=json "$1" | jq '[.[] | select(.data) | .length] | add // 0'; }
check_clean() {
  local rc=0
  qemu-img check -q "$@" >check.out 2>&1 || rc=$?
  [ $rc = 0 ] || { cat check.out; fail "qemu-img check $* exit $rc"; }
}

log "external data file named by data-file.*"
qemu-img create -q -f qcow2 -o data_file="$T/ext.data" ext.qcow2 32M
head -c 8M /dev/urandom > pat
bd="driver=qcow2,file.driver=file,file.filename=$T/ext.qcow2,data-file.driver=file,data-file.filename=$T/ext.data"
id=$(ublk_add --blockdev "$bd" $CACHE_OPT)
dd if=pat of="$(bdev "$id")" bs=1M seek=4 oflag=direct status=none
ublk_del "$id"
check_clean ext.qcow2
qemu-img convert -f qcow2 -O raw ext.qcow2 out.raw
cmp -n $((8 << 20)) -i $((4 << 20)):0 out.raw pat || fail "data-file image reads other data"
cmp -n $((8 << 20)) -i $((4 << 20)):0 ext.data pat || fail "the data is not in the data file at guest offsets"

for mode in default ignore nopass; do
  log "discard: $mode"
  rm -f d.qcow2
  qemu-img create -q -f qcow2 d.qcow2 32M
  bd="driver=qcow2,file.driver=file,file.filename=$T/d.qcow2"
  case $mode in
    ignore) bd="$bd,discard=ignore";;
    nopass) bd="$bd,pass-discard-request=off";;
  esac
  id=$(ublk_add --blockdev "$bd" $CACHE_OPT)
  dd if=pat of="$(bdev "$id")" bs=1M oflag=direct status=none
  before=$(disk_size d.qcow2)
  blkdiscard -f "$(bdev "$id")" || fail "blkdiscard ($mode)"
  ublk_del "$id"
  check_clean d.qcow2
  after=$(disk_size d.qcow2) data=$(mapped d.qcow2)
  log "  actual-size $before -> $after, $data bytes mapped as data"
  case $mode in
    default) [ "$after" -lt $((before - 6 * 1024 * 1024)) ] && [ "$data" = 0 ] ||
               fail "discard did not free the clusters ($before -> $after, $data mapped)";;
    ignore) [ "$after" -ge "$before" ] && [ "$data" = $((8 << 20)) ] ||
               fail "discard=ignore changed the image ($before -> $after, $data mapped)";;
    nopass) [ "$after" -ge $((before - 1024 * 1024)) ] && [ "$data" = 0 ] ||
               fail "pass-discard-request=off: want clusters freed, file kept ($before -> $after, $data mapped)";;
  esac
done

log "a bad value is refused before a device exists"
n0=$(ublk_ids | wc -l)
if out=$("$UBLKD" add --blockdev "driver=qcow2,file.driver=file,file.filename=$T/d.qcow2,overlap-check=sometimes" 2>&1); then
  fail "overlap-check=sometimes was accepted ($out)"
fi
echo "$out" | grep -q "Unsupported value 'sometimes' for qcow2 option 'overlap-check'" ||
  fail "message does not name the value: $out"
[ "$(ublk_ids | wc -l)" = "$n0" ] || fail "a refused add left a device behind"
log "ok"
