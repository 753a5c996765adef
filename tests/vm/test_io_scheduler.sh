#!/bin/bash
# --io-scheduler: a ublkd device gets "none" unless told otherwise (the kernel gives a
# 1-queue device mq-deadline, and on 7.x that sends every request through a kblockd
# worker); "kernel" keeps the kernel's choice, a name sets that scheduler, and a name the
# kernel does not offer fails the add, says what it offers, and leaves no device behind.
. "$(dirname "$0")/lib.sh"
sched() { sed -n 's/.*\[\(.*\)\].*/\1/p' "/sys/block/ublkb$1/queue/scheduler"; }

ublk_add null --size 16M >/dev/null
[ "$(sched "$ID")" = none ] ||
  fail "default: $(cat "/sys/block/ublkb$ID/queue/scheduler"), not [none]"
ublk_del "$ID"

ublk_add null --size 16M --io-scheduler=kernel >/dev/null
kernel_choice=$(sched "$ID")
log "the kernel's choice for a 1-queue device: $kernel_choice"
[ -n "$kernel_choice" ] || fail "--io-scheduler=kernel: no scheduler selected"
offered=$(cat "/sys/block/ublkb$ID/queue/scheduler")
ublk_del "$ID"

if grep -qw mq-deadline <<<"$offered"; then
  ublk_add null --size 16M -q 2 --io-scheduler mq-deadline >/dev/null
  [ "$(sched "$ID")" = mq-deadline ] || fail "--io-scheduler mq-deadline: $(sched "$ID")"
  ublk_del "$ID"
fi

before=$(ublk_ids | sort | tr '\n' ' ')
if out=$("$UBLKD" add null --size 16M --io-scheduler=nosuch 2>&1); then
  fail "--io-scheduler=nosuch was accepted: $out"
fi
log "nosuch: $out"
grep -q -- "--io-scheduler nosuch" <<<"$out" || fail "the error does not name the option: $out"
grep -q "offers: .*none" <<<"$out" || fail "the error does not say what the kernel offers: $out"
after=$(ublk_ids | sort | tr '\n' ' ')
[ "$before" = "$after" ] || fail "a failed add left a device: before '$before', after '$after'"
exit 0
