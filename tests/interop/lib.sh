# lib.sh - shared helpers for the interop tests (sourced by test_*.sh).
#
# Conventions (as the kernel's ublk selftests): a test exits 0 on pass,
# 4 on skip, anything else on failure, and says why on stderr.  Each test
# gets a private scratch directory $WORK, removed on exit.  $UBLKD is the
# binary under test; qemu-img / qemu-io 7.2 are the reference.

set -u

: "${UBLKD:?UBLKD must point at the ublkd binary}"
QEMU_IMG=${QEMU_IMG:-qemu-img}
QEMU_IO=${QEMU_IO:-qemu-io}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ublkd-interop.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK" || exit 1

skip() { echo "SKIP: $*" >&2; exit 4; }
fail() { echo "FAIL: $*" >&2; exit 1; }

require_cmd() {
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || skip "$c not installed"
    done
}
# qemu-img/qemu-io are the reference: without them nothing is checked, so
# that is a failure (make deps installs qemu-utils) unless the caller says a
# partial run is what it wants.
for c in "$QEMU_IMG" "$QEMU_IO"; do
    command -v "$c" >/dev/null 2>&1 && continue
    [ "${UBLKD_INTEROP_ALLOW_NO_QEMU:-0}" = 1 ] && skip "$c not installed (UBLKD_INTEROP_ALLOW_NO_QEMU=1)"
    fail "$c not installed: the interop tests need qemu-utils 7.2 (make deps), or set UBLKD_INTEROP_ALLOW_NO_QEMU=1 to skip them"
done

# require_format FMT...: skip when ublkd was built without a format
# (make CONFIG_VDI=n): its create says the format is unknown.  When the
# build's config.h (make puts it next to the binary) enables the format, an
# "unknown format" is a broken build, not a reason to skip: fail.
require_format() {
    local f out cfg
    cfg=$(dirname "$UBLKD")/config.h
    for f in "$@"; do
        out=$("$UBLKD" img create -q -f "$f" "$WORK/.fmt-probe" 1M 2>&1)
        rm -f "$WORK/.fmt-probe"
        case $out in
        *"Unknown file format"*)
            if [ -f "$cfg" ] && grep -q "^#define CONFIG_${f^^} 1" "$cfg"; then
                fail "$cfg enables CONFIG_${f^^}, yet ublkd img create says: $out"
            fi
            skip "ublkd built without the $f format" ;;
        esac
    done
}

uimg() { "$UBLKD" img "$@"; }

# bitmap_map FILE NAME: a qcow2 bitmap's dirty ranges as qemu-nbd exports them
# (needs qemu-nbd and nbdinfo).
bitmap_map() {
    rm -f nbd.sock
    qemu-nbd -r -f qcow2 --bitmap="$2" -k "$WORK/nbd.sock" "$1" 2>nbd.err &
    local pid=$! i
    for i in $(seq 100); do [ -S nbd.sock ] && break; sleep 0.05; done
    nbdinfo --map="qemu:dirty-bitmap:$2" "nbd+unix:///?socket=$WORK/nbd.sock" || {
        cat nbd.err >&2; kill $pid; fail "nbdinfo --map of $1 bitmap $2"; }
    kill $pid 2>/dev/null; wait $pid 2>/dev/null
}

# killed_wait PID IMG: reap a process killed with -9 and wait (up to 10 s) until
# IMG's image lock is free again.  A dead process's io_uring is torn down by
# the kernel after the exit, and holds the file (and its OFD lock) until then,
# so a qemu-img run at once could find the image "in use".
killed_wait() {
    wait "$1" 2>/dev/null
    local _
    for _ in $(seq 100); do "$QEMU_IMG" info "$2" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 0
}

# Run a command, check its exit code: expect_rc WANT cmd args...
# Its stdout+stderr are kept in $WORK/.out for the caller.
expect_rc() {
    local want=$1 rc
    shift
    "$@" >"$WORK/.out" 2>&1
    rc=$?
    if [ "$rc" != "$want" ]; then
        sed 's/^/    | /' "$WORK/.out" >&2
        fail "'$*' exited $rc, expected $want"
    fi
}

# Output of the last expect_rc must contain a string.
expect_out() {
    grep -qF -- "$1" "$WORK/.out" || {
        sed 's/^/    | /' "$WORK/.out" >&2
        fail "output lacks '$1'"
    }
}

# Same text from both tools, modulo the program name in messages.
norm() { sed -e 's/^qemu-img: /PROG: /' -e 's/^ublkd img: /PROG: /' -e 's/^qemu-io: /PROG: /' \
             -e "s/^Try '\(qemu-img\|ublkd img\) --help'/Try 'PROG --help'/"; }

# same_output LABEL FILE_A FILE_B: byte-identical after norm, else show diff.
same_output() {
    if ! diff -u <(norm <"$2") <(norm <"$3") >"$WORK/.diff"; then
        sed 's/^/    /' "$WORK/.diff" >&2
        fail "$1: ublkd and qemu differ"
    fi
}

sha() { sha256sum "$1" | cut -d' ' -f1; }
alloc_bytes() { echo $(( $(stat -c %b "$1") * $(stat -c %B "$1") )); }

# A sparse raw image with data, a written-zero block, an unaligned write and
# a tail hole, made by qemu-io.
make_sparse_raw() {
    local f=$1 size=${2:-64M}
    "$QEMU_IMG" create -q -f raw "$f" "$size" || fail "qemu-img create $f"
    "$QEMU_IO" -f raw -c 'write -P 0x11 0 64k' -c 'write -P 0x22 1M 4k' \
        -c 'write -P 0 3M 1M' -c 'write -P 0x33 5M 1536' -c 'write -P 0x44 7M 2M' \
        -c 'write -P 0x55 20M 512' "$f" >/dev/null || fail "qemu-io write $f"
}
