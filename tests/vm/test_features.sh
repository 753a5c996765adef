#!/bin/bash
# `ublkd features` reports what the 6.12 driver has: ioctl encoding, user copy, unprivileged devices.
. "$(dirname "$0")/lib.sh"
out=$("$UBLKD" features) || fail "ublkd features failed"
echo "$out"
for f in CMD_IOCTL_ENCODE USER_COPY UNPRIVILEGED_DEV USER_RECOVERY_REISSUE NEED_GET_DATA; do
  grep -q "UBLK_F_$f" <<<"$out" || fail "feature $f missing"
done
