#!/bin/bash
# Build every tests/fuzz/fuzz-*.c harness with clang's libFuzzer + ASan/UBSan
# and run each for a short fixed time (FUZZ_TIME seconds, default 20) from
# its seed corpus tests/fuzz/corpus/<name>/.  New inputs go to a scratch
# copy ($BUILD/fuzz-work/<name>), never into the repository; without
# FUZZ_MERGE that copy starts empty each run, since libFuzzer runs every input
# it is given before the clock starts (a slow harness's grown corpus would
# stretch a 20 s run to minutes).
#   FUZZ_ONLY="options state"  run only these harnesses
#   FUZZ_JOBS=N                run N harnesses at a time (default 2)
#   FUZZ_MERGE=1               afterwards merge what the run found, with the
#                              seeds, into the minimal scratch corpus
#                              $BUILD/fuzz-corpus/<name> (make fuzz-long)
# Prints "fuzz: N passed, N failed" and exits non-zero if any harness
# crashed, failed a property or failed to build; the crashing input is in
# $BUILD/fuzz-artifacts/.
set -u
cd "$(dirname "$0")/../.."
CLANG=${CLANG:-clang}
BUILD=${FUZZ_BUILD:-build-fuzz}
TIME=${FUZZ_TIME:-20}
ONLY=${FUZZ_ONLY:-}
MERGE=${FUZZ_MERGE:-0}
JOBS=${FUZZ_JOBS:-2}
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined"

command -v "$CLANG" >/dev/null || { echo "fuzz: clang not found"; echo "fuzz: 0 passed, 0 failed"; exit 4; }

# The library, instrumented for coverage (fuzzer-no-link) and sanitizers.
make -s BUILD="$BUILD" CC="$CLANG" OPT="-O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer-no-link $SAN" \
    "$BUILD/libublkd.a" || { echo "fuzz: library build failed"; echo "fuzz: 0 passed, 1 failed"; exit 1; }
LIBS=$(make -s --no-print-directory -f - print-ldlibs <<'MK'
include Makefile
print-ldlibs: ; @echo $(LDLIBS)
MK
)

# Build every harness first, then run them FUZZ_JOBS (default 2) at a time;
# each one's report is printed, in order, once all have finished.
names=() fail=0 pass=0
for src in tests/fuzz/fuzz-*.c; do
    name=$(basename "$src" .c)          # fuzz-vdi
    fmt=${name#fuzz-}                   # vdi
    if [ -n "$ONLY" ] && ! [[ " $ONLY " == *" $fmt "* ]]; then
        continue
    fi
    [ "$MERGE" = 1 ] || rm -rf "$BUILD/fuzz-work/$fmt"
    mkdir -p "$BUILD/tests" "$BUILD/fuzz-work/$fmt" "$BUILD/fuzz-artifacts/"
    rm -f "$BUILD/fuzz-work/$name.out"
    if ! "$CLANG" -std=gnu11 -Wall -Wextra -Werror -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 \
            -Iinclude -I"$BUILD" -include "$BUILD/config.h" -O1 -g -fno-omit-frame-pointer \
            -fsanitize=fuzzer $SAN -o "$BUILD/tests/$name" "$src" "$BUILD/libublkd.a" $LIBS; then
        echo "FAIL $name: build"; fail=$((fail + 1)); continue
    fi
    names+=("$name")
done

# Writes its report to $BUILD/fuzz-work/NAME.out, last line PASS or FAIL.
run_one() {
    local name=$1 fmt=${1#fuzz-} bin="$BUILD/tests/$1" seeds=tests/fuzz/corpus/${1#fuzz-}
    local log="$BUILD/fuzz-work/$name.log"
    [ -d "$seeds" ] || seeds=
    {
        echo "== $name: ${TIME}s"
        if ASAN_OPTIONS=detect_leaks=1 "$bin" -max_total_time="$TIME" -timeout=10 -rss_limit_mb=2048 \
                -max_len=65536 -artifact_prefix="$BUILD/fuzz-artifacts/$name-" \
                "$BUILD/fuzz-work/$fmt" $seeds 2>"$log"; then
            grep -E "^#[0-9]+[[:space:]]+DONE" "$log" | sed "s/^/  /"
            tail -1 "$log" | sed "s/^/  /"
            if [ "$MERGE" = 1 ]; then
                mkdir -p "$BUILD/fuzz-corpus/$fmt"
                "$bin" -merge=1 -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
                    "$BUILD/fuzz-corpus/$fmt" "$BUILD/fuzz-work/$fmt" $seeds \
                    2>"$BUILD/fuzz-work/$name.merge.log"
                echo "  merged: $(ls "$BUILD/fuzz-corpus/$fmt" | wc -l) inputs in $BUILD/fuzz-corpus/$fmt"
            fi
            echo "PASS $name"
        else
            grep -E "ERROR|SUMMARY|Test unit written|property failed" "$log" | head -5
            echo "FAIL $name (log: $log)"
        fi
    } > "$BUILD/fuzz-work/$name.out.tmp"
    mv "$BUILD/fuzz-work/$name.out.tmp" "$BUILD/fuzz-work/$name.out"
}

running=0
for name in "${names[@]}"; do
    if [ "$running" -ge "$JOBS" ]; then
        wait -n
        running=$((running - 1))
    fi
    run_one "$name" &
    running=$((running + 1))
done
wait
for name in "${names[@]}"; do
    out="$BUILD/fuzz-work/$name.out"
    if [ -f "$out" ]; then
        cat "$out"
    else
        echo "FAIL $name: no report"
    fi
    if [ -f "$out" ] && [ "$(tail -1 "$out" | cut -d' ' -f1)" = PASS ]; then
        pass=$((pass + 1))
    else
        fail=$((fail + 1))
    fi
done
echo "fuzz: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
