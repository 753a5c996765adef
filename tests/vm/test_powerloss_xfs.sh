#!/bin/bash
# Power loss under xfs holding the image: a few replay points per format
# (tests/vm/powerloss.sh; `make soak` checks every point of longer runs).
# CI runs qcow2 here and raw+qcow2 under ext4: a raw image's writes are the
# guest's own, the host fs under them matters less than to qcow2's metadata.
# POWERLOSS_XFS_FORMATS overrides (the soak target sets every format).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/powerloss.sh"
need_cmd mkfs.xfs xfs_repair
read -r -a formats <<<"${POWERLOSS_XFS_FORMATS:-qcow2}"
for fmt in "${formats[@]}"; do powerloss_run xfs "$fmt"; done
log "ok"
