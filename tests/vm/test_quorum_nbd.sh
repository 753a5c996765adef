#!/bin/bash
# "Replicated across hosts": a 3-way quorum (vote-threshold 2) whose children
# are NBD exports, each qemu-nbd running in a network namespace of its own
# (standing in for a host), with reconnect-delay on every child.
#   1. one server is killed and restarted under fio verify: the child
#      reconnects, fio passes, no vote fails (counters and log events);
#   2. one child's link is impaired under fio verify: netem loss+delay when
#      the kernel has sch_netem, else the link is cut for a few seconds (veth
#      down, or the server stopped with SIGSTOP when there is no veth);
#   3. one child is replaced by a fresh export in a fourth namespace and
#      rebuilt; fio verify passes; after `del` the three exports are identical.
# Transport: veth pairs to the root namespace (10.99.N.0/24, TCP) when the
# kernel has veth; else each server listens on a unix socket in $T (a path
# socket reaches across namespaces).  The test guests load veth and sch_netem
# (tests/vm/ublk-vm), so there the transport is TCP with netem.
. "$(dirname "$0")/lib.sh"
need_cmd fio qemu-nbd jq cmp ip
"$UBLKD" img info nbd://127.0.0.1:1/x 2>&1 | grep -q "Unknown protocol" && skip "ublkd built without CONFIG_NBD"
SIZE=16M
NS=ubq$$-   # namespace N is ${NS}N (N = 1..4), child i is served from namespace i+1
ip netns add ${NS}probe 2>/dev/null || skip "no network namespaces"
ip netns del ${NS}probe
on_exit 'for n in 1 2 3 4; do ip netns pids $NS$n 2>/dev/null | xargs -r kill -CONT; ip netns pids $NS$n 2>/dev/null | xargs -r kill; done; sleep 0.3; for n in 1 2 3 4; do ip netns del $NS$n 2>/dev/null; ip link del ubq$$v$n 2>/dev/null; done'
NET=unix
if ip link add ubq$$vt type veth peer name ubq$$vtp 2>/dev/null; then
  ip link del ubq$$vt; NET=tcp
fi
log "transport: $NET"

host() {  # host N: namespace N with lo up (and a veth link to us when NET=tcp)
  local n=$1 v=ubq$$v$1
  ip netns add $NS$n
  ip -n $NS$n link set lo up
  [ $NET = tcp ] || return 0
  ip link add $v type veth peer name eth0 netns $NS$n
  ip addr add 10.99.$n.1/24 dev $v; ip link set $v up
  ip -n $NS$n addr add 10.99.$n.2/24 dev eth0; ip -n $NS$n link set eth0 up
}
declare -A SPID
serve() {  # serve N FILE: qemu-nbd on FILE in namespace N, export 'exp', persistent
  local n=$1
  if [ $NET = tcp ]; then
    # -e 2: the probe below is a second client.  With qemu-nbd's default of
    # one, a restarted server that ublkd reconnected to first never answered
    # the probe (it is not accepted, only queued), and the test hung.
    ip netns exec $NS$n qemu-nbd -f raw -x exp -t -e 2 -b 10.99.$n.2 -p 10809 "$2" 2>>$T/qemu-nbd.log &
    SPID[$n]=$!
    wait_for timeout 10 nbdinfo --size "nbd://10.99.$n.2:10809/exp" >/dev/null 2>&1 || fail "qemu-nbd $n did not come up"
  else
    rm -f $T/s$n.sock   # a killed server's socket file would pass the wait below
    ip netns exec $NS$n qemu-nbd -f raw -x exp -t -k $T/s$n.sock "$2" 2>>$T/qemu-nbd.log &
    SPID[$n]=$!
    wait_for test -S $T/s$n.sock || fail "qemu-nbd $n did not come up"
  fi
}
stop() { kill ${SPID[$1]} 2>/dev/null || true; wait ${SPID[$1]} 2>/dev/null || true; }
child() {  # child N PREFIX: the options of a raw-over-nbd child served from namespace N
  local p=$2 s
  if [ $NET = tcp ]; then s="${p}file.server.type=inet,${p}file.server.host=10.99.$1.2,${p}file.server.port=10809"
  else s="${p}file.server.type=unix,${p}file.server.path=$T/s$1.sock"; fi
  echo "${p}driver=raw,${p}file.driver=nbd,$s,${p}file.export=exp,${p}file.reconnect-delay=20"
}
counter() {  # counter NAME: a node counter from list --json (-1: none)
  "$UBLKD" list -n $ID --json | jq -r "[.[0].stats.node_counters | to_entries[]
      | select(.key | endswith(\"$1\")) | .value] | add // -1"
}
events() { grep -c "\"type\":\"$1\"" $T/daemon.log || true; }
no_vote_failed() {
  [ "$(events QUORUM_FAILURE)" = 0 ] || { grep QUORUM_ $T/daemon.log | tail -5 >&2; fail "$1: a request failed the vote"; }
}
bg_fio() {  # bg_fio: random writes verified afterwards, in the background (FIO)
  fio --name=v --filename="$DEV" --direct=1 --ioengine=io_uring --rw=randwrite \
      --verify=crc32c --verify_fatal=1 --do_verify=1 --randrepeat=0 --verify_state_save=0 \
      --size=8M --bsrange=16k-128k --iodepth=16 --output-format=terse >$T/fio.out 2>&1 &
  FIO=$!
}
wait_fio() { wait $FIO || { cat $T/fio.out >&2; fail "$1: fio verify failed"; }; }

for n in 1 2 3 4; do host $n; mkimg $T/f$n.raw $SIZE; done
for n in 1 2 3; do serve $n $T/f$n.raw; done
q="driver=quorum,vote-threshold=2"
for i in 0 1 2; do q+=",$(child $((i + 1)) children.$i.)"; done
ublk_add --blockdev "$q" -q 2 --log $T/daemon.log >/dev/null
FIO_SIZE=$SIZE fio_verify "$DEV" --iodepth=16 --bs=64k --rw=write
sleep 1.2   # counters are published each second
[ "$(counter nbd-connected)" = 3 ] || fail "not all three children connected ($(counter nbd-connected))"

log "1: the server of child 0 killed and restarted under fio"
bg_fio
sleep 1
stop 1
sleep 1.5
[ "$(counter children.0/file/nbd-reconnecting)" = 1 ] || fail "child 0 is not reconnecting while its server is down"
[ "$(counter children.1/file/nbd-connected)" = 1 ] || fail "child 1 lost its connection"
serve 1 $T/f1.raw
wait_fio "server restart"
sleep 1.2
[ "$(counter nbd-connected)" = 3 ] || fail "not all three connected after the restart"
[ "$(counter children.0/file/nbd-reconnects)" -ge 1 ] || fail "no reconnect counted for child 0"
[ "$(counter nbd-failed)" = 0 ] || fail "a child went to failed"
[ "$(events nbd-disconnected)" -ge 1 ] || fail "no nbd-disconnected event in the log"
[ "$(events nbd-reconnected)" -ge 1 ] || fail "no nbd-reconnected event in the log"
no_vote_failed "server restart"

log "2: the link of child 2 impaired under fio"
bg_fio
sleep 1
if [ $NET = tcp ] && { modprobe sch_netem 2>/dev/null; tc qdisc add dev ubq$$v3 root netem loss 5% delay 10ms 2>/dev/null; }; then
  ip netns exec ${NS}3 tc qdisc add dev eth0 root netem loss 5% delay 10ms
  log "netem: 5% loss, 10 ms delay both ways"
  wait_fio "netem loss"
  tc qdisc del dev ubq$$v3 root; ip netns exec ${NS}3 tc qdisc del dev eth0 root
else
  log "sch_netem unavailable: the loss+delay part is skipped; the link is cut for 3 s instead"
  if [ $NET = tcp ]; then
    ip link set ubq$$v3 down; sleep 3; ip link set ubq$$v3 up
  else
    kill -STOP ${SPID[3]}; sleep 3; kill -CONT ${SPID[3]}   # no veth: a stalled server stands in for a dead link
  fi
  wait_fio "link cut"
fi
no_vote_failed "impaired link"
[ "$(counter nbd-failed)" = 0 ] || fail "a child went to failed"

log "3: child 1 replaced by a fresh export in namespace 4, rebuilt"
serve 4 $T/f4.raw
"$UBLKD" quorum -n $ID --replace 1 --with "$(child 4 "")" || fail "replace refused"
bg_fio
for _ in $(seq 300); do
  [ "$(counter children.1.rebuild-running)" = 0 ] &&
    [ "$(counter children.1.rebuild-done)" = "$(counter children.1.rebuild-total)" ] && break
  sleep 0.2
done
[ "$(counter children.1.rebuild-total)" -gt 0 ] || fail "no rebuild counters"
[ "$(counter children.1.rebuild-done)" = "$(counter children.1.rebuild-total)" ] || fail "child 1 was not rebuilt in 60 s"
[ "$(counter children.1.rebuild-error)" = 0 ] || fail "the rebuild failed"
wait_fio "rebuild"
FIO_SIZE=8M fio_verify "$DEV" --iodepth=16 --bsrange=4k-64k
[ "$(events QUORUM_REBUILD_DONE)" -ge 1 ] || fail "no QUORUM_REBUILD_DONE event"
no_vote_failed "rebuild"
ublk_del $ID
for n in 1 2 3 4; do stop $n; done
cmp $T/f1.raw $T/f3.raw || fail "the exports of children 0 and 2 differ"
cmp $T/f1.raw $T/f4.raw || fail "the rebuilt export differs from child 0's"
cmp -s $T/f1.raw $T/f2.raw && fail "the replaced export took writes after its replacement"
log "ok ($NET)"
