#!/bin/bash
# nbd protocol: a device on a qemu-nbd export (unix socket in $T), raw and
# qcow2 over it, fio verify; then the server killed and restarted under fio
# with reconnect-delay: fio verify still passes and `ublkd list` shows the
# connection state and the reconnect.
. "$(dirname "$0")/lib.sh"
need_cmd fio qemu-nbd qemu-img jq
"$UBLKD" img info nbd://127.0.0.1:1/x 2>&1 | grep -q "Unknown protocol" && skip "ublkd built without CONFIG_NBD"

S=$T/s.sock
QPID=
serve() {  # serve IMAGE: qemu-nbd on $S, export 'exp', persistent
  rm -f "$S"   # a killed server's socket file would pass the wait below
  qemu-nbd -f raw -x exp -t -k "$S" "$1" 2>>$T/qemu-nbd.log &
  QPID=$!
  wait_for test -S "$S" || fail "qemu-nbd did not come up"
}
on_exit '[ -n "$QPID" ] && kill $QPID 2>/dev/null'
counter() {  # counter NAME: the nbd node's counter from list --json
  "$UBLKD" list -n $ID --json | jq -r "[.[0].stats.node_counters | to_entries[]
      | select(.key | endswith(\"$1\")) | .value] | add // error(\"no counter $1\")"
}
nbd="file.driver=nbd,file.server.type=unix,file.server.path=$S,file.export=exp"

log "1: raw over nbd, fio verify"
mkimg $T/a.raw 128M
serve $T/a.raw
ublk_add --blockdev "driver=raw,$nbd" -q 2 >/dev/null
fio_verify "$DEV" --numjobs=2 --offset_increment=32M --size=16M --iodepth=32 --bsrange=4k-128k
sleep 1.2   # counters are published each second
[ "$(counter nbd-connected)" = 1 ] || fail "nbd-connected is not 1"
ublk_del $ID

log "2: qcow2 over nbd"
# NBD exports cannot grow: the qcow2 file must already be as large as it gets
qemu-img create -q -f qcow2 -o preallocation=metadata $T/b.qcow2 64M
kill $QPID; wait $QPID 2>/dev/null || true
serve $T/b.qcow2
ublk_add --blockdev "driver=qcow2,$nbd" -q 1 >/dev/null
fio_verify "$DEV" --iodepth=16 --bsrange=4k-64k --size=16M
ublk_del $ID
qemu-img check -q -U -f qcow2 $T/b.qcow2 || fail "qcow2 written over nbd does not check clean"

log "3: server killed and restarted under fio, reconnect-delay=30"
kill $QPID; wait $QPID 2>/dev/null || true
serve $T/a.raw
ublk_add --blockdev "driver=raw,$nbd,file.reconnect-delay=30" -q 2 --log $T/daemon.log >/dev/null
fio --name=v --filename="$DEV" --direct=1 --ioengine=io_uring --rw=randwrite \
    --verify=crc32c --verify_fatal=1 --do_verify=1 --randrepeat=0 --verify_state_save=0 \
    --size=64M --bsrange=16k-128k --iodepth=32 --output-format=terse >$T/fio.out 2>&1 &
FIO=$!
sleep 1
kill $QPID; wait $QPID 2>/dev/null || true
sleep 1.5
[ "$(counter nbd-reconnecting)" = 1 ] || fail "nbd-reconnecting is not 1 while the server is down"
serve $T/a.raw
wait $FIO || { cat $T/fio.out >&2; fail "fio verify across the server restart failed"; }
sleep 1.2
[ "$(counter nbd-connected)" = 1 ] || fail "not connected after the restart"
[ "$(counter nbd-reconnects)" -ge 1 ] || fail "no reconnect counted"
grep -q '"type":"nbd-reconnected"' $T/daemon.log || fail "no nbd-reconnected event in the log"
ublk_del $ID
log "ok"
