#!/bin/bash
# build-kublk.sh - fetch and build kublk, the kernel's own ublk selftest server
# (tools/testing/selftests/ublk in Debian's linux-source-7.3), the peer that
# tests/vm/bench-kublk.sh measures ublkd against.  Prints the binary's path.
#
#   tests/vm/build-kublk.sh            # builds once, then prints the cached path
#
# kublk needs liburing 2.9 and the 7.3 uapi headers, newer than Debian 12's, so
# all three come as .debs through a private apt list (trixie + trixie-backports,
# the host's own sources are left alone), as tests/vm/ublk-vm fetches the 7.3
# kernel: linux-source-7.3, liburing-dev and liburing2 (trixie), and
# linux-libc-dev of the same version as the source.  They are unpacked under
# ${UBLKD_VM_CACHE:-/var/cache/ublkd-vm}/kublk, and kublk is linked against the
# unpacked liburing.a, so the binary needs only the host's glibc and runs in both
# test guests (whose userspace is the host's /).  Nothing of kublk is copied
# into the project.  Needs only what `make deps` installs (gcc, xz-utils, apt,
# dpkg); the source package is a 167 MB download, kept in the cache.
# KUBLK_KERNEL picks the source series (default 7.3).  The cache is rebuilt when
# this script changes.
set -euo pipefail
die() { echo "build-kublk: $*" >&2; exit 1; }
KSER=${KUBLK_KERNEL:-7.3}
C=${UBLKD_VM_CACHE:-/var/cache/ublkd-vm}/kublk
STAMP=$(sha256sum "$0" | cut -c1-16)-$KSER
if [ -x "$C/kublk" ] && [ "$(cat "$C/stamp" 2>/dev/null)" = "$STAMP" ]; then
  echo "$C/kublk"; exit 0
fi
command -v gcc >/dev/null || die "gcc is needed (make deps)"
command -v xz >/dev/null || die "xz is needed (make deps: xz-utils)"
mkdir -p "$C" || die "cannot create the cache directory $C"
rm -f "$C/stamp" "$C/kublk"
A=$C/apt; mkdir -p "$A/lists/partial" "$C/deb"
# The Debian mirror this host already uses (its main archive, not -security).
uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}')
[ -n "$uri" ] || uri=$(awk '$1=="deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$uri" ] || uri=http://deb.debian.org/debian
K=/usr/share/keyrings/debian-archive-keyring.gpg
printf 'deb [signed-by=%s] %s trixie main\ndeb [signed-by=%s] %s trixie-backports main\n' \
  "$K" "$uri" "$K" "$uri" > "$A/sources.list"
AO=(-o Dir::Etc::sourcelist="$A/sources.list" -o Dir::Etc::sourceparts=/dev/null
    -o Dir::State::Lists="$A/lists" -o Debug::NoLocking=1)
if ! ls "$C"/deb/linux-source-"$KSER"_*.deb "$C"/deb/liburing-dev_*.deb "$C"/deb/liburing2_*.deb \
        "$C"/deb/linux-libc-dev_*.deb >/dev/null 2>&1; then
  rm -f "$C"/deb/*.deb
  apt-get "${AO[@]}" update -q >&2 || die "apt-get update of trixie/trixie-backports ($uri) failed"
  sver=$(apt-cache "${AO[@]}" show "linux-source-$KSER" 2>/dev/null | awk '/^Version:/ {print $2}' | sort -V | tail -1)
  [ -n "$sver" ] || die "no linux-source-$KSER in trixie-backports ($uri)"
  # liburing from trixie (2.9); the headers of the same kernel as the source.
  (cd "$C/deb" && apt-get "${AO[@]}" download "linux-source-$KSER=$sver" "linux-libc-dev=$sver" \
      liburing-dev liburing2 >&2) || die "apt-get download failed"
fi
R=$C/root; rm -rf "$R" "$C/src"; mkdir -p "$R" "$C/src"
for d in "$C"/deb/liburing*.deb "$C"/deb/linux-libc-dev_*.deb; do dpkg -x "$d" "$R"; done
# Only the selftest's directory out of the 167 MB source tarball.
dpkg-deb --fsys-tarfile "$C"/deb/linux-source-"$KSER"_*.deb |
  tar -xO --wildcards "./usr/src/linux-source-$KSER.tar.xz" |
  tar -xJ -C "$C/src" --strip-components=5 "linux-source-$KSER/tools/testing/selftests/ublk" ||
  die "cannot unpack tools/testing/selftests/ublk from linux-source-$KSER"
S=$C/src
[ -f "$S/kublk.c" ] || die "no kublk.c in linux-source-$KSER"
M=$(gcc -print-multiarch)
[ -f "$R/usr/lib/$M/liburing.a" ] || die "no liburing.a in the liburing-dev package"
srcs=$(cd "$S" && ls *.c | grep -v '^metadata_size\.c$')
# As the selftest's Makefile and lib.mk build it (-O3 -D_GNU_SOURCE, the uapi
# headers first), with the unpacked liburing linked in statically.
(cd "$S" && gcc -O3 -Wall -D_GNU_SOURCE -isystem "$R/usr/include/$M" -isystem "$R/usr/include" \
    -o "$C/kublk.tmp" $srcs "$R/usr/lib/$M/liburing.a" -lpthread -lm) >&2 || die "kublk did not build"
mv "$C/kublk.tmp" "$C/kublk"
for d in "$C"/deb/*.deb; do dpkg-deb --show --showformat='${Package} ${Version}\n' "$d"; done > "$C/versions"
echo "$STAMP" > "$C/stamp"
echo "build-kublk: built $C/kublk from $(paste -sd, "$C/versions" | sed "s/,/, /g")" >&2
echo "$C/kublk"
