#!/bin/bash
# Encrypted qcow2 against qemu-img/qemu-io 7.2: LUKS images either tool
# created read the same through both (every cipher mode qemu-img makes that
# libcrypto has), what one tool writes the other reads and checks clean,
# wrong or missing passphrases are clear errors, legacy AES images read and
# refuse writes, secrets come from data=, file= and base64, and crafted LUKS
# headers are refused naming the field.
. "$(dirname "$0")/lib.sh"
require_format qcow2

n_ok=0
OBJ=(--object secret,id=s0,data=letmein)
echo -n letmein >pw.txt
opts() { echo "driver=qcow2,file.filename=$1,encrypt.key-secret=s0"; }
# qemu-io with the secret: qio IMG CMDS... (any pattern mismatch fails)
qio() {
    local img=$1
    shift
    local args=()
    for c in "$@"; do args+=(-c "$c"); done
    "$QEMU_IO" "${OBJ[@]}" --image-opts "$(opts "$img")" "${args[@]}" >qio.out 2>&1 ||
        { cat qio.out >&2; fail "qemu-io $img $*"; }
    ! grep -q "Pattern verification failed\|error" qio.out ||
        { cat qio.out >&2; fail "qemu-io $img $*: data differs"; }
}
uio() {
    local img=$1
    shift
    local args=()
    for c in "$@"; do args+=(-c "$c"); done
    uimg io "${OBJ[@]}" --image-opts "$(opts "$img")" "${args[@]}" >uio.out 2>&1 ||
        { cat uio.out >&2; fail "ublkd img io $img $*"; }
    ! grep -q "Pattern verification failed\|error" uio.out ||
        { cat uio.out >&2; fail "ublkd img io $img $*: data differs"; }
}
# both tools convert IMG to raw: the same bytes
same_read() {
    "$QEMU_IMG" convert "${OBJ[@]}" --image-opts -O raw "$(opts "$1")" q.raw ||
        fail "qemu-img convert $1"
    uimg convert "${OBJ[@]}" --image-opts -O raw "$(opts "$1")" u.raw || fail "ublkd convert $1"
    cmp q.raw u.raw || fail "$1: ublkd reads other bytes than qemu-img"
    n_ok=$((n_ok + 1))
}
checks_clean() {
    "$QEMU_IMG" check -q "${OBJ[@]}" --image-opts "$(opts "$1")" || fail "qemu-img check $1"
    uimg check -q "${OBJ[@]}" --image-opts "$(opts "$1")" || fail "ublkd check $1"
}

# same_layout A B: the qcow2 headers and extensions alike (the LUKS area's bytes are random)
same_layout() {
    python3 - "$1" "$2" <<'PY'
import struct, sys
def layout(p):
    d = open(p, 'rb').read()
    hl = struct.unpack('>I', d[100:104])[0]
    o, exts = hl, []
    while True:
        t, l = struct.unpack('>II', d[o:o + 8])
        exts.append((t, d[o + 8:o + 8 + l]))
        if t == 0:
            break
        o += 8 + ((l + 7) & ~7)
    return d[:hl], exts, len(d)
a, b = layout(sys.argv[1]), layout(sys.argv[2])
if a != b:
    print(a, b, file=sys.stderr)
    sys.exit(1)
PY
}

# ---- qemu-img's images, every mode it creates, read by us
# Each mode a cipher, IV generator or hash no other has (PBKDF2 timing
# makes every qemu-img create cost about a second: no two alike).
modes=("" "encrypt.cipher-alg=aes-128,encrypt.cipher-mode=xts,encrypt.hash-alg=sha384"
       "cluster_size=4k,encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256"
       "encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=plain64,encrypt.hash-alg=sha224"
       "encrypt.cipher-alg=aes-256,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=plain,encrypt.hash-alg=sha1"
       "encrypt.cipher-alg=aes-256,encrypt.cipher-mode=ctr,encrypt.ivgen-alg=plain64,encrypt.hash-alg=sha512"
       "encrypt.cipher-alg=aes-256,encrypt.cipher-mode=ecb")
# qemu-img's PBKDF2 timing fails now and then on a loaded machine ("Unable
# to get accurate CPU usage"): a few tries
qcreate() {     # qcreate [-v] ARGS: -v keeps the Formatting line in q.out
    local q=-q
    [ "$1" = -v ] && { q=; shift; }
    for _ in 1 2 3 4 5; do
        "$QEMU_IMG" create $q -f qcow2 "${OBJ[@]}" "$@" >q.out 2>qc.err && return 0
        grep -q "accurate CPU usage" qc.err || break
    done
    cat qc.err >&2
    return 1
}
i=0
for m in "${modes[@]}"; do
    img=q$i.qcow2
    i=$((i + 1))
    qcreate $([ $i = 1 ] && echo -v) -o "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10${m:+,$m}" "$img" 4M ||
        { echo "qemu-img cannot create $m: skipped" >&2; continue; }
    if [ $i = 1 ] || [ $i = 3 ]; then
        # ours with the same options: qemu-img's header and layout, and its Formatting line
        rm -f uc.qcow2
        uimg create -f qcow2 "${OBJ[@]}" -o "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10${m:+,$m}" \
            uc.qcow2 4M >u.out 2>&1 || { cat u.out >&2; fail "create $m"; }
        [ $i = 1 ] && sed -i "s/uc.qcow2/$img/" u.out && same_output "create's Formatting line" u.out q.out
        same_layout "$img" uc.qcow2 || fail "create $m: header or layout differs from qemu-img's"
        "$QEMU_IMG" check -q "${OBJ[@]}" --image-opts "$(opts uc.qcow2)" || fail "qemu-img check of ours"
        n_ok=$((n_ok + 1))
    fi
    qio "$img" "write -P 0x5a 0 64k" "write -P 0x33 1M 4k" "write -P 0x44 3000k 512"
    same_read "$img"
    # ours into qemu-img's: in place, allocating with a partial cluster (COW
    # from the cluster's encrypted old bytes), a sector straddling clusters
    uio "$img" "write -P 0x11 8k 4k" "write -P 0x22 2M 70k" "write -P 0x66 1M 512" \
        "write -P 0x77 130560 1024"
    qio "$img" "read -P 0x11 8k 4k" "read -P 0x5a 0 8k" "read -P 0x5a 12k 52k" \
        "read -P 0 64k 65024" \
        "read -P 0x77 130560 1024" "read -P 0x22 2M 70k" "read -P 0x66 1M 512" \
        "read -P 0x33 1049088 3584" "read -P 0 2170880 8192"
    checks_clean "$img"
    same_read "$img"
done
[ $n_ok -ge 9 ] || fail "too few cipher modes ran ($n_ok cases)"

# ---- our images, read and written by qemu
for m in "" "encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv" \
         "encrypt.cipher-alg=aes-256,encrypt.cipher-mode=xts,encrypt.hash-alg=sha512,cluster_size=4k"; do
    rm -f u.qcow2
    uimg create -q -f qcow2 "${OBJ[@]}" \
        -o "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10${m:+,$m}" u.qcow2 4M ||
        fail "ublkd create $m"
    "$QEMU_IMG" info u.qcow2 | grep -q "encrypted: yes" || fail "qemu-img info: not encrypted"
    checks_clean u.qcow2
    uio u.qcow2 "write -P 0xa1 0 100k" "write -P 0xa2 3M 4k"
    qio u.qcow2 "read -P 0xa1 0 100k" "read -P 0xa2 3M 4k" "read -P 0 100k 28k" \
        "write -P 0xb1 200k 8k"
    uio u.qcow2 "read -P 0xb1 200k 8k" "read -P 0xa1 0 100k"
    checks_clean u.qcow2
    same_read u.qcow2
done

# ---- convert into an encrypted target; an encrypted overlay of a plain backing file
"$QEMU_IMG" create -q -f raw src.raw 2M
"$QEMU_IO" -f raw -c "write -P 0x42 64k 1M" src.raw >/dev/null
uimg convert "${OBJ[@]}" -O qcow2 -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10 \
    src.raw conv.qcow2 || fail "convert into LUKS"
"$QEMU_IMG" compare "${OBJ[@]}" --image-opts "driver=raw,file.filename=src.raw" \
    "$(opts conv.qcow2)" >/dev/null || fail "convert into LUKS: qemu-img reads other data"
uimg create -q -f qcow2 "${OBJ[@]}" -b src.raw -F raw \
    -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10 ov.qcow2 ||
    fail "create an encrypted overlay"
uio ov.qcow2 "write -P 0x99 66k 2k"
qio ov.qcow2 "read -P 0x42 64k 2k" "read -P 0x99 66k 2k" "read -P 0x42 68k 60k"
checks_clean ov.qcow2
# resize: growth reads zeros; preallocation refused (the clusters would read as garbage)
uimg resize "${OBJ[@]}" --image-opts "$(opts ov.qcow2)" 4M >/dev/null || fail "resize LUKS"
qio ov.qcow2 "read -P 0 2M 2M" "read -P 0x99 66k 2k"
expect_rc 1 uimg resize "${OBJ[@]}" --image-opts --preallocation=full "$(opts ov.qcow2)" 5M
expect_out "preallocation is not supported with encryption"
n_ok=$((n_ok + 3))

# ---- secrets: from a file, base64, a wrong one, none
uimg convert --object secret,id=s0,file=pw.txt --image-opts -O raw "$(opts q0.qcow2)" f.raw ||
    fail "secret from a file"
"$QEMU_IMG" convert "${OBJ[@]}" --image-opts -O raw "$(opts q0.qcow2)" g.raw
cmp f.raw g.raw || fail "secret from a file: other data"
uimg compare --object "secret,id=s0,data=$(echo -n letmein | base64),format=base64" \
    --image-opts "$(opts q0.qcow2)" "driver=raw,file.filename=g.raw" >/dev/null ||
    fail "base64 secret"
expect_rc 1 uimg convert --object secret,id=s0,data=wrong --image-opts -O raw "$(opts q0.qcow2)" w.raw
expect_out "Invalid password, cannot unlock any keyslot"
expect_rc 1 uimg convert -O raw q0.qcow2 w.raw
expect_out "Parameter 'encrypt.key-secret' is required for cipher"
expect_rc 1 uimg convert --image-opts -O raw "$(opts q0.qcow2)" w.raw
expect_out "No secret with id 's0'"
expect_rc 1 uimg create -f qcow2 -o encrypt.format=luks u2.qcow2 1M
expect_out "Parameter 'encrypt.key-secret' is required for cipher"
[ ! -e u2.qcow2 ] || fail "a refused create left a file"
# aes-192's key material is not whole sectors: qemu-img 7.2 asserts on it
expect_rc 1 uimg create -f qcow2 "${OBJ[@]}" \
    -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.cipher-alg=aes-192,encrypt.cipher-mode=cbc u2.qcow2 1M
expect_out "is not whole sectors"
expect_rc 1 uimg info --object foo,id=x q0.qcow2
expect_out "--object type 'foo' is not supported"
# info needs no key, as qemu-img's
expect_rc 0 uimg info q0.qcow2
expect_out "encrypted: yes"
expect_out "cipher alg: aes-256"
n_ok=$((n_ok + 8))

# ---- measure: the LUKS area as qemu-img counts it; info --output=json nests "encrypt"
for o in "" ",encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,cluster_size=4k"; do
    for _ in 1 2 3 4 5; do      # qemu-img times PBKDF2 here too
        "$QEMU_IMG" measure "${OBJ[@]}" -O qcow2 -o "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10$o" \
            --size 1G >q.out 2>&1 && break
    done
    uimg measure "${OBJ[@]}" -O qcow2 -o "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10$o" \
        --size 1G >u.out 2>&1
    same_output "measure $o" u.out q.out
done
if command -v jq >/dev/null; then
    for key in format cipher-alg cipher-mode ivgen-alg hash-alg uuid payload-offset master-key-iters; do
        a=$("$QEMU_IMG" info --output=json q0.qcow2 | jq -c ".\"format-specific\".data.encrypt.\"$key\"")
        b=$(uimg info --output=json q0.qcow2 | jq -c ".\"format-specific\".data.encrypt.\"$key\"")
        [ "$a" = "$b" ] && [ "$a" != null ] || fail "info --output=json encrypt.$key: ublkd $b, qemu-img $a"
    done
    [ "$(uimg info --output=json q0.qcow2 | jq .encrypted)" = true ] || fail "info json: encrypted"
fi
n_ok=$((n_ok + 4))

# ---- legacy AES: read, writes refused
"$QEMU_IMG" create -q -f qcow2 "${OBJ[@]}" -o encrypt.format=aes,encrypt.key-secret=s0 aes.qcow2 4M
qio aes.qcow2 "write -P 0x5c 4k 64k" "write -P 0x5d 2M 512"
same_read aes.qcow2
expect_rc 1 uimg io "${OBJ[@]}" --image-opts "$(opts aes.qcow2)" -c "write 0 4k"
expect_out "AES-encrypted (crypt_method 1) images are read only here"
expect_rc 1 uimg create -f qcow2 "${OBJ[@]}" -o encrypt.format=aes,encrypt.key-secret=s0 a2.qcow2 1M
expect_out "Creating AES-encrypted"
n_ok=$((n_ok + 2))

# ---- crafted LUKS headers: refused naming the field, never a crash
off=$(python3 -c "import struct;d=open('q0.qcow2','rb').read();o=struct.unpack('>I',d[100:104])[0]
while True:
    t,l=struct.unpack('>II',d[o:o+8])
    if t==0x0537be77: print(struct.unpack('>Q',d[o+8:o+16])[0]); break
    o+=8+((l+7)&~7)")
poke() { cp q0.qcow2 bad.qcow2; printf "$2" | dd of=bad.qcow2 bs=1 seek=$((off + $1)) conv=notrunc status=none; }
poke 0 'XXXX'
expect_rc 1 uimg convert "${OBJ[@]}" --image-opts -O raw "$(opts bad.qcow2)" w.raw
expect_out "Volume is not in LUKS format"
poke $((208 + 44)) '\x00\x00\x00\x01'          # slot 0 stripes
expect_rc 1 uimg convert "${OBJ[@]}" --image-opts -O raw "$(opts bad.qcow2)" w.raw
expect_out "Keyslot 0 is corrupted (stripes 1 != 4000)"
poke $((208 + 40)) '\x00\x10\x00\x00'          # slot 0 key material past the area
expect_rc 1 uimg convert "${OBJ[@]}" --image-opts -O raw "$(opts bad.qcow2)" w.raw
expect_out "Keyslot 0 lies past the end of the LUKS area"
poke $((208 + 4)) '\xff\xff\xff\xff'           # slot 0 iterations
expect_rc 1 uimg convert "${OBJ[@]}" --image-opts -O raw "$(opts bad.qcow2)" w.raw
expect_out "Keyslot 0: iterations 4294967295 out of range"
poke 108 '\x00\x00\x10\x00'                    # key bytes
expect_rc 1 uimg convert "${OBJ[@]}" --image-opts -O raw "$(opts bad.qcow2)" w.raw
expect_out "key of 4096 bytes is not supported"
poke 8 'serpent\x00'
expect_rc 1 uimg convert "${OBJ[@]}" --image-opts -O raw "$(opts bad.qcow2)" w.raw
expect_out "Cipher 'serpent' is not supported"
n_ok=$((n_ok + 6))

echo "ok: $n_ok LUKS/AES cases" >&2
