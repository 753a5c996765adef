#!/bin/bash
# A filter under a format is a protocol (issue #10 item 5): raw over blkdebug
# over a VDI file shows and writes the file's own bytes, as qemu-io does, and
# vdi over blkdebug opens the VDI.
. "$(dirname "$0")/lib.sh"
require_format raw vdi

"$QEMU_IMG" create -q -f vdi x.vdi 4M
"$QEMU_IO" -f vdi -c 'write -P 0x5a 0 64k' x.vdi >/dev/null || fail "qemu-io write"
raw_opts="driver=raw,file.driver=blkdebug,file.image.filename=x.vdi"
vdi_opts="driver=vdi,file.driver=blkdebug,file.image.filename=x.vdi"

# The first 64 bytes are the VDI's text banner, not guest data (0x5a).
expect_rc 0 uimg io --image-opts -c 'read -v 0 64' "$raw_opts"
grep -v "ops/sec" "$WORK/.out" >u.txt
"$QEMU_IO" --image-opts -c "read -v 0 64" "$raw_opts" 2>&1 | grep -v "ops/sec" >q.txt
same_output "raw/blkdebug read" u.txt q.txt
expect_out "QEMU.VM.Virt"
expect_rc 0 uimg io --image-opts -c 'length' "$raw_opts"
expect_out "$("$QEMU_IO" -f raw -c length x.vdi)"

# vdi over blkdebug: the guest data.
expect_rc 0 uimg io --image-opts -c 'read -P 0x5a 0 64k' -c 'length' "$vdi_opts"
expect_out "4 MiB"
expect_rc 0 uimg info --image-opts "$vdi_opts"
expect_out "virtual size: 4 MiB"

# Writing through raw/blkdebug changes the file's bytes: the guest data of
# the VDI at its first block is left alone, the header region takes the write.
size_before=$(stat -c %s x.vdi)
expect_rc 0 uimg io --image-opts -c "write -P 0x77 $((size_before - 512)) 512" "$raw_opts"
"$QEMU_IO" -f raw -c "read -P 0x77 $((size_before - 512)) 512" x.vdi >/dev/null ||
    fail "raw/blkdebug write did not land at the file offset"
