#!/bin/bash
# run.sh - `make bench`: host benchmarks (a benchmark, not a test: it never fails on numbers).
#
# 1. Every micro-benchmark binary built from tests/bench/bench-*.c ($BUILD/tests/bench-*).
# 2. The request path on a real file, side by side in one run, same 1 GiB raw file, O_DIRECT:
#       ublkd img bench  vs  fio --ioengine=io_uring --direct=1  vs  qemu-img bench -t none -i io_uring
#    Workloads: 4k randread QD1, 4k randread QD32, 4k randwrite QD32, 128k sequential read QD8.
#    qemu-img 7.2's bench has no random mode, so each random row has two pairs:
#       "random": ublkd img bench --random   vs fio (uniform random 4k offsets)
#       "step":   ublkd img bench -S STEP    vs qemu-img bench -S STEP (same scattered sequence:
#                 STEP = 4096*2731 is co-prime with the image size, so it visits every block)
#    IOPS are the median of $REPS runs (tools interleaved run by run); CPU time per I/O comes from /usr/bin/time (user+sys of
#    the whole process, startup included) divided by the I/Os done.
#
# Environment: UBLKD (binary), BUILD (build dir), BENCH_DIR (where the 1 GiB file goes;
# must support O_DIRECT, default /var/tmp), REPS (3), SECS (target seconds per run, 3),
# SKIP_MICRO=1 to skip step 1.  Output: progress on stderr, a markdown table on stdout.
set -u
: "${UBLKD:?set UBLKD to the ublkd binary}"
REPS=${REPS:-3}
SECS=${SECS:-3}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
STEP=$((4096 * 2731))

if [ "${SKIP_MICRO:-0}" != 1 ] && [ -n "${BUILD:-}" ]; then
    for b in "$BUILD"/tests/bench-*; do
        [ -x "$b" ] || continue
        echo "== $(basename "$b")"
        "$b" || echo "($(basename "$b") exited $?)"
    done
fi

for c in fio qemu-img /usr/bin/time; do
    command -v "$c" >/dev/null || { echo "bench: $c not installed, skipping the file benchmark" >&2; exit 0; }
done

work=$(mktemp -d "$BENCH_DIR/ublkd-bench.XXXXXX") || exit 1
trap 'rm -rf "$work"' EXIT
img=$work/bench.raw
echo "bench: writing 1 GiB of data to $img (O_DIRECT)" >&2
# Real data blocks: reads of holes or unwritten extents never reach the disk.
dd if=/dev/urandom of="$img" bs=1M count=1024 oflag=direct conv=fsync status=none || exit 1

timed() {   # timed OUTFILE cmd...: run, stdout+stderr to OUTFILE, CPU secs to OUTFILE.cpu
    local out=$1
    shift
    /usr/bin/time -f '%U %S' -o "$out.cpu" "$@" >"$out" 2>&1
}

cpu_of() { awk '{ printf "%.3f", $1 + $2 }' "$1.cpu"; }

# Each runner prints "IOPS CPU_US_PER_IO" for one run.
run_ublkd() {   # run_ublkd COUNT args...
    local n=$1
    shift
    timed "$work/u.out" "$UBLKD" img bench -f raw -t none -c "$n" "$@" "$img" || {
        cat "$work/u.out" >&2; echo "0 0"; return; }
    local iops
    iops=$(awk '/ IOPS, /{ print $1 }' "$work/u.out")
    awk -v i="$iops" -v n="$n" -v c="$(cpu_of "$work/u.out")" 'BEGIN { printf "%d %.2f\n", i, c * 1e6 / n }'
}

run_qemu() {   # run_qemu COUNT args...
    local n=$1
    shift
    timed "$work/q.out" qemu-img bench -f raw -t none -i io_uring -c "$n" "$@" "$img" || {
        cat "$work/q.out" >&2; echo "0 0"; return; }
    local secs
    secs=$(sed -n 's/^Run completed in \([0-9.]*\) seconds\./\1/p' "$work/q.out")
    awk -v s="$secs" -v n="$n" -v c="$(cpu_of "$work/q.out")" 'BEGIN { printf "%d %.2f\n", n / s, c * 1e6 / n }'
}

run_fio() {   # run_fio RW BS QD
    timed "$work/f.out" fio --name=b --filename="$img" --ioengine=io_uring --direct=1 \
        --rw="$1" --bs="$2" --iodepth="$3" --runtime="$SECS" --time_based --ramp_time=0 \
        --randrepeat=1 --norandommap --output-format=json || { cat "$work/f.out" >&2; echo "0 0"; return; }
    python3 - "$work/f.out" "$(cpu_of "$work/f.out")" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
j = json.loads(text[text.index("{"):])["jobs"][0]
ios = j["read"]["total_ios"] + j["write"]["total_ios"]
iops = j["read"]["iops"] + j["write"]["iops"]
print("%d %.2f" % (iops, float(sys.argv[2]) * 1e6 / max(ios, 1)))
PY
}

median() {   # median of "IOPS CPU" lines on stdin, by IOPS
    sort -n | awk '{ a[NR] = $0 } END { print a[int((NR + 1) / 2)] }'
}

# Size each run to about SECS seconds from a short calibration run of ublkd.
count_for() {   # count_for args...
    local probe iops
    probe=$(run_ublkd 2000 "$@")
    iops=${probe%% *}
    [ "$iops" -gt 0 ] 2>/dev/null || iops=1000
    echo $(( iops * SECS > 2000 ? iops * SECS : 2000 ))
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }'; }
fmt() { printf "%'d" "$1" 2>/dev/null || echo "$1"; }

rows=()
row() {   # row LABEL FIO_RW BS QD UBLKD_RANDOM_ARGS UBLKD_SEQ_ARGS (WRITE=-w or "")
    local label=$1 rw=$2 bs=$3 qd=$4 rand=$5 seq=$6 w=$7
    echo "bench: $label" >&2
    local n; n=$(count_for -s "$bs" -d "$qd" $w $seq)
    local f ur us q
    # Interleave the tools run by run: the machine is shared, and load that
    # comes and goes should hit all of them alike.
    : >"$work/f.r"; : >"$work/ur.r"; : >"$work/us.r"; : >"$work/q.r"
    for _ in $(seq "$REPS"); do
        run_fio "$rw" "$bs" "$qd" >>"$work/f.r"
        [ -n "$rand" ] && run_ublkd "$n" -s "$bs" -d "$qd" $w $rand >>"$work/ur.r"
        run_ublkd "$n" -s "$bs" -d "$qd" $w $seq >>"$work/us.r"
        run_qemu "$n" -s "$bs" -d "$qd" $w $seq >>"$work/q.r"
    done
    f=$(median <"$work/f.r"); us=$(median <"$work/us.r"); q=$(median <"$work/q.r")
    if [ -n "$rand" ]; then ur=$(median <"$work/ur.r"); else ur="-"; fi
    local fi=${f% *} fc=${f#* } usi=${us% *} usc=${us#* } qi=${q% *} qc=${q#* }
    if [ "$ur" != "-" ]; then
        local uri=${ur% *} urc=${ur#* }
        rows+=("| $label | fio $rw | $(fmt "$fi") ($fc us) | ublkd --random | $(fmt "$uri") ($urc us) | **$(ratio "$uri" "$fi")** |")
    else
        rows+=("| $label | fio $rw | $(fmt "$fi") ($fc us) | ublkd sequential | $(fmt "$usi") ($usc us) | **$(ratio "$usi" "$fi")** |")
    fi
    rows+=("| $label | qemu-img ${seq:-sequential} | $(fmt "$qi") ($qc us) | ublkd ${seq:-sequential} | $(fmt "$usi") ($usc us) | **$(ratio "$usi" "$qi")** |")
}

row "4k randread QD1"   randread  4k   1  "--random" "-S $STEP" ""
row "4k randread QD32"  randread  4k   32 "--random" "-S $STEP" ""
row "4k randwrite QD32" randwrite 4k   32 "--random" "-S $STEP" "-w"
row "128k seq read QD8" read      128k 8  ""         ""         ""

echo
echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs; load average before/after: see stderr"
echo "ublkd $("$UBLKD" --version | awk '{ print $3 }'), $(qemu-img --version | head -1), $(fio --version)"
echo "IOPS (CPU time per I/O), median of $REPS runs, ~${SECS}s each; file on $(df -T "$BENCH_DIR" | awk 'NR==2 { print $2 }')"
echo
echo "| workload | reference | ref IOPS (cpu/io) | ublkd | ublkd IOPS (cpu/io) | ublkd/ref |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
