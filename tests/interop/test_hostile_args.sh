#!/bin/bash
# Hostile arguments to every `ublkd img` subcommand and every `ublkd add`
# option (issue #10 item 6): each must end in a clean error exit with a
# message - never a crash, a hang, a sanitizer report, or success with a
# value silently changed.  Meant for an ASan+UBSan build (`make
# check-hostile` builds one and runs this); with a plain build it still
# checks exit codes and messages.  `add` is only parsed here (values that
# parse are refused before any kernel contact); the device verbs themselves
# run in tests/vm/test_badargs.sh.
. "$(dirname "$0")/lib.sh"
# A few thousand runs: make check-hostile runs it (ASan+UBSan build), the
# plain check-interop does not.
# UBLKD_HOSTILE=quick (make test, through make check-hostile-quick): every
# template still runs, with the few values that found the bugs so far.
case ${UBLKD_HOSTILE:-0} in
1 | quick) ;;
*) skip "run by make check-hostile (UBLKD_HOSTILE=1) and make test (UBLKD_HOSTILE=quick)" ;;
esac
require_format raw vdi

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

"$QEMU_IMG" create -q -f raw r.raw 1M
"$QEMU_IMG" create -q -f vdi v.vdi 1M
mkdir d
mkfifo fifo
LONG9=$(printf '9%.0s' $(seq 4000))
LONGA=$(printf 'A%.0s' $(seq 5000))
# Values for numeric options.  H marks where the value goes in a case.
NUMS=(9223372036854775807 9223372036854775808 18446744073709551615 18446744073709551616
      -1 0 -0 8E 16E 1Z "" " " abc nan NaN inf -inf 1e999 0x 1.5.5 4k4 "$LONG9" "$LONGA")
# Values for names (formats, modes, files).
# Never a path outside $WORK that could be written: a convert or create
# target, or a --log file, is written to (this script runs as root in CI).
NAMES=("" " " "$LONGA" nosuch "-1" "$WORK/d" "$WORK/fifo" /dev/null /nonexistent/x "a,b=c"
       "json:{" "%s%n%s")
# Names that are fine as a file to create; removed after each sweep that
# may create them, so that a later sweep does not find them.
if [ "$UBLKD_HOSTILE" = quick ]; then
    NUMS=(9223372036854775808 -1 16E abc "$LONG9")
    NAMES=("" "$WORK/fifo" "json:{" "%s%n%s")
fi
NEWFILE_OK="/dev/null| |nosuch|-1|a,b=c|%s%n%s"
rm_created() { rm -f -- " " nosuch -1 "a,b=c" "%s%n%s"; }

ncases=0
# run_case ALLOWED CMD...: ALLOWED is a |-separated list of values that may
# succeed for this case (others must fail); $VAL is the value under test.
run_case() {
    local allowed=$1 rc out
    shift
    ncases=$((ncases + 1))
    local t0=$(date +%s%N)
    # Through a file, not a pipe: a daemon left behind holding the pipe
    # would hang the script instead of failing the case.
    timeout 60 "$@" </dev/null >"$WORK/.case" 2>&1
    rc=$?
    out=$(cat "$WORK/.case")
    local ms=$((($(date +%s%N) - t0) / 1000000))
    [ $ms -gt 3000 ] && echo "slow (${ms} ms): $(printf '%q ' "$@" | cut -c1-120)" >&2
    local what="'$(printf '%q ' "$@" | cut -c1-200)'"
    local bad=""
    case $out in
    *"runtime error"* | *AddressSanitizer* | *LeakSanitizer* | *UndefinedBehaviorSanitizer*)
        bad="sanitizer report: $(grep -m3 -E 'runtime error|Sanitizer' <<<"$out")" ;;
    esac
    if [ -n "$bad" ]; then :
    elif [ $rc = 124 ]; then bad="hung (timeout)"
    elif [ $rc -ge 126 ]; then bad="died (exit $rc): $(tail -2 <<<"$out")"
    elif [ $rc = 0 ]; then
        case "|$allowed|" in
        *"|$VAL|"*) ;;
        *) bad="accepted the hostile value '${VAL:0:40}': $(head -2 <<<"$out")" ;;
        esac
    elif [ -z "$out" ]; then
        bad="exit $rc without a message"
    fi
    if [ -n "$bad" ]; then
        failures+=("$what: $bad")
        echo "BAD $what: $bad" >&2
    fi
}
failures=()

# sweep ALLOWED VALUES-ARRAY-NAME TEMPLATE...: the template's words, with
# the word H replaced by each value.
sweep() {
    local allowed=$1 arr=$2
    shift 2
    local -n vals=$arr
    for VAL in "${vals[@]}"; do
        local args=() w
        for w in "$@"; do
            if [ "$w" = H ]; then args+=("$VAL"); else args+=("${w//@H@/$VAL}"); fi
        done
        run_case "$allowed" "$UBLKD" "${args[@]}"
    done
}

# ---- img bench
sweep "0|-0" NUMS img bench -f raw -c 1 -o H r.raw
sweep "0" NUMS img bench -f raw -c H r.raw   # -c 0: qemu-img runs nothing, rc 0
sweep "" NUMS img bench -f raw -c 1 -d H r.raw
sweep "" NUMS img bench -f raw -c 1 -s H r.raw
sweep "0" NUMS img bench -f raw -c 2 -S H r.raw
sweep "0" NUMS img bench -f raw -c 1 --pattern=@H@ r.raw
sweep "0" NUMS img bench -f raw -c 1 --flush-interval=@H@ -w r.raw
sweep "0|9223372036854775807|9223372036854775808|18446744073709551615" NUMS \
    img bench -f raw -c 1 --random --seed=@H@ r.raw
sweep "0|-0" NUMS img bench -f raw -c 1 --random -o H r.raw
sweep "" NAMES img bench -f H -c 1 r.raw
sweep "" NAMES img bench -f raw -c 1 -t H r.raw
sweep "" NAMES img bench -f raw -c 1 -i H r.raw
sweep "" NAMES img bench -c 1 H

# ---- img map
sweep "0|9223372036854775807" NUMS img map -f raw --start-offset=@H@ r.raw
sweep "0|9223372036854775807" NUMS img map -f raw --max-length=@H@ r.raw
sweep "0|9223372036854775807" NUMS img map -f raw --start-offset=1 --max-length=@H@ r.raw
sweep "" NAMES img map -f raw --output=@H@ r.raw
sweep "" NAMES img map H

# ---- img info / check / compare
sweep "" NAMES img info -f H r.raw
sweep "" NAMES img info --output=@H@ r.raw
sweep "" NAMES img info H
sweep "" NAMES img info --image-opts H
sweep "" NAMES img check -f vdi -r H v.vdi
sweep "" NAMES img check --output=@H@ v.vdi
sweep "" NAMES img check -T H v.vdi
sweep "" NAMES img check H
sweep "" NAMES img compare -f raw -F H r.raw r.raw
sweep "" NAMES img compare -f raw -T H r.raw r.raw
sweep "" NAMES img compare r.raw H

# ---- img convert / create
sweep "" NAMES img convert -O H r.raw o.img
sweep "" NAMES img convert -O raw -o H r.raw o.img
sweep "" NAMES img convert -O raw -t H r.raw o.img
sweep "0" NUMS img convert -O raw -S H r.raw o.img   # -S 0: no sparse detection, as qemu-img
sweep "" NUMS img convert -O raw -m H r.raw o.img
sweep "" NAMES img convert -O raw H o.img
sweep "$NEWFILE_OK" NAMES img convert -O raw r.raw H
rm_created
sweep "0|-0" NUMS img create -q -f raw c.img H
sweep "0|-0" NUMS img create -q -f vdi c.vdi H
sweep "0|-0" NUMS img create -q -f raw -o size=@H@ c.img
sweep "" NAMES img create -q -f H c.img 1M
sweep "" NAMES img create -q -f raw -o H c.img 1M
sweep "$NEWFILE_OK" NAMES img create -q -f raw H 1M
rm_created
sweep "" NAMES img create -q -f vdi -o static=@H@ c.vdi 1M

# ---- img amend (a qcow2 image; none of these may change it)
"$QEMU_IMG" create -q -f qcow2 am.qcow2 1M
sweep "" NUMS img amend -o refcount_bits=@H@ am.qcow2
sweep "0" NUMS img amend -o size=@H@ am.qcow2      # size=0 is "no change", as in qemu-img
sweep "" NAMES img amend -o compat=@H@ am.qcow2
sweep "" NAMES img amend -o H am.qcow2
sweep "" NAMES img amend -f H -o compat=v3 am.qcow2
sweep "" NAMES img amend -t H -o compat=v3 am.qcow2
sweep "" NAMES img amend -o compat=v3 H
sweep "" NAMES img amend -o backing_file=@H@ am.qcow2
cmp -s am.qcow2 <("$QEMU_IMG" create -q -f qcow2 am2.qcow2 1M && cat am2.qcow2) ||
    failures+=("img amend: a refused amend changed the image")

# ---- img io: every command, every number
io() { echo img io -f raw -c "$1" r.raw; }
IO_TEMPLATES=(
    "read @H@ 512" "read 0 @H@" "read -P 0 -s @H@ 0 512" "read -P 0 -l @H@ 0 512"
    "read -P 0 -s 1 -l @H@ 0 512" "read -P @H@ 0 512" "readv @H@ 512" "readv 0 @H@"
    "readv 0 512 @H@" "readv 0 512 512 @H@" "write @H@ 512" "write 0 @H@" "write -z 0 @H@"
    "write -z @H@ 512" "write -P @H@ 0 512" "writev @H@ 512" "writev 0 512 @H@"
    "discard @H@ 512" "discard 0 @H@" "truncate @H@" "truncate -m @H@ 1M"
)
for t in "${IO_TEMPLATES[@]}"; do
    allowed=""
    case $t in
    "read @H@ 512" | "write @H@ 512" | "write -z @H@ 512" | "readv @H@ 512" | \
    "writev @H@ 512" | "discard @H@ 512") allowed="0|-0" ;;
    "read 0 @H@" | "readv 0 @H@" | "write 0 @H@" | "write -z 0 @H@" | "discard 0 @H@" | \
    "readv 0 512 @H@" | "readv 0 512 512 @H@" | "writev 0 512 @H@") allowed="0|-0|| " ;;
    "read -P 0 -s @H@ 0 512" | "read -P 0 -l @H@ 0 512" | "read -P 0 -s 1 -l @H@ 0 512") allowed="0|-0" ;;
    "read -P @H@ 0 512" | "write -P @H@ 0 512") allowed="0|-0|0x" ;;
    "truncate @H@") allowed="0|-0" ;;
    esac
    sweep "$allowed" NUMS img io -f raw -c "$t" r.raw
    "$QEMU_IMG" create -q -f raw r.raw 1M   # undo any truncate/write
done
sweep "| " NAMES img io -f raw -c H r.raw   # an empty or blank command does nothing, as in qemu-io
sweep "" NAMES img io -f H -c length r.raw
sweep "" NAMES img io -f raw -t H -c length r.raw
sweep "" NAMES img io -f raw -d H -c length r.raw
sweep "" NAMES img io -c length H

# ---- the exact words for the cases in issue #10
expect_rc 1 uimg io -f vdi -c "truncate 1" v.vdi
expect_out "Image format driver does not support resize"
expect_rc 1 uimg io -f raw -c "read -P 0 -s 9223372036854775807 -l 10 0 512" r.raw
expect_out "pattern verification range exceeds end of read data"
expect_rc 0 uimg map -f raw --start-offset=1 --max-length=9223372036854775807 r.raw
expect_rc 1 uimg bench -f raw -c 2 -o 9223372036854775807 r.raw
expect_out "Failed request at offset 9223372036854775807"

# ---- add: every option that takes a value; only parsing is reached (a
# value that parses still fails for want of /dev/ublk-control or is refused
# before it), so success is never allowed.  Where the ublk driver is loaded
# a value that parses would make a device: the VM test covers that host.
if [ -e /dev/ublk-control ]; then
    echo "hostile cases: $ncases, failed: ${#failures[@]} (add skipped: /dev/ublk-control exists)" >&2
    [ ${#failures[@]} = 0 ] || fail "${#failures[@]} hostile cases misbehaved (see BAD lines)"
    exit 0
fi
ADD_NUM_OPTS=(--id --queues --depth --size --logical-block-size --physical-block-size --io-opt
              --max-io-size --discard-granularity --max-discard --per-io-threads)
for o in "${ADD_NUM_OPTS[@]}"; do
    sweep "" NUMS add -f null --size 1M "$o" H
done
# Not -f: a daemon's errors go to its --log file, the adding process's to
# stderr, which is what this checks.
for o in --recovery --affinity --discard --cache --log --blockdev -o --zero-copy; do
    sweep "" NAMES add null --size 1M "$o" H
done
rm_created
sweep "" NAMES add raw H
sweep "" NAMES add H r.raw
expect_rc 2 "$UBLKD" add null --size 8E
expect_out "--size 8E is too large"
expect_rc 2 "$UBLKD" add null --size 1M --log /nonexistent/dir/log
expect_out "--log /nonexistent/dir/log: directory /nonexistent/dir: No such file or directory"
expect_rc 2 "$UBLKD" add null --size 1M --log "$WORK/d"
expect_out "is a directory"
expect_rc 2 "$UBLKD" add null --size 1M --log "$WORK/fifo"
expect_out "not a regular file or character device"
echo "hostile cases: $ncases, failed: ${#failures[@]}" >&2
[ ${#failures[@]} = 0 ] || fail "${#failures[@]} hostile cases misbehaved (see BAD lines)"
