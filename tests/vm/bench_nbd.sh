#!/bin/bash
# bench_nbd.sh - ublkd over NBD against the kernel's nbd client, and a 3-way
# NBD quorum against one NBD child, in one VM boot (not run in CI).
#
#   tests/vm/bench_nbd.sh        # UBLKD=build/ublkd; needs nbd-client on the host
#
# Every row reads and writes through qemu-nbd on a unix socket in the guest's
# tmpfs, serving a 128 MiB raw file of random data (qemu-nbd --cache=none
# --aio=io_uring, so the server side is the same in every row):
#   kernel-nbd   nbd-client -u SOCK /dev/nbd0 (the kernel's nbd.ko, 1 connection)
#   ublkd-nbd    ublkd add raw over file.driver=nbd (one NBD connection), -q 1 and -q 2
#   ublkd-quorum ublkd add quorum vote-threshold=2 of three such children (three
#                qemu-nbd processes, one file each), -q 2
# Jobs: 4k randread QD32, 4k randwrite QD32, 128k sequential read QD8; fio
# io_uring --direct=1, 1 job, BENCH_RUNTIME s (default 5) each, one round.
# Prints a markdown table of IOPS and MiB/s.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export UBLKD=${UBLKD:-$ROOT/build/ublkd}
if [ "${BENCH_IN_GUEST:-0}" != 1 ]; then
  command -v nbd-client >/dev/null || { echo "bench_nbd: install nbd-client (apt-get install nbd-client)" >&2; exit 1; }
  E=(BENCH_IN_GUEST=1 UBLKD="$UBLKD")
  [ -n "${BENCH_RUNTIME:-}" ] && E+=("BENCH_RUNTIME=$BENCH_RUNTIME")
  if [ -e /dev/ublk-control ]; then exec env "${E[@]}" "$HERE/bench_nbd.sh" "$@"; fi
  work=$(mktemp -d /tmp/ublkd-bench.XXXXXX); trap 'rm -rf "$work"' EXIT
  "$HERE/ublk-vm" -w "$work" -m 2048 -t 900 -- env "${E[@]}" "$HERE/bench_nbd.sh" "$@"
  exit
fi

export PATH=$PATH:/usr/sbin:/sbin
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
RT=${BENCH_RUNTIME:-5}
T=$(mktemp -d /tmp/bench.XXXXXX)
set -e
PIDS=()
cleanup() {
  set +e
  nbd-client -d /dev/nbd0 >/dev/null 2>&1
  for id in $("$UBLKD" list --json 2>/dev/null | jq -r '.[].id' 2>/dev/null); do "$UBLKD" del -n "$id" >/dev/null 2>&1; done
  for p in "${PIDS[@]}"; do kill "$p"; done
  wait 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT
# One content for the three: a quorum whose children differ fails every read.
head -c 128M /dev/urandom > $T/f1.raw
cp $T/f1.raw $T/f2.raw; cp $T/f1.raw $T/f3.raw
for n in 1 2 3; do
  qemu-nbd -f raw -x exp -t --cache=none --aio=io_uring -k $T/s$n.sock $T/f$n.raw 2>>$T/qemu-nbd.log &
  PIDS+=($!)
done
for n in 1 2 3; do for _ in $(seq 100); do [ -S $T/s$n.sock ] && break; sleep 0.1; done; done
child() { echo "${2}driver=raw,${2}file.driver=nbd,${2}file.server.type=unix,${2}file.server.path=$T/s$1.sock,${2}file.export=exp"; }
quorum="driver=quorum,vote-threshold=2,$(child 1 children.0.),$(child 2 children.1.),$(child 3 children.2.)"

job() {  # job DEV NAME -> "IOPS MiB/s"
  local args
  case $2 in
    rr32) args="--rw=randread --bs=4k --iodepth=32";;
    rw32) args="--rw=randwrite --bs=4k --iodepth=32";;
    sr)   args="--rw=read --bs=128k --iodepth=8";;
  esac
  fio --name=b --filename="$1" --direct=1 --ioengine=io_uring $args --size=120M \
      --time_based --runtime=$RT --ramp_time=1 --output-format=json >$T/fio.json 2>&1 || true
  # fio may print notes before its JSON
  sed -n '/^{/,$p' $T/fio.json | jq -r '.jobs[0] | (.read.iops + .write.iops | floor | tostring) + " " +
           ((.read.bw + .write.bw) / 1024 | floor | tostring)' 2>/dev/null ||
    { echo "bench_nbd: fio on $1 ($2) failed:" >&2; head -5 $T/fio.json >&2; echo "- -"; }
}
row() {  # row LABEL DEV
  local r=("$1")
  for j in rr32 rw32 sr; do r+=("$(job "$2" $j)"); done
  printf '| %s | %s | %s | %s |\n' "${r[@]}" | sed 's/| \([0-9]*\) \([0-9]*\) /| \1 IOPS, \2 MiB\/s /g' >> $T/table
}
echo "| row | 4k randread QD32 | 4k randwrite QD32 | 128k read QD8 |" > $T/table
echo "|---|---|---|---|" >> $T/table

nbd-client -N exp -b 4096 -u $T/s1.sock /dev/nbd0 >/dev/null
row "kernel nbd-client (nbd.ko)" /dev/nbd0
nbd-client -d /dev/nbd0 >/dev/null
for q in 1 2; do
  dev=$("$UBLKD" add --blockdev "$(child 1 "")" -q $q)
  row "ublkd raw over nbd, -q $q" "$dev"
  "$UBLKD" del -n "${dev#/dev/ublkb}"
done
dev=$("$UBLKD" add --blockdev "$quorum" -q 2)
row "ublkd quorum of 3 nbd children, -q 2" "$dev"
"$UBLKD" del -n "${dev#/dev/ublkb}"
echo "bench_nbd: $(uname -r), ${RT}s per job, $(nproc) CPUs"
cat $T/table
