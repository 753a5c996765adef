#!/bin/bash
# Bad input everywhere: every subcommand refuses missing files, unknown
# formats and bad options with a message naming the thing and a non-zero
# exit code (qemu-img's code where it has one).
. "$(dirname "$0")/lib.sh"

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

# unreadable file (skipped as root, who can read anything)
if [ "$(id -u)" != 0 ]; then
    cp ok.raw noperm.raw && chmod 000 noperm.raw
    expect_rc 1 uimg info -f raw noperm.raw
    expect_out "noperm.raw"
fi
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
expect_out "Invalid cache option: nonsense"
exit 0
