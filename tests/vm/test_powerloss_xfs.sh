#!/bin/bash
# Power loss under xfs holding the image: every format, a few replay points
# each (tests/vm/powerloss.sh; `make soak` checks every point of longer runs).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/powerloss.sh"
need_cmd mkfs.xfs xfs_repair
for fmt in "${POWERLOSS_FORMATS[@]}"; do powerloss_run xfs "$fmt"; done
log "ok"
