#!/bin/bash
# info: human and JSON output identical to qemu-img info for raw images
# (virtual-size, filename, format, actual-size, dirty-flag, key order).
. "$(dirname "$0")/lib.sh"
require_format raw

make_sparse_raw s.raw 64M
"$QEMU_IMG" create -q -f raw one.raw 1G
"$QEMU_IMG" create -q -f raw odd.raw 1000000
mkdir sub && "$QEMU_IMG" create -q -f raw sub/x.raw 3M

info_both() {
    "$QEMU_IMG" info "$@" >q.out 2>&1
    local qrc=$?
    uimg info "$@" >u.out 2>&1
    local urc=$?
    [ $urc = $qrc ] || { cat u.out >&2; fail "info $*: ublkd exit $urc, qemu-img $qrc"; }
    same_output "info $*" u.out q.out
}

for f in s.raw one.raw odd.raw sub/x.raw; do
    info_both -f raw "$f"
    info_both -f raw --output=json "$f"
    info_both "$f"
done
info_both -f raw --output=json --backing-chain s.raw
info_both -f raw --backing-chain s.raw
info_both -U -f raw s.raw

# JSON fields parse and agree (independently of the byte comparison above)
python3 - s.raw <<'PY' || fail "JSON fields disagree"
import json, subprocess, sys, os
f = sys.argv[1]
u = json.loads(subprocess.check_output([os.environ["UBLKD"], "img", "info", "-f", "raw", "--output=json", f]))
q = json.loads(subprocess.check_output(["qemu-img", "info", "-f", "raw", "--output=json", f]))
for k in ("virtual-size", "filename", "format", "actual-size", "dirty-flag"):
    assert u.get(k) == q.get(k), (k, u.get(k), q.get(k))
PY

info_both -f raw nonexist.raw
info_both -f nosuchfmt s.raw
info_both --output=yaml s.raw
exit 0
