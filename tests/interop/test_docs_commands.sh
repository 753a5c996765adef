#!/bin/bash
# test_docs_commands.sh - the commands in README.md and docs/ work, so the docs cannot
# drift from the code.  tests/doc-commands.sh extracts them (```sh, unmarked and
# ```console blocks) and says what to do with each; here, natively:
#   run         run in doc order in a scratch directory, each must exit 0.  build/ublkd
#               there is a link to $UBLKD, so the text runs as written.  The docs
#               assume base.qcow2 and top.qcow2 (README's convert -B): qemu-img makes
#               them first (a 64M base with data, a top over it with more); every other
#               file comes from an earlier documented command.
#   quickstart  README's one-liner without its package installs ("... && make deps &&"
#               and what precedes it): the rest runs in a scratch copy of the tree (the
#               build directory of $UBLKD copied along, so `make` has little to do) with
#               S=false, i.e. as on a machine without the ublk driver: it must build,
#               create demo.vdi and show it with `img info`.  The installs: `make -n deps`.
#   dev, dev-user  device commands: tests/vm/test_docs_devices.sh runs them; here the
#               verb must exist and each option must be in `ublkd help VERB`.
#   check       not run (the reason is listed), but: bash -n; the make targets it names
#               pass `make -n`; the repo paths exist and the scripts read the variables
#               and options given to them; each ublkd img / qemu-img bench in it runs with
#               -c 64 and its placeholders (CACHE, N, QD, T, [-w]) filled in, on 64M
#               images; the ublkd add arguments in a bench-ab.sh CONFIGS are checked
#               against `ublkd help add`; fio templates pass fio --parse-only (first of
#               each a|b alternative).  A check command with nothing of that to check fails.
#   exclude     not run (the reason is listed): bash -n only.
# A command tests/doc-commands.sh cannot classify fails the test.  The last lines count
# what was run, checked and excluded, and list the reasons.
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/tests/interop/lib.sh"
require_format raw vdi qcow2 null
require_cmd fio make tar
# The make commands are a user's, not a sub-make of `make check-interop BUILD=...`.
unset MAKEFLAGS MFLAGS MAKELEVEL MAKEOVERRIDES

records=$("$ROOT/tests/doc-commands.sh" "$ROOT") || {
    printf '%s\n' "$records" | grep -v '^\(run\|quickstart\|dev\|dev-user\|check\|exclude\)	' >&2
    fail "tests/doc-commands.sh could not classify every command in the docs (above)"
}
[ -n "$records" ] || fail "tests/doc-commands.sh found no commands in the docs"

errs=0 where=
bad() { echo "FAIL $where: $*" >&2; errs=$((errs + 1)); }

# words CMD: the words of a command line, one per line, quotes removed, up to an
# unquoted comment.  Not bash's parser: no expansions, and | ; && stay inside words
# unless they stand alone (the templates use a|b for alternatives).
words() {
    awk '{
        w = ""; inw = 0; q = ""
        for (i = 1; i <= length($0); i++) {
            c = substr($0, i, 1)
            if (q == "\047") { if (c == q) q = ""; else w = w c; continue }
            if (q == "\"") {
                if (c == "\\" && i < length($0)) { i++; w = w substr($0, i, 1); continue }
                if (c == q) q = ""; else w = w c; continue
            }
            if (c == " " || c == "\t") { if (inw) print w; w = ""; inw = 0; continue }
            if (c == "#" && !inw) break
            inw = 1
            if (c == "\047" || c == "\"") { q = c; continue }
            if (c == "\\" && i < length($0)) { i++; c = substr($0, i, 1) }
            w = w c
        }
        if (inw) print w
    }' <<<"$1"
}

# opts_in HELP WORD...: every option word (-x, --long, --long=v) is in the usage text.
opts_in() {
    local help=$1 w name; shift
    for w in "$@"; do
        case $w in --) break ;; -[a-zA-Z]*|--[a-z]*) ;; *) continue ;; esac
        name=${w%%=*}
        grep -qE -- "(^|[][ ,|(])${name}([][ =,|)]|$)" <<<"$help" || bad "option $name is not in the usage ($(head -1 <<<"$help"))"
    done
}

ADD_HELP=$("$UBLKD" help add) || fail "ublkd help add failed"
mkdir -p run/build chk && ln -s "$UBLKD" run/build/ublkd || fail "scratch setup"
# What README's `img convert -B base.qcow2 ... top.qcow2 copy.qcow2` assumes exists.
"$QEMU_IMG" create -q -f qcow2 run/base.qcow2 64M || fail "qemu-img create base.qcow2"
"$QEMU_IO" -c 'write -P 0x11 0 1M' run/base.qcow2 >/dev/null || fail "qemu-io base.qcow2"
"$QEMU_IMG" create -q -f qcow2 -b base.qcow2 -F qcow2 run/top.qcow2 || fail "qemu-img create top.qcow2"
"$QEMU_IO" -c 'write -P 0x22 1M 1M' run/top.qcow2 >/dev/null || fail "qemu-io top.qcow2"

# make_n TARGET...: make -n of the targets does something (a .PHONY name without a
# rule would "succeed" with nothing to do).
make_n() {
    local out
    out=$(make -s -n -C "$ROOT" "$@" 2>&1) || { bad "make -n $*: $out"; return; }
    [ -n "$out" ] || bad "make -n $* does nothing: no such target in the Makefile?"
}

# tiny_bench TOOL WORD...: run a documented bench with -c 64 and its placeholders
# filled in, on a 64M image named as the doc names it (made here); must exit 0.
tiny_bench() {
    local tool=$1 w prev='' args=() f; shift
    for w in "$@"; do
        case $w in \[-*\]) w=${w#[}; w=${w%]} ;; esac
        case $prev in
        -c) w=64 ;;
        -t) [ "$w" = CACHE ] && w=writeback ;;
        -d) [ "$w" = QD ] && w=32 ;;
        --threads) [ "$w" = T ] && w=2 ;;
        esac
        [[ $w =~ ^[A-Z]+$ ]] && { bad "placeholder '$w' in a bench: tell tiny_bench what to put there"; return; }
        args+=("$w"); prev=$w
    done
    f=${args[-1]}
    case $f in
    *.vdi|*.raw|*.qcow2) [ -e "chk/$f" ] || "$UBLKD" img create -q -f "${f##*.}" "chk/$f" 64M ||
                             { bad "cannot make chk/$f"; return; } ;;
    esac
    (cd chk && timeout 60 "$tool" "${args[@]}") >"$WORK/.out" 2>&1 ||
        { sed 's/^/    | /' "$WORK/.out" >&2; bad "$(basename "$tool") ${args[*]} failed (the doc's bench with -c 64)"; }
}

# check_cmd CMD: what can be checked without running it.  Sets NCHECKS to how many
# checks (beyond bash -n) applied.
check_cmd() {
    local cmd=$1 n=0 w i seg scripts=() v s found
    local -a ws
    bash -n -c "$cmd" 2>"$WORK/.out" || bad "bash -n: $(cat "$WORK/.out")"
    mapfile -t ws < <(words "$cmd")
    for ((i = 0; i < ${#ws[@]}; i++)); do
        w=${ws[i]}
        # segments start at a command word: after a separator, an env, or the start
        case $w in
        make)
            local t=() j
            for ((j = i + 1; j < ${#ws[@]}; j++)); do
                case ${ws[j]} in '&&'|'||'|';'|'|') break ;; -*|*=*) ;; *) t+=("${ws[j]}") ;; esac
            done
            make_n "${t[@]}"
            n=$((n + 1)) ;;
        ublkd|build/ublkd)
            if [ "${ws[i+1]:-}" = img ]; then
                seg=()
                for ((j = i; j < ${#ws[@]}; j++)); do
                    case ${ws[j]} in '&&'|'||'|';'|'|') break ;; esac
                    seg+=("${ws[j]}")
                done
                tiny_bench "$UBLKD" "${seg[@]:1}"
                n=$((n + 1))
            fi ;;
        qemu-img)
            seg=("${ws[@]:i+1}")
            tiny_bench "$QEMU_IMG" "${seg[@]}"
            n=$((n + 1)) ;;
        fio)
            local fa=()
            for w in "${ws[@]:i+1}"; do fa+=("${w%%|*}"); done
            (cd chk && fio --parse-only "${fa[@]}") >"$WORK/.out" 2>&1 ||
                { sed 's/^/    | /' "$WORK/.out" >&2; bad "fio --parse-only ${fa[*]} failed"; }
            n=$((n + 1)) ;;
        esac
        # repo paths exist; scripts are kept for the variable/option checks below
        s=${w#\$PWD/}
        case $s in
        tests/*|tools/*|dist/*|examples/*|docs/*)
            if [ -e "$ROOT/$s" ]; then
                [ -f "$ROOT/$s" ] && scripts+=("$ROOT/$s")
                # options given to a repo script are ones it handles
                local j
                for ((j = i + 1; j < ${#ws[@]}; j++)); do
                    case ${ws[j]} in
                    --) break ;;
                    -[a-zA-Z]*) grep -qE -- "(^|[^a-zA-Z-])${ws[j]}([) |]|$)" "$ROOT/$s" ||
                                    bad "$s does not handle option ${ws[j]}" ;;
                    esac
                done
            else
                bad "$s does not exist"
            fi
            n=$((n + 1)) ;;
        esac
    done
    # Variables set for a repo script (VAR=x script, env VAR=x ...) are read by one of
    # the scripts the command names.
    if [ ${#scripts[@]} -gt 0 ]; then
        for w in "${ws[@]}"; do
            [[ $w =~ ^([A-Z][A-Z0-9_]*)= ]] || continue
            v=${BASH_REMATCH[1]} found=
            for s in "${scripts[@]}"; do grep -qw -- "$v" "$s" && found=1; done
            [ -n "$found" ] || bad "$v is set for ${scripts[*]#$ROOT/}, which never read it"
            n=$((n + 1))
        done
    fi
    # bench-ab.sh CONFIGS: "label|ENV|$A TYPE add-args;..." are ublkd add arguments.
    local spec types
    types=$(sed -n 's/^TYPE is a block driver of this build: \(.*\)\.$/\1/p' <<<"$ADD_HELP")
    while read -r spec; do
        [ -n "$spec" ] || continue
        mapfile -t seg < <(words "${spec#\$[AB] }")
        grep -qw -- "${seg[0]}" <<<"$types" || bad "ublkd add type '${seg[0]}' (in CONFIGS) is not one of: $types"
        opts_in "$ADD_HELP" "${seg[@]:1}"
        n=$((n + 1))
    done < <(grep -oE '\$[AB] [^;"]*' <<<"$cmd")
    NCHECKS=$n
}

nrun=0 ndev=0 nchk=0 nexc=0
listing=()
# The commands read no stdin of ours: the list comes in on fd 3.
exec </dev/null
while IFS=$'\t' read -r -u 3 class where reason cmd; do
    case $class in
    run)
        (cd run && bash -c "$cmd") >"$WORK/.out" 2>&1
        rc=$?
        [ $rc = 0 ] || { sed 's/^/    | /' "$WORK/.out" | tail -20 >&2; bad "exited $rc: $cmd"; }
        nrun=$((nrun + 1)) ;;
    quickstart)
        [[ $cmd =~ ' && make deps && '(make && .*)$ ]] ||
            { bad "the quick start no longer has '... && make deps && make && ...': teach this test its new form"; continue; }
        tail=${BASH_REMATCH[1]}
        bash -n -c "$cmd" 2>"$WORK/.out" || bad "bash -n: $(cat "$WORK/.out")"
        make_n deps
        mkdir -p qs
        tar -C "$ROOT" --exclude=./.git --exclude='./build*' -cf - . | tar -C qs -xf - || fail "copying the tree"
        bdir=$(dirname "$UBLKD")
        [ -f "$bdir/config.h" ] && cp -a "$bdir" qs/build
        (cd qs && S=false timeout 600 bash -c "$tail") >"$WORK/.out" 2>&1
        rc=$?
        if [ $rc != 0 ]; then
            sed 's/^/    | /' "$WORK/.out" | tail -20 >&2; bad "exited $rc: $tail"
        elif ! grep -q '^file format: vdi$' "$WORK/.out" || [ ! -f qs/demo.vdi ]; then
            sed 's/^/    | /' "$WORK/.out" | tail -20 >&2; bad "no demo.vdi, or img info did not show it: $tail"
        fi
        rm -rf qs
        nrun=$((nrun + 1)) ;;
    dev|dev-user)
        mapfile -t ws < <(words "${cmd#sudo }")
        help=$("$UBLKD" help "${ws[1]}" 2>&1) || bad "ublkd has no verb '${ws[1]}': $help"
        opts_in "$help" "${ws[@]:2}"
        ndev=$((ndev + 1)) ;;
    check)
        check_cmd "$cmd"
        [ "$NCHECKS" -gt 0 ] || bad "nothing to check in it beyond bash -n: make its rule 'exclude'"
        listing+=("checked only: $where: $reason")
        nchk=$((nchk + 1)) ;;
    exclude)
        bash -n -c "$cmd" 2>"$WORK/.out" || bad "bash -n: $(cat "$WORK/.out")"
        listing+=("excluded:     $where: $reason")
        nexc=$((nexc + 1)) ;;
    esac
done 3<<<"$records"
printf '%s\n' "${listing[@]}"
echo "docs commands: $nrun run, $ndev device commands run by tests/vm/test_docs_devices.sh (verb and options checked here), $nchk checked only, $nexc excluded"
[ $errs = 0 ] || fail "$errs failure(s) above"
exit 0
