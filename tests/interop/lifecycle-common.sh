# Shared by test_qcow2_rebase.sh and test_qcow2_commit.sh: run one command
# with both tools on identical copies of a set of images and compare.
#
# op_both [-b] FILES -- ARGS...: copies FILES (from the current directory)
# into u/ and q/, runs `ublkd img ARGS` in u/ and `qemu-img ARGS` in q/;
# exit codes and output (program name normalised) must match.  Then, for
# every FILE that is a qcow2 image: both checkers clean on both results,
# each image reads the same in u/ and q/ (qemu-img compare, through its
# chain), and, unless -b (bitmaps, which qemu-img rewrites at every
# writable open; or the target of a commit, which qemu-img's job writes
# with requests in parallel), the files are byte-identical.  -x: bytes only
# (a backing file that does not exist).  -p: progress lines, which follow
# qemu-img's job timing, are compared by their last value only.
op_both() {
    local bytes=1 reads=1 prog=0 files=() f
    [ "$1" = -p ] && { prog=1; shift; }
    [ "$1" = -b ] && { bytes=0; shift; }
    [ "$1" = -x ] && { reads=0; shift; }
    while [ "$1" != -- ]; do files+=("$1"); shift; done
    shift
    rm -rf u q && mkdir u q
    for f in "${files[@]}"; do cp -a --sparse=always "$f" u/ && cp -a --sparse=always "$f" q/; done
    (cd u && "$UBLKD" img "$@" >../u.out 2>&1; echo $? >../u.rc)
    (cd q && "$QEMU_IMG" "$@" >../q.out 2>&1; echo $? >../q.rc)
    [ "$(cat u.rc)" = "$(cat q.rc)" ] || { sed 's/^/    u| /' u.out >&2; sed 's/^/    q| /' q.out >&2
                                         fail "$*: ublkd exit $(cat u.rc), qemu-img $(cat q.rc)"; }
    if [ $prog = 1 ]; then
        sed -i -E 's#(    \([0-9.]+/100%\)\r)*(    \([0-9.]+/100%\)\r)#\2#' u.out q.out
    fi
    same_output "$*" u.out q.out
    for f in "${files[@]}"; do
        case $f in *.qcow2) ;; *) continue ;; esac
        for d in u q; do
            [ $reads = 1 ] || continue
            "$QEMU_IMG" check -q "$d/$f" >c.out 2>&1 || { cat c.out >&2; fail "$*: qemu-img check $d/$f"; }
            "$UBLKD" img check -q "$d/$f" >c.out 2>&1 || { cat c.out >&2; fail "$*: ublkd img check $d/$f"; }
        done
        [ $reads = 0 ] || "$QEMU_IMG" compare -q u/"$f" q/"$f" >c.out 2>&1 || { cat c.out >&2; fail "$*: $f reads differently"; }
        if [ $bytes = 1 ]; then
            cmp -s u/"$f" q/"$f" || { cmp -l u/"$f" q/"$f" | head -5 >&2; fail "$*: $f differs byte for byte from qemu-img's"; }
        fi
    done
}

# pattern_at FILE OFFSET LEN BYTE: qemu-io reads the pattern there.
pattern_at() {
    "$QEMU_IO" -r -c "read -P $4 $2 $3" "$1" >r.out 2>&1 && ! grep -q 'Pattern verification failed' r.out ||
        { cat r.out >&2; fail "$1: not $4 at $2+$3"; }
}
