#!/bin/bash
# bench_luks.sh - encrypted qcow2 (LUKS, aes-256-xts-plain64, the default) against the same
# image unencrypted, and ublkd against QEMU 7.2 on the same encrypted image.
#   4k reads and writes, QD32, -t none (O_DIRECT), on fully allocated 256 MiB images made
#   from the same random data, at scattered offsets with the same stride for every tool,
#   and ublkd's --random.
# qemu-img 7.2's bench has no --object, so it cannot open an encrypted image: QEMU's
# figures come from qemu-io (which has) running COUNT aio_read/aio_write commands with an
# aio_flush after every 32, so at most 32 in flight (less on average than a bench's steady
# QD32: QEMU's absolute figures are low, its plain/LUKS ratio is the comparable one); its
# start-up (PBKDF2 unlock) is measured with no I/O and taken off.
# Tools interleaved run by run; each figure is the median of RUNS runs.  A benchmark, not a
# test: it never fails on numbers.  Needs ~1 GiB in $DIR (default /var/tmp: O_DIRECT).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
UBLKD=${UBLKD:-$HERE/../../build/ublkd}
DIR=${DIR:-/var/tmp/ublkd-bench-luks}
RUNS=${RUNS:-3}
COUNT=${COUNT:-100000}
STRIDE=$((4096 * 2731))          # co-prime with the image size in 4k units
OBJ=(--object secret,id=s0,data=bench-passphrase)
ENC=driver=qcow2,file.filename=enc.qcow2,encrypt.key-secret=s0
PLAIN=driver=qcow2,file.filename=plain.qcow2
mkdir -p "$DIR"
cd "$DIR"
if [ ! -f enc.qcow2 ]; then
    echo "bench: making fully allocated 256 MiB qcow2 images, plain and LUKS, in $DIR" >&2
    head -c 256M /dev/urandom > full.raw
    qemu-img convert -f raw -O qcow2 full.raw plain.qcow2
    qemu-img convert "${OBJ[@]}" -f raw -O qcow2 \
        -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=100 full.raw enc.qcow2
    rm -f full.raw
fi

cmds() {   # cmds read|write: COUNT 4k commands at the stride, batches of 32
    python3 -c "
import sys
S, n, size, w = $STRIDE, $COUNT, 256 << 20, sys.argv[1] == 'write'
off = 0
for i in range(n):
    print(('aio_write -q -P 0x5a %d 4k' if w else 'aio_read -q %d 4k') % off)
    off = (off + S) % size
    if i % 32 == 31:
        print('aio_flush')
print('aio_flush')" "$1"
}
cmds read >read.cmds
cmds write >write.cmds
now() { date +%s.%N; }
# q IMAGE-OPTS read|write: seconds of qemu-io for the commands, start-up taken off
q() {
    local t0 t1 t2
    t0=$(now); echo aio_flush | qemu-io "${OBJ[@]}" -t none --image-opts "$1" >/dev/null; t1=$(now)
    qemu-io "${OBJ[@]}" -t none --image-opts "$1" <"$2.cmds" >/dev/null; t2=$(now)
    awk -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN { printf "%.4f", (c - b) - (b - a) }'
}
u() { secs_of "$("$UBLKD" img bench "${OBJ[@]}" --image-opts "$@" 2>&1)"; }
med() { printf '%s\n' "$@" | median; }
# row LABEL read|write ARGS...: ublkd plain and LUKS, qemu-io plain and LUKS, interleaved
row() {
    local label=$1 rw=$2; shift 2
    local up=() ue=() qp=() qe=()
    for _ in $(seq "$RUNS"); do
        up+=("$(u "$PLAIN" "$@" -S $STRIDE)")
        ue+=("$(u "$ENC" "$@" -S $STRIDE)")
        qp+=("$(q "$PLAIN" "$rw")")
        qe+=("$(q "$ENC" "$rw")")
    done
    local a b c d
    a=$(med "${up[@]}"); b=$(med "${ue[@]}"); c=$(med "${qp[@]}"); d=$(med "${qe[@]}")
    echo "| $label | $(div "$COUNT" "$a" %d) | $(div "$COUNT" "$b" %d) | $(ratio "$a" "$b") |" \
         "$(div "$COUNT" "$c" %d) | $(div "$COUNT" "$d" %d) | $(ratio "$c" "$d") | $(ratio "$d" "$b") |"
}
rrow() {   # --random: ublkd only
    local label=$1; shift
    local up=() ue=()
    for _ in $(seq "$RUNS"); do
        up+=("$(u "$PLAIN" "$@" --random)")
        ue+=("$(u "$ENC" "$@" --random)")
    done
    local a b
    a=$(med "${up[@]}"); b=$(med "${ue[@]}")
    echo "| $label | $(div "$COUNT" "$a" %d) | $(div "$COUNT" "$b" %d) | $(ratio "$a" "$b") | - | - | - | - |"
}

echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$(qemu-img --version | head -1); ublkd $("$UBLKD" --version | awk '{ print $3 }'); median of $RUNS; $(openssl version 2>/dev/null)"
echo
echo "| 256 MiB allocated qcow2, -t none | ublkd plain | ublkd LUKS | LUKS/plain | qemu-io plain | qemu-io LUKS | LUKS/plain | ublkd/qemu-io LUKS |"
echo "|---|---|---|---|---|---|---|---|"
row "4k read QD32, stride" read -t none -s 4k -c "$COUNT" -d 32
row "4k write QD32, stride" write -w -t none -s 4k -c "$COUNT" -d 32
rrow "4k randread QD32" -t none -s 4k -c "$COUNT" -d 32
rrow "4k randwrite QD32" -w -t none -s 4k -c "$COUNT" -d 32
"$UBLKD" img check -q "${OBJ[@]}" --image-opts "$ENC" && qemu-img check -q "${OBJ[@]}" --image-opts "$ENC" ||
    echo "bench: the encrypted image does not check clean" >&2
