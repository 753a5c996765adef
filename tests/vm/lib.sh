# lib.sh - shared helpers for tests/vm/test_*.sh (source it).
#
# Conventions: a test is a bash script run as root on a machine with the
# ublk driver; exit 0 = pass, 4 = skip (say why on the last line), else fail.
# Scratch files go under $T (a fresh directory on the guest's tmpfs, removed
# on exit); devices the test added are deleted on exit.  Images on tmpfs
# use $CACHE_OPT (--cache=writeback) so the suite also runs on kernels before
# 6.6, whose tmpfs refuses O_DIRECT (the 6.12 guest's accepts it).
# Never set an EXIT trap of your own: it replaces the one below, and a
# replacement that loses $? turns every failure into a pass (test_unpriv
# did, for a long time).  Register extra cleanup with on_exit instead.
set -euo pipefail
: "${UBLKD:?UBLKD must point at the ublkd binary}"
export PATH=$PATH:/usr/sbin:/sbin
T=$(mktemp -d /tmp/ublkd-t.XXXXXX)
CACHE_OPT=--cache=writeback
_lib_devs=()   # ids added by this test (also in $T/.devs, which survives subshells)
_lib_on_exit=()   # commands registered with on_exit
_lib_skipped=     # set by skip: status 4 from anything else is a failure
# on_exit CMD: run CMD (a string, eval'd) when the test exits, before its
# devices are deleted; its failure is ignored and never changes the verdict.
on_exit() { _lib_on_exit+=("$1"); }
_lib_cleanup() {
  local rc=$? h
  # set -e would still hold in this trap: a failing step (kill of a job that
  # already ended, rm of a busy dir) would end it there with that step's
  # status - failing a passing test and skipping the rest of the cleanup.
  set +e
  for h in "${_lib_on_exit[@]}"; do eval "$h"; done
  # 4 means "skipped" to suite.sh: a command that failed with status 4
  # under set -e (e2fsck, mount, ...) must not pass for a skip.
  if [ "$rc" = 4 ] && [ -z "$_lib_skipped" ]; then
    echo "FAIL: exit status 4 without skip (a failed command's status)" >&2
    rc=1
  fi
  # A failed test may leave fio running: stop it first, or it keeps the
  # device busy into the next test.
  local jobs_left
  jobs_left=$(jobs -p)
  [ -n "$jobs_left" ] && { kill $jobs_left 2>/dev/null; wait 2>/dev/null; }
  for id in "${_lib_devs[@]}" $(cat "$T/.devs" 2>/dev/null); do
    # --force: a failed test may leave it mounted or open (del refuses a busy device).
    "$UBLKD" del --force -n "$id" >/dev/null 2>&1 || "$UBLKD" del -n "$id" >/dev/null 2>&1 || true
  done
  rm -rf "$T"
  exit $rc
}
trap _lib_cleanup EXIT

log()  { echo "[$(date +%T)] $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "skip: $*"; _lib_skipped=1; exit 4; }
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

# These fail (jq exits 5, prints nothing) rather than print a stand-in when
# the value is missing: "null" or a default 0 made `kill -0 $pid` and
# `[ "$errors" = 0 ]` checks pass on a list that reported nothing.
# ublk_pid ID: the daemon's pid (the kernel's, else the state file's).
ublk_pid() { "$UBLKD" list -n "$1" --json | jq -r '.[0].pid | if type == "number" and . > 0 then . else error("no daemon pid") end'; }
ublk_state() { "$UBLKD" list -n "$1" --json | jq -r '.[0].state'; }
# ublk_stat ID OP FIELD: a counter published by the daemon (refreshed each second).
ublk_stat() { "$UBLKD" list -n "$1" --json | jq -r ".[0].stats.$2.$3 // error(\"no counter $2.$3\")"; }
# ublk_fua ID: writes that reached the daemon with FUA set.
ublk_fua() { "$UBLKD" list -n "$1" --json | jq -r '.[0].stats.fua_writes // error("no fua_writes counter")'; }

# mkimg PATH SIZE: a raw image full of non-zero data is not needed: sparse is fine.
mkimg() { truncate -s "$2" "$1"; }

# fio_verify DEV [fio args...]: random writes with crc32c then a verify pass.
fio_verify() {
  local dev=$1; shift
  fio --name=v --filename="$dev" --direct=1 --ioengine=io_uring --rw=randwrite \
      --verify=crc32c --verify_fatal=1 --do_verify=1 --randrepeat=0 \
      --verify_state_save=0 \
      --size="${FIO_SIZE:-8M}" "$@" --output-format=terse >/dev/null \
    || fail "fio verify on $dev ($*) failed"
}

# wait_for CMD...: retry for up to 10 s.
wait_for() { for _ in $(seq 100); do "$@" && return 0; sleep 0.1; done; return 1; }

# ublk_ids: ids of every ublk device in the kernel.
ublk_ids() { ls /sys/class/ublk-char 2>/dev/null | sed -n 's/^ublkc//p' | sort -n; }
