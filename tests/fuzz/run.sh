#!/bin/bash
# Build every tests/fuzz/fuzz-*.c harness with clang's libFuzzer + ASan/UBSan
# and run each for a short fixed time (FUZZ_TIME seconds, default 20) from
# its seed corpus tests/fuzz/corpus/<name>/.  New inputs go to a scratch
# copy ($BUILD/fuzz-work/<name>), never into the repository.
#   FUZZ_ONLY="options state"  run only these harnesses
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

pass=0 fail=0
for src in tests/fuzz/fuzz-*.c; do
    name=$(basename "$src" .c)          # fuzz-vdi
    fmt=${name#fuzz-}                   # vdi
    if [ -n "$ONLY" ] && ! [[ " $ONLY " == *" $fmt "* ]]; then
        continue
    fi
    bin="$BUILD/tests/$name"
    mkdir -p "$BUILD/tests" "$BUILD/fuzz-work/$fmt" "$BUILD/fuzz-artifacts/"
    if ! "$CLANG" -std=gnu11 -Wall -Wextra -Werror -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 \
            -Iinclude -I"$BUILD" -include "$BUILD/config.h" -O1 -g -fno-omit-frame-pointer \
            -fsanitize=fuzzer $SAN -o "$bin" "$src" "$BUILD/libublkd.a" $LIBS; then
        echo "FAIL $name: build"; fail=$((fail + 1)); continue
    fi
    seeds=tests/fuzz/corpus/$fmt
    [ -d "$seeds" ] || seeds=
    echo "== $name: ${TIME}s"
    if ASAN_OPTIONS=detect_leaks=1 "$bin" -max_total_time="$TIME" -timeout=10 -rss_limit_mb=2048 \
            -max_len=65536 -artifact_prefix="$BUILD/fuzz-artifacts/$name-" \
            "$BUILD/fuzz-work/$fmt" $seeds 2>"$BUILD/fuzz-work/$name.log"; then
        grep -E "^#[0-9]+[[:space:]]+DONE" "$BUILD/fuzz-work/$name.log" | sed "s/^/  /"
        tail -1 "$BUILD/fuzz-work/$name.log" | sed "s/^/  /"
        if [ "$MERGE" = 1 ]; then
            mkdir -p "$BUILD/fuzz-corpus/$fmt"
            "$bin" -merge=1 -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
                "$BUILD/fuzz-corpus/$fmt" "$BUILD/fuzz-work/$fmt" $seeds \
                2>"$BUILD/fuzz-work/$name.merge.log"
            echo "  merged: $(ls "$BUILD/fuzz-corpus/$fmt" | wc -l) inputs in $BUILD/fuzz-corpus/$fmt"
        fi
        echo "PASS $name"; pass=$((pass + 1))
    else
        grep -E "ERROR|SUMMARY|Test unit written" "$BUILD/fuzz-work/$name.log" | head -5
        echo "FAIL $name (log: $BUILD/fuzz-work/$name.log)"; fail=$((fail + 1))
    fi
done
echo "fuzz: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
