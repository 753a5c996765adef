#!/bin/bash
# list shows id, state, queues, depth, flags, graph, pid and counters, as text and JSON.
. "$(dirname "$0")/lib.sh"
mkimg $T/l.raw 16M
ublk_add raw $T/l.raw $CACHE_OPT -q 2 -d 64 >/dev/null
dd if=/dev/zero of="$DEV" bs=64k count=4 oflag=direct status=none
sleep 1.2
j=$("$UBLKD" list -n $ID --json)
echo "$j"
[ "$(jq -r '.[0].queues' <<<"$j")" = 2 ] || fail "queues"
[ "$(jq -r '.[0].depth' <<<"$j")" = 64 ] || fail "depth"
[ "$(jq -r '.[0].state' <<<"$j")" = LIVE ] || fail "state"
jq -r '.[0].graph' <<<"$j" | grep -q "l.raw" || fail "graph does not name the image"
[ "$(jq -r '.[0].stats.write.bytes' <<<"$j")" -ge 262144 ] || fail "write bytes not counted"
pid=$(jq -r '.[0].pid' <<<"$j"); kill -0 "$pid" || fail "pid $pid not alive"
"$UBLKD" list | grep -q "dev $ID: /dev/ublkb$ID state LIVE queues 2 depth 64" || fail "text list"
[ -f /run/ublkd/$ID.json ] || fail "no state file"
