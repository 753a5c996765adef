#!/bin/bash
# nbd protocol: a device on a qemu-nbd export (unix socket in $T), raw and
# qcow2 over it, fio verify; then the server killed and restarted under fio
# with reconnect-delay: fio verify still passes and `ublkd list` shows the
# connection state and the reconnect.  A TLS-PSK export through
# `ublkd add --object tls-creds-psk,...`, which still connects after the
# daemon was killed and the device recovered (the object is in the state
# file).  A quorum of two nbd children: `ublkd list` names each child's
# state (text and --json .remote), a killed server's child as failed.
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
kill $QPID; wait $QPID 2>/dev/null || true
QPID=

log "4: TLS-PSK via add --object, fio verify, kill -9 and recover"
if command -v psktool >/dev/null; then
  mkdir $T/tls
  psktool -u qemu -p $T/tls/keys.psk >/dev/null 2>&1 || fail "psktool"
  rm -f "$S"
  qemu-nbd -f raw -x exp -t -k "$S" --object "tls-creds-psk,id=tls0,endpoint=server,dir=$T/tls" \
      --tls-creds tls0 $T/a.raw 2>>$T/qemu-nbd.log &
  QPID=$!
  wait_for test -S "$S" || fail "qemu-nbd (TLS) did not come up"
  # Without the credentials the TLS-only server refuses the client.
  if "$UBLKD" add --blockdev "driver=raw,$nbd" >$T/out 2>&1; then
    fail "a device without tls-creds on a TLS-only export was created"
  fi
  ublk_add --object "tls-creds-psk,id=tls0,endpoint=client,dir=$T/tls" \
      --blockdev "driver=raw,$nbd,file.tls-creds=tls0" -q 2 >/dev/null
  fio_verify "$DEV" --numjobs=2 --offset_increment=32M --size=16M --iodepth=16 --bsrange=4k-128k
  pid=$(ublk_pid $ID)
  kill -9 "$pid"
  wait_for sh -c "[ \"\$($UBLKD list -n $ID --json | jq -r '.[0].state')\" = QUIESCED ]" ||
    fail "device $ID not QUIESCED after kill -9"
  "$UBLKD" recover -n $ID || fail "ublkd recover of the TLS device failed"
  fio_verify "$DEV" --iodepth=16 --bsrange=4k-64k --size=16M
  ublk_del $ID
  kill $QPID; wait $QPID 2>/dev/null || true
  QPID=
else
  log "psktool (gnutls-bin) not installed: TLS part skipped"
fi

log "5: a quorum of two nbd children in ublkd list"
S2=$T/s2.sock
mkimg $T/q0.raw 64M; mkimg $T/q1.raw 64M
serve $T/q0.raw
QPID0=$QPID
serve2() { rm -f "$S2"; qemu-nbd -f raw -x exp -t -k "$S2" $T/q1.raw 2>>$T/qemu-nbd.log & QPID2=$!
           wait_for test -S "$S2" || fail "qemu-nbd 2 did not come up"; }
QPID2=
on_exit '[ -n "$QPID2" ] && kill $QPID2 2>/dev/null; [ -n "$QPID0" ] && kill $QPID0 2>/dev/null'
serve2
q="driver=quorum,vote-threshold=1"
for i in 0 1; do
  sock=$S; [ $i = 1 ] && sock=$S2
  q="$q,children.$i.driver=raw,children.$i.file.driver=nbd,children.$i.file.server.type=unix"
  q="$q,children.$i.file.server.path=$sock,children.$i.file.export=exp"
done
ublk_add --blockdev "$q" >/dev/null
fio_verify "$DEV" --iodepth=8 --bsrange=4k-64k --size=8M
sleep 1.2
"$UBLKD" list -n $ID >$T/list.txt
grep -q '^  nbd children.0.file: connected (reconnects 0)$' $T/list.txt &&
  grep -q '^  nbd children.1.file: connected (reconnects 0)$' $T/list.txt ||
  { cat $T/list.txt >&2; fail "list does not show both nbd children connected"; }
grep -q 'nbd-connected' $T/list.txt && { cat $T/list.txt >&2; fail "list text still shows raw nbd counters"; }
[ "$("$UBLKD" list -n $ID --json | jq -r '[.[0].remote[] | "\(.node)=\(.state)"] | join(" ")')" = \
  "children.0.file=connected children.1.file=connected" ] || fail "list --json .remote is wrong"
kill $QPID2; wait $QPID2 2>/dev/null || true
QPID2=
sleep 1.5
"$UBLKD" list -n $ID >$T/list.txt
grep -q '^  nbd children.1.file: failed (reconnects 0)$' $T/list.txt ||
  { cat $T/list.txt >&2; fail "a child whose server died is not shown failed"; }
[ "$("$UBLKD" list -n $ID --json | jq -r '.[0].remote[1].state')" = failed ] ||
  fail "list --json .remote[1].state is not failed"
serve2
wait_for sh -c "'$UBLKD' list -n $ID | grep -q 'nbd children.1.file: connected (reconnects 1)'" ||
  { "$UBLKD" list -n $ID >&2; fail "the child did not come back as connected with 1 reconnect"; }
ublk_del $ID
log "ok"
