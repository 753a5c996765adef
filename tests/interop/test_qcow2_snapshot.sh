#!/bin/bash
# Internal snapshots against qemu-img 7.2: writes, discards and zero writes
# through ublkd into an image with a snapshot leave the snapshot intact
# (a shared L2 table is copied before it changes, shared data clusters lose
# a reference instead of being freed); both checkers clean.
. "$(dirname "$0")/lib.sh"
require_format qcow2

n_ok=0
both_check() {
    "$QEMU_IMG" check -q "$1" || fail "$2: qemu-img check"
    uimg check -q "$1" || fail "$2: ublkd check"
}
# reads_as IMG LABEL 'PATTERN OFFSET LEN'...: qemu-io reads IMG as given
reads_as() {
    local img=$1 label=$2 args=()
    shift 2
    for r in "$@"; do args+=(-c "read -P $r"); done
    "$QEMU_IO" "${args[@]}" "$img" >r.out 2>&1 || { cat r.out >&2; fail "$label: qemu-io read"; }
    grep -q "Pattern verification failed" r.out && { cat r.out >&2; fail "$label: content"; }
    return 0
}
# snap_reads_as IMG SNAP LABEL 'PATTERN OFFSET LEN'...: qemu-img's copy of the snapshot
snap_reads_as() {
    local img=$1 snap=$2 label=$3 args=()
    shift 3
    rm -f snap.raw
    "$QEMU_IMG" convert -l "snapshot.name=$snap" -O raw "$img" snap.raw ||
        fail "$label: qemu-img convert -l snapshot.name=$snap"
    for r in "$@"; do args+=(-c "read -P $r"); done
    "$QEMU_IO" -f raw "${args[@]}" snap.raw >r.out 2>&1 || { cat r.out >&2; fail "$label: read"; }
    grep -q "Pattern verification failed" r.out && { cat r.out >&2; fail "$label: snapshot content"; }
    return 0
}

# ---- regression: ublkd writing into an image with qemu-img's snapshot
# changed the shared L2 table in place (the snapshot saw the new data, and
# discard freed clusters the snapshot still used).
for opts in compat=0.10 compat=1.1 compat=1.1,extended_l2=on,cluster_size=128k \
            compat=1.1,lazy_refcounts=on; do
    rm -f a.qcow2
    "$QEMU_IMG" create -q -f qcow2 -o "$opts" a.qcow2 4M
    "$QEMU_IO" -c 'write -P 0x11 0 1M' a.qcow2 >/dev/null
    "$QEMU_IMG" snapshot -c s1 a.qcow2 || fail "$opts: qemu-img snapshot -c"
    cmds=(-c 'write -P 0x22 0 64k' -c 'write -P 0x33 1M 64k' -c 'write -P 0x44 200k 1k')
    case $opts in
    compat=0.10) ;;
    *) cmds+=(-c 'discard 512k 128k' -c 'write -z 768k 128k') ;;
    esac
    uimg io "${cmds[@]}" a.qcow2 >/dev/null || fail "$opts: ublkd img io"
    both_check a.qcow2 "$opts: after writes over a snapshot"
    snap_reads_as a.qcow2 s1 "$opts" '0x11 0 1M' '0 1M 3M'
    case $opts in
    compat=0.10) reads_as a.qcow2 "$opts" '0x22 0 64k' '0x11 64k 136k' '0x44 200k 1k' \
                          '0x11 201k 823k' '0x33 1M 64k' ;;
    *) reads_as a.qcow2 "$opts" '0x22 0 64k' '0x11 64k 136k' '0x44 200k 1k' '0x11 201k 311k' \
                '0 512k 128k' '0x11 640k 128k' '0 768k 128k' '0x11 896k 128k' '0x33 1M 64k' ;;
    esac
    # the snapshot's clusters go when it does, and nothing else
    "$QEMU_IMG" snapshot -d s1 a.qcow2 || fail "$opts: qemu-img snapshot -d"
    both_check a.qcow2 "$opts: after qemu-img deleted the snapshot"
    n_ok=$((n_ok + 1))
done

echo "ok: $n_ok snapshot cases" >&2
