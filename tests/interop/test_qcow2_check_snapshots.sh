#!/bin/bash
# ublkd img check [-r all] on qcow2 images whose snapshot table is damaged
# (tests/interop/qcow2-snaptable.py): too much extra data in an entry,
# incomplete v3 entries, too many snapshots, a table past 64 MiB, a bad
# snapshot L1 offset or size.  Both checkers give the same findings on
# stderr, the same JSON and exit code; after -r all both tools find the
# repaired copies clean (where QEMU's repair makes them clean) and list the
# same snapshots, which still apply.
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
require_format qcow2
require_cmd jq
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
n_ok=0

json() { jq -S "del(.filename)" "$1" 2>&1 || echo "not JSON: $(cat "$1")"; }
strip='/^qemu-img: Check failed\|^ublkd img: Check failed/d; s/^qemu-img: \|^ublkd img: //'

# same TAG IMG [-r all]: human and JSON output of both tools on copies.
same() {
    local tag=$1 img=$2; shift 2
    local q u
    cp --sparse=always "$img" q.qcow2; cp --sparse=always "$img" u.qcow2
    qemu-img check "$@" q.qcow2 > q.out 2>&1; q=$?
    "$UBLKD" img check "$@" u.qcow2 > u.out 2>&1; u=$?
    if [ "$q" != "$u" ] || [ "$(sed "$strip" q.out)" != "$(sed "$strip" u.out)" ]; then
        echo "qemu-img exit $q, ublkd exit $u" >&2
        diff <(sed "$strip" q.out) <(sed "$strip" u.out) | head -40 >&2
        fail "$tag: check $* differs"
    fi
    if [ $# -gt 0 ]; then
        # both repaired copies: clean (or what qemu says of its own), same snapshots
        qemu-img check --output=json q.qcow2 > q2.json 2>/dev/null; q=$?
        qemu-img check --output=json u.qcow2 > u2.json 2>/dev/null; u=$?
        "$UBLKD" img check u.qcow2 > u3.out 2>&1 || [ "$q" != 0 ] ||
            { cat u3.out >&2; fail "$tag: ublkd check after its repair"; }
        [ "$q" = "$u" ] && [ "$(json q2.json)" = "$(json u2.json)" ] ||
            { cat q2.json u2.json >&2; fail "$tag: qemu-img check after -r all differs"; }
        [ "$(qemu-img snapshot -l q.qcow2 | md5sum)" = "$(qemu-img snapshot -l u.qcow2 | md5sum)" ] ||
            { qemu-img snapshot -l q.qcow2 | head; qemu-img snapshot -l u.qcow2 | head; fail "$tag: snapshot lists differ"; } >&2
        [ "$(qemu-img snapshot -l q.qcow2 | md5sum)" = "$("$UBLKD" img snapshot -l u.qcow2 | md5sum)" ] ||
            fail "$tag: ublkd img snapshot -l lists other snapshots"
        if [ "$q" = 0 ]; then
            qemu-img compare -q q.qcow2 u.qcow2 || fail "$tag: repaired images read differently"
        fi
        # the JSON of the repair itself
        cp --sparse=always "$img" q.qcow2; cp --sparse=always "$img" u.qcow2
        qemu-img check --output=json "$@" q.qcow2 > q.json 2>/dev/null; q=$?
        "$UBLKD" img check --output=json "$@" u.qcow2 > u.json 2>/dev/null; u=$?
        [ "$q" = "$u" ] && [ "$(json q.json)" = "$(json u.json)" ] ||
            { cat q.json u.json >&2; fail "$tag: check --output=json $* differs"; }
    else
        # and the JSON of the plain check
        qemu-img check --output=json "$img" > q.json 2>/dev/null; q=$?
        "$UBLKD" img check --output=json "$img" > u.json 2>/dev/null; u=$?
        [ "$q" = "$u" ] && [ "$(json q.json)" = "$(json u.json)" ] ||
            { cat q.json u.json >&2; fail "$tag: check --output=json differs"; }
    fi
    n_ok=$((n_ok + 1))
}
every() { same "$@"; same "$@" -r all; }

qemu-img create -q -f qcow2 b.qcow2 4M
qemu-io -c "write -P 1 0 192k" b.qcow2 > /dev/null || fail "qemu-io"
qemu-img snapshot -c s1 b.qcow2
qemu-io -c "write -P 2 0 64k" b.qcow2 > /dev/null
qemu-img snapshot -c s2 b.qcow2
qemu-io -c "write -P 3 64k 64k" b.qcow2 > /dev/null
qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 4M
qemu-img snapshot -c s1 v2.qcow2
$PY "$HERE/qcow2-snaptable.py" \
    b.qcow2 extra.qcow2 extra 0 2000 -- b.qcow2 inc.qcow2 extra 1 8 -- \
    b.qcow2 inc0.qcow2 extra 0 0 -- b.qcow2 both.qcow2 extra 0 4000 -- \
    both.qcow2 both.qcow2 extra 1 0 -- \
    b.qcow2 many.qcow2 many 65537 0 -- b.qcow2 big.qcow2 many 1040 65000 -- \
    b.qcow2 l1o.qcow2 l1off 0 0x50008 -- b.qcow2 l1s.qcow2 l1size 1 0x10000000 -- \
    v2.qcow2 v2inc.qcow2 extra 0 8 -- b.qcow2 off.qcow2 offset 0x10008 ||
    fail "crafting the tables"

every "too much extra data" extra.qcow2
every "incomplete entry" inc.qcow2
every "no extra data" inc0.qcow2
every "extra data dropped and incomplete" both.qcow2
every "v2 entry without extra data" v2inc.qcow2
# Too many snapshots: qemu-img takes ~10 s to open a table of 65536, so its
# -r all runs once and ublkd's repaired copy is judged by ublkd and by the
# header qemu-img wrote.
same "too many snapshots" many.qcow2
cp --sparse=always many.qcow2 q.qcow2; cp --sparse=always many.qcow2 u.qcow2
qemu-img check -r all q.qcow2 > q.out 2>&1; q=$?
"$UBLKD" img check -r all u.qcow2 > u.out 2>&1; u=$?
[ "$q" = "$u" ] && [ "$(sed "$strip" q.out)" = "$(sed "$strip" u.out)" ] ||
    { diff q.out u.out | head -20 >&2; fail "too many snapshots: check -r all differs"; }
[ "$(od -An -tx1 -j60 -N12 q.qcow2)" = "$(od -An -tx1 -j60 -N12 u.qcow2)" ] ||
    fail "too many snapshots: the header's table pointer differs after -r all"
"$UBLKD" img check u.qcow2 > u3.out 2>&1 || { cat u3.out >&2; fail "too many snapshots: not clean after -r all"; }
n_ok=$((n_ok + 1))
every "table too big" big.qcow2
every "snapshot L1 unaligned" l1o.qcow2
every "snapshot L1 too large" l1s.qcow2
every "table offset unaligned" off.qcow2

# The snapshots QEMU keeps still apply after ublkd's repair.
cp extra.qcow2 a.qcow2
"$UBLKD" img check -r all a.qcow2 > /dev/null 2>&1 || fail "repair of a.qcow2"
"$UBLKD" img snapshot -a s1 a.qcow2 || fail "apply s1 after the repair"
qemu-io -c "read -P 1 0 192k" a.qcow2 > /dev/null || fail "s1 does not read as it was"
qemu-img check a.qcow2 > /dev/null || fail "not clean after applying s1"

echo "snapshot-table checks: $n_ok compared"
