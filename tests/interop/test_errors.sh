#!/bin/bash
# Bad input everywhere: every subcommand refuses missing files, unknown
# formats and bad options with a message naming the thing and a non-zero
# exit code (qemu-img's code where it has one).
. "$(dirname "$0")/lib.sh"
require_format raw

"$QEMU_IMG" create -q -f raw ok.raw 1M

for sub in info map check "compare ok.raw" "bench -c 1"; do
    expect_rc_nz() { "$@" >"$WORK/.out" 2>&1 && fail "'$*' succeeded"; true; }
    expect_rc_nz uimg $sub missing.raw
    expect_out "Could not open 'missing.raw'"
    expect_rc_nz uimg $sub -f nosuchfmt ok.raw
    expect_out "nosuchfmt"
done
expect_rc 1 uimg info --output=xml ok.raw
expect_out "--output must be used with human or json as argument."
expect_rc 1 uimg info --no-such-option ok.raw
expect_rc 1 uimg info
expect_out "Expecting one image file name"
expect_rc 1 uimg nosuchcmd
expect_out "Command not found: nosuchcmd"
expect_rc 0 uimg --help

# check: raw has no checks -> qemu-img's message and exit 63
expect_rc 63 uimg check -f raw ok.raw
expect_out "This image format does not support checks"
"$QEMU_IMG" check -f raw ok.raw >/dev/null 2>&1; [ $? = 63 ] || fail "qemu-img check rc changed"
expect_rc 1 uimg check -r bogus ok.raw
expect_out "Unknown option value for -r"

# unreadable file: root reads anything, so as root run ublkd as nobody
# (util-linux setpriv) against a root-owned 0600 file
cp ok.raw noperm.raw && chmod 600 noperm.raw
if [ "$(id -u)" = 0 ]; then
    command -v setpriv >/dev/null || fail "setpriv (util-linux) is needed to test an unreadable file as root"
    chmod 755 "$WORK"
    # nobody runs a copy: the build tree may sit under a directory only root
    # can enter (a CI clone in /root), and exec would fail with EACCES too.
    install -m 755 "$UBLKD" "$WORK/ublkd-copy"
    AS_UBLKD=$WORK/ublkd-copy
    as_user() { setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"; }
    as_user test -r noperm.raw && fail "nobody can read a root-owned 0600 file"
else
    AS_UBLKD=$UBLKD
    chmod 000 noperm.raw
    as_user() { "$@"; }
fi
expect_rc 1 as_user "$AS_UBLKD" img info -f raw noperm.raw
expect_out "Could not open 'noperm.raw'"
expect_out "Permission denied"

# A FIFO is not an image: refused at once (open() of a FIFO without a
# writer would block), naming the file and what it is.
mkfifo ff
expect_rc 1 timeout 10 "$UBLKD" img info ff
expect_out "Could not open 'ff'"
expect_out "FIFO"
expect_rc 1 timeout 10 "$UBLKD" img info -f raw ff

# A write on a read-only image: qemu-io's message and exit code
"$QEMU_IO" -f raw -r -c 'write 0 512' ok.raw >q.out 2>&1
qrc=$?
uimg io -f raw -r -c 'write 0 512' ok.raw >u.out 2>&1
urc=$?
[ $urc = $qrc ] || fail "io -r write: ublkd exit $urc, qemu-io $qrc"
same_output "io -r write" u.out q.out
# a directory is not an image
mkdir adir
"$UBLKD" img info -f raw adir >"$WORK/.out" 2>&1 && fail "info on a directory succeeded"
expect_out "adir"

# size that does not fit
expect_rc 1 uimg create -f raw big.raw 9E
expect_out "Invalid image size specified"
# bench argument checks, qemu-img's messages
expect_rc 1 uimg bench -c x ok.raw
expect_out "Invalid request count specified"
expect_rc 1 uimg bench -d 0 ok.raw
expect_out "Invalid queue depth specified"
expect_rc 1 uimg bench --flush-interval=10 ok.raw
expect_out "--flush-interval is only available in write tests"
expect_rc 1 uimg bench --pattern=256 -w ok.raw
expect_out "Invalid pattern byte specified"
expect_rc 1 uimg bench -t nonsense ok.raw
expect_out "Invalid cache mode"   # qemu-img bench's words
exit 0
