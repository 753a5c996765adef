#!/bin/bash
# bench_rbd_krbd.sh - ublkd over RBD against the kernel's krbd on the same image, in
# one VM boot (not run in CI).
#
#   tests/vm/bench_rbd_krbd.sh   # UBLKD=build/ublkd; needs the Ceph daemons (make deps-ceph)
#
# In the guest: tests/ceph/cluster.sh (one mon, one memstore OSD on 127.0.0.1, cephx,
# msgr2 only), one 256 MiB image created with the layering feature only (what krbd
# maps) and filled by `rbd bench`, then the same fio jobs on
#   krbd   `rbd map -o noudev,ms_mode=crc` (rbd.ko/libceph.ko; the guest has no udevd)
#   ublkd  `ublkd add raw rbd:rbd/img`, -q 1 and -q 2 (librbd AIO)
# Jobs: 4k randread QD32, 4k randwrite QD32, 128k sequential read QD8, 128k sequential
# write QD8; fio io_uring --direct=1, 1 job, BENCH_RUNTIME s (default 10) each, one round.
# The OSD runs in the same TCG guest as the client, so the ratio ublkd/krbd is the point,
# not the absolute figures.  Prints a markdown table of IOPS and MiB/s and the ratios.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export UBLKD=${UBLKD:-$ROOT/build/ublkd}
if [ "${BENCH_IN_GUEST:-0}" != 1 ]; then
  for c in ceph-mon ceph-osd rbd fio jq; do
    command -v $c >/dev/null || { echo "bench_rbd_krbd: $c is not installed (make deps-ceph)" >&2; exit 1; }
  done
  E=(BENCH_IN_GUEST=1 UBLKD="$UBLKD")
  [ -n "${BENCH_RUNTIME:-}" ] && E+=("BENCH_RUNTIME=$BENCH_RUNTIME")
  if [ -e /dev/ublk-control ]; then exec env "${E[@]}" "$HERE/bench_rbd_krbd.sh" "$@"; fi
  work=$(mktemp -d /tmp/ublkd-bench.XXXXXX); trap 'rm -rf "$work"' EXIT
  "$HERE/ublk-vm" -w "$work" -m 3072 -t 1200 -- env "${E[@]}" "$HERE/bench_rbd_krbd.sh" "$@"
  exit
fi

export PATH=$PATH:/usr/sbin:/sbin
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
RT=${BENCH_RUNTIME:-10}
T=$(mktemp -d /tmp/bench.XXXXXX)
CL=$T/c
KDEV=
cleanup() {
  set +e
  for id in $("$UBLKD" list --json 2>/dev/null | jq -r '.[].id' 2>/dev/null); do "$UBLKD" del -n "$id" >/dev/null 2>&1; done
  [ -n "$KDEV" ] && rbd unmap -o noudev "$KDEV" >/dev/null 2>&1
  "$ROOT/tests/ceph/cluster.sh" stop "$CL"
  rm -rf "$T"
}
trap cleanup EXIT
[ -e /sys/bus/rbd ] || modprobe rbd 2>/dev/null
[ -e /sys/bus/rbd ] || { echo "bench_rbd_krbd: the kernel has no rbd module (krbd)" >&2; exit 1; }
# The guest's init leaves the loopback down; the cluster lives on 127.0.0.1.
ip link set lo up
"$ROOT/tests/ceph/cluster.sh" start "$CL" || { tail -n 5 "$CL"/log/*.log >&2; exit 1; }
export CEPH_CONF=$CL/ceph.conf
rbd create --size 256M --image-feature layering rbd/img || exit 1
# Filled first, so reads find data and writes overwrite allocated objects.
rbd bench --io-type write --io-size 4M --io-threads 4 --io-total 256M --io-pattern seq rbd/img >/dev/null || exit 1

job() {  # job DEV NAME -> "IOPS MiB/s"
  local args
  case $2 in
    rr) args="--rw=randread --bs=4k --iodepth=32";;
    rw) args="--rw=randwrite --bs=4k --iodepth=32";;
    sr) args="--rw=read --bs=128k --iodepth=8";;
    sw) args="--rw=write --bs=128k --iodepth=8";;
  esac
  fio --name=b --filename="$1" --direct=1 --ioengine=io_uring $args --size=256M \
      --time_based --runtime=$RT --ramp_time=1 --output-format=json >$T/fio.json 2>&1 || true
  # fio may print notes before its JSON
  sed -n '/^{/,$p' $T/fio.json | jq -r '.jobs[0] | (.read.iops + .write.iops | floor | tostring) + " " +
           ((.read.bw + .write.bw) / 1024 * 10 | floor | . / 10 | tostring)' 2>/dev/null ||
    { echo "bench_rbd_krbd: fio on $1 ($2) failed:" >&2; head -5 $T/fio.json >&2; echo "0 0"; }
}
JOBS="rr rw sr sw"
row() {  # row KEY LABEL DEV; figures kept in $T/KEY.JOB
  local r=("$2") j v
  for j in $JOBS; do
    v=$(job "$3" $j); echo "$v" > "$T/$1.$j"
    r+=("${v% *} IOPS, ${v#* } MiB/s")
  done
  printf '| %s | %s | %s | %s | %s |\n' "${r[@]}" >> $T/table
}
ratio_row() {  # ratio_row KEY LABEL: KEY's IOPS over krbd's
  local r=("$2") j a b
  for j in $JOBS; do
    a=$(cut -d' ' -f1 "$T/$1.$j"); b=$(cut -d' ' -f1 "$T/krbd.$j")
    r+=("$(awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }')")
  done
  printf '| %s | %s | %s | %s | %s |\n' "${r[@]}" >> $T/table
}
echo "| row | 4k randread QD32 | 4k randwrite QD32 | 128k read QD8 | 128k write QD8 |" > $T/table
echo "|---|---|---|---|---|" >> $T/table

KDEV=$(rbd map -o noudev,ms_mode=crc rbd/img) || { echo "bench_rbd_krbd: rbd map failed" >&2; dmesg | tail -5 >&2; exit 1; }
row krbd "krbd (rbd map, ms_mode=crc)" "$KDEV"
rbd unmap -o noudev "$KDEV"; KDEV=
for q in 1 2; do
  dev=$("$UBLKD" add raw rbd:rbd/img -q $q) || exit 1
  row "q$q" "ublkd add raw rbd:rbd/img -q $q" "$dev"
  "$UBLKD" del -n "${dev#/dev/ublkb}"
done
for q in 1 2; do ratio_row "q$q" "ublkd -q $q / krbd"; done
echo "bench_rbd_krbd: $(uname -r), ${RT}s per job, $(nproc) CPUs, $(rbd --version | cut -d' ' -f1-3)"
cat $T/table
