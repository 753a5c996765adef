#!/bin/bash
# quorum: ublkd img convert/compare/info on a json:{} quorum of 3 raw files
# where children differ in a few blocks.  The converted image is the
# majority (cmp with the good copy); qemu-img 7.2 agrees where its
# whole-request vote also succeeds (each request sees at most one bad
# child), and fails where two children are wrong in different blocks of one
# request, which the per-block vote still reads.
. "$(dirname "$0")/lib.sh"
require_format raw quorum

for f in good a b c; do
    "$QEMU_IMG" create -q -f raw $f.raw 8M
    "$QEMU_IO" -f raw -c 'write -P 0x11 0 8M' -c 'write -P 0x5a 3M 64k' $f.raw >/dev/null
done
# b wrong in one sector of the first 2 MiB, c in a 4k block of the third:
# qemu-img convert reads 2 MiB at a time, so each of its requests sees one
# bad child at most.
"$QEMU_IO" -f raw -c 'write -P 0x22 8192 512' b.raw >/dev/null
"$QEMU_IO" -f raw -c 'write -P 0x33 5M 4k' c.raw >/dev/null

graph() {   # graph THRESHOLD [extra json]
    local ch="" f
    for f in a b c; do
        ch="$ch${ch:+,}{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"$f.raw\"}}"
    done
    echo "json:{\"driver\":\"quorum\",\"vote-threshold\":$1${2:+,$2},\"children\":[$ch]}"
}
G=$(graph 2)

# convert: the majority, with the outvoted children reported on stderr
uimg convert -O raw "$G" out.raw 2>events.txt || { cat events.txt >&2; fail "ublkd convert of the quorum failed"; }
cmp out.raw good.raw || fail "ublkd convert of the quorum is not the majority"
grep -q '"type":"QUORUM_REPORT_BAD","node":"[^"]*","file":"b.raw","offset":8192,"length":512' events.txt ||
    { cat events.txt >&2; fail "no QUORUM_REPORT_BAD for b.raw at 8192+512"; }
grep -q '"file":"c.raw","offset":5242880,"length":4096' events.txt ||
    { cat events.txt >&2; fail "no QUORUM_REPORT_BAD for c.raw at 5M+4k"; }
"$QEMU_IMG" convert -O raw "$G" qout.raw || fail "qemu-img convert of the quorum failed"
cmp qout.raw good.raw || fail "qemu-img convert of the quorum is not the majority"

# compare: the quorum is the good copy, for both tools
expect_rc 0 uimg compare "$G" good.raw
expect_out "Images are identical."
expect_rc 0 "$QEMU_IMG" compare "$G" good.raw

# info shows the children and their counters
expect_rc 0 uimg info "$G"
expect_out "file format: quorum"
expect_out "vote threshold: 2"
expect_out "children.1.file: b.raw"
# ...and as JSON: children.N.* flat beside the child count (nesting them under
# "children", a number there, aborted in json-c)
uimg info --output=json "$G" >info.json 2>&1 || { cat info.json >&2; fail "info --output=json failed"; }
jq -e '."format-specific".data."children.1.file" == "b.raw" and ."format-specific".data.children == 3' \
    info.json >/dev/null || { cat info.json >&2; fail "info JSON lacks children.1.file or the count"; }
expect_out "children.2.format: raw"

# c now also wrong in the same 2 MiB as b (another block): every block still
# has a majority, so ublkd reads it; qemu-img 7.2 votes on the whole request
# and fails it.
"$QEMU_IO" -f raw -c 'write -P 0x44 16384 512' c.raw >/dev/null
rm -f out.raw
uimg convert -O raw "$G" out.raw 2>events.txt || { cat events.txt >&2; fail "ublkd convert failed with two bad children in one request"; }
cmp out.raw good.raw || fail "per-block vote: converted image is not the majority"
if "$QEMU_IMG" convert -O raw "$G" qout2.raw 2>q.err; then
    fail "qemu-img 7.2 read a request with two differently bad children: the test's premise is wrong"
fi
grep -q "Input/output error" q.err || { cat q.err >&2; fail "qemu-img failed for another reason"; }

# threshold 3: any difference fails the read, for both
expect_rc 1 uimg convert -O raw "$(graph 3)" out3.raw
expect_out "Input/output error"
expect_out "QUORUM_FAILURE"
expect_rc 1 "$QEMU_IMG" convert -O raw "$(graph 3)" qout3.raw

# option errors: each its own message
expect_rc 1 uimg info "json:{\"driver\":\"quorum\",\"children\":[{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"a.raw\"}}]}"
expect_out "vote-threshold is required"
expect_rc 1 uimg info "$(graph 4)"
expect_out "vote-threshold=4 is out of range"
expect_rc 1 uimg info "$(graph 2 '"blkverify":true')"
expect_out "blkverify=on needs exactly 2 children, got 3"
truncate -s 9M c.raw
expect_rc 1 uimg info "$G"
expect_out "children.2 ('c.raw') is 9437184 bytes but children.0 ('a.raw') is 8388608"
exit 0
