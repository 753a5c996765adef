#!/bin/bash
# A 3-way quorum device (vote-threshold 2, rewrite-corrupted) of raw files,
# child 2 through the fault-injection filter, whose rules a control file
# changes while fio runs:
#   1. no faults: fio verify; the three files are identical;
#   2. child 2 fails 1% of its reads with EIO: fio verify passes, the errors
#      are counted for child 2 and logged as events;
#   3. child 2 returns corrupted data on 5% of its reads: fio verify passes,
#      the corruptions are found (QUORUM_REPORT_BAD) and rewritten;
#   4. child 2 dies (every read, write and flush fails): fio verify passes;
#   5. child 2 comes back stale: one read pass over the device outvotes and
#      rewrites its stale blocks, and afterwards the three files are equal;
#   6. three qcow2 children, the filter above child 2 corrupting 10% of the
#      data it returns: fio verify passes, each image passes qemu-img check and
#      they compare equal.
. "$(dirname "$0")/lib.sh"
need_cmd fio cmp jq qemu-img
SIZE=32M
for i in 0 1 2; do mkimg $T/c$i.raw $SIZE; done
rules=$T/child2.rules
: > $rules
# set_rules LINE...: replace the filter's rules atomically (it polls every 100 ms).
set_rules() {
  printf '%s\n' "$@" > $rules.new
  mv $rules.new $rules
  sleep 0.5
}
q="driver=quorum,vote-threshold=2,rewrite-corrupted=on"
q+=",children.0.driver=raw,children.0.file.filename=$T/c0.raw"
q+=",children.1.driver=raw,children.1.file.filename=$T/c1.raw"
q+=",children.2.driver=raw,children.2.file.driver=blkdebug,children.2.file.control=$rules"
q+=",children.2.file.image.filename=$T/c2.raw"
ublk_add --blockdev "$q" $CACHE_OPT -q 2 --log $T/daemon.log >/dev/null
counter() {  # counter KEY-SUFFIX: child 2's counter from list --json
  "$UBLKD" list -n $ID --json | jq -r "[.[0].stats.node_counters | to_entries[]
      | select(.key | endswith(\"children.2.$1\")) | .value] | add // error(\"no counter $1\")"
}
events() { grep -c "event {\"type\":\"$1\"" $T/daemon.log || true; }

log "1: no faults"
FIO_SIZE=$SIZE fio_verify "$DEV" --iodepth=16 --bsrange=4k-64k
cmp $T/c0.raw $T/c1.raw && cmp $T/c0.raw $T/c2.raw || fail "children differ without faults"

log "2: child 2 fails 1% of reads"
set_rules "inject-fault.0.event=read,inject-fault.0.action=error,inject-fault.0.probability=0.01"
FIO_SIZE=$SIZE fio_verify "$DEV" --iodepth=16 --bs=4k
sleep 1.2    # the daemon publishes its counters each second
e=$(counter errors); [ "$e" -gt 0 ] || fail "no read errors counted for child 2"
log "child 2 errors: $e"

log "3: child 2 returns corrupted data on 5% of reads"
set_rules "inject-fault.0.event=read,inject-fault.0.action=corrupt,inject-fault.0.probability=0.05"
FIO_SIZE=$SIZE fio_verify "$DEV" --iodepth=16 --bs=4k
sleep 1.2
c=$(counter corruptions); [ "$c" -gt 0 ] || fail "no corruption found on child 2"
r=$(counter rewrites); [ "$r" -gt 0 ] || fail "no rewrite of child 2"
[ "$(events QUORUM_REPORT_BAD)" -gt 0 ] || fail "no QUORUM_REPORT_BAD event in the log"
# grep -m1, not grep | head -1: under pipefail grep dies of SIGPIPE when
# head exits while the log is still being written out.
grep -m1 '"type":"QUORUM_REPORT_BAD"' $T/daemon.log | sed 's/^.*event //' | jq -e '.offset >= 0 and .length > 0' >/dev/null \
  || fail "QUORUM_REPORT_BAD is not JSON with offset and length"
log "child 2 corruptions $c, rewrites $r"

log "4: child 2 dies"
set_rules "inject-fault.0.event=read,inject-fault.0.action=error" \
          "inject-fault.1.event=write,inject-fault.1.action=error" \
          "inject-fault.2.event=write-zeroes,inject-fault.2.action=error" \
          "inject-fault.3.event=flush,inject-fault.3.action=error"
FIO_SIZE=$SIZE fio_verify "$DEV" --iodepth=16 --bsrange=4k-128k
cmp -s $T/c0.raw $T/c2.raw && fail "child 2 took writes while dead"

log "5: child 2 comes back stale; a read pass repairs it"
set_rules "# healthy"
dd if=$DEV of=/dev/null bs=1M iflag=direct status=none || fail "read pass failed"
ublk_del $ID
cmp $T/c0.raw $T/c1.raw || fail "children 0 and 1 differ"
cmp $T/c0.raw $T/c2.raw || fail "child 2 was not repaired by rewrite-corrupted"
log "events: $(events QUORUM_REPORT_BAD) QUORUM_REPORT_BAD, $(events QUORUM_FAILURE) QUORUM_FAILURE"
[ "$(events QUORUM_FAILURE)" = 0 ] || fail "a read failed the vote"

log "6: qcow2 children, child 2 corrupting reads"
for i in 0 1 2; do qemu-img create -q -f qcow2 $T/q$i.qcow2 $SIZE; done
set_rules "inject-fault.0.event=read,inject-fault.0.action=corrupt,inject-fault.0.probability=0.1"
q="driver=quorum,vote-threshold=2,rewrite-corrupted=on"
q+=",children.0.driver=qcow2,children.0.file.filename=$T/q0.qcow2"
q+=",children.1.driver=qcow2,children.1.file.filename=$T/q1.qcow2"
q+=",children.2.driver=blkdebug,children.2.control=$rules"
q+=",children.2.image.driver=qcow2,children.2.image.file.filename=$T/q2.qcow2"
ublk_add --blockdev "$q" $CACHE_OPT -q 2 >/dev/null
fio_verify "$DEV" --iodepth=16 --bsrange=4k-64k
ublk_del $ID
for i in 0 1 2; do qemu-img check -q $T/q$i.qcow2 || fail "qemu-img check q$i.qcow2"; done
qemu-img compare -q $T/q0.qcow2 $T/q1.qcow2 || fail "qcow2 children 0 and 1 differ"
qemu-img compare -q $T/q0.qcow2 $T/q2.qcow2 || fail "qcow2 child 2 differs"
