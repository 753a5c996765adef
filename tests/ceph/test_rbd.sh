#!/bin/bash
# The rbd protocol against a throwaway single-host cluster (cluster.sh):
# create/info, convert both ways, img io / img bench, discard and write-zeroes
# seen by img map, resize, read-only snapshots, open errors, and the cluster
# gone after stop.  `make test-ceph`; needs make deps-ceph.  Prints
# "rbd: N passed, N failed" and exits non-zero on any failure.
set -u
UBLKD=${UBLKD:?UBLKD must point at the ublkd binary}
HERE=$(cd "$(dirname "$0")" && pwd)
for c in ceph-mon ceph-osd ceph rbd; do
    command -v $c >/dev/null || { echo "test_rbd: $c not installed (make deps-ceph)" >&2; exit 1; }
done
grep -q '^#define CONFIG_RBD 1' "$(dirname "$UBLKD")/config.h" 2>/dev/null ||
    { echo "test_rbd: $UBLKD was built without CONFIG_RBD" >&2; exit 1; }

WORK=$(mktemp -d /tmp/ublkd-rbd.XXXXXX)
CL=$WORK/c
cleanup() {
    "$HERE/cluster.sh" stop "$CL" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK" || exit 1

passed=0 failed=0
ok()  { passed=$((passed + 1)); echo "ok   $*"; }
bad() { failed=$((failed + 1)); echo "FAIL $*"; sed 's/^/    | /' "$WORK/.out" 2>/dev/null | head -20; }
# check NAME WANT_RC cmd...: output kept in .out
check() {
    local name=$1 want=$2 rc
    shift 2
    "$@" >"$WORK/.out" 2>&1
    rc=$?
    if [ "$rc" = "$want" ]; then ok "$name"; else echo "    exit $rc, wanted $want" >>"$WORK/.out"; bad "$name"; fi
}
# has NAME TEXT: the last check's output contains TEXT
has() {
    if grep -qF -- "$2" "$WORK/.out"; then ok "$1"; else echo "    lacks: $2" >>"$WORK/.out"; bad "$1"; fi
}
finish() {
    echo "rbd: $passed passed, $failed failed"
    [ "$failed" = 0 ]
    exit $?
}
U() { "$UBLKD" img "$@"; }

start=$(date +%s)
if ! "$HERE/cluster.sh" start "$CL" >"$WORK/.out" 2>&1; then
    bad "cluster starts"
    cat "$CL"/log/*.log 2>/dev/null | tail -20
    finish
fi
ok "cluster starts ($(( $(date +%s) - start )) s)"
export CEPH_CONF=$CL/ceph.conf

# ---- create, info ----
check "create" 0 U create -f raw rbd:rbd/a 16M
check "info" 0 U info -f raw rbd:rbd/a
has "info: virtual size" "virtual size: 16 MiB (16777216 bytes)"
has "info: object size as cluster_size" "cluster_size: 4194304"
check "rbd sees the size" 0 rbd info rbd/a
has "rbd: 16 MiB" "size 16 MiB"
check "create over an existing image fails" 1 U create -f raw rbd:rbd/a 16M
has "create: says it exists" "rbd: image 'rbd/a' already exists"
check "create with object size" 0 U create -f raw -o cluster_size=1M rbd:rbd/small 8M
check "rbd: 1 MiB objects" 0 rbd info rbd/small
has "rbd: order 20" "order 20"
# The options form, with the conf file given explicitly.
check "open by options" 0 U info --image-opts \
    "driver=raw,file.driver=rbd,file.pool=rbd,file.image=a,file.conf=$CEPH_CONF,file.user=admin"
has "options: virtual size" "virtual size: 16 MiB"

# ---- convert both ways ----
head -c 3M /dev/urandom >src.raw
truncate -s 8M src.raw
head -c 1M /dev/urandom >>src.raw
truncate -s 12M src.raw
check "convert file -> rbd" 0 U convert -f raw -O raw src.raw rbd:rbd/b
check "compare file, rbd" 0 U compare -f raw -F raw src.raw rbd:rbd/b
check "convert rbd -> file" 0 U convert -f raw -O raw rbd:rbd/b back.raw
check "round trip is byte-identical" 0 cmp src.raw back.raw
check "convert rbd -> qcow2" 0 U convert -f raw -O qcow2 rbd:rbd/b back.qcow2
check "qcow2 copy compares equal" 0 U compare -f raw -F qcow2 src.raw back.qcow2
# Holes stay holes in the RBD image (fast-diff block status, whole 4 MiB
# objects): the zeros of the object at 4-8 MiB are not written.
check "map of converted image" 0 U map -f raw --output=json rbd:rbd/b
has "map: a hole from 4 MiB" '"start": 4194304, "length": 4194304, "depth": 0, "present": true, "zero": true, "data": false'
check "compare sees a difference" 1 U compare -f raw -F raw src.raw rbd:rbd/a

# ---- img io, img bench ----
check "io write+read" 0 U io -f raw -c 'write -P 0x5a 512 1M' -c 'read -P 0x5a 512 1M' \
    -c 'read -P 0 0 512' -c 'read -P 0 1049088 4096' rbd:rbd/a
check "read back in a new process" 0 U io -f raw -r -c 'read -P 0x5a 512 1M' rbd:rbd/a
check "bench write" 0 U bench -f raw -w --pattern=0xc3 -c 128 -s 64k -d 8 rbd:rbd/a
check "bench wrote its pattern" 0 U io -f raw -r -c 'read -P 0xc3 0 8M' rbd:rbd/a
check "bench read, 2 threads" 0 U bench -f raw -c 256 -s 64k -d 8 --threads=2 rbd:rbd/a
# Unaligned and multi-segment requests go through librbd as they are.
check "unaligned write" 0 U io -f raw -c 'write -P 0x77 4097 5000' -c 'read -P 0x77 4097 5000' \
    -c 'read -P 0xc3 4096 1' -c 'read -P 0xc3 9097 1' rbd:rbd/a
check "vectored write" 0 U io -f raw -c 'writev -P 0x66 65536 4k 8k 512' \
    -c 'read -P 0x66 65536 12800' rbd:rbd/a

# ---- discard and write-zeroes, as img map sees them ----
check "create z" 0 U create -f raw rbd:rbd/z 16M
check "fill z" 0 U io -f raw -c 'write -P 1 0 16M' rbd:rbd/z
check "map: all data" 0 U map -f raw --output=json rbd:rbd/z
has "map: one data extent" '"start": 0, "length": 16777216, "depth": 0, "present": true, "zero": false, "data": true'
check "discard 0-4M, write-zeroes 8M-12M" 0 U io -f raw -c 'discard 0 4M' -c 'write -z 8M 4M' \
    -c 'read -P 0 0 4M' -c 'read -P 0 8M 4M' -c 'read -P 1 4M 4M' -c 'read -P 1 12M 4M' rbd:rbd/z
check "map after" 0 U map -f raw --output=json rbd:rbd/z
has "map: discarded is zero" '"start": 0, "length": 4194304, "depth": 0, "present": true, "zero": true, "data": false'
has "map: data kept" '"start": 4194304, "length": 4194304, "depth": 0, "present": true, "zero": false, "data": true'
has "map: zeroed is zero" '"start": 8388608, "length": 4194304, "depth": 0, "present": true, "zero": true, "data": false'
check "zeroes read back in a new process" 0 U io -f raw -r -c 'read -P 0 0 4M' -c 'read -P 0 8M 4M' rbd:rbd/z

# Without fast-diff librbd cannot say cheaply what is allocated: all of it is data.
check "image without fast-diff" 0 rbd create --size 8M --image-feature layering rbd/nofd
check "map without fast-diff" 0 U map -f raw --output=json rbd:rbd/nofd
has "map: all data" '"start": 0, "length": 8388608, "depth": 0, "present": true, "zero": false, "data": true'
check "reads zeros" 0 U io -f raw -r -c 'read -P 0 0 8M' rbd:rbd/nofd

# ---- resize ----
check "grow" 0 U resize -f raw rbd:rbd/a 32M
check "rbd sees 32 MiB" 0 rbd info rbd/a
has "rbd: 32 MiB" "size 32 MiB"
check "grown part reads zeros, old data kept" 0 U io -f raw -r -c 'read -P 0 16M 16M' \
    -c 'read -P 0xc3 2M 1M' rbd:rbd/a
check "shrink needs --shrink" 1 U resize -f raw rbd:rbd/a 8M
check "shrink" 0 U resize -f raw --shrink rbd:rbd/a 8M
check "info after shrink" 0 U info -f raw rbd:rbd/a
has "info: 8 MiB" "virtual size: 8 MiB (8388608 bytes)"

# ---- an RBD image as a qcow2 backing file, and img commit into it ----
check "create base" 0 U create -f raw rbd:rbd/base 4M
check "fill base" 0 U io -f raw -c 'write -P 0x44 0 4M' rbd:rbd/base
check "qcow2 over rbd" 0 U create -f qcow2 -b rbd:rbd/base -F raw top.qcow2
check "write the overlay" 0 U io -c 'write -P 0x55 1M 1M' -c 'read -P 0x44 0 1M' top.qcow2
check "commit into rbd" 0 U commit top.qcow2
check "base has the committed data" 0 U io -f raw -r -c 'read -P 0x55 1M 1M' \
    -c 'read -P 0x44 0 1M' -c 'read -P 0x44 2M 2M' rbd:rbd/base

# ---- qcow2 on RBD: writes past the end grow the image (as QEMU's rbd does) ----
check "create qcow2 on rbd" 0 U create -f qcow2 rbd:rbd/q 64M
check "info qcow2 on rbd" 0 U info -f qcow2 rbd:rbd/q
has "qcow2: virtual size" "virtual size: 64 MiB (67108864 bytes)"
# Allocating writes from 16 requests at a time: each grows the image, none may
# shrink what another grew.
check "qcow2: concurrent allocating writes" 0 U bench -f qcow2 -w --random --pattern=0x3c -c 512 \
    -s 64k -d 16 rbd:rbd/q
check "qcow2: check is clean" 0 U check -f qcow2 rbd:rbd/q
has "qcow2: no errors" "No errors were found on the image."
check "qcow2: a write reads back" 0 U io -f qcow2 -c 'write -P 0x9e 60M 1M' -c 'read -P 0x9e 60M 1M' rbd:rbd/q
check "qcow2 on rbd converts to a file" 0 U convert -f qcow2 -O raw rbd:rbd/q q.raw
check "qcow2 copy compares" 0 U compare -f qcow2 -F raw rbd:rbd/q q.raw

# ---- read-only snapshots ----
check "write before snapshot" 0 U io -f raw -c 'write -P 0x11 0 1M' rbd:rbd/a
check "rbd snap create" 0 rbd snap create rbd/a@s1
check "write after snapshot" 0 U io -f raw -c 'write -P 0x22 0 1M' rbd:rbd/a
check "snapshot reads old data" 0 U io -f raw -r -c 'read -P 0x11 0 1M' rbd:rbd/a@s1
check "image reads new data" 0 U io -f raw -r -c 'read -P 0x22 0 1M' rbd:rbd/a
check "snapshot refuses a read-write open" 1 U io -f raw -c 'read 0 4k' rbd:rbd/a@s1
has "snapshot: says read-only" "rbd: snapshot 's1' of rbd/a is read-only"
check "snapshot refuses writes" 1 U io -f raw -r -c 'write -P 0x33 0 4k' rbd:rbd/a@s1
check "snapshot unchanged" 0 U io -f raw -r -c 'read -P 0x11 0 1M' rbd:rbd/a@s1
check "convert from a snapshot" 0 U convert -f raw -O raw rbd:rbd/a@s1 snap.raw
check "snapshot copy has old data" 0 U io -f raw -r -c 'read -P 0x11 0 1M' snap.raw
check "snapshot info" 0 U info -f raw rbd:rbd/a@s1
has "snapshot info: size" "virtual size: 8 MiB"

# ---- open errors ----
check "missing pool" 1 U info -f raw rbd:nopool/a
has "missing pool: named" "rbd: pool 'nopool' does not exist (opening 'nopool/a')"
check "missing image" 1 U info -f raw rbd:rbd/nosuch
has "missing image: named" "rbd: image 'nosuch' does not exist in pool 'rbd'"
check "missing snapshot" 1 U info -f raw rbd:rbd/a@nosnap
has "missing snapshot: named" "rbd: image rbd/a has no snapshot 'nosnap'"
check "unknown user" 1 U info -f raw rbd:rbd/a:id=nobody:client_mount_timeout=5
has "unknown user: named" "rbd: cannot connect to the Ceph cluster"
has "unknown user: user named" "user 'nobody'"
# A keyring holding a wrong key for client.admin.
printf '[client.admin]\n\tkey = %s\n' "$(ceph-authtool --gen-print-key)" >bad.keyring
check "bad key" 1 U info -f raw "rbd:rbd/a:keyring=$WORK/bad.keyring:client_mount_timeout=5"
has "bad key: named" "for 'rbd/a'"
t0=$(date +%s)
check "unreachable mon" 1 U info -f raw 'rbd:rbd/a:mon_host=127.0.0.1\:1:client_mount_timeout=3'
has "unreachable mon: named" "rbd: cannot connect to the Ceph cluster (mon_host '127.0.0.1:1'"
t=$(( $(date +%s) - t0 ))
if [ "$t" -le 10 ]; then ok "unreachable mon fails in ${t} s"; else bad "unreachable mon took ${t} s"; fi
check "missing conf file" 1 U info -f raw rbd:rbd/a:conf=/nonexistent.conf
has "missing conf: named" "cannot read the Ceph configuration '/nonexistent.conf'"

# ---- cluster down ----
check "cluster stops" 0 "$HERE/cluster.sh" stop "$CL"
if pgrep -f "$CL/ceph.conf" >/dev/null; then bad "daemons left running"; else ok "no daemon left"; fi
t0=$(date +%s)
check "dead cluster: open fails" 1 U info -f raw "rbd:rbd/a:client_mount_timeout=3"
t=$(( $(date +%s) - t0 ))
if [ "$t" -le 10 ]; then ok "dead cluster fails in ${t} s"; else bad "dead cluster took ${t} s"; fi
finish
