#!/bin/bash
# The device commands of README.md and docs/UNPRIVILEGED.md run as documented, in doc
# order (tests/doc-commands.sh finds them: classes dev and dev-user;
# tests/interop/test_docs_commands.sh runs or checks the rest).  Each must exit 0, and:
# add prints a block device; list --json has the fields README's comment names for the
# device; del removes it; recover brings it back LIVE; the user's list shows
# UNPRIVILEGED_DEV, as the doc says.
#
# Substitutions, so the documented text can run here:
#   - root commands: "sudo " is dropped (the suite runs as root); they run in a scratch
#     directory where build/ublkd links to $UBLKD, so the rest is run as written;
#   - the files they name are made first: disk.img, x.img, a.img, b.img, c.img (64M, sparse), vm.img (128M), disk.vdi
#     (64M, `ublkd img create -f vdi`); README makes its own disk.vdi later, in Images;
#   - an id given with -n (5) is used as is if free, else another free id everywhere;
#   - an add without -n: its device is deleted right after the checks, so the next
#     add of the same image is not refused as a second writer (the doc's adds are
#     alternatives); an add with -n stays until the doc's del of that id;
#   - recover -n ID is documented for "after the daemon was killed": the device is
#     added again with the doc's own add for ID and its daemon killed with SIGKILL
#     (state QUIESCED) first;
#   - unprivileged commands ($ ublkd ... in a console block) run as uid 65534 with
#     HOME=$T/u (so ~/disk.img is theirs: made first, 64M) and their own copy of
#     ublkd first in PATH, udev's chown done by dist/ublk-chown.in as in
#     test_unpriv.sh; -n with the doc's example id (3) means the id their add printed.
. "$(dirname "$0")/lib.sh"
need_cmd jq setpriv
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
records=$("$ROOT/tests/doc-commands.sh" "$ROOT") ||
  fail "tests/doc-commands.sh cannot classify every command in the docs (tests/interop/test_docs_commands.sh names them)"
mapfile -t devcmds < <(awk -F'\t' '$1 == "dev" || $1 == "dev-user"' <<<"$records")
[ ${#devcmds[@]} -gt 0 ] || fail "no device commands found in the docs"
log "${#devcmds[@]} device commands in the docs"

cd "$T"
mkdir -p build && ln -s "$UBLKD" build/ublkd
truncate -s 64M disk.img x.img a.img b.img c.img
truncate -s 128M vm.img
"$UBLKD" img create -q -f vdi disk.vdi 64M

# Ids the docs pass with -n: kept if free, else mapped to a free one.
declare -A idmap
free_id() { local i; for i in $(seq 0 63); do [ -e /sys/class/ublk-char/ublkc$i ] || [ -n "${taken[$i]:-}" ] || { echo $i; return; }; done; }
declare -A taken
for r in "${devcmds[@]}"; do
  IFS=$'\t' read -r class where reason cmd <<<"$r"
  [ "$class" = dev ] || continue
  if [[ $cmd =~ -n\ ([0-9]+) ]]; then
    d=${BASH_REMATCH[1]}
    [ -n "${idmap[$d]:-}" ] && continue
    if [ -e /sys/class/ublk-char/ublkc$d ]; then idmap[$d]=$(free_id); else idmap[$d]=$d; fi
    taken[${idmap[$d]}]=1
    [ "${idmap[$d]}" = "$d" ] || log "id $d is in use here: the doc's -n $d runs as -n ${idmap[$d]}"
  fi
done
subst_id() {  # the command with its -n ID mapped
  local c=$1 d
  for d in "${!idmap[@]}"; do c=$(sed -E "s/(^| )-n $d( |\$)/\\1-n ${idmap[$d]}\\2/" <<<"$c"); done
  echo "$c"
}

# Unprivileged: the user, their ublkd, and (started at their first command, so it
# polls no root device) the stand-in for udev of test_unpriv.sh.
U=65534
unpriv=
if "$UBLKD" features | grep -q UNPRIVILEGED_DEV; then
  unpriv=1
  chmod 755 "$T"
  mkdir -p u/bin && chown -R $U u
  install -m 755 "$UBLKD" u/bin/ublkd
  setpriv --reuid=$U --regid=$U --clear-groups truncate -s 64M u/disk.img
fi
chowner=
start_chowner() {
  [ -z "$chowner" ] || return 0
  chmod 0666 /dev/ublk-control
  ( set +e
    while :; do
      for c in /sys/class/ublk-char/ublkc*; do
        [ -e "$c" ] || continue; n=${c##*/ublkc}
        for d in ublkc$n ublkb$n; do
          [ -e /dev/$d ] && [ "$(stat -c %u /dev/$d)" != $U ] &&
            UBLKD="$UBLKD" sh "$ROOT/dist/ublk-chown.in" $d 2>/dev/null
        done
      done
      sleep 0.05
    done ) &
  chowner=$!
  on_exit "kill $chowner 2>/dev/null; chmod 0600 /dev/ublk-control"
}
as_user() {
  setpriv --reuid=$U --regid=$U --clear-groups env HOME="$T/u" PATH="$T/u/bin:$PATH" \
    UBLKD_RUN_DIR="$T/u/run" bash -c "$1"
}

# run_doc CLASS CMD: run it as documented; its output in $T/out.
run_doc() {
  local rc=0
  if [ "$1" = dev ]; then
    bash -c "$2" >"$T/out" 2>&1 || rc=$?
  else
    as_user "$2" >"$T/out" 2>&1 || rc=$?
  fi
  [ $rc = 0 ] || { sed 's/^/    | /' "$T/out" >&2; fail "$where: '$2' exited $rc"; }
}
gone() { [ ! -e /sys/class/ublk-char/ublkc$1 ]; }

declare -A add_for   # id -> the doc's add command for it
nroot=0 nuser=0 user_id=
for r in "${devcmds[@]}"; do
  IFS=$'\t' read -r class where reason cmd <<<"$r"
  if [ "$class" = dev-user ]; then
    [ -n "$unpriv" ] || { log "not run: $where: the kernel lacks UBLK_F_UNPRIVILEGED_DEV"; continue; }
    # root's devices go first: the chown loop would run its helper on them every 50 ms
    for id in "${!add_for[@]}"; do gone "$id" || ublk_del "$id"; unset "add_for[$id]"; done
    start_chowner
    [ -z "$user_id" ] || cmd=$(sed -E "s/(^| )-n [0-9]+( |\$)/\\1-n $user_id\\2/" <<<"$cmd")
  else
    cmd=$(subst_id "${cmd#sudo }")
  fi
  read -r _ verb _ <<<"$cmd"
  log "$where: $cmd"
  case $verb in
  add)
    run_doc "$class" "$cmd"
    dev=$(tail -1 "$T/out")
    [ -b "$dev" ] || fail "$where: add printed '$dev', not a block device"
    id=${dev#/dev/ublkb}
    _lib_devs+=("$id"); echo "$id" >>"$T/.devs"
    if [ "$class" = dev-user ]; then
      user_id=$id
    elif [[ $cmd =~ -n\ ([0-9]+) ]]; then
      [ "$id" = "${BASH_REMATCH[1]}" ] || fail "$where: asked for id ${BASH_REMATCH[1]}, got $dev"
      add_for[$id]=$cmd
    else
      ublk_del "$id"
    fi ;;
  list)
    run_doc "$class" "$cmd"
    if [[ $cmd == *--json* ]]; then
      # README: "size, block sizes, queues and their threads, image chain, counters"
      for id in "${!add_for[@]}"; do
        gone "$id" && continue
        jq -e --argjson id "$id" '.[] | select(.id == $id) | .size and .logical_block_size and
            .physical_block_size and .queues and .queue_threads and .graph and .stats' "$T/out" >/dev/null ||
          fail "$where: list --json lacks size, block sizes, queues, threads, graph or counters of device $id"
      done
    fi
    if [ "$class" = dev-user ]; then
      grep -q UNPRIVILEGED_DEV "$T/out" || fail "$where: the user's list does not show UNPRIVILEGED_DEV"
    fi ;;
  del)
    [[ $cmd =~ -n\ ([0-9]+) ]] || fail "$where: a del without -n ID: teach this test"
    id=${BASH_REMATCH[1]}
    run_doc "$class" "$cmd"
    gone "$id" || fail "$where: device $id still exists after del" ;;
  recover)
    [[ $cmd =~ -n\ ([0-9]+) ]] || fail "$where: a recover without -n ID: teach this test"
    id=${BASH_REMATCH[1]}
    [ -n "${add_for[$id]:-}" ] || fail "$where: no documented add of device $id before its recover"
    if gone "$id"; then
      bash -c "${add_for[$id]}" >"$T/out" 2>&1 || { cat "$T/out" >&2; fail "$where: re-adding device $id for the recover"; }
    fi
    pid=$(ublk_pid "$id")
    kill -9 "$pid"
    wait_for sh -c "[ \"\$($UBLKD list -n $id --json | jq -r '.[0].state')\" = QUIESCED ]" ||
      fail "$where: device $id did not become QUIESCED after its daemon was killed"
    run_doc "$class" "$cmd"
    [ "$(ublk_state "$id")" = LIVE ] || fail "$where: device $id is $(ublk_state "$id") after recover"
    dd if=/dev/ublkb$id of=/dev/null bs=4k count=16 iflag=direct status=none ||
      fail "$where: reading device $id after recover failed" ;;
  resize)
    # README: "+SIZE" grows by SIZE, "--shrink SIZE" sets it; 6.12 has no UPDATE_SIZE
    # and must refuse, naming it, with the device unchanged.
    [[ $cmd =~ -n\ ([0-9]+) ]] || fail "$where: a resize without -n ID: teach this test"
    id=${BASH_REMATCH[1]}
    before=$(blockdev --getsize64 /dev/ublkb$id)
    if ! "$UBLKD" features | grep -q "UBLK_F_UPDATE_SIZE$"; then
      rc=0; bash -c "$cmd" >"$T/out" 2>&1 || rc=$?
      [ $rc != 0 ] && grep -q UPDATE_SIZE "$T/out" ||
        fail "$where: on a kernel without UPDATE_SIZE resize did not refuse naming it: $(cat "$T/out")"
      [ "$(blockdev --getsize64 /dev/ublkb$id)" = "$before" ] || fail "$where: a refused resize changed the size"
      log "$where: refused as documented for kernels without UPDATE_SIZE"
    else
      run_doc "$class" "$cmd"
      read -ra words <<<"${cmd%%#*}"
      size=${words[${#words[@]}-1]}
      case $size in
        +*) want=$(( before + $(numfmt --from=iec "${size#+}") ));;
        *)  want=$(numfmt --from=iec "$size");;
      esac
      [ "$(blockdev --getsize64 /dev/ublkb$id)" = "$want" ] ||
        fail "$where: device $id is $(blockdev --getsize64 /dev/ublkb$id) bytes after resize, want $want"
    fi ;;
  upgrade)
    # README: a new daemon takes the live device over (with or without QUIESCE).
    [[ $cmd =~ -n\ ([0-9]+) ]] || fail "$where: an upgrade without -n ID: teach this test"
    id=${BASH_REMATCH[1]}
    [ -n "${add_for[$id]:-}" ] || fail "$where: no documented add of device $id before its upgrade"
    if gone "$id"; then
      bash -c "${add_for[$id]}" >"$T/out" 2>&1 || { cat "$T/out" >&2; fail "$where: re-adding device $id for the upgrade"; }
    fi
    pid=$(ublk_pid "$id")
    run_doc "$class" "$cmd"
    [ "$(ublk_state "$id")" = LIVE ] || fail "$where: device $id is $(ublk_state "$id") after upgrade"
    [ "$(ublk_pid "$id")" != "$pid" ] || fail "$where: device $id's daemon did not change"
    dd if=/dev/ublkb$id of=/dev/null bs=4k count=16 iflag=direct status=none ||
      fail "$where: reading device $id after upgrade failed" ;;
  features)
    run_doc "$class" "$cmd"
    grep -q 'UBLK_F_' "$T/out" || fail "$where: features listed no UBLK_F_ flag" ;;
  *)
    fail "$where: device verb '$verb' in the docs: teach this test to run it" ;;
  esac
  if [ "$class" = dev ]; then nroot=$((nroot + 1)); else nuser=$((nuser + 1)); fi
done
total=${#devcmds[@]}
log "docs device commands: $nroot run as root, $nuser as a user, $((total - nroot - nuser)) not run, of $total"
[ $((nroot + nuser)) = "$total" ] || [ -z "$unpriv" ] || fail "ran $((nroot + nuser)) of $total device commands"
