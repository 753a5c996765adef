#!/bin/bash
# bench-zc.sh - ublkd with --zero-copy=off against on, in one VM boot
# (VM_KERNEL=7.3 tests/vm/bench-zc.sh; a kernel without zero copy shows "add failed" rows).
#
#   raw (cache=none) on a 1 GiB file on ext4 on a memory-backed null_blk, and null:
#   4k randread QD32 and 128k sequential read QD8, 1 queue, off and on interleaved
#   for BENCH_ROUNDS rounds (default 3) of BENCH_RUNTIME s (default 4) each.
# Prints one line per run (IOPS or MiB/s, and the daemon's CPU time per I/O),
# then the medians as a markdown table.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export UBLKD=${UBLKD:-$ROOT/build/ublkd}
RT=${BENCH_RUNTIME:-4}
ROUNDS=${BENCH_ROUNDS:-3}

if [ "${BENCH_IN_GUEST:-0}" != 1 ]; then
  if [ -e /dev/ublk-control ]; then exec env BENCH_IN_GUEST=1 "$HERE/bench-zc.sh" "$@"; fi
  work=$(mktemp -d /tmp/ublkd-bench.XXXXXX); trap 'rm -rf "$work"' EXIT
  exec "$HERE/ublk-vm" -w "$work" -t 1500 -- env BENCH_IN_GUEST=1 UBLKD="$UBLKD" \
      BENCH_RUNTIME="$RT" BENCH_ROUNDS="$ROUNDS" "$HERE/bench-zc.sh" "$@"
fi

export PATH=$PATH:/usr/sbin:/sbin
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
set -e
CFG=/sys/kernel/config/nullb
T=$(mktemp -d /tmp/bench.XXXXXX)
echo "# kernel $(uname -r); $("$UBLKD" features | head -1)"
mkdir $CFG/store
echo 1 > $CFG/store/memory_backed; echo 1 > $CFG/store/submit_queues
echo 1400 > $CFG/store/size; echo 4096 > $CFG/store/blocksize; echo 2 > $CFG/store/queue_mode
echo 1 > $CFG/store/power
store=
for d in /dev/store /dev/nullb$(cat $CFG/store/index); do
  for _ in $(seq 50); do [ -b $d ] && { store=$d; break 2; }; sleep 0.1; done
done
[ -n "$store" ] || { echo "bench-zc: no null_blk device"; exit 1; }
mkfs.ext4 -q -F $store >/dev/null
mkdir $T/fs; mount $store $T/fs
fallocate -l 1G $T/fs/img.raw
dd if=/dev/urandom of=$T/fs/img.raw bs=1M count=1024 conv=notrunc oflag=direct status=none

HZ=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' /proc/$1/stat 2>/dev/null || echo 0; }
declare -A JOBS=(
  [rr32]="--rw=randread --bs=4k --iodepth=32"
  [sr]="--rw=read --bs=128k --iodepth=8"
)
declare -A RES
run() {  # run LABEL ZC JOB ADD-ARGS...
  local label=$1 zc=$2 job=$3; shift 3
  local dev id pid c0 c1 out val ios
  dev=$("$UBLKD" add "$@" -q 1 --zero-copy=$zc) || { echo "$label $zc $job: add failed"; return; }
  id=${dev#/dev/ublkb}
  pid=$("$UBLKD" list -n $id --json | jq -r '.[0].pid')
  c0=$(cpu_ticks $pid)
  out=$(fio --name=b --filename="$dev" --direct=1 --ioengine=io_uring ${JOBS[$job]} --numjobs=1 \
        --size=900M --time_based --runtime=$RT --ramp_time=1 --output-format=json 2>/dev/null) ||
    { echo "$label $zc $job: fio failed"; "$UBLKD" del -n $id; return; }
  c1=$(cpu_ticks $pid)
  read -r val ios < <(jq -r --arg j $job '[(if $j == "sr" then .jobs[0].read.bw / 1024 else .jobs[0].read.iops end),
      .jobs[0].read.total_ios] | map(floor) | @tsv' <<<"$out")
  local mode; mode=$("$UBLKD" list -n $id --json | jq -r '.[0].zero_copy')
  local cpu=$(( ios > 0 ? (c1 - c0) * 1000000 / HZ / ios : 0 ))
  echo "$label zero-copy=$zc ($mode) $job: $val $([ $job = sr ] && echo MiB/s || echo IOPS), $cpu us cpu/io"
  RES[$label,$zc,$job]+="$val "
  RES[$label,$zc,$job,cpu]+="$cpu "
  "$UBLKD" del -n $id
}
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print NR ? a[int((NR + 1) / 2)] : "-"}'; }
for r in $(seq $ROUNDS); do
  for zc in off on; do
    run raw $zc rr32 raw $T/fs/img.raw --cache=none
    run raw $zc sr raw $T/fs/img.raw --cache=none
    run null $zc rr32 null --size 1G
  done
done
echo
echo "| device | zero copy | 4k randread QD32 | 128k read QD8 |"
echo "|---|---|---|---|"
for dev in raw null; do
  for zc in off on; do
    a=$(median <<<"${RES[$dev,$zc,rr32]:-}"); ac=$(median <<<"${RES[$dev,$zc,rr32,cpu]:-}")
    b=$(median <<<"${RES[$dev,$zc,sr]:-}"); bc=$(median <<<"${RES[$dev,$zc,sr,cpu]:-}")
    echo "| ublkd $dev -q 1 | $zc | $a IOPS ($ac us cpu/io) | $b MiB/s ($bc us cpu/io) |"
  done
done
umount $T/fs
echo 0 > $CFG/store/power; rmdir $CFG/store
