#!/bin/bash
# Differential random-operation test: the same random writes (any byte
# range), zero writes (with and without unmap), discards (whole clusters)
# and, once ublkd has them, compressed writes go through ublkd's qcow2
# driver (`ublkd img io`) and into a model, a plain byte array: a raw file
# that qemu-io writes (pwrite of a pattern, or of zeros; nothing else).  After each batch: qemu-img check finds no corruption and
# no leak, ublkd's own check agrees (once it checks qcow2), and what
# qemu-img convert -O raw reads, and what ublkd reads, hash the same as the
# model.  DIFF_BATCHES (default 2) batches of 12 operations per
# image kind; DIFF_SEED picks the sequence (default: fixed).
. "$(dirname "$0")/lib.sh"
require_format qcow2 raw
require_cmd sha256sum truncate

RANDOM=${DIFF_SEED:-4242}
batches=${DIFF_BATCHES:-2}
size=$((8 * 1024 * 1024))
n_ok=0

# Compressed writes, where ublkd has them.
qemu-img create -q -f qcow2 probe.qcow2 1M
compressed=0
"$UBLKD" img io -c "write -c -P 0x11 0 64k" probe.qcow2 > probe.out 2>&1 && compressed=1

# A backing file with data in the first 6 MiB + 1000 bytes.
qemu-img create -q -f qcow2 base.qcow2 $size
qemu-io -c "write -P 0xb5 0 6M" -c "write -P 0x5b 6M 1000" base.qcow2 > /dev/null
qemu-img convert -O raw base.qcow2 base.raw

# rnd N: R = a random number below N (no subshell: it would not advance RANDOM).
rnd() { R=$(( (RANDOM << 15 | RANDOM) % $1 )); }

# model_set OFF LEN BYTE: the byte array takes LEN bytes of BYTE at OFF
# (queued in mcmds, written once per batch).
model_set() {
    if [ "$3" = 0 ]; then
        mcmds+=(-c "write -q -z $1 $2")
    else
        mcmds+=(-c "write -q -P $3 $1 $2")
    fi
}

# check_image TAG: qemu-img check clean, contents equal the model.
check_image() {
    local tag=$1 want got
    qemu-img check --output=json img.qcow2 > check.json 2>&1 || {
        cat check.json >&2; fail "$tag: qemu-img check exit $?"; }
    grep -q '"corruptions": [1-9]' check.json && { cat check.json >&2; fail "$tag: corruptions"; }
    grep -q '"leaks": [1-9]' check.json && { cat check.json >&2; fail "$tag: leaked clusters"; }
    "$UBLKD" img check img.qcow2 > ucheck.out 2>&1
    case $? in
    0) ;;
    63) grep -qi "not support" ucheck.out || { cat ucheck.out >&2; fail "$tag: ublkd img check exit 63"; } ;;
    *) cat ucheck.out >&2; fail "$tag: ublkd img check finds problems" ;;
    esac
    want=$(sha256sum < model.raw)
    rm -f q.raw u.raw
    qemu-img convert -O raw img.qcow2 q.raw || fail "$tag: qemu-img convert"
    got=$(sha256sum < q.raw)
    [ "$got" = "$want" ] || { cmp q.raw model.raw | head -3 >&2; fail "$tag: qemu-img reads something else than the model"; }
    "$UBLKD" img convert -O raw img.qcow2 u.raw || fail "$tag: ublkd img convert"
    got=$(sha256sum < u.raw)
    [ "$got" = "$want" ] || { cmp u.raw model.raw | head -3 >&2; fail "$tag: ublkd reads something else than the model"; }
}

run_kind() {
    local o=$1 backing=$2 tag cs v2=0 b i kind off len byte cmds
    tag="${o:-default}${backing:+ backing}"
    rm -f img.qcow2 model.raw
    if [ -n "$backing" ]; then
        qemu-img create -q -f qcow2 ${o:+-o "$o"} -b base.qcow2 -F qcow2 img.qcow2 $size
        cp base.raw model.raw
    else
        qemu-img create -q -f qcow2 ${o:+-o "$o"} img.qcow2 $size
        truncate -s $size model.raw
    fi
    cs=$(qemu-img info --output=json img.qcow2 | sed -n 's/.*"cluster-size": \([0-9]*\).*/\1/p')
    qemu-img info img.qcow2 | grep -q "compat: 0.10" && v2=1
    for ((b = 0; b < batches; b++)); do
        cmds=() mcmds=()
        for ((i = 0; i < 12; i++)); do
            rnd 100; kind=$R
            rnd 255; byte=$((1 + R))
            if [ $((RANDOM % 2)) = 0 ]; then
                rnd $((size / 8)); off=$R
            else
                rnd $size; off=$R
            fi
            rnd $((4 * cs)); len=$((1 + R))
            [ $((RANDOM % 3)) = 0 ] && off=$((off / cs * cs)) && len=$(( (len + cs - 1) / cs * cs ))
            [ $((off + len)) -gt $size ] && len=$((size - off))
            [ $len -gt $((2 * 1024 * 1024)) ] && len=$((2 * 1024 * 1024))
            if [ $kind -lt 55 ]; then
                cmds+=(-c "write -q -P $byte $off $len"); model_set $off $len $byte
            elif [ $kind -lt 67 ]; then
                cmds+=(-c "write -q -z $off $len"); model_set $off $len 0
            elif [ $kind -lt 79 ]; then
                cmds+=(-c "write -q -z -u $off $len"); model_set $off $len 0
            elif [ $kind -lt 90 ] || [ $compressed = 0 ]; then
                # whole clusters read as zeros after a discard, except on v2
                # over a backing file (no zero flag): unchanged there
                off=$((off / cs * cs)); len=$(( (len + cs - 1) / cs * cs ))
                [ $((off + len)) -gt $size ] && len=$((size - off))
                cmds+=(-c "discard -q $off $len")
                [ $v2 = 1 ] && [ -n "$backing" ] || model_set $off $len 0
            else
                off=$((off / cs * cs)); len=$(( (len + cs - 1) / cs * cs ))
                [ $((off + len)) -gt $size ] && len=$((size - off))
                cmds+=(-c "write -q -c -P $byte $off $len"); model_set $off $len $byte
            fi
        done
        qemu-io -f raw "${mcmds[@]}" model.raw > /dev/null || fail "$tag: qemu-io on the model"
        "$UBLKD" img io -d unmap "${cmds[@]}" img.qcow2 > io.out 2>&1 || {
            cat io.out >&2; printf '%s\n' "${cmds[@]}" >&2; fail "$tag: ublkd img io"; }
        check_image "$tag, batch $b (seed ${DIFF_SEED:-4242})"
    done
    n_ok=$((n_ok + 1))
}

for o in "" compat=0.10 cluster_size=512 cluster_size=4k,refcount_bits=1 \
         refcount_bits=64,cluster_size=512 lazy_refcounts=on extended_l2=on \
         extended_l2=on,cluster_size=16k cluster_size=2M refcount_bits=8,cluster_size=1k; do
    run_kind "$o" ""
    run_kind "$o" base
done
echo "$n_ok image kinds x $batches batches; compressed writes: $([ $compressed = 1 ] && echo yes || echo 'not in ublkd yet')"
