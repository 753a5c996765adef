#!/bin/bash
# bench.sh - ublkd against the kernel's own devices, in one VM boot (`make bench-vm`).
#
#   ublkd null   vs  null_blk (memory_backed=0)
#   ublkd raw    vs  loop --direct-io=on, on the same file (ext4 on a
#                    memory-backed null_blk, so O_DIRECT works for both)
#   ublkd raw    vs  loop --direct-io=on, on a null_blk with memory_backed=0:
#                    a backing that costs no copy and no filesystem, so the
#                    row shows what the raw path itself adds to ublkd null
# 4k randread QD1/QD32, 4k randwrite QD1/QD32, 128k seq read/write QD8 (1 job),
# and 4k randread QD32 with 2 jobs; ublkd with 1 and 2 queues, 2 queues also
# with --affinity=queue.  For ublkd the daemon's CPU time per I/O is shown.
# Prints a markdown table.  BENCH_RUNTIME (s, default 4) per job.
#
# BENCH_SET=qcow2 runs the qcow2 rows instead: a fully allocated 1 GiB qcow2 (on the
# same ext4) as a ublkd device with 1 and 2 queues against `qemu-nbd -c /dev/nbd0` on the
# same image (both cache=none, io_uring), 4k random read/write QD32 and 512k sequential
# read QD8; then the daemon's RSS over a 100 GiB sparse qcow2 after 1 GiB of random 64k
# writes, with the default cache sizes and with l2-cache-size=1M.
#
# BENCH_SET=quorum: a 3-way quorum (vote-threshold 2) of raw files against one of the
# raw files alone (the same ext4, cache=none), read-pattern quorum and fifo, 1 and 2
# queues: 4k random read/write QD32 and 128k sequential read/write QD8.  The cpu/io
# difference between the quorum and the raw rows is the vote's (and the fan-out's) cost.
#
# BENCH_SET=perio (needs Linux 6.16+: VM_KERNEL=7.3) compares one queue, one queue served
# by two per-I/O threads (--per-io-threads=2) and two queues, for ublkd null and ublkd raw
# on a null_blk (memory_backed=0), 4k randread QD32 with 1 and 2 jobs; BENCH_ROUNDS rounds
# (default 2) of every row, one after the other.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export UBLKD=${UBLKD:-$ROOT/build/ublkd}
RT=${BENCH_RUNTIME:-4}

if [ "${BENCH_IN_GUEST:-0}" != 1 ]; then
  if [ -e /dev/ublk-control ]; then exec env BENCH_IN_GUEST=1 "$HERE/bench.sh" "$@"; fi
  work=$(mktemp -d /tmp/ublkd-bench.XXXXXX); trap 'rm -rf "$work"' EXIT
  mem=2048; [ "${BENCH_SET:-}" = qcow2 ] && mem=4096   # raw + qcow2 copy on a memory-backed store
  exec "$HERE/ublk-vm" -w "$work" -m $mem -t 1500 -- env BENCH_IN_GUEST=1 UBLKD="$UBLKD" BENCH_RUNTIME="$RT" \
      BENCH_SET="${BENCH_SET:-}" BENCH_ROUNDS="${BENCH_ROUNDS:-2}" "$HERE/bench.sh" "$@"
fi

export PATH=$PATH:/usr/sbin:/sbin
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
set -e
CFG=/sys/kernel/config/nullb
T=$(mktemp -d /tmp/bench.XXXXXX)
nullb() {  # nullb NAME MEMBACKED QUEUES SIZE_MB
  mkdir $CFG/$1
  echo "$2" > $CFG/$1/memory_backed; echo "$3" > $CFG/$1/submit_queues
  echo "$4" > $CFG/$1/size; echo 4096 > $CFG/$1/blocksize; echo 2 > $CFG/$1/queue_mode
  echo 1 > $CFG/$1/power
}
# Newer kernels name a configfs null_blk after its directory, older ones nullb<index>.
nbdev() {
  local d
  for d in /dev/$1 /dev/nullb$(cat $CFG/$1/index); do
    for _ in $(seq 50); do [ -b $d ] && { echo $d; return; }; sleep 0.1; done
  done
  echo "bench: no block device for null_blk $1" >&2; return 1
}
[ -d $CFG ] || { echo "bench: null_blk configfs missing"; exit 1; }
# Backing store for the raw/loop comparison.
if [ "${BENCH_SET:-}" != perio ]; then
  store_mb=1400; [ "${BENCH_SET:-}" = qcow2 ] && store_mb=2600
  nullb store 1 2 $store_mb
  store=$(nbdev store)
  mkfs.ext4 -q -F $store >/dev/null
  mkdir $T/fs; mount $store $T/fs
fi
if [ "${BENCH_SET:-}" = quorum ]; then
  # Three equal replicas: the vote finds agreement everywhere, as in normal service.
  dd if=/dev/urandom of=$T/fs/q0.raw bs=1M count=384 oflag=direct status=none
  cp $T/fs/q0.raw $T/fs/q1.raw; cp $T/fs/q0.raw $T/fs/q2.raw
elif [ "${BENCH_SET:-}" != perio ]; then
  fallocate -l 1G $T/fs/img.raw
  dd if=/dev/urandom of=$T/fs/img.raw bs=1M count=1024 conv=notrunc oflag=direct status=none
fi

cpu_ticks() { [ -n "$1" ] && awk '{print $14 + $15}' /proc/$1/stat 2>/dev/null || echo 0; }
HZ=$(getconf CLK_TCK)
declare -A JOBS=(
  [rr1]="--rw=randread --bs=4k --iodepth=1 --numjobs=1"
  [rr32]="--rw=randread --bs=4k --iodepth=32 --numjobs=1"
  [rw1]="--rw=randwrite --bs=4k --iodepth=1 --numjobs=1"
  [rw32]="--rw=randwrite --bs=4k --iodepth=32 --numjobs=1"
  [sr]="--rw=read --bs=128k --iodepth=8 --numjobs=1"
  [sw]="--rw=write --bs=128k --iodepth=8 --numjobs=1"
  [rr32x2]="--rw=randread --bs=4k --iodepth=32 --numjobs=2"
)
ORDER="rr1 rr32 rw1 rw32 sr sw rr32x2"
if [ "${BENCH_SET:-}" = quorum ]; then
  ORDER="rr32 rw32 sr sw"
fi
if [ "${BENCH_SET:-}" = perio ]; then
  ORDER="rr32 rr32x2"
fi
if [ "${BENCH_SET:-}" = qcow2 ]; then
  JOBS[sr512]="--rw=read --bs=512k --iodepth=8 --numjobs=1"
  ORDER="rr32 rw32 sr512"
fi
echo "| device | $(for j in $ORDER; do printf '%s | ' $j; done)"
echo "|---|$(for j in $ORDER; do printf -- '---|'; done)"
run_dev() {  # run_dev LABEL DEV PID
  local label=$1 dev=$2 pid=${3:-} line="| $1 |"
  for j in $ORDER; do
    local c0 c1 out iops bw ios
    c0=$(cpu_ticks "$pid")
    out=$(fio --name=b --filename="$dev" --direct=1 --ioengine=io_uring --size=512M ${JOBS[$j]} \
          --time_based --runtime=$RT --ramp_time=1 --group_reporting --output-format=json 2>/dev/null) || { line+=" err |"; continue; }
    c1=$(cpu_ticks "$pid")
    read -r iops ios bw < <(jq -r '[(.jobs[0].read.iops + .jobs[0].write.iops),
        (.jobs[0].read.total_ios + .jobs[0].write.total_ios),
        ((.jobs[0].read.bw + .jobs[0].write.bw) / 1024)] | map(floor) | @tsv' <<<"$out")
    if [[ $j == s* ]]; then cell="${bw} MiB/s"; else cell="$(( iops / 1000 )).$(( iops % 1000 / 100 ))k"; fi
    if [ -n "$pid" ] && [ "$ios" -gt 0 ]; then
      cell+=" ($(( (c1 - c0) * 1000000 / HZ / ios )) us cpu/io)"
    fi
    line+=" $cell |"
  done
  echo "$line"
}
ublk() {  # ublk LABEL ADD-ARGS...
  local label=$1; shift
  local dev id pid
  dev=$("$UBLKD" add "$@") || { echo "| $label | add failed |"; return; }
  id=${dev#/dev/ublkb}
  pid=$("$UBLKD" list -n $id --json | jq -r '.[0].pid')
  run_dev "$label" "$dev" "$pid"
  "$UBLKD" del -n $id
}
if [ "${BENCH_SET:-}" = quorum ]; then
  # --size=300M in the jobs keeps every row inside the 384 MiB replicas.
  for j in $ORDER; do JOBS[$j]+=" --size=300M"; done
  q="driver=quorum,vote-threshold=2"
  for i in 0 1 2; do q+=",children.$i.driver=raw,children.$i.file.filename=$T/fs/q$i.raw"; done
  ublk "ublkd raw -q 1 (one replica)" raw $T/fs/q0.raw -q 1
  ublk "ublkd quorum x3 -q 1" --blockdev "$q" -q 1
  ublk "ublkd quorum x3 fifo -q 1" --blockdev "$q,read-pattern=fifo" -q 1
  ublk "ublkd raw -q 2 (one replica)" raw $T/fs/q0.raw -q 2
  ublk "ublkd quorum x3 -q 2" --blockdev "$q" -q 2
  ublk "ublkd quorum x3 fifo -q 2" --blockdev "$q,read-pattern=fifo" -q 2
  cmp $T/fs/q0.raw $T/fs/q1.raw && cmp $T/fs/q0.raw $T/fs/q2.raw \
    || echo "bench: the replicas differ after the quorum rows" >&2
  umount $T/fs
  echo 0 > $CFG/store/power; rmdir $CFG/store
  exit 0
fi
if [ "${BENCH_SET:-}" = perio ]; then
  echo "# kernel $(uname -r), $(nproc) CPUs, ublkd features: $("$UBLKD" features | grep -c PER_IO_DAEMON) PER_IO_DAEMON" >&2
  nullb bare 0 2 4096; bare=$(nbdev bare)
  for r in $(seq "${BENCH_ROUNDS:-2}"); do
    ublk "ublkd null -q 1 (round $r)" null --size 4G -q 1
    ublk "ublkd null -q 1 --per-io-threads=2 (round $r)" null --size 4G -q 1 --per-io-threads=2
    ublk "ublkd null -q 2 (round $r)" null --size 4G -q 2
    ublk "ublkd raw -q 1 on null_blk (round $r)" raw $bare -q 1
    ublk "ublkd raw -q 1 --per-io-threads=2 on null_blk (round $r)" raw $bare -q 1 --per-io-threads=2
    ublk "ublkd raw -q 2 on null_blk (round $r)" raw $bare -q 2
  done
  echo 0 > $CFG/bare/power; rmdir $CFG/bare
  exit 0
fi
if [ "${BENCH_SET:-}" = qcow2 ]; then
  export PATH=$PATH:/usr/bin
  qemu-img convert -f raw -O qcow2 $T/fs/img.raw $T/fs/img.qcow2
  rm -f $T/fs/img.raw
  modprobe nbd 2>/dev/null || true
  qemu-nbd -c /dev/nbd0 -f qcow2 --cache=none --aio=io_uring $T/fs/img.qcow2
  for _ in $(seq 50); do [ "$(cat /sys/block/nbd0/size)" != 0 ] && break; sleep 0.1; done
  nbd_pid=$(pgrep -f 'qemu-nbd -c /dev/nbd0' | head -1)
  run_dev "qemu-nbd -c (cache=none, io_uring)" /dev/nbd0 "$nbd_pid"
  qemu-nbd -d /dev/nbd0 >/dev/null
  # The server exits after the disconnect, not with it: until it has, it holds the
  # image's write lock and ublkd's add is refused.
  for _ in $(seq 100); do kill -0 "$nbd_pid" 2>/dev/null || break; sleep 0.1; done
  ublk "ublkd qcow2 -q 1 (cache=none)" qcow2 $T/fs/img.qcow2 -q 1
  ublk "ublkd qcow2 -q 2 (cache=none)" qcow2 $T/fs/img.qcow2 -q 2
  qemu-img check -q $T/fs/img.qcow2 || echo "bench: qemu-img check failed on the benchmarked image" >&2
  rm -f $T/fs/img.qcow2
  echo
  echo "| 100 GiB sparse qcow2, 1 GiB of random 64k writes | daemon VmRSS | VmHWM |"
  echo "|---|---|---|"
  for opt in "" "-o l2-cache-size=1M"; do
    qemu-img create -q -f qcow2 $T/fs/big.qcow2 100G
    dev=$("$UBLKD" add qcow2 $T/fs/big.qcow2 $opt) || { echo "| $opt | add failed | |"; continue; }
    id=${dev#/dev/ublkb}; pid=$("$UBLKD" list -n $id --json | jq -r '.[0].pid')
    fio --name=m --filename=$dev --direct=1 --ioengine=io_uring --rw=randwrite --bs=64k --iodepth=16 \
        --io_size=1G --randrepeat=1 --norandommap >/dev/null 2>&1 || echo "bench: fio failed" >&2
    rss=$(awk '/^VmRSS/ { print $2 " " $3 }' /proc/$pid/status)
    hwm=$(awk '/^VmHWM/ { print $2 " " $3 }' /proc/$pid/status)
    echo "| ${opt:-default caches} | $rss | $hwm |"
    "$UBLKD" del -n $id
    qemu-img check -q $T/fs/big.qcow2 || echo "bench: qemu-img check failed on the 100G image" >&2
    rm -f $T/fs/big.qcow2
  done
  umount $T/fs
  echo 0 > $CFG/store/power; rmdir $CFG/store
  exit 0
fi
nullb nb1 0 1 4096; run_dev "null_blk (1 queue)" $(nbdev nb1); echo 0 > $CFG/nb1/power; rmdir $CFG/nb1
nullb nb2 0 2 4096; run_dev "null_blk (2 queues)" $(nbdev nb2); echo 0 > $CFG/nb2/power; rmdir $CFG/nb2
ublk "ublkd null -q 1" null --size 4G -q 1
ublk "ublkd null -q 2" null --size 4G -q 2
ublk "ublkd null -q 2 --affinity=queue" null --size 4G -q 2 --affinity=queue
loopdev=$(losetup --direct-io=on --show -f $T/fs/img.raw)
echo "# loop direct-io: $(cat /sys/block/${loopdev#/dev/}/loop/dio)" >&2
run_dev "loop --direct-io=on" $loopdev
losetup -d $loopdev
ublk "ublkd raw -q 1 (cache=none)" raw $T/fs/img.raw -q 1
ublk "ublkd raw -q 2 (cache=none)" raw $T/fs/img.raw -q 2
ublk "ublkd raw -q 2 --affinity=queue" raw $T/fs/img.raw -q 2 --affinity=queue
nullb bare 0 1 4096; bare=$(nbdev bare)
loopdev=$(losetup --direct-io=on --show -f $bare)
run_dev "loop --direct-io=on (on null_blk)" $loopdev
losetup -d $loopdev
ublk "ublkd raw -q 1 (on null_blk)" raw $bare -q 1
ublk "ublkd raw -q 2 (on null_blk)" raw $bare -q 2
echo 0 > $CFG/bare/power; rmdir $CFG/bare
umount $T/fs
echo 0 > $CFG/store/power; rmdir $CFG/store
