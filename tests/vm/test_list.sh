#!/bin/bash
# list shows id, state, queues, depth, flags, graph, pid and counters, as text and JSON,
# and what ublksrv's list shows and more: size, block sizes, max I/O, read-only, cache,
# recovery, zero-copy/user-copy, each queue's thread and CPUs, the image chain.
# Also ublksrv's `add -t TYPE -f FILE` spelling, null's default size, and recover's
# reason for a device that cannot be recovered.
. "$(dirname "$0")/lib.sh"
mkimg $T/l.raw 16M
ublk_add -t raw -f $T/l.raw $CACHE_OPT -q 2 -d 64 >/dev/null
dd if=/dev/zero of="$DEV" bs=64k count=4 oflag=direct status=none
sleep 1.2
j=$("$UBLKD" list -n $ID --json)
echo "$j"
[ "$(jq -r '.[0].queues' <<<"$j")" = 2 ] || fail "queues"
[ "$(jq -r '.[0].depth' <<<"$j")" = 64 ] || fail "depth"
[ "$(jq -r '.[0].state' <<<"$j")" = LIVE ] || fail "state"
jq -r '.[0].graph' <<<"$j" | grep -q "l.raw" || fail "graph does not name the image"
[ "$(jq -r '.[0].stats.write.bytes' <<<"$j")" -ge 262144 ] || fail "write bytes not counted"
[ "$(jq -r '.[0].stats.write.errors' <<<"$j")" = 0 ] || fail "write errors"
pid=$(jq -r '.[0].pid' <<<"$j"); kill -0 "$pid" || fail "pid $pid not alive"
# what the kernel was told, and the mode
[ "$(jq -r '.[0].size' <<<"$j")" = $((16 << 20)) ] || fail "size"
[ "$(jq -r '.[0].size' <<<"$j")" = "$(blockdev --getsize64 "$DEV")" ] || fail "size vs blockdev"
[ "$(jq -r '.[0].logical_block_size' <<<"$j")" = "$(blockdev --getss "$DEV")" ] || fail "logical block size"
[ "$(jq -r '.[0].physical_block_size' <<<"$j")" = "$(blockdev --getpbsz "$DEV")" ] || fail "physical block size"
[ "$(jq -r '.[0].max_io_size' <<<"$j")" = $((512 << 10)) ] || fail "max_io_size"
[ "$(jq -r '.[0].read_only' <<<"$j")" = false ] || fail "read_only"
[ "$(jq -r '.[0].cache' <<<"$j")" = writeback ] || fail "cache"
[ "$(jq -r '.[0].recovery' <<<"$j")" = reissue ] || fail "recovery"
# --zero-copy=auto: AUTO_BUF_REG where the kernel has it (7.x), else off (6.12).
zc_want=off
"$UBLKD" features | grep -q "UBLK_F_AUTO_BUF_REG$" && zc_want=auto-buf-reg
[ "$(jq -r '.[0].zero_copy' <<<"$j")" = "$zc_want" ] || fail "zero_copy $(jq -r '.[0].zero_copy' <<<"$j"), want $zc_want"
if [ $zc_want = auto-buf-reg ]; then
  jq -e '.[0].flag_list | index("AUTO_BUF_REG")' <<<"$j" >/dev/null || fail "flag_list lacks AUTO_BUF_REG"
fi
[ "$(jq -r '.[0].user_copy' <<<"$j")" = false ] || fail "user_copy"
jq -e '.[0].flag_list | index("USER_RECOVERY")' <<<"$j" >/dev/null || fail "flag_list lacks USER_RECOVERY"
# each queue's thread is a thread of the daemon, named for its queue, with its CPUs
for q in 0 1; do
    tid=$(jq -r ".[0].queue_threads[$q].tid" <<<"$j")
    [ -d /proc/$pid/task/$tid ] && [ "$tid" != 0 ] || fail "queue $q: tid $tid is not a thread of $pid"
    [ "$(cat /proc/$pid/task/$tid/comm)" = "ublk$ID-q$q" ] || fail "queue $q: thread $tid is not its queue's"
    want=$(taskset -pc "$tid" | sed 's/.*: //')
    [ "$(jq -r ".[0].queue_threads[$q].cpus" <<<"$j")" = "$want" ] || fail "queue $q: cpus, taskset says $want"
    jq -e ".[0].queue_threads[$q].kernel_affinity" <<<"$j" >/dev/null || fail "queue $q: no kernel affinity"
done
[ "$(jq -r '.[0].image[0].format' <<<"$j")" = raw ] || fail "image format"
[ "$(jq -r '.[0].image[0].file' <<<"$j")" = "$T/l.raw" ] || fail "image file"
t=$("$UBLKD" list)
echo "$t"
grep -q "dev $ID: /dev/ublkb$ID state LIVE queues 2 depth 64" <<<"$t" || fail "text list"
grep -q "  size 16777216 bytes, logical block [0-9]*, physical block [0-9]*, max I/O 524288, read-only no" <<<"$t" || fail "text size line"
grep -q "  cache writeback, recovery reissue, zero-copy $zc_want, user-copy off" <<<"$t" || fail "text mode line"
grep -q "  queue 1: tid [1-9][0-9]* cpus " <<<"$t" || fail "text queue line"
grep -q "  image: raw $T/l.raw" <<<"$t" || fail "text image line"
grep -q "  write        ops [0-9]* bytes [0-9]* errors 0" <<<"$t" || fail "text counters"
[ -f /run/ublkd/$ID.json ] || fail "no state file"

# a read-only qcow2 over a backing file: the chain, read-only and -o cache
# (its own backing file: l.raw is written by the first device, which lets no reader in)
mkimg $T/b.raw 16M
if "$UBLKD" img create -q -f qcow2 -b $T/b.raw -F raw $T/top.qcow2 2>/dev/null; then
    ublk_add -t qcow2 -f $T/top.qcow2 --read-only --cache=writethrough --recovery=fail >/dev/null
    j=$("$UBLKD" list -n $ID --json)
    [ "$(jq -r '.[0].image[0].format' <<<"$j")" = qcow2 ] || fail "qcow2 chain: top format"
    [ "$(jq -r '.[0].image[1].file' <<<"$j")" = "$T/b.raw" ] || { echo "$j"; fail "qcow2 chain: backing file"; }
    [ "$(jq -r '.[0].read_only' <<<"$j")" = true ] || fail "read_only of a --read-only device"
    [ "$(jq -r '.[0].cache' <<<"$j")" = writethrough ] || fail "cache writethrough"
    [ "$(jq -r '.[0].recovery' <<<"$j")" = fail ] || fail "recovery fail"
    "$UBLKD" list -n $ID | grep -q "  backing: raw $T/b.raw" || fail "text backing line"
fi

# null without --size is 250 GiB, as ublksrv's null target
ublk_add -t null >/dev/null
[ "$(blockdev --getsize64 "$DEV")" = $((250 << 30)) ] || fail "null default size"

# a lock conflict names the image and gives img's hint (both lines reach the user)
mkimg $T/busy.raw 1M
qemu-io -f raw -c 'sleep 20000' $T/busy.raw >/dev/null 2>&1 &
qio=$!
# qemu-io starts slowly under TCG: wait for its lock on the image's inode
ino=$(stat -c %i $T/busy.raw)
wait_for grep -q ":$ino " /proc/locks || fail "qemu-io took no lock on busy.raw"
out=$("$UBLKD" add raw $T/busy.raw $CACHE_OPT 2>&1) && fail "add of an image qemu-io writes succeeded"
kill $qio; wait $qio 2>/dev/null || true
grep -q "Could not open '$T/busy.raw': Failed to get shared \"write\" lock" <<<"$out" || fail "lock message: $out"
grep -q "Is another process using the image \[$T/busy.raw\]?" <<<"$out" || fail "lock hint: $out"

# recover says why a device added with --recovery=none cannot come back
mkimg $T/n.raw 1M
ublk_add raw $T/n.raw $CACHE_OPT --recovery=none >/dev/null
nid=$ID
pid=$("$UBLKD" list -n $nid --json | jq -r '.[0].pid')
kill -9 "$pid"
wait_for sh -c "! kill -0 $pid 2>/dev/null" || fail "daemon $pid did not die"
out=$("$UBLKD" recover -n $nid 2>&1) && fail "recover of a --recovery=none device succeeded"
grep -q "added with --recovery=none" <<<"$out" || fail "recover does not say why: $out"
exit 0
