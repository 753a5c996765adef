#!/bin/bash
# bench-kublk.sh - ublkd against the kernel's own ublk server, kublk, and the
# kernel's null_blk and loop, in one VM boot (`make bench-kublk`).
#
#   VM_KERNEL=7.3 tests/vm/bench-kublk.sh      # or 6.12 (the default guest)
#
# Rows (fresh device per row and round; rounds interleave the rows, each round
# starting one row further on, so host drift hits every row alike):
#   null_blk (memory_backed=0, 1 queue); loop --direct-io=on on IMG;
#   kublk null and loop (on IMG), 1 queue: plain, -z, --auto_zc, -b;
#   ublkd null and raw (IMG), --zero-copy=off|on with 1 and 2 queues, each
#   also with --batch (UBLK_F_BATCH_IO, 7.3; refused on 6.12),
#   --zero-copy=register (what kublk -z does) with 1, and null with
#   read-zeroes=off (reads leave the buffer as it is, as kublk's null does).
# IMG is one 1 GiB file of random data on ext4 on a memory-backed null_blk, the
# same for every row.  Jobs: 4k randread QD32, 4k randwrite QD32, 128k
# sequential read QD8; fio io_uring, --direct=1, 1 job, over the first 900 MiB.
# Prints every run (value, the server's CPU time per I/O, the guest's context
# switches and interrupts per I/O), then medians as a markdown table and the
# issue's ratios.  A row the kernel refuses (a kublk feature, ublkd's zero copy
# before 6.15) prints "refused" with the server's message.
#   BENCH_ROUNDS (3), BENCH_RUNTIME (s, 2), BENCH_RAMP (fio ramp_time, 500ms),
#   BENCH_ROWS (an extended regex on row labels: run only those),
#   BENCH_JOBS (subset of "rr32 rw32 sr"), KUBLK (default: tests/vm/build-kublk.sh),
#   BENCH_SCHED: the I/O scheduler set on every device (default none; "kernel" keeps
#   the kernel's choice: from 7.x a 1-queue ublk device's mq-deadline runs the queue
#   from kblockd for every io_uring request - see docs/PERFORMANCE.md),
#   BENCH_DIAG=1: after each run, the tasks that switched most and the interrupts
#   that fired most, per I/O (to see how the kernel wakes the server).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export UBLKD=${UBLKD:-$ROOT/build/ublkd}

if [ "${BENCH_IN_GUEST:-0}" != 1 ]; then
  KUBLK=${KUBLK:-$("$HERE/build-kublk.sh")} || { echo "bench-kublk: kublk did not build" >&2; exit 1; }
  E=(BENCH_IN_GUEST=1 UBLKD="$UBLKD" KUBLK="$KUBLK")
  for v in BENCH_ROUNDS BENCH_RUNTIME BENCH_RAMP BENCH_ROWS BENCH_JOBS BENCH_DIAG BENCH_SCHED; do
    [ -n "${!v:-}" ] && E+=("$v=${!v}")
  done
  if [ -e /dev/ublk-control ]; then exec env "${E[@]}" "$HERE/bench-kublk.sh" "$@"; fi
  work=$(mktemp -d /tmp/ublkd-bench.XXXXXX); trap 'rm -rf "$work"' EXIT
  "$HERE/ublk-vm" -w "$work" -m 2048 -t 1500 -- env "${E[@]}" "$HERE/bench-kublk.sh" "$@"
  exit
fi

export PATH=$PATH:/usr/sbin:/sbin
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
ROUNDS=${BENCH_ROUNDS:-3} RT=${BENCH_RUNTIME:-2} RAMP=${BENCH_RAMP:-500ms}
JOBLIST=${BENCH_JOBS:-rr32 rw32 sr} SCHED=${BENCH_SCHED:-none}
CFG=/sys/kernel/config/nullb
T=$(mktemp -d /tmp/bench.XXXXXX)
set -e
nullb() {  # nullb NAME MEMBACKED SIZE_MB -> device path
  mkdir $CFG/$1
  echo "$2" > $CFG/$1/memory_backed; echo 1 > $CFG/$1/submit_queues; echo "$3" > $CFG/$1/size
  echo 4096 > $CFG/$1/blocksize; echo 2 > $CFG/$1/queue_mode; echo 1 > $CFG/$1/power
  local d
  for d in /dev/$1 /dev/nullb$(cat $CFG/$1/index); do
    for _ in $(seq 50); do [ -b $d ] && { echo $d; return; }; sleep 0.1; done
  done
  echo "bench-kublk: no block device for null_blk $1" >&2; return 1
}
echo "# kernel $(uname -r), cmdline: $(cat /proc/cmdline)"
echo "# cpu: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(nproc) vCPUs;" \
     "clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource);" \
     "cpuidle $(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || echo none)"
[ "${BENCH_DIAG:-0}" = 1 ] && echo "# flags: $(awk -F': ' '/^flags/ {print $2; exit}' /proc/cpuinfo)"
echo "# mitigations: $(grep -l -v -e '^Not affected' -e '^Vulnerable' /sys/devices/system/cpu/vulnerabilities/* 2>/dev/null | xargs -rn1 basename | paste -sd' ')"
echo "# ublkd: $("$UBLKD" features | head -1); kublk: $("$KUBLK" features 2>&1 | tr -s ' \n\t' ' ' | cut -c1-300)"
IMG=$T/fs/img.raw
NB=$(nullb nb 0 4096)

ROWS=(
  "null_blk|K|$NB"
  "loop --direct-io=on|L|$IMG"
  "kublk null|U|-t null -q 1"
  "kublk null -z|U|-t null -q 1 -z"
  "kublk null --auto_zc|U|-t null -q 1 --auto_zc"
  "kublk null -b|U|-t null -q 1 -b"
  "kublk loop|U|-t loop -q 1 $IMG"
  "kublk loop -z|U|-t loop -q 1 -z $IMG"
  "kublk loop --auto_zc|U|-t loop -q 1 --auto_zc $IMG"
  "kublk loop -b|U|-t loop -q 1 -b $IMG"
  "ublkd null -q 1 zc=off|D|null --size 4G -q 1 --zero-copy=off"
  "ublkd null -q 1 zc=on|D|null --size 4G -q 1 --zero-copy=on"
  "ublkd null -q 1 zc=register|D|null --size 4G -q 1 --zero-copy=register"
  "ublkd null -q 2 zc=off|D|null --size 4G -q 2 --zero-copy=off"
  "ublkd null -q 2 zc=on|D|null --size 4G -q 2 --zero-copy=on"
  "ublkd null read-zeroes=off -q 1 zc=off|D|null --size 4G -q 1 --zero-copy=off -o read-zeroes=off"
  "ublkd null read-zeroes=off -q 1 zc=on|D|null --size 4G -q 1 --zero-copy=on -o read-zeroes=off"
  "ublkd raw -q 1 zc=off|D|raw $IMG -q 1 --zero-copy=off"
  "ublkd raw -q 1 zc=on|D|raw $IMG -q 1 --zero-copy=on"
  "ublkd raw -q 1 zc=register|D|raw $IMG -q 1 --zero-copy=register"
  "ublkd raw -q 2 zc=off|D|raw $IMG -q 2 --zero-copy=off"
  "ublkd raw -q 2 zc=on|D|raw $IMG -q 2 --zero-copy=on"
  "ublkd null -q 1 zc=off batch|D|null --size 4G -q 1 --zero-copy=off --batch"
  "ublkd null -q 1 zc=on batch|D|null --size 4G -q 1 --zero-copy=on --batch"
  "ublkd null -q 2 zc=off batch|D|null --size 4G -q 2 --zero-copy=off --batch"
  "ublkd null -q 2 zc=on batch|D|null --size 4G -q 2 --zero-copy=on --batch"
  "ublkd raw -q 1 zc=off batch|D|raw $IMG -q 1 --zero-copy=off --batch"
  "ublkd raw -q 1 zc=on batch|D|raw $IMG -q 1 --zero-copy=on --batch"
  "ublkd raw -q 2 zc=off batch|D|raw $IMG -q 2 --zero-copy=off --batch"
  "ublkd raw -q 2 zc=on batch|D|raw $IMG -q 2 --zero-copy=on --batch"
)
if [ -n "${BENCH_ROWS:-}" ]; then
  sel=(); for r in "${ROWS[@]}"; do [[ ${r%%|*} =~ $BENCH_ROWS ]] && sel+=("$r"); done; ROWS=("${sel[@]}")
fi
if [[ "${ROWS[*]}" == *"$IMG"* ]]; then
  store=$(nullb store 1 1400)
  mkfs.ext4 -q -F $store >/dev/null; mkdir $T/fs; mount $store $T/fs
  fallocate -l 1G $IMG
  dd if=/dev/urandom of=$IMG bs=1M count=1024 conv=notrunc oflag=direct status=none
fi
set +e
declare -A JOBS=(
  [rr32]="--rw=randread --bs=4k --iodepth=32"
  [rw32]="--rw=randwrite --bs=4k --iodepth=32"
  [sr]="--rw=read --bs=128k --iodepth=8"
)
declare -A RES REFUSED
HZ=$(getconf CLK_TCK)
cpu_ticks() { [ -n "$1" ] && awk '{print $14 + $15}' /proc/$1/stat 2>/dev/null || echo 0; }
ctxt() { awk '/^ctxt/ {print $2}' /proc/stat; }
intr() { awk '/^intr/ {print $2}' /proc/stat; }
# Per-thread context switches (tid name count) and per-source interrupt counts.
snap() {
  awk '/^Name:/ {n = $2} /^voluntary_ctxt/ {v = $2} /^nonvoluntary_ctxt/ {split(FILENAME, p, "/"); print p[5], n, v + $2}' \
    /proc/[0-9]*/task/[0-9]*/status 2>/dev/null > $T/$1.tasks
  awk 'NR > 1 {s = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i; print $1, s}' /proc/interrupts > $T/$1.irq
}
diag() {  # diag IOS: the top switchers and interrupt sources between snap a and snap b
  awk -v ios=$1 'FNR == NR {a[$1] = $3; next} {d = $3 - a[$1]; n = $2; gsub(/[0-9]+/, "#", n); s[n] += d}
    END {for (k in s) if (s[k] > 0) printf "%.2f %s\n", s[k] / ios, k}' $T/a.tasks $T/b.tasks |
    sort -rn | head -6 | awk '{printf " %s %s", $2, $1} END {print ""}' | sed 's/^/    ctxt\/io:/'
  awk -v ios=$1 'FNR == NR {a[$1] = $2; next} {d = $2 - a[$1]; if (d > 0) printf "%.2f %s\n", d / ios, $1}' $T/a.irq $T/b.irq |
    sort -rn | head -6 | awk '{printf " %s %s", $2, $1} END {print ""}' | sed 's/^/    intr\/io:/'
}
# up: start ROW's device; sets DEV, PID (server) and DOWN (how to remove it).
up() {
  local kind=$1 args=$2 out
  DEV= PID= DOWN=
  case $kind in
    K) DEV=$args;;
    L) DEV=$(losetup --direct-io=on --show -f "$args") || return 1
       [ "$(cat /sys/block/${DEV#/dev/}/loop/dio)" = 1 ] || echo "# ${DEV}: direct I/O refused" >&2
       DOWN="losetup -d $DEV";;
    U) # shellcheck disable=SC2086
       out=$("$KUBLK" add $args 2>&1) || { ERR=$(tr -s '\n' ' ' <<<"$out" | cut -c1-160); return 1; }
       local id; id=$(awk -F'[ :]' '/dev id/ {print $3; exit}' <<<"$out")
       [ -n "$id" ] || { ERR=$(tr -s '\n' ' ' <<<"$out" | cut -c1-160); return 1; }
       DEV=/dev/ublkb$id PID=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' <<<"$out" | head -1)
       DOWN="$KUBLK del -n $id"
       # kublk does not check the kernel's features, and a kernel drops the flags it
       # does not know (6.12 takes -z, --auto_zc and -b and runs plain): the flags the
       # device got must hold the one asked for, as the selftests' own gate checks.
       local got want=0 f; got=$(sed -n 's/.* flags \(0x[0-9a-f]*\).*/\1/p' <<<"$out" | head -1)
       for f in $args; do case $f in -z) want=$((want | 0x1));; --auto_zc) want=$((want | 0x800));;
         -b) want=$((want | 0x8000));; esac; done
       if [ $(( ${got:-0} & want )) != $want ]; then
         $DOWN >/dev/null 2>&1; ERR="the kernel dropped the flag (asked $(printf 0x%x $want), got ${got:-?})"; return 1
       fi;;
    D) # shellcheck disable=SC2086
       DEV=$("$UBLKD" add $args 2>$T/err) || { ERR=$(tr -s '\n' ' ' < $T/err | cut -c1-160); return 1; }
       PID=$("$UBLKD" list -n ${DEV#/dev/ublkb} --json | jq -r '.[0].pid')
       DOWN="$UBLKD del -n ${DEV#/dev/ublkb}";;
  esac
  for _ in $(seq 50); do [ -b "$DEV" ] && return 0; sleep 0.1; done
  ERR="no block device $DEV"; return 1
}
n=${#ROWS[@]}
echo "# ${n} rows x jobs ($JOBLIST) x $ROUNDS rounds, ${RT}s + ${RAMP} ramp each"
for r in $(seq 0 $((ROUNDS - 1))); do
  t0=$(date +%s)
  for i in $(seq 0 $((n - 1))); do
    row=${ROWS[$(( (i + r) % n ))]}
    label=${row%%|*} rest=${row#*|}; kind=${rest%%|*} args=${rest#*|}
    [ -n "${REFUSED[$label]:-}" ] && continue
    ERR=
    if ! up "$kind" "$args"; then
      REFUSED[$label]=${ERR:-refused}; echo "round $((r + 1)) | $label | refused: ${ERR:-?}"; continue
    fi
    q=/sys/block/${DEV#/dev/}/queue/scheduler
    [ "$SCHED" != kernel ] && { echo "$SCHED" > $q || echo "# $label: scheduler $SCHED refused" >&2; }
    sched=$(grep -o '\[[^]]*\]' $q | tr -d '[]')
    for j in $JOBLIST; do
      [ "${BENCH_DIAG:-0}" = 1 ] && snap a
      c0=$(cpu_ticks "$PID"); x0=$(ctxt); i0=$(intr)
      out=$(fio --name=b --filename="$DEV" --direct=1 --ioengine=io_uring ${JOBS[$j]} --numjobs=1 \
            --size=900M --time_based --runtime=$RT --ramp_time=$RAMP --output-format=json 2>/dev/null) ||
        { echo "round $((r + 1)) | $label | $j | fio failed"; continue; }
      c1=$(cpu_ticks "$PID"); x1=$(ctxt); i1=$(intr)
      [ "${BENCH_DIAG:-0}" = 1 ] && snap b
      read -r iops bw ios < <(jq -r '[(.jobs[0].read.iops + .jobs[0].write.iops),
          ((.jobs[0].read.bw + .jobs[0].write.bw) / 1024),
          (.jobs[0].read.total_ios + .jobs[0].write.total_ios)] | map(floor) | @tsv' <<<"$out")
      [ "$ios" -gt 0 ] || ios=1
      # The counters include the ramp; fio's total_ios does not: per-I/O figures are
      # upper bounds by the ramp's share (the same for every row).
      cpu=$(( (c1 - c0) * 1000000 / HZ / ios )); cs=$(( (x1 - x0) * 100 / ios )); it=$(( (i1 - i0) * 100 / ios ))
      if [ $j = sr ]; then val=$bw unit=MiB/s; else val=$iops unit=IOPS; fi
      echo "round $((r + 1)) | $label | $j | $val $unit | ${PID:+$cpu us cpu/io | }sched $sched | ctxt/io $((cs / 100)).$(printf %02d $((cs % 100))) | intr/io $((it / 100)).$(printf %02d $((it % 100)))"
      [ "${BENCH_DIAG:-0}" = 1 ] && diag $ios
      RES[$label,$j]+="$val "
      [ -n "$PID" ] && RES[$label,$j,cpu]+="$cpu "
    done
    [ -n "$DOWN" ] && { $DOWN >/dev/null 2>&1 || echo "# $label: removal failed" >&2; }
  done
  echo "# round $((r + 1)) took $(( $(date +%s) - t0 )) s"
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print NR ? a[int((NR + 1) / 2)] : ""}'; }
med() { median <<<"${RES[$1,$2]:-}"; }
echo
echo "| device | $(for j in $JOBLIST; do printf '%s | ' "$j"; done)"
echo "|---|$(for j in $JOBLIST; do printf -- '---|'; done)"
for row in "${ROWS[@]}"; do
  label=${row%%|*}; line="| $label |"
  if [ -n "${REFUSED[$label]:-}" ]; then echo "$line refused: ${REFUSED[$label]} |"; continue; fi
  for j in $JOBLIST; do
    v=$(med "$label" $j); c=$(median <<<"${RES[$label,$j,cpu]:-}")
    if [ -z "$v" ]; then line+=" - |"; continue; fi
    if [ $j = sr ]; then cell="$v MiB/s"; else cell="$((v / 1000)).$((v % 1000 / 100))k"; fi
    line+=" $cell${c:+ ($c us)} |"
  done
  echo "$line"
done
ratio() {  # ratio TEXT A B JOB
  local a b; a=$(med "$2" $4); b=$(med "$3" $4)
  [ -n "$a" ] && [ -n "$b" ] && [ "$b" -gt 0 ] && echo "- $1: $(awk -v a=$a -v b=$b 'BEGIN {printf "%.2f", a / b}')x ($a / $b)"
  return 0
}
echo
ratio "raw zero copy / copy, 128k read QD8 (target >= 1.5)" "ublkd raw -q 1 zc=on" "ublkd raw -q 1 zc=off" sr
ratio "raw / null, zc=off, 4k randread QD32 (target >= 0.85)" "ublkd raw -q 1 zc=off" "ublkd null -q 1 zc=off" rr32
ratio "raw / null, zc=on, 4k randread QD32 (target >= 0.85)" "ublkd raw -q 1 zc=on" "ublkd null -q 1 zc=on" rr32
ratio "raw zc=off / kernel loop, 4k randread QD32 (target >= 1.0)" "ublkd raw -q 1 zc=off" "loop --direct-io=on" rr32
ratio "raw zc=on / kernel loop, 4k randread QD32 (target >= 1.0)" "ublkd raw -q 1 zc=on" "loop --direct-io=on" rr32
for j in $JOBLIST; do
  ratio "ublkd null zc=off / kublk null, $j" "ublkd null -q 1 zc=off" "kublk null" $j
  ratio "ublkd null read-zeroes=off zc=off / kublk null, $j" "ublkd null read-zeroes=off -q 1 zc=off" "kublk null" $j
  ratio "ublkd null zc=register / kublk null -z, $j" "ublkd null -q 1 zc=register" "kublk null -z" $j
  ratio "ublkd null zc=on / kublk null --auto_zc, $j" "ublkd null -q 1 zc=on" "kublk null --auto_zc" $j
  ratio "ublkd null read-zeroes=off zc=on / kublk null --auto_zc, $j" "ublkd null read-zeroes=off -q 1 zc=on" "kublk null --auto_zc" $j
  ratio "ublkd raw zc=off / kublk loop, $j" "ublkd raw -q 1 zc=off" "kublk loop" $j
  ratio "ublkd raw zc=register / kublk loop -z, $j" "ublkd raw -q 1 zc=register" "kublk loop -z" $j
  ratio "ublkd raw zc=on / kublk loop --auto_zc, $j" "ublkd raw -q 1 zc=on" "kublk loop --auto_zc" $j
  ratio "kublk null -b / kublk null, $j" "kublk null -b" "kublk null" $j
  for t in null raw; do for q in 1 2; do for z in off on; do
    ratio "ublkd $t -q $q zc=$z --batch / without, $j" "ublkd $t -q $q zc=$z batch" "ublkd $t -q $q zc=$z" $j
  done; done; done
done
mountpoint -q $T/fs && umount $T/fs
for b in store nb; do [ -d $CFG/$b ] && { echo 0 > $CFG/$b/power; rmdir $CFG/$b; }; done
