#!/bin/bash
# `ublkd img amend` against qemu-img 7.2 amend: on copies of the same image
# each tool amends with the same arguments; exit codes and messages match
# (names normalised); after a success the two images read the same, qemu-img
# info says the same (but the disk size), and both checkers find both images
# clean.  Images come from qemu-img (v2 and v3, backing files, internal
# snapshots, zero clusters with and without a host cluster, compressed
# clusters, data files, extended L2, zstd, lazy refcounts) and from ublkd
# img create; amended images are then amended back by the other tool.
# Where QEMU 7.2 loses data (a downgrade zeroes a snapshot's cluster) ours
# is checked to keep it.  Last, kill -9 at several points of a large
# refcount_bits change: both checkers then find at most leaks and the image
# reads as before.
. "$(dirname "$0")/lib.sh"
require_format qcow2

n_ok=0
info_of() { "$QEMU_IMG" info "$1" | grep -v -e '^image:' -e '^disk size:' -e 'backing file: '; }

# amend_both IMG ARGS...: qemu-img amends q.qcow2, ublkd u.qcow2 (copies of IMG).
amend_both() {
    local img=$1
    shift
    cp "$img" q.qcow2; cp "$img" u.qcow2
    "$QEMU_IMG" amend "$@" q.qcow2 >q.out 2>&1; local qrc=$?
    uimg amend "$@" u.qcow2 >u.out 2>&1; local urc=$?
    sed -i 's/u\.qcow2/q.qcow2/g' u.out
    # the bar's steps are each tool's own (QEMU's count its table walks)
    sed -i 's/    ([0-9.]*\/100%)\r//g' u.out q.out
    [ $urc = $qrc ] || { sed 's/^/    u| /' u.out >&2; sed 's/^/    q| /' q.out >&2
                         fail "amend $* $img: ublkd exit $urc, qemu-img $qrc"; }
    same_output "amend $* $img" u.out q.out
    if [ $qrc = 0 ] && [ "${bytes_only:-}" ]; then
        cmp q.qcow2 u.qcow2 || fail "amend $* $img: the files differ"
    elif [ $qrc = 0 ]; then
        judge "amend $* $img" u.qcow2 q.qcow2
    fi
    n_ok=$((n_ok + 1))
}

# judge LABEL OURS THEIRS: same content, same info, all four checks clean.
judge() {
    "$QEMU_IMG" compare -q "$3" "$2" || fail "$1: the images read differently"
    diff -u <(info_of "$3") <(info_of "$2") >info.diff ||
        { sed 's/^/    /' info.diff >&2; fail "$1: qemu-img info differs"; }
    "$QEMU_IMG" check -q "$2" || { "$QEMU_IMG" check "$2" >&2; fail "$1: qemu-img check of ours"; }
    uimg check -q "$2" || fail "$1: ublkd check of ours"
    if [ "${qemu_corrupts:-}" ] && ! "$QEMU_IMG" check -q "$3" >/dev/null 2>&1; then
        # QEMU's downgrade left COPIED on a cluster a snapshot shares (and
        # zeroed it): ours is clean, read the same, and that is what counts.
        qemu_bugs=$((qemu_bugs + 1))
        return
    fi
    uimg check -q "$3" || fail "$1: ublkd check of qemu-img's"
    "$QEMU_IMG" check -q "$3" || fail "$1: qemu-img check of qemu-img's"
}
qemu_bugs=0

# ---- images
"$QEMU_IMG" create -q -f qcow2 base.qcow2 8M
"$QEMU_IO" -c 'write -P 0x77 0 8M' base.qcow2 >/dev/null
# every kind of L2 entry: data, zero without and with a host cluster
# (write -z over data), unallocated, compressed
mk_content() {
    "$QEMU_IO" -c 'write -P 0x11 0 128k' -c 'write -z 1M 128k' -c 'write -P 0x22 2M 64k' \
        -c 'write -z 2M 64k' -c 'write -c -P 0x33 3M 64k' -c 'write -P 0x44 7M 4k' "$1" \
        >/dev/null || fail "qemu-io $1"
}
"$QEMU_IMG" create -q -f qcow2 v3.qcow2 8M; mk_content v3.qcow2
"$QEMU_IMG" create -q -f qcow2 -o compat=0.10 v2.qcow2 8M; mk_content v2.qcow2
"$QEMU_IMG" create -q -f qcow2 -b base.qcow2 -F qcow2 back.qcow2; mk_content back.qcow2
"$QEMU_IMG" create -q -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 back2.qcow2
mk_content back2.qcow2
"$QEMU_IMG" create -q -f qcow2 -o cluster_size=4k,lazy_refcounts=on small.qcow2 8M
mk_content small.qcow2
# snapshots: tables shared with the active image, zero clusters in them
cp back.qcow2 snap.qcow2
"$QEMU_IMG" snapshot -c s1 snap.qcow2
"$QEMU_IO" -c 'write -z 3M 64k' -c 'write -P 0x55 4M 64k' -c 'write -z 0 64k' snap.qcow2 >/dev/null
"$QEMU_IMG" snapshot -c s2 snap.qcow2
"$QEMU_IO" -c 'write -P 0x66 5M 64k' snap.qcow2 >/dev/null
cp v2.qcow2 snap2.qcow2            # v2 with a snapshot: upgraded and back
"$QEMU_IMG" snapshot -c s1 snap2.qcow2
"$QEMU_IO" -c 'write -P 0x23 0 64k' snap2.qcow2 >/dev/null
cp v3.qcow2 snapnb.qcow2
"$QEMU_IMG" snapshot -c s1 snapnb.qcow2
"$QEMU_IO" -c 'write -z 0 64k' -c 'write -z 7M 4k' snapnb.qcow2 >/dev/null
# refusals
"$QEMU_IMG" create -q -f qcow2 -o extended_l2=on el2.qcow2 8M
"$QEMU_IMG" create -q -f qcow2 -o data_file=data.raw df.qcow2 8M
"$QEMU_IO" -c 'write -P 0x12 0 64k' df.qcow2 >/dev/null
"$QEMU_IMG" create -q -f qcow2 -o compression_type=zstd zstd.qcow2 8M
"$QEMU_IMG" create -q -f qcow2 -o compression_type=zstd zstdc.qcow2 8M
"$QEMU_IO" -c 'write -c -P 0x13 0 64k' zstdc.qcow2 >/dev/null
"$QEMU_IMG" create -q -f qcow2 -o refcount_bits=8 r8.qcow2 8M
"$QEMU_IMG" create -q -f raw raw.img 1M
# a snapshot whose size is not the image's stops a downgrade
cp v3.qcow2 snapsz.qcow2
"$QEMU_IMG" snapshot -c s1 snapsz.qcow2
"$QEMU_IMG" resize -q snapsz.qcow2 16M
# ublkd's own images
uimg create -q -f qcow2 ours.qcow2 8M
uimg create -q -f qcow2 -o compat=0.10 ours2.qcow2 8M
for f in ours.qcow2 ours2.qcow2; do
    uimg io -c 'write -P 0x11 0 128k' -c 'write -z 1M 128k' -c 'write -P 0x22 2M 64k' \
        -c 'write -z 2M 64k' "$f" >/dev/null || fail "ublkd img io $f"
done

# ---- every option on every image
all_opts="compat=0.10 compat=v2 compat=1.1 compat=v3 lazy_refcounts=on lazy_refcounts=off
          refcount_bits=1 refcount_bits=4 refcount_bits=16 refcount_bits=64
          compat=v3,refcount_bits=8,lazy_refcounts=on
          compat=v2,refcount_bits=16 refcount_bits=64,compat=v2 compat=v2,lazy_refcounts=off
          compat=v2,lazy_refcounts=on data_file_raw=off size=16M size=0 compat=v2,size=12M"
some_opts="compat=v2 compat=v3 lazy_refcounts=on refcount_bits=1 refcount_bits=64
           compat=v3,refcount_bits=8,lazy_refcounts=on compat=v2,size=12M
           compat=v3,lazy_refcounts=off"
for img in v3.qcow2 v2.qcow2 back.qcow2 back2.qcow2 small.qcow2 snap.qcow2 snapnb.qcow2 \
           snap2.qcow2 ours.qcow2 ours2.qcow2; do
    case $img in v3.qcow2|snap.qcow2) opts=$all_opts ;; *) opts=$some_opts ;; esac
    for o in $opts; do
        case $img,$o in snap*,compat=0.10*|snap*,compat=v2*) qemu_corrupts=1 ;; *) qemu_corrupts= ;; esac
        amend_both $img -o $o
        # the bar: where each tool walks the refcounts (qemu-img takes ~1 s a walk)
        case $img,$o in snap.qcow2,refcount_bits=1|snap.qcow2,compat=v2) amend_both $img -p -o $o ;; esac
    done
done

# ---- round trips: each tool amends what the other amended
for img in v3.qcow2 back.qcow2 back2.qcow2; do
    cp $img a.qcow2; cp $img b.qcow2
    uimg amend -o compat=v2 a.qcow2 || fail "ublkd downgrade $img"
    "$QEMU_IMG" amend -o compat=v2 b.qcow2 || fail "qemu-img downgrade $img"
    "$QEMU_IMG" amend -o compat=v3,refcount_bits=2 a.qcow2 || fail "qemu-img upgrade of ours"
    uimg amend -o compat=v3,refcount_bits=2 b.qcow2 || fail "ublkd upgrade of qemu-img's"
    judge "round trip $img" b.qcow2 a.qcow2
    "$QEMU_IMG" amend -o refcount_bits=16,compat=v2 b.qcow2 || fail "qemu-img 2nd downgrade"
    uimg amend -o refcount_bits=16,compat=v2 a.qcow2 || fail "ublkd 2nd downgrade"
    judge "round trip 2 $img" a.qcow2 b.qcow2
    n_ok=$((n_ok + 1))
done
# the snapshots read the same after an amend as before
for sn in s1 s2; do
    cp snap.qcow2 a.qcow2; cp snap.qcow2 b.qcow2
    uimg amend -o compat=v2 a.qcow2 || fail "downgrade snap.qcow2"
    "$QEMU_IMG" snapshot -a $sn a.qcow2; "$QEMU_IMG" snapshot -a $sn b.qcow2
    "$QEMU_IMG" compare -q a.qcow2 b.qcow2 || fail "snapshot $sn reads differently after a downgrade"
done

# ---- QEMU 7.2 zeroes a snapshot's data when it downgrades an image whose
# active layer zeroed the cluster without unmapping it; ours keeps it.
"$QEMU_IMG" create -q -f qcow2 lose.qcow2 8M
"$QEMU_IO" -c 'write -P 0x11 0 128k' lose.qcow2 >/dev/null
"$QEMU_IMG" snapshot -c s1 lose.qcow2
"$QEMU_IO" -c 'write -z 0 64k' lose.qcow2 >/dev/null
uimg amend -o compat=v2 lose.qcow2 || fail "downgrade lose.qcow2"
"$QEMU_IMG" check -q lose.qcow2 || fail "lose.qcow2: qemu-img check after the downgrade"
uimg check -q lose.qcow2 || fail "lose.qcow2: ublkd check after the downgrade"
"$QEMU_IO" -c 'read -P 0 0 64k' lose.qcow2 | grep -q '^read 65536' || fail "lose.qcow2: not zero"
"$QEMU_IMG" snapshot -a s1 lose.qcow2
"$QEMU_IO" -c 'read -P 0x11 0 128k' lose.qcow2 | grep -q '^read 131072' ||
    fail "lose.qcow2: the snapshot lost its data"

# ---- a v2 image from before QEMU 1.1: snapshot entries without the extra
# data v3 requires (0 and 8 bytes); both tools rewrite the table on upgrade
"$QEMU_IMG" create -q -f qcow2 -o compat=0.10 old.qcow2 8M
"$QEMU_IO" -c 'write -P 0x21 0 64k' old.qcow2 >/dev/null
"$QEMU_IMG" snapshot -c s1 old.qcow2
"$QEMU_IO" -c 'write -P 0x22 0 64k' old.qcow2 >/dev/null
"$QEMU_IMG" snapshot -c s2 old.qcow2
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
$PY "$(dirname "$0")/qcow2-snaptable.py" old.qcow2 old1.qcow2 extra 0 0 -- \
    old1.qcow2 old.qcow2 extra 1 8 || fail "crafting old.qcow2"
amend_both old.qcow2 -o compat=v3
for f in q.qcow2 u.qcow2; do
    "$QEMU_IMG" snapshot -a s1 $f || fail "apply s1 after the upgrade ($f)"
    "$QEMU_IO" -c 'read -P 0x21 0 64k' $f | grep -q '^read 65536' || fail "$f: s1's data after the upgrade"
done
cmp q.qcow2 u.qcow2 && echo "v2 upgrade with old snapshot entries: the very bytes of qemu-img's" >&2

# ---- refusals and command-line errors: same text and exit code
for a in "-o compat=v2 el2.qcow2" "-o compat=v2 df.qcow2" "-o compat=v2 zstdc.qcow2" \
         "-o compat=v2 r8.qcow2" "-o compat=v2 snapsz.qcow2" "-o lazy_refcounts=on,compat=v2 x" \
         "-o refcount_bits=3" "-o refcount_bits=128" "-o refcount_bits=0" "-o refcount_bits=abc" \
         "-o refcount_bits=-16" "-o compat=0.11" "-o compat=" "-o data_file=x" \
         "-o data_file_raw=on" "-o lazy_refcounts=maybe" "-o encrypt.state=active" \
         "-o cluster_size=4k" "-o preallocation=full" "-o foo=1" "-o size=bar" "-o size=1Q" \
         "-o backing_file=base.qcow2" "-o backing_fmt=qcow2" "-o backing_file=" \
         "-o refcount_bits=8,lazy_refcounts=on,backing_file=x" "-o compat=v2,backing_file=x" \
         "-o help" "-o ?" "-o help,compat=v2" "-q -o help" "-f raw -o help" "-f vdi -o help" \
         "-f nosuch -o help" "-o compat=v3 -o lazy_refcounts=on" "-t foo -o compat=v3" \
         "-x -o compat=v3" "-o" "" "-o compat=v3 --force" "-o compat=v3,compat=v2" \
         "-o lazy_refcounts=on,lazy_refcounts=off" "-f raw -o compat=v3"; do
    # shellcheck disable=SC2086
    amend_both v3.qcow2 $a
done
# the -o list as qemu's option parser reads it (flags, escaped commas, bad lists)
for o in lazy_refcounts nolazy_refcounts ,compat=v3 compat=v3, compat=v3,, compat=v3,,, \
         compat=v3,,x compat= =v3 help=1 a,b=c " " "json:{" "" "%s%n%s" "compat=v3,?"; do
    amend_both v3.qcow2 -o "$o"
done
for img in el2.qcow2 df.qcow2 zstd.qcow2 zstdc.qcow2 r8.qcow2 snapsz.qcow2; do
    amend_both $img -o compat=v2
done
# data_file: kept, renamed, cleared (then the image needs data-file to open)
cp data.raw other.raw
for o in data_file=data.raw data_file=other.raw data_file_raw=off data_file_raw=on; do
    amend_both df.qcow2 -o $o
done
# without a name the image opens only with data-file=...: the files must match
bytes_only=1 amend_both df.qcow2 -o data_file=
"$QEMU_IMG" info --image-opts driver=qcow2,file.filename=u.qcow2,data-file.filename=data.raw \
    >info.out || fail "data_file=: the image does not open with data-file"
grep -q 'data file raw: false' info.out || fail "data_file=: not an image with a data file"
grep -q 'data file:' info.out && fail "data_file=: the name is still recorded"
expect_rc 1 uimg amend -o compat=v3 u.qcow2
expect_out "'data-file' is required for this image"
"$QEMU_IMG" create -q -f qcow2 -o data_file=data2.raw,data_file_raw=on dfr.qcow2 8M
amend_both dfr.qcow2 -o data_file_raw=on
cp dfr.qcow2 a.qcow2; cp dfr.qcow2 b.qcow2
uimg amend -o data_file_raw=off a.qcow2 || fail "data_file_raw=off"
"$QEMU_IMG" amend -o data_file_raw=off b.qcow2
diff <(info_of a.qcow2) <(info_of b.qcow2) || fail "data_file_raw=off: info differs"
"$QEMU_IMG" info a.qcow2 | grep -q 'data file raw: false' || fail "data_file_raw=off not recorded"
# backing_file/backing_fmt: accepted only as recorded
amend_both back.qcow2 -o backing_file=base.qcow2,backing_fmt=qcow2
amend_both back.qcow2 -o backing_file=base.qcow2
amend_both back.qcow2 -o backing_file=other.qcow2,backing_fmt=qcow2
# other files
for a in "-o compat=v3 raw.img" "-o compat=v3 -f raw raw.img" "-o compat=v3 nosuch.qcow2" \
         "-o compat=v3 a b"; do
    # shellcheck disable=SC2086
    "$QEMU_IMG" amend $a >q.out 2>&1; qrc=$?
    # shellcheck disable=SC2086
    uimg amend $a >u.out 2>&1; urc=$?
    [ $urc = $qrc ] || fail "amend $a: ublkd exit $urc, qemu-img $qrc"
    grep -v -e '^WARNING' -e '^         ' q.out >q2.out; grep -v -e '^WARNING' -e '^         ' u.out >u2.out
    same_output "amend $a" u2.out q2.out
done

# ---- the progress bar: qemu-img's line, from 0 to 100
uimg amend -p -o compat=v2 "$(cp snap.qcow2 p.qcow2; echo p.qcow2)" >p.out 2>&1 || fail "amend -p"
tr '\r' '\n' <p.out | grep -qx '    (0.00/100%)' || fail "amend -p: no 0% line"
tr '\r' '\n' <p.out | grep -qx '    (100.00/100%)' || fail "amend -p: no 100% line"
[ "$(tr '\r' '\n' <p.out | grep -c '/100%)')" -ge 3 ] || fail "amend -p: no steps between"
cp snap.qcow2 p.qcow2
uimg amend -p -q -o compat=v2 p.qcow2 >p.out 2>&1 || fail "amend -p -q"
[ ! -s p.out ] || fail "amend -p -q printed something"

# ---- kill -9 during a large refcount_bits change
# 512-byte clusters: a 64 MiB image has thousands of refcount blocks.
"$QEMU_IMG" create -q -f qcow2 -o cluster_size=512 big.qcow2 64M
"$QEMU_IO" -c 'write -P 0x5a 0 24M' -c 'write -z 30M 1M' -c 'write -P 0xa5 40M 8M' big.qcow2 \
    >/dev/null
"$QEMU_IMG" convert -O raw big.qcow2 big.raw
kills=0 old=0 new=0
for pct in 3 20 50 80 97 99; do
    for target in 1 64; do
        cp big.qcow2 k.qcow2
        mkfifo fifo
        "$UBLKD" img amend -p -o refcount_bits=$target k.qcow2 >fifo 2>k.err &
        pid=$!
        # read the bar until it passes pct, then kill
        while IFS= read -r -d $'\r' line; do
            v=${line##*(}; v=${v%%.*}
            if [ "${v:-0}" -ge $pct ] 2>/dev/null; then
                kill -9 $pid 2>/dev/null && kills=$((kills + 1))
                break
            fi
        done <fifo
        killed_wait $pid k.qcow2
        rm -f fifo
        "$QEMU_IMG" check --output=json k.qcow2 >check.json 2>&1
        rc=$?
        { [ $rc = 0 ] || [ $rc = 3 ]; } && ! grep -q '"corruptions"' check.json ||
            { cat check.json >&2; fail "kill at $pct% ($target bits): qemu-img check: $rc"; }
        uimg check k.qcow2 >check.out 2>&1
        rc=$?
        { [ $rc = 0 ] || [ $rc = 3 ]; } ||
            { cat check.out >&2; fail "kill at $pct% ($target bits): ublkd check: $rc"; }
        "$QEMU_IMG" compare -q -f qcow2 -F raw k.qcow2 big.raw ||
            fail "kill at $pct% ($target bits): the image reads differently"
        case $("$QEMU_IMG" info k.qcow2 | sed -n 's/.*refcount bits: //p') in
        16) old=$((old + 1)) ;;
        $target) new=$((new + 1)) ;;
        *) fail "kill at $pct%: refcount bits neither old nor new" ;;
        esac
        # what is left can still be amended (by either tool)
        uimg amend -o refcount_bits=8 k.qcow2 || fail "amend after kill at $pct%"
        "$QEMU_IMG" check -q k.qcow2 || fail "check after the amend after kill at $pct%"
    done
done
[ $kills -ge 8 ] || fail "only $kills amends were killed (the image is too small?)"
[ $old -ge 1 ] || fail "no kill left the old refcount structures"
[ $qemu_bugs -ge 1 ] || fail "QEMU's downgrade of a shared zero cluster no longer shows (update the test)"
echo "amend: $n_ok comparisons with qemu-img ($qemu_bugs where QEMU's own image is corrupt);" \
     "$kills kills ($old left the old width, $new the new)"
