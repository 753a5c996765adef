#!/bin/bash
# convert: ublkd img and qemu-img produce the same bytes in both directions,
# ublkd's output is no less sparse than qemu-img's, and the options that
# change the copy (-n, -S 0, -W, -m, -p, -t/-T) keep it correct.
. "$(dirname "$0")/lib.sh"
require_format raw

make_sparse_raw src.raw 64M

# ublkd converts, qemu-img converts: same content, ours not more allocated
expect_rc 0 uimg convert -f raw -O raw src.raw u.raw
"$QEMU_IMG" convert -f raw -O raw src.raw q.raw || fail "qemu-img convert"
[ "$(sha u.raw)" = "$(sha src.raw)" ] || fail "ublkd convert output differs from source"
[ "$(sha q.raw)" = "$(sha u.raw)" ] || fail "ublkd and qemu-img convert outputs differ"
[ "$(stat -c %s u.raw)" = "$(stat -c %s src.raw)" ] || fail "size differs"
ua=$(alloc_bytes u.raw) qa=$(alloc_bytes q.raw)
[ "$ua" -le "$qa" ] || fail "ublkd output allocates $ua bytes, qemu-img's $qa"
expect_rc 0 "$QEMU_IMG" compare -f raw -F raw src.raw u.raw

# the other direction: an image written by ublkd img io, converted by qemu-img
expect_rc 0 uimg create -f raw mine.raw 32M
expect_rc 0 uimg io -f raw -c 'write -P 0x61 0 128k' -c 'write -P 0x62 10M 1M' \
    -c 'write -P 0x63 31M 4k' mine.raw
"$QEMU_IMG" convert -f raw -O raw mine.raw q2.raw || fail "qemu-img convert of ublkd image"
expect_rc 0 uimg convert -f raw -O raw mine.raw u2.raw
[ "$(sha q2.raw)" = "$(sha mine.raw)" ] || fail "qemu-img copy of ublkd image differs"
[ "$(sha u2.raw)" = "$(sha mine.raw)" ] || fail "ublkd copy of its own image differs"

# probing (no -f) and the human-visible default output format
expect_rc 0 uimg convert src.raw probed.raw
[ "$(sha probed.raw)" = "$(sha src.raw)" ] || fail "probed convert differs"

# -n into an existing, dirty, larger target: zero ranges must be zeroed
"$QEMU_IMG" create -q -f raw dirty.raw 64M
"$QEMU_IO" -f raw -c 'write -P 0x77 0 64M' dirty.raw >/dev/null
expect_rc 0 uimg convert -n -f raw -O raw src.raw dirty.raw
[ "$(sha dirty.raw)" = "$(sha src.raw)" ] || fail "convert -n left stale data"

# -n into a smaller target fails like qemu-img
"$QEMU_IMG" create -q -f raw small.raw 1M
expect_rc 1 uimg convert -n -f raw -O raw src.raw small.raw
expect_out "output file is smaller than input file"

# -S 0 allocates everything; -W, -m 1 and -m 16 still copy correctly
expect_rc 0 uimg convert -S 0 -f raw -O raw src.raw full.raw
[ "$(sha full.raw)" = "$(sha src.raw)" ] || fail "-S 0 output differs"
[ "$(alloc_bytes full.raw)" -ge $((64 * 1024 * 1024)) ] || fail "-S 0 output is sparse"
for opt in "-W" "-m 1" "-m 16" "-t none -T none" "-t writeback -S 64k"; do
    rm -f o.raw
    expect_rc 0 uimg convert $opt -f raw -O raw src.raw o.raw
    [ "$(sha o.raw)" = "$(sha src.raw)" ] || fail "convert $opt output differs"
done

# -p prints qemu-img's progress format and ends at 100%
expect_rc 0 uimg convert -p -f raw -O raw src.raw p.raw
tr '\r' '\n' <"$WORK/.out" | grep -q '^    (100.00/100%)$' || fail "no 100% progress line"
tr '\r' '\n' <"$WORK/.out" | grep -q '^    (0.00/100%)$' || fail "no 0% progress line"

# failures: exit 1, a message naming the thing, never success
expect_rc 1 uimg convert -f raw -O raw nonexist.raw x.raw
expect_out "Could not open 'nonexist.raw'"
expect_rc 1 uimg convert -O nosuchfmt src.raw x.raw
expect_out "Unknown file format 'nosuchfmt'"
expect_rc 1 uimg convert -t bogus -O raw src.raw x.raw
expect_out "Invalid cache option: bogus"
expect_rc 1 uimg convert -S 100 -O raw src.raw x.raw
expect_out "Invalid buffer size for sparse output specified"
expect_rc 1 uimg convert -m 17 -O raw src.raw x.raw
expect_out "Invalid number of coroutines"
expect_rc 1 uimg convert -O raw -o foo=1 src.raw x.raw
expect_out "Invalid parameter 'foo'"
mkdir ro && chmod 555 ro
# root writes into a 0555 directory, so as root the convert runs as nobody
# (as test_errors does); skipping it under root left it checked nowhere.
if [ "$(id -u)" = 0 ]; then
    command -v setpriv >/dev/null || fail "setpriv (util-linux) is needed to test an unwritable directory as root"
    chmod 755 "$WORK"
    # nobody runs a copy: the build tree may sit under a directory only root
    # can enter (a CI clone in /root), and exec would fail with EACCES too.
    install -m 755 "$UBLKD" "$WORK/ublkd-copy"
    AS_UBLKD=$WORK/ublkd-copy
    as_user() { setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"; }
else
    AS_UBLKD=$UBLKD
    as_user() { "$@"; }
fi
expect_rc 1 as_user "$AS_UBLKD" img convert -O raw src.raw ro/x.raw
expect_out "Could not create 'ro/x.raw': Permission denied"
exit 0
