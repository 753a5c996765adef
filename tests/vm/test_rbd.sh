#!/bin/bash
# The rbd protocol behind a device: a single-host Ceph cluster in the guest
# (tests/ceph/cluster.sh: one mon, one memstore OSD), `ublkd add raw rbd:rbd/img`,
# fio write+verify through ublk on 1 and 2 queues, discard from the device, and what
# the device wrote read back through librbd after del.  A snapshot device is
# read-only.  Skips where the Ceph daemons are not installed (make deps-ceph).
#
# Its cluster starts in ~25-30 s of the 6.12 TCG guest (tests/ceph/cluster.sh keeps
# the Ceph binaries it runs few: each costs seconds to start under TCG).
# vm-timeout: 400
. "$(dirname "$0")/lib.sh"
need_cmd fio ceph-mon ceph-osd ceph rbd blkdiscard ip
grep -q '^#define CONFIG_RBD 1' "$(dirname "$UBLKD")/config.h" 2>/dev/null || skip "ublkd built without CONFIG_RBD"
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CL=$T/c
# Devices go before the cluster: a daemon closing its image flushes to it.  The
# daemons' last log lines go to the test's log (shown when it fails).
on_exit "log 'stopping'; for i in \$(cat $T/.devs 2>/dev/null); do '$UBLKD' del --force -n \$i 2>/dev/null; done; tail -n 3 $CL/log/osd.0.log $CL/log/mon.a.log 2>/dev/null; '$ROOT/tests/ceph/cluster.sh' stop '$CL'"

# The guest's init leaves the loopback down; the cluster lives on 127.0.0.1.
ip link set lo up
log "starting the cluster"
if ! "$ROOT/tests/ceph/cluster.sh" start "$CL"; then
  tail -n 20 "$CL"/log/*.log >&2 || true
  fail "the test cluster did not start"
fi
export CEPH_CONF=$CL/ceph.conf
log "cluster up"
"$UBLKD" img create -q -f raw rbd:rbd/img 64M || fail "img create"

ublk_add raw rbd:rbd/img -q 2 >/dev/null
[ "$(blockdev --getsize64 "$DEV")" = $((64 << 20)) ] || fail "device size is not 64 MiB"
log "fio verify, 1 job"
FIO_SIZE=4M fio_verify "$DEV" --numjobs=1 --iodepth=32 --bsrange=512-256k
log "fio verify, 2 jobs on 2 queues"
fio_verify "$DEV" --numjobs=2 --offset_increment=16M --size=4M --iodepth=16 --bsrange=4k-64k
# A known pattern at 40 MiB, a discarded whole object at 48 MiB.
log "pattern and discard"
head -c 4M /dev/urandom >"$T/pat"
dd if="$T/pat" of="$DEV" bs=1M seek=40 oflag=direct conv=fsync status=none || fail "dd to the device"
dd if=/dev/urandom of="$DEV" bs=1M seek=48 count=4 oflag=direct conv=fsync status=none || fail "dd"
blkdiscard -o $((48 << 20)) -l $((4 << 20)) "$DEV" || fail "blkdiscard"
ublk_del "$ID"

# What the device wrote is in the RBD image.
log "read back through librbd"
"$UBLKD" img convert -f raw rbd:rbd/img "$T/back.raw" || fail "img convert from rbd"
cmp <(dd if="$T/back.raw" bs=1M skip=40 count=4 status=none) "$T/pat" || fail "the pattern did not reach the image"
cmp -n $((4 << 20)) -i $((48 << 20)):0 "$T/back.raw" /dev/zero || fail "the discarded range does not read as zeros"
"$UBLKD" img map -f raw --output=json rbd:rbd/img >"$T/map" || fail "img map"
# img map merges the discarded object with the never-written zero extents around
# it: what matters is that some zero, data-less extent covers 48..52 MiB (it was
# data before the discard).
awk -v lo=$((48 << 20)) -v hi=$((52 << 20)) '
  { s = $0; sub(/.*"start": /, "", s); st = s + 0
    l = $0; sub(/.*"length": /, "", l); len = l + 0 }
  /"zero": true, "data": false/ && st <= lo && st + len >= hi { ok = 1 }
  END { exit !ok }' "$T/map" ||
  { cat "$T/map" >&2; fail "the discarded object is still allocated"; }

# A snapshot as a read-only device: its data, and writes refused.
log "snapshot device"
rbd snap create rbd/img@s1 >/dev/null 2>&1 || fail "rbd snap create"
ublk_add raw rbd:rbd/img@s1 --read-only >/dev/null
cmp <(dd if="$DEV" bs=1M skip=40 count=4 iflag=direct status=none) "$T/pat" || fail "snapshot device data"
if dd if=/dev/zero of="$DEV" bs=4k count=1 oflag=direct status=none 2>/dev/null; then
  fail "a write to the snapshot device succeeded"
fi
ublk_del "$ID"
if "$UBLKD" add raw rbd:rbd/img@s1 >"$T/out" 2>&1; then
  fail "a read-write device on a snapshot was created"
fi
grep -q "read-only" "$T/out" || { cat "$T/out" >&2; fail "the refusal does not say read-only"; }
log "ok"
