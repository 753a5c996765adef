#!/bin/bash
# bench-threads.sh - `ublkd img bench --threads`: 1 thread against N threads on one node
# (issue #8 point 2), for docs/PERFORMANCE.md.
#
# Workloads, all 4k random reads, -d 64 per thread, the -c requests split between threads:
#   null       driver=null,read-zeroes=off (the request path alone)
#   raw-cache  raw on a file in the page cache (-t writeback)
#   raw-direct raw with O_DIRECT (-t none): the disk is the limit
# Rounds are interleaved (every binary, workload and thread count once per round), and
# each cell is the median over the rounds of IOPS and of CPU time per I/O (user+sys of
# the process over the requests, from `img bench`'s own getrusage line).  On a loaded
# machine IOPS says little about scaling: "cores used" (CPU seconds over wall seconds)
# shows how much of the machine the run got (2 threads on an idle 2-core machine: near
# 2.0), and CPU per I/O rising with threads is the cost of shared cache lines.
#
# Usage: tests/bench/bench-threads.sh [UBLKD...]   (default build/ublkd; several
#        binaries, e.g. before and after a change, are interleaved round by round)
# Environment: ROUNDS (5), THREADS ("1 2"), BENCH_DIR (/var/tmp; must allow O_DIRECT),
#   COUNT_NULL (4000000), COUNT_CACHE (1000000), COUNT_DIRECT (200000), WORKLOADS
#   ("null raw-cache raw-direct").  Output: progress on stderr, a markdown table on stdout.
set -u
if [ $# -eq 0 ]; then
    set -- "${UBLKD:-build/ublkd}"
fi
ROUNDS=${ROUNDS:-5}
THREADS=${THREADS:-"1 2"}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
WORKLOADS=${WORKLOADS:-"null raw-cache raw-direct"}
COUNT_NULL=${COUNT_NULL:-4000000}
COUNT_CACHE=${COUNT_CACHE:-1000000}
COUNT_DIRECT=${COUNT_DIRECT:-200000}

work=$(mktemp -d "$BENCH_DIR/ublkd-bench-threads.XXXXXX") || exit 1
trap 'rm -rf "$work"' EXIT
img=$work/img.raw
case " $WORKLOADS " in
*raw*)
    # Real data blocks (reads of holes never reach the disk), small enough to stay cached.
    echo "bench-threads: writing 256 MiB to $img" >&2
    dd if=/dev/urandom of="$img" bs=1M count=256 conv=fsync status=none || exit 1
    ;;
esac

run() {   # run UBLKD WORKLOAD THREADS: prints "IOPS CPU_US_PER_IO CORES_USED"
    local UBLKD=$1 w=$2 t=$3 out
    case $w in
    null)
        out=$("$UBLKD" img bench --image-opts --random -d 64 -c "$COUNT_NULL" --threads "$t" \
              driver=null,size=1G,read-zeroes=off 2>&1) ;;
    raw-cache)
        cat "$img" >/dev/null
        out=$("$UBLKD" img bench -f raw -t writeback --random -d 64 -c "$COUNT_CACHE" \
              --threads "$t" "$img" 2>&1) ;;
    raw-direct)
        out=$("$UBLKD" img bench -f raw -t none --random -d 64 -c "$COUNT_DIRECT" \
              --threads "$t" "$img" 2>&1) ;;
    esac || { echo "$out" >&2; echo "0 0 0"; return; }
    # CPU per I/O from the user and sys seconds (finer than the rounded us/IO), and
    # the cores the run got (CPU seconds over wall seconds; N threads want N)
    echo "$out" | awk -v c="$(count_of "$w")" '/^Run completed in/{ wall = $4 }
        / IOPS, /{ gsub(/[(),]/, ""); cpu = $(NF - 4) + $(NF - 1)
                   printf "%d %.3f %.2f\n", $1, cpu * 1e6 / c, (wall > 0) ? cpu / wall : 0 }'
}

count_of() {
    case $1 in
    null) echo "$COUNT_NULL" ;;
    raw-cache) echo "$COUNT_CACHE" ;;
    raw-direct) echo "$COUNT_DIRECT" ;;
    esac
}

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

for r in $(seq "$ROUNDS"); do
    for w in $WORKLOADS; do
        for t in $THREADS; do
            b=0
            for u in "$@"; do
                b=$((b + 1))
                res=$(run "$u" "$w" "$t")
                echo "round $r $u $w threads=$t: $res" >&2
                echo "$res" >>"$work/$b.$w.$t"
            done
        done
    done
done

echo "| binary | workload | threads | IOPS (median of $ROUNDS) | vs 1 thread | CPU us/IO | cores used |"
echo "|---|---|---|---|---|---|---|"
b=0
for u in "$@"; do
    b=$((b + 1))
    for w in $WORKLOADS; do
        base=
        for t in $THREADS; do
            iops=$(awk '{ print $1 }' "$work/$b.$w.$t" | median)
            cpu=$(awk '{ print $2 }' "$work/$b.$w.$t" | median)
            share=$(awk '{ print $3 }' "$work/$b.$w.$t" | median)
            base=${base:-$iops}
            ratio=$(awk -v a="$iops" -v b="$base" 'BEGIN { printf "%.2fx", b ? a / b : 0 }')
            printf '| %s | %s | %s | %.0f | %s | %s | %s |\n' "$(basename "$u")" "$w" "$t" \
                "$iops" "$ratio" "$cpu" "$share"
        done
    done
done
