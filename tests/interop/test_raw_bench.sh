#!/bin/bash
# bench: qemu-img bench's header and "Run completed" lines, then IOPS; the
# requests really happen (writes land with the pattern, where qemu-img
# bench would put them).
. "$(dirname "$0")/lib.sh"
require_format raw

"$QEMU_IMG" create -q -f raw b.raw 16M
# qemu-img benches its own copy: on b.raw its -w runs would write the very
# pattern checked below, and hide a ublkd bench -w that writes nothing.
"$QEMU_IMG" create -q -f raw qb.raw 16M
# -c below -d: qemu-img's banner still shows the -d given ("64 in parallel")
for args in "-c 1000 -d 4" "-c 100 -d 1 -s 64k -S 128k -o 4096" "-c 500 -d 8 -w --pattern=0x42" \
            "-c 10" "-c 3 -d 8 -w --pattern=0x42"; do
    "$QEMU_IMG" bench -f raw $args qb.raw 2>&1 | head -1 >q.out
    uimg bench -f raw $args b.raw >u.all 2>&1 || { cat u.all >&2; fail "bench $args failed"; }
    head -1 u.all >u.out
    same_output "bench $args header" u.out q.out
    grep -qE '^Run completed in [0-9]+\.[0-9]{3} seconds\.$' u.all || fail "bench $args: no Run completed line"
    grep -qE '^[0-9]+ IOPS, [0-9.]+ MiB/s, CPU [0-9.]+ us/IO' u.all || fail "bench $args: no IOPS line"
done
# the write run above put 0x42 in the first 500 4k blocks
expect_rc 0 "$QEMU_IO" -f raw -c 'read -P 0x42 0 2000k' b.raw
# A failed request: its error and exit 1, no summary of the run (qemu-img
# exits at the first failure; on an empty image it dies of SIGFPE, so
# ublkd is checked alone).
: >empty.raw
expect_rc 1 uimg bench -f raw -c 100 empty.raw
expect_out "Failed request"
grep -qE 'Run completed|IOPS' "$WORK/.out" && { cat "$WORK/.out" >&2; fail "bench printed a summary after a failed request"; }
# flush interval, --no-drain, random mode, O_DIRECT
expect_rc 0 uimg bench -f raw -w -c 256 -d 4 --flush-interval=64 b.raw
expect_out "Sending flush every 64 requests"
expect_rc 0 uimg bench -f raw -w -c 256 -d 4 --flush-interval=64 --no-drain b.raw
expect_rc 0 uimg bench -f raw --random --seed=7 -c 1000 -d 16 b.raw
expect_out "random read requests"
expect_rc 0 uimg bench -f raw -t none -i native -c 100 -d 2 b.raw
expect_out "served by io_uring"
# --threads: the -c requests are split between the threads, and together
# they cover what one thread's sequence would (blocks 0..599 here, each
# written once with the pattern, none beyond)
"$QEMU_IMG" create -q -f raw t.raw 16M
expect_rc 0 uimg bench -f raw -w --threads 3 -c 600 -d 4 --pattern=0x43 t.raw
expect_out "Using 3 threads"
grep -qE '^[0-9]+ IOPS' "$WORK/.out" || { cat "$WORK/.out" >&2; fail "bench --threads: no IOPS line"; }
expect_rc 0 "$QEMU_IO" -f raw -c 'read -P 0x43 0 2400k' -c 'read -P 0 2400k 4k' t.raw
expect_rc 0 uimg bench -f raw --random --threads 2 -c 1000 -d 8 b.raw
expect_out "Using 2 threads"
for bad in 0 65 -1 2x ""; do
    expect_rc 1 uimg bench -f raw --threads "$bad" -c 10 b.raw
    expect_out "Invalid thread count '$bad': --threads takes 1 to 64"
done
exit 0
