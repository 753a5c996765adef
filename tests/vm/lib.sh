# lib.sh - shared helpers for tests/vm/test_*.sh (source it).
#
# Conventions: a test is a bash script run as root on a machine with the
# ublk driver; exit 0 = pass, 4 = skip (say why on the last line), else fail.
# Scratch files go under $T (a fresh directory on the guest's tmpfs, removed
# on exit); devices the test added are deleted on exit.  Images on tmpfs
# use $CACHE_OPT (--cache=writeback) so the suite also runs on kernels before
# 6.6, whose tmpfs refuses O_DIRECT (the 6.12 guest's accepts it).
set -euo pipefail
: "${UBLKD:?UBLKD must point at the ublkd binary}"
export PATH=$PATH:/usr/sbin:/sbin
T=$(mktemp -d /tmp/ublkd-t.XXXXXX)
CACHE_OPT=--cache=writeback
_lib_devs=()   # ids added by this test (also in $T/.devs, which survives subshells)
_lib_cleanup() {
  local rc=$?
  # A failed test may leave fio running: stop it first, or it keeps the
  # device busy into the next test.
  local jobs_left
  jobs_left=$(jobs -p)
  [ -n "$jobs_left" ] && { kill $jobs_left 2>/dev/null; wait 2>/dev/null; }
  for id in "${_lib_devs[@]}" $(cat "$T/.devs" 2>/dev/null); do
    "$UBLKD" del -n "$id" >/dev/null 2>&1 || true
  done
  rm -rf "$T"
  exit $rc
}
trap _lib_cleanup EXIT

log()  { echo "[$(date +%T)] $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "skip: $*"; exit 4; }
need_cmd() { for c in "$@"; do command -v "$c" >/dev/null || skip "$c not installed"; done; }

# ublk_add ARGS... : add a device, print its id and set ID and DEV (the
# variables only when not called as $(ublk_add ...)).  Deleted at exit.
ublk_add() {
  local out
  out=$("$UBLKD" add "$@") || fail "ublkd add $* failed"
  [ -b "$out" ] || fail "ublkd add printed '$out', not a block device"
  DEV=$out ID=${out#/dev/ublkb}
  _lib_devs+=("$ID"); echo "$ID" >> "$T/.devs"
  echo "$ID"
}
ublk_del() { "$UBLKD" del -n "$1" || fail "ublkd del -n $1 failed"; }
bdev() { echo "/dev/ublkb$1"; }

# ublk_pid ID: the daemon's pid from the state file.
ublk_pid() { "$UBLKD" list -n "$1" --json | jq -r '.[0].pid'; }
ublk_state() { "$UBLKD" list -n "$1" --json | jq -r '.[0].state'; }
# ublk_stat ID OP FIELD: a counter published by the daemon (refreshed each second).
ublk_stat() { "$UBLKD" list -n "$1" --json | jq -r ".[0].stats.$2.$3 // 0"; }
# ublk_fua ID: writes that reached the daemon with FUA set.
ublk_fua() { "$UBLKD" list -n "$1" --json | jq -r ".[0].stats.fua_writes // 0"; }

# mkimg PATH SIZE: a raw image full of non-zero data is not needed: sparse is fine.
mkimg() { truncate -s "$2" "$1"; }

# fio_verify DEV [fio args...]: random writes with crc32c then a verify pass.
fio_verify() {
  local dev=$1; shift
  fio --name=v --filename="$dev" --direct=1 --ioengine=io_uring --rw=randwrite \
      --verify=crc32c --verify_fatal=1 --do_verify=1 --randrepeat=0 \
      --size="${FIO_SIZE:-8M}" "$@" --output-format=terse >/dev/null \
    || fail "fio verify on $dev ($*) failed"
}

# wait_for CMD...: retry for up to 10 s.
wait_for() { for _ in $(seq 100); do "$@" && return 0; sleep 0.1; done; return 1; }

# ublk_ids: ids of every ublk device in the kernel.
ublk_ids() { ls /sys/class/ublk-char 2>/dev/null | sed -n 's/^ublkc//p' | sort -n; }
