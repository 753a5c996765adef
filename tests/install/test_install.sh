#!/bin/bash
# test_install.sh - `make install` into a scratch prefix, then check every installed file:
# the binary runs; substituted paths point into the prefix; man pages render without
# warnings; the bash completion completes; the systemd unit passes systemd-analyze verify;
# the worker and the udev helper refuse bad input and hand good input to ublkd; the fio
# examples parse; `make uninstall` removes it all.  Run by `make check-install`.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${BUILD:-build}
T=$(mktemp -d /tmp/ublkd-install.XXXXXX)
trap 'rm -rf "$T"' EXIT
P=$T/prefix
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
check() { local what=$1; shift; if "$@" >"$T/out" 2>&1; then ok; else bad "$what"; sed 's/^/    /' "$T/out" | tail -20; fi; }
check_fails() {   # check_fails WHAT EXPECTED_MESSAGE cmd...: must fail, saying EXPECTED
    local what=$1 msg=$2; shift 2
    if "$@" >"$T/out" 2>&1; then bad "$what: succeeded"; elif grep -qF -- "$msg" "$T/out"; then ok
    else bad "$what: expected '$msg', got:"; sed 's/^/    /' "$T/out" | tail -5; fi
}

cd "$ROOT"
check "make install" make -s install PREFIX="$P" BUILD="$BUILD"
files=(bin/ublkd lib/ublkd/ublk-chown lib/ublkd/ublkd-service lib/udev/rules.d/90-ublk.rules
       lib/systemd/system/ublkd@.service share/man/man8/ublkd.8 share/man/man1/ublkd-img.1
       share/bash-completion/completions/ublkd share/doc/ublkd/examples/verify.fio
       share/doc/ublkd/examples/README.md share/doc/ublkd/examples/devices.d/example.conf)
for f in "${files[@]}"; do check "installed $f" test -s "$P/$f"; done
for f in bin/ublkd lib/ublkd/ublk-chown lib/ublkd/ublkd-service; do check "$f executable" test -x "$P/$f"; done
check "etc/ublkd/devices.d exists" test -d "$P/etc/ublkd/devices.d"
check "installed ublkd runs" "$P/bin/ublkd" --version
check "no @VAR@ left" bash -c "! grep -l '@[A-Z]*@' '$P'/lib/ublkd/* '$P'/lib/udev/rules.d/* '$P'/lib/systemd/system/*"
check "udev rule runs the installed helper" grep -q "RUN+=\"$P/lib/ublkd/ublk-chown %k\"" "$P/lib/udev/rules.d/90-ublk.rules"
check "unit runs the installed worker" grep -q "^ExecStart=$P/lib/ublkd/ublkd-service start %i" "$P/lib/systemd/system/ublkd@.service"
check "worker calls the installed ublkd" grep -q "UBLKD:-$P/bin/ublkd" "$P/lib/ublkd/ublkd-service"
check "worker reads the prefix's devices.d" grep -q "$P/etc/ublkd/devices.d" "$P/lib/ublkd/ublkd-service"
for s in "$P"/lib/ublkd/*; do check "sh -n $s" sh -n "$s"; done

# Man pages: no groff warnings, and they render with their sections.
for m in man8/ublkd.8 man1/ublkd-img.1; do
    check "groff -ww $m" bash -c "groff -man -ww -z '$P/share/man/$m' 2>&1 | { ! grep .; }"
    check "man -l $m renders" bash -c "MANWIDTH=80 man -l '$P/share/man/$m' 2>/dev/null | grep -q '^SYNOPSIS'"
done

# Bash completion, driven as bash drives it.
complete_words() {   # complete_words WORD...: the completions for the last word
    bash -c '. "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _ublkd; printf "%s\n" "${COMPREPLY[@]}"' \
        _ "$P/share/bash-completion/completions/ublkd" "$@"
}
check "completion registers" bash -c ". '$P/share/bash-completion/completions/ublkd'; complete -p ublkd | grep -q _ublkd"
got=$(complete_words ublkd re | tr '\n' ' ')
[ "$got" = "recover resize " ] && ok || bad "complete 'ublkd re' gave: $got"
got=$(complete_words ublkd resize -n 3 --s | tr '\n' ' ')
[ "$got" = "--shrink " ] && ok || bad "complete 'ublkd resize -n 3 --s' gave: $got"
got=$(complete_words ublkd img c | tr '\n' ' ')
[ "$got" = "check commit compare convert create " ] && ok || bad "complete 'ublkd img c' gave: $got"
got=$(complete_words ublkd add raw f.img --re | tr '\n' ' ')
[ "$got" = "--read-only --recovery --reissue " ] && ok || bad "complete 'ublkd add raw f.img --re' gave: $got"
got=$(complete_words ublkd add raw f.img --cache w | tr '\n' ' ')
[ "$got" = "writeback writethrough " ] && ok || bad "complete '--cache w' gave: $got"
got=$(complete_words ublkd img check -r l | tr '\n' ' ')
[ "$got" = "leaks " ] && ok || bad "complete 'img check -r l' gave: $got"

# The systemd unit, as an instance.
if command -v systemd-analyze >/dev/null; then
    mkdir -p "$T/units"
    cp "$P/lib/systemd/system/ublkd@.service" "$T/units/"
    ln -s ublkd@.service "$T/units/ublkd@disk.service"
    # MANPATH: verify also runs `man` on the unit's Documentation=, the installed page.
    # Any output at all is a finding (verify exits 0 on many of them).
    check "systemd-analyze verify" bash -c "cd '$T/units' && MANPATH='$P/share/man' systemd-analyze verify ./ublkd@disk.service 2>&1 | { ! grep .; }"
else
    bad "systemd-analyze is not installed (make deps installs systemd)"
fi

# The worker: bad configurations are refused with a message naming the file.
W=$P/lib/ublkd/ublkd-service
C=$P/etc/ublkd/devices.d
check_fails "worker: missing conf" "$C/nope.conf: no such configuration file" "$W" start nope
check_fails "worker: name with a slash" "bad device name" "$W" start ../x
printf 'ID=3\nARGS=raw %s/d.img\n' "$T" >"$C/d.conf"; chmod 0664 "$C/d.conf"
check_fails "worker: group-writable conf" "writable by group or others" "$W" start d
chmod 0644 "$C/d.conf"
printf 'ID=x3\nARGS=raw %s/d.img\n' "$T" >"$C/badid.conf"
check_fails "worker: bad ID" "ID must be a device number, not 'x3'" "$W" start badid
printf 'ID=3\nARGS=raw d.img\nEXTRA=$(touch %s/pwned)\n' "$T" >"$C/inj.conf"
check_fails "worker: unknown line" "unknown line" "$W" start inj
check "worker: conf is parsed, never run" test ! -e "$T/pwned"
check_fails "worker: unknown verb" "unknown verb 'frob'" "$W" frob d
# A good configuration reaches ublkd add with its arguments and the device id (it
# then fails here only for want of the ublk driver or of the image).
if [ ! -e /dev/ublk-control ]; then
    truncate -s 1M "$T/d.img"
    check_fails "worker: start runs ublkd add" "/dev/ublk-control does not exist" "$W" start d
    cp "$T/out" "$T/add.out"
    check "worker: add got the conf's id" grep -qF "ublkd/3[" "$T/add.out"
fi

# The udev helper refuses names that are not ublk nodes, before running anything.
H=$P/lib/ublkd/ublk-chown
for n in sda ublkc ublkb1x ../ublkc1 "ublkc1 x"; do check_fails "ublk-chown '$n'" "is not a ublk node name" "$H" "$n"; done

# The fio examples parse.
if command -v fio >/dev/null; then
    for j in "$P"/share/doc/ublkd/examples/*.fio; do check "fio --parse-only $(basename "$j")" env DEV="$T/f" fio --parse-only "$j"; done
fi

rm -f "$C"/*.conf     # ours; uninstall leaves a user's configuration alone
check "make uninstall" make -s uninstall PREFIX="$P" BUILD="$BUILD"
left=$(cd "$P" && find . -type f | sort)
[ -z "$left" ] && ok || bad "files left after uninstall: $left"
echo "install: $pass passed, $fail failed"
[ $fail -eq 0 ]
