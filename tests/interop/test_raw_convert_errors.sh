#!/bin/bash
# A convert that hits an I/O error part way (blkdebug injects EIO on a source
# read, ENOSPC on a target write, EIO on block status) must exit 1 with a
# message naming the error, never report success.
. "$(dirname "$0")/lib.sh"
require_format raw

"$QEMU_IMG" create -q -f raw s.raw 8M
"$QEMU_IO" -f raw -c 'write -P 1 0 8M' s.raw >/dev/null

expect_rc 1 uimg convert --image-opts -O raw \
    "driver=blkdebug,image.driver=raw,image.file.filename=s.raw,inject-error.0.event=read,inject-error.0.errno=5,inject-error.0.offset=5242880" o.raw
expect_out "error while reading at byte"
expect_out "Input/output error"

"$QEMU_IMG" create -q -f raw t.raw 8M
expect_rc 1 uimg convert -n --target-image-opts s.raw \
    "driver=raw,file.driver=blkdebug,file.image.filename=t.raw,file.image.driver=file,file.inject-error.0.event=write,file.inject-error.0.errno=28,file.inject-error.0.offset=3145728"
expect_out "error while writing at byte"
expect_out "No space left on device"

expect_rc 1 uimg convert --image-opts -O raw \
    "driver=blkdebug,image.driver=raw,image.file.filename=s.raw,inject-error.0.event=block-status,inject-error.0.errno=5" o2.raw
expect_out "Input/output error"

# the same failure with every option that changes the copy loop
for opt in "-W" "-m 1" "-m 16" "-p"; do
    expect_rc 1 uimg convert $opt --image-opts -O raw \
        "driver=blkdebug,image.driver=raw,image.file.filename=s.raw,inject-error.0.event=read,inject-error.0.errno=5,inject-error.0.offset=7340032" o3.raw
done
# compare reports read errors with qemu-img's exit code 4... through blkdebug
expect_rc 4 uimg compare --image-opts \
    "driver=blkdebug,image.driver=raw,image.file.filename=s.raw,inject-error.0.event=read,inject-error.0.errno=5" \
    "driver=raw,file.filename=s.raw"
expect_out "Error while reading offset 0"
exit 0
