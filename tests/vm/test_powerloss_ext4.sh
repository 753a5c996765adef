#!/bin/bash
# Power loss under ext4 holding the image: every format, a few replay points
# each (tests/vm/powerloss.sh; `make soak` checks every point of longer runs).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/powerloss.sh"
for fmt in "${POWERLOSS_FORMATS[@]}"; do powerloss_run ext4 "$fmt"; done
log "ok"
