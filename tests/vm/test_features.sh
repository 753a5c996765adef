#!/bin/bash
# `ublkd features` reports what the driver has (6.12: ioctl encoding, user copy, unprivileged
# devices) and marks the 7.x bits ublkd decided not to use.
. "$(dirname "$0")/lib.sh"
out=$("$UBLKD" features) || fail "ublkd features failed"
echo "$out"
for f in CMD_IOCTL_ENCODE USER_COPY UNPRIVILEGED_DEV USER_RECOVERY_REISSUE NEED_GET_DATA; do
  grep -q "UBLK_F_$f" <<<"$out" || fail "feature $f missing"
done
# INTEGRITY, SHMEM_ZC, IO_DESC_SIZE (Linux 7.x): listed, and marked as bits ublkd
# does not use.  6.12 has none of them: then nothing may claim them.
for f in INTEGRITY SHMEM_ZC IO_DESC_SIZE; do
  if grep -q "UBLK_F_$f" <<<"$out"; then
    grep -q "UBLK_F_$f (not supported by ublkd: " <<<"$out" || fail "UBLK_F_$f is not marked unsupported"
  else
    log "UBLK_F_$f: not in kernel $(uname -r) (it is in 7.3: VM_KERNEL=7.3)"
  fi
done
grep "not supported" <<<"$out" | grep -qv "INTEGRITY\|SHMEM_ZC\|IO_DESC_SIZE" && fail "a used feature is marked unsupported"
exit 0
