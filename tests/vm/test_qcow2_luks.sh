#!/bin/bash
# LUKS-encrypted qcow2 devices (made by qemu-img, the passphrase from
# --key-file): fio random writes with crc32c verify through 2 queues, then
# qemu-img (with the same passphrase) must check the image clean and read
# what the device served.  Encrypted nodes need the bytes: --zero-copy=auto
# copies (no bounce counted), --zero-copy=on is refused naming the reason.
# A wrong passphrase fails `add` with LUKS's message; a legacy AES image
# serves read-only and is refused read-write.  The same image through
# `add --object secret,id=..,file=(relative)` and -o encrypt.key-secret: it
# serves, and still serves after kill -9 and recover (the object is in the
# state file); `--object secret,data=` is refused.
. "$(dirname "$0")/lib.sh"
need_cmd fio qemu-img qemu-io sha256sum jq
cd "$T"

printf 'correct horse' > key.txt
printf 'wrong horse' > bad.txt
OBJ=(--object secret,id=s0,file=key.txt)
qemu-img create -q -f qcow2 "${OBJ[@]}" \
    -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10 e.qcow2 64M ||
    fail "qemu-img create (LUKS)"
qemu-io "${OBJ[@]}" --image-opts driver=qcow2,file.filename=e.qcow2,encrypt.key-secret=s0 \
    -c 'write -P 0x5a 0 8M' >/dev/null || fail "qemu-io write"

log "wrong passphrase"
if out=$("$UBLKD" add -t qcow2 -f "$T/e.qcow2" --key-file "$T/bad.txt" 2>&1); then
  fail "add with a wrong passphrase succeeded: $out"
fi
grep -q "Invalid password, cannot unlock any keyslot" <<<"$out" || fail "wrong passphrase: '$out'"
if out=$("$UBLKD" add -t qcow2 -f "$T/e.qcow2" 2>&1); then
  fail "add without a key succeeded: $out"
fi
grep -q "encrypt.key-secret" <<<"$out" || fail "no key: '$out'"
if out=$("$UBLKD" add -t qcow2 -f "$T/e.qcow2" --key-file "$T/key.txt" --zero-copy=on 2>&1); then
  fail "--zero-copy=on on an encrypted image succeeded: $out"
fi
log "zero-copy=on: $out"

log "2 queues, fio verify"
id=$(ublk_add qcow2 "$T/e.qcow2" --key-file "$T/key.txt" -q 2 $CACHE_OPT)
dev=$(bdev "$id")
[ "$("$UBLKD" list -n "$id" --json | jq -r '.[0].zero_copy')" = off ] ||
  fail "an encrypted device got zero copy"
cmp -n 4096 "$dev" <(head -c 4096 /dev/zero | tr '\0' 'Z') || fail "qemu-io's data reads wrong"
FIO_SIZE=2M fio_verify "$dev" --offset=16M --bsrange=512-128k --iodepth=32 --numjobs=2 --offset_increment=16M
FIO_SIZE=4M fio_verify "$dev" --offset=4M --bs=4k --iodepth=16
want=$(sha256sum < "$dev" | cut -d' ' -f1)
ublk_del "$id"
qemu-img check -q "${OBJ[@]}" --image-opts driver=qcow2,file.filename=e.qcow2,encrypt.key-secret=s0 ||
  fail "qemu-img check after a clean del"
qemu-img convert "${OBJ[@]}" --image-opts -O raw driver=qcow2,file.filename=e.qcow2,encrypt.key-secret=s0 out.raw
got=$(sha256sum < out.raw | cut -d' ' -f1)
[ "$want" = "$got" ] || fail "qemu-img reads other data than the device served"
# the image file holds no plaintext of what qemu-io wrote
! grep -q ZZZZZZZZZZZZZZZZ e.qcow2 || fail "plaintext in the image file"

log "add --object secret (relative file=), kill -9, recover"
if out=$("$UBLKD" add --object secret,id=k1,data=hunter2 -o encrypt.key-secret=k1 qcow2 "$T/e.qcow2" 2>&1); then
  fail "add with a secret's data= succeeded: $out"
fi
grep -q "data= is refused" <<<"$out" || fail "secret data=: '$out'"
id=$(ublk_add --object secret,id=k1,file=key.txt -o encrypt.key-secret=k1 qcow2 "$T/e.qcow2")
dev=$(bdev "$id")
[ "$(sha256sum < "$dev" | cut -d' ' -f1)" = "$want" ] || fail "--object secret: other data"
kill -9 "$(ublk_pid "$id")"
wait_for sh -c "[ \"\$($UBLKD list -n $id --json | jq -r '.[0].state')\" = QUIESCED ]" ||
  fail "device $id not QUIESCED after kill -9"
(cd / && "$UBLKD" recover -n "$id") || fail "recover of an --object secret device failed"
FIO_SIZE=2M fio_verify "$dev" --offset=16M --bs=4k --iodepth=8
ublk_del "$id"

log "legacy AES: read-only"
qemu-img create -q -f qcow2 "${OBJ[@]}" -o encrypt.format=aes,encrypt.key-secret=s0 a.qcow2 16M
qemu-io "${OBJ[@]}" --image-opts driver=qcow2,file.filename=a.qcow2,encrypt.key-secret=s0 \
    -c 'write -P 0x41 0 1M' >/dev/null
if out=$("$UBLKD" add -t qcow2 -f "$T/a.qcow2" --key-file "$T/key.txt" 2>&1); then
  fail "read-write add of an AES image succeeded: $out"
fi
grep -q "read only here" <<<"$out" || fail "AES read-write: '$out'"
id=$(ublk_add qcow2 "$T/a.qcow2" --key-file "$T/key.txt" --read-only)
cmp -n 1048576 "$(bdev "$id")" <(head -c 1048576 /dev/zero | tr '\0' 'A') || fail "AES data reads wrong"
ublk_del "$id"
log "ok"
