#!/bin/bash
# Issue #10 item 2: another local user cannot subvert a user's run directory
# (/tmp/ublkd-UID without XDG_RUNTIME_DIR).  Each attack runs as a second
# unprivileged user against the first and must fail: a directory made first
# (to read image paths), symlinks at the statistics file's temporary names
# (to overwrite the victim's files), and a planted state file naming one of
# the victim's processes (for the victim's own `del -a` to kill).
. "$(dirname "$0")/lib.sh"
need_cmd setpriv jq python3
"$UBLKD" features | grep -q UNPRIVILEGED_DEV || skip "kernel lacks UBLK_F_UNPRIVILEGED_DEV"
V=65534 A=65533
VDIR=/tmp/ublkd-$V
rm -rf $VDIR
chmod 0666 /dev/ublk-control
# Stand-in for the udev rule that hands a new device's nodes to its owner.
( set +e
  while :; do
    for c in /sys/class/ublk-char/ublkc*; do
      [ -e "$c" ] || continue; n=${c##*/ublkc}
      for d in /dev/ublkc$n /dev/ublkb$n; do
        [ -e $d ] && [ "$(stat -c %u $d)" != $V ] && chown $V:$V $d 2>/dev/null
      done
    done
    sleep 0.05
  done ) &
chowner=$!
victims=()
on_exit "kill $chowner 2>/dev/null; chmod 0600 /dev/ublk-control; rm -rf $VDIR"
on_exit 'kill "${victims[@]}" 2>/dev/null'
chmod 755 $T
mkdir -p $T/v && chown $V:$V $T/v
install -m 755 "$UBLKD" $T/ublkd
as() { local u=$1; shift; setpriv --reuid=$u --regid=$u --clear-groups env -u XDG_RUNTIME_DIR -u UBLKD_RUN_DIR "$@"; }
as $V truncate -s 16M $T/v/img.raw
as $V sh -c "echo precious > $T/v/precious"
devs_before=$(ublk_ids | wc -l)

# 1+2. The attacker makes the directory first, with symlinks at every
# statistics temporary name the victim's next daemon could use.
as $A mkdir -m 0777 $VDIR
last=$(cat /proc/sys/kernel/ns_last_pid 2>/dev/null || echo 0)
# (One process makes them all: a fork per link is slow under TCG.)
as $A python3 -c "import os
for i in range(4):
    for p in range($last + 1, $last + 2001):
        os.symlink('$T/v/precious', '$VDIR/%d.stats.json.tmp%d' % (i, p))"
if out=$(as $V $T/ublkd add raw $T/v/img.raw $CACHE_OPT 2>&1); then
  id=${out#/dev/ublkb}; _lib_devs+=("$id"); sleep 1.5
  leak=$(as $A cat $VDIR/$id.json 2>/dev/null | jq -r '.config.files[0]' || true)
  fail "add used a run directory another user made ($out; the attacker reads '$leak'; precious now: $(head -c 60 $T/v/precious))"
fi
log "refused: $out"
grep -q "$VDIR" <<<"$out" || fail "the refusal does not name $VDIR: $out"
[ "$(ublk_ids | wc -l)" = "$devs_before" ] || fail "the refused add left a device in the kernel"
[ "$(cat $T/v/precious)" = precious ] || fail "the victim's file was written through a symlink"

# 3. A planted state file naming a victim's process: del -a must not kill it.
as $V sleep 300 &      # setpriv and env exec: $! is the sleep itself
vpid=$!; victims+=("$vpid")
as $A sh -c "echo '{\"id\": 7, \"pid\": $vpid, \"config\": {\"type\": \"null\", \"size\": 1048576}}' > $VDIR/7.json"
out=$(as $V $T/ublkd del -a 2>&1) && fail "del -a accepted a run directory another user made: $out"
grep -q "$VDIR" <<<"$out" || fail "del -a's refusal does not name $VDIR: $out"
kill -0 $vpid 2>/dev/null || fail "del -a killed the victim's process $vpid named by a planted state file"
out=$(as $V $T/ublkd list 2>&1) && fail "list accepted a run directory another user made: $out"

# 4. In the victim's own directory, a state file of another uid and a
# malformed one are ignored with a warning, never acted on.
rm -rf $VDIR
as $V mkdir -m 0700 $VDIR
echo "{\"id\": 7, \"pid\": $vpid, \"config\": {\"type\": \"null\", \"size\": 1048576}}" > $VDIR/7.json
chown $A:$A $VDIR/7.json
as $V sh -c "echo '{\"id\": 8, \"pid\": $vpid, ' > $VDIR/8.json"
out=$(as $V $T/ublkd del -a 2>&1) || true
log "del -a: $out"
kill -0 $vpid 2>/dev/null || fail "del -a killed the victim's process $vpid named by a foreign/malformed state file"
grep -q "7.json belongs to another user" <<<"$out" || fail "no warning about the foreign 7.json: $out"
grep -q "8.json: ignored" <<<"$out" || fail "no warning about the malformed 8.json: $out"
[ -e $VDIR/7.json ] || fail "del -a removed another user's file"

# The victim's own use still works, in a 0700 directory it made itself.
rm -rf $VDIR
out=$(as $V $T/ublkd add raw $T/v/img.raw $CACHE_OPT 2>&1) || fail "the victim's add failed: $out"
id=${out#/dev/ublkb}; _lib_devs+=("$id")
[ "$(stat -c '%a %u' $VDIR)" = "700 $V" ] || fail "run directory is $(stat -c '%a %u' $VDIR), not 700 $V"
[ "$(stat -c '%a' $VDIR/$id.json)" = 600 ] || fail "state file mode $(stat -c %a $VDIR/$id.json)"
as $V $T/ublkd del -n $id || fail "the victim's del failed"
[ ! -e /sys/class/ublk-char/ublkc$id ] || fail "device $id still exists"
