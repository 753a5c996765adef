#!/bin/bash
# Bad arguments fail with a clear message and leave no device behind.
. "$(dirname "$0")/lib.sh"
mkimg $T/ok.raw 16M
: > $T/empty.raw
printf 'not a vdi image' > $T/junk.vdi; truncate -s 1M $T/junk.vdi
before=$(ublk_ids | tr '\n' ' ')
expect_fail() {  # expect_fail PATTERN ARGS...
  local pat=$1; shift
  local out
  if out=$("$UBLKD" add "$@" 2>&1); then fail "ublkd add $* succeeded (printed $out)"; fi
  grep -qi -- "$pat" <<<"$out" || fail "ublkd add $*: message '$out' does not mention '$pat'"
  log "ok: add $* -> $out"
  [ "$(ublk_ids | tr '\n' ' ')" = "$before" ] || fail "ublkd add $* left a device behind"
}
expect_fail "no such file" raw $T/missing.raw $CACHE_OPT
expect_fail "vdi" vdi $T/junk.vdi $CACHE_OPT
expect_fail "size" raw $T/empty.raw $CACHE_OPT
expect_fail "queues" raw $T/ok.raw -q 0
expect_fail "depth" raw $T/ok.raw -d 5000
expect_fail "unknown device type" nosuchfmt $T/ok.raw
expect_fail "size" null
expect_fail "block-size" raw $T/ok.raw --logical-block-size 1000
ublk_add raw $T/ok.raw $CACHE_OPT -n 7 >/dev/null
[ "$ID" = 7 ] || fail "-n 7 gave device $ID"
before=$(ublk_ids | tr '\n' ' ')
expect_fail "already in use" raw $T/ok.raw $CACHE_OPT -n 7
