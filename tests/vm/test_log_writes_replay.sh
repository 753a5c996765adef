#!/bin/bash
# The power-loss tests' replay tool (tests/vm/log-writes-replay.c) on logs
# written here in dm-log-writes' format: what it lists, what it rebuilds at
# each point (writes, a discard, a mark), and clear errors for a log that is
# malformed (bad magic, truncated data, an entry past the target's end).
. "$(dirname "$0")/lib.sh"
need_cmd python3 cmp
LWR=${LOG_WRITES_REPLAY:-$(dirname "$UBLKD")/log-writes-replay}
[ -x "$LWR" ] || fail "$LWR is not built"

# mklog OUT SECTORSIZE [bad]: entries 0 write 'A'x2 sectors at 1, 1 flush,
# 2 mark "m1", 3 write 'B' at 2 (FUA), 4 discard 0+2, 5 write 'C'x1 at 7
# (past a 4-sector target when SECTORSIZE makes it so).
mklog() {
  python3 - "$@" <<'PY'
import struct, sys
out, ss = sys.argv[1], int(sys.argv[2])
bad = sys.argv[3] if len(sys.argv) > 3 else ""
ents = [(1, 2, 0, b"", b"A"), (0, 0, 1, b"", b""), (0, 0, 8, b"m1", b""),
        (2, 1, 2, b"", b"B"), (0, 2, 4, b"", b""), (7, 1, 0, b"", b"C")]
log = bytearray(ss)
struct.pack_into("<QQQI", log, 0, 0x6a736677736872 if bad != "magic" else 1, 1, len(ents), ss)
for sector, nr, flags, mark, fill in ents:
    h = bytearray(ss)
    struct.pack_into("<QQQQ", h, 0, sector, nr, flags, len(mark))
    h[32:32 + len(mark)] = mark
    log += h
    if not flags & 4:
        log += fill * (nr * ss)
if bad == "short":
    log = log[:-ss // 2]
open(out, "wb").write(log)
PY
}

mklog "$T/log" 512
out=$("$LWR" "$T/log" list) || fail "list failed"
echo "$out"
[ "$(echo "$out" | grep -vc '^#')" = 6 ] || fail "list shows $(echo "$out" | grep -vc '^#') entries, want 6"
echo "$out" | grep -qx '2 M 0 0 m1' || fail "the mark is not listed as '2 M 0 0 m1'"
echo "$out" | grep -qx '4 D 0 2' || fail "the discard is not listed as '4 D 0 2'"
echo "$out" | grep -qx '3 U 2 1' || fail "the FUA write is not listed as '3 U 2 1'"

# expect SPEC: a file $T/want of 512-byte sectors, one per character
# ('0' zeros, else that letter) - a file, not <(...): the guest may lack /dev/fd.
expect() { python3 -c "import sys; open(sys.argv[2], 'wb').write(b''.join(bytes([ord(c)]) * 512 if c != '0' else bytes(512) for c in sys.argv[1]))" "$1" "$T/want"; }
truncate -s 4096 "$T/t"
"$LWR" "$T/log" replay "$T/t" 0 2 || fail "replay 0..2"
expect 0AA00000; cmp "$T/t" "$T/want" || fail "after entries 0..1 the target differs"
"$LWR" "$T/log" replay "$T/t" 2 4 || fail "replay 2..4"
expect 0AB00000; cmp "$T/t" "$T/want" || fail "after entries 0..3 the target differs"
"$LWR" "$T/log" replay "$T/t" 4 6 || fail "replay 4..6"
expect 00B0000C; cmp "$T/t" "$T/want" || fail "after the discard and the last write the target differs"
# All at once gives the same.
truncate -s 0 "$T/t2"; truncate -s 4096 "$T/t2"
"$LWR" "$T/log" replay "$T/t2" 0 6 || fail "replay 0..6"
cmp "$T/t" "$T/t2" || fail "one replay 0..6 differs from three steps"

# 4096-byte sectors: the last write (sector 7) lies past a 16 KiB target.
mklog "$T/log4k" 4096
truncate -s 16384 "$T/t4"
"$LWR" "$T/log4k" replay "$T/t4" 0 5 || fail "replay of the 4k log to entry 5"
[ "$(od -An -c -j 8192 -N 1 "$T/t4" | tr -d ' ')" = B ] || fail "4k sectors: B not at byte 8192"
msg=$("$LWR" "$T/log4k" replay "$T/t4" 5 6 2>&1) && fail "a write past the target's end was accepted"
echo "$msg" | grep -q "entry 5 sector 7+1: past the end of the target" || fail "unclear message: $msg"

mklog "$T/bad" 512 magic
msg=$("$LWR" "$T/bad" list 2>&1) && fail "a log with a bad magic was listed"
echo "$msg" | grep -q "not a dm-log-writes log" || fail "unclear message: $msg"
mklog "$T/short" 512 short
msg=$("$LWR" "$T/short" list 2>&1) && fail "a truncated log was listed"
echo "$msg" | grep -q "entry 5 .*runs past the end of the log" || fail "unclear message: $msg"
"$LWR" "$T/log" replay "$T/t" 0 7 2>/dev/null && fail "replay past the last entry was accepted"
rc=0; "$LWR" "$T/log" replay "$T/t" x 1 2>/dev/null || rc=$?
[ "$rc" = 2 ] || fail "a bad FROM is not a usage error (exit $rc)"
log "ok"
