# powerloss.sh - power-loss testing of the whole stack (source it after lib.sh).
#
#   loop(tmpfs file) --dm-log-writes--> host fs (ext4|xfs) --> image (raw|vdi|qcow2)
#     --ublkd--> /dev/ublkbN --> guest ext4 <-- appender that fsyncs
#
# powerloss_run HOSTFS FMT sets the stack up, runs the workload, takes it down
# and rebuilds the log-writes data device (tests/vm/log-writes-replay.c) at
# chosen points: at the marks the workload drops after each acknowledged
# fsync, at flushes and between them - each a state a power cut could leave.
# At each point: the host fs mounts and its fsck passes, `qemu-img check`
# finds no corruption (leaks allowed), ublkd serves the image, the guest ext4
# mounts (journal replay) and then passes e2fsck -fn, and every record whose
# fsync returned before the point is there, intact.
#
# Knobs (the soak target raises them):
#   POWERLOSS_RECORDS  records the workload appends (default 4)
#   POWERLOSS_POINTS   replay points per run: a number spread over the log,
#                      or "all" (every mark, every flush and the entries
#                      half-way between flushes; default 3)
#   POWERLOSS_NOISE    1: a writer that never fsyncs runs beside the appender
#                      (default 1)
#   POWERLOSS_CACHE    ublkd's --cache while the workload runs (default none;
#                      unsafe drops flushes, so a run with it must fail: a
#                      check that the test can see lost writes)
#   POWERLOSS_FORMATS  the image formats, space-separated (default "raw qcow2";
#                      the soak target adds vdi)
# A format joins by adding its name to POWERLOSS_FORMATS (the image is made
# with `qemu-img create -f FMT`, served with `ublkd add FMT`).
# vdi runs in the soak target only, to keep CI short: its count and map
# now change together (one write, drivers/vdi-write.c), which the power-loss
# finding of docs/RELIABILITY.md asked for.
read -r -a POWERLOSS_FORMATS <<<"${POWERLOSS_FORMATS:-raw qcow2}"
POWERLOSS_RECORDS=${POWERLOSS_RECORDS:-4}
POWERLOSS_POINTS=${POWERLOSS_POINTS:-3}
POWERLOSS_NOISE=${POWERLOSS_NOISE:-1}
POWERLOSS_CACHE=${POWERLOSS_CACHE:-none}
LWR=${LOG_WRITES_REPLAY:-$(dirname "$UBLKD")/log-writes-replay}

need_cmd dmsetup losetup blockdev qemu-img mkfs.ext4 e2fsck sha256sum cksum
[ -x "$LWR" ] || fail "$LWR is not built (make $(basename "$(dirname "$UBLKD")")/log-writes-replay)"
dmsetup targets 2>/dev/null | grep -q '^log-writes' || skip "no dm-log-writes target in this kernel"
# set -e ends the test at a failing command without a word: name it.
set -E
trap 'echo "powerloss.sh: line $LINENO: \"$BASH_COMMAND\" failed (status $?)" >&2' ERR
# No udev in the test guest: dmsetup makes /dev/mapper nodes itself.
export DM_DISABLE_UDEV=1

_pl_loops=() _pl_dms=() _pl_mounts=()
# Also called between steps (under set -e): what is already gone is fine.
_pl_cleanup() {
  local i
  for ((i = ${#_pl_mounts[@]} - 1; i >= 0; i--)); do
    ! mountpoint -q "${_pl_mounts[i]}" || umount -l "${_pl_mounts[i]}" || true
  done
  for i in "${_pl_dms[@]}"; do dmsetup remove "$i" 2>/dev/null || true; done
  for i in "${_pl_loops[@]}"; do losetup -d "$i" 2>/dev/null || true; done
  _pl_mounts=() _pl_dms=() _pl_loops=()
}
on_exit _pl_cleanup

# pl_loop FILE: attach FILE, set LOOP (not $(...): the cleanup list must grow here).
pl_loop() { LOOP=$(losetup -f --show "$1") || fail "losetup $1"; _pl_loops+=("$LOOP"); }
pl_mount() { mount "$@" || fail "mount $*"; _pl_mounts+=("${@: -1}"); }
pl_umount() { umount "$1" || fail "umount $1"; }

pl_mkfs() {  # HOSTFS DEV
  case $1 in
    ext4) mkfs.ext4 -q -F "$2" ;;
    xfs) mkfs.xfs -q -f "$2" ;;
  esac >/dev/null || fail "mkfs.$1 on the log-writes device"
}
pl_fsck() {  # HOSTFS DEV: read-only check of an unmounted host fs
  case $1 in
    ext4) e2fsck -fn "$2" ;;
    xfs) xfs_repair -n "$2" ;;
  esac >"$T/fsck.out" 2>&1 || { cat "$T/fsck.out" >&2; return 1; }
}
pl_host_size() { case $1 in ext4) echo 160M;; xfs) echo 320M;; esac; }  # xfs refuses < 300M

# The workload, on the guest fs at $1, marking the log device $2.  Record N
# is a file fN of random data, then a line "N <sha256 of fN> <cksum of the
# line so far>" appended to `records`; both are fsynced (and the directory)
# before the mark ackN goes into the log and N into $T/acked.
pl_workload() {
  local g=$1 dm=$2 n sum line noise_pid=
  if [ "$POWERLOSS_NOISE" = 1 ]; then
    # Writes that are never fsynced: they reach the log only with someone
    # else's flush, in between the acknowledged ones.
    # Paced: under TCG a writer flat out would starve the appender.
    ( while :; do dd if=/dev/urandom of="$g/noise" bs=64k count=4 seek=$((RANDOM % 64)) conv=notrunc status=none || exit; sleep 0.2; done ) &
    noise_pid=$!
  fi
  for ((n = 1; n <= POWERLOSS_RECORDS; n++)); do
    head -c $(( (n % 7 + 1) * 3000 )) /dev/urandom > "$T/rec"
    dd if="$T/rec" of="$g/f$n" conv=fsync status=none || fail "write f$n"
    sync "$g" || fail "fsync of the guest directory"
    sum=$(sha256sum < "$T/rec" | cut -d' ' -f1)
    line="$n $sum"
    line="$line $(printf '%s' "$line" | cksum | cut -d' ' -f1)"
    echo "$line" | dd of="$g/records" oflag=append conv=notrunc,fsync status=none || fail "append record $n"
    dmsetup message "$dm" 0 mark "ack$n" || fail "dmsetup message $dm mark ack$n"
    echo "$n" >> "$T/acked"
    [ $((n % 5)) != 0 ] || log "  $n records acknowledged"
  done
  if [ -n "$noise_pid" ]; then kill "$noise_pid"; wait "$noise_pid" 2>/dev/null || true; fi
}

# pl_verify GUESTMNT K: records 1..K are there and intact; anything after
# them is either an intact record or an unfinished last line.
pl_verify() {
  local g=$1 k=$2 n=0 seq sum ck bad=
  [ "$k" = 0 ] && return 0
  [ -f "$g/records" ] || { echo "records file missing, $k acknowledged"; return 1; }
  while IFS= read -r line || [ -n "$line" ]; do
    n=$((n + 1))
    read -r seq sum ck <<<"$line"
    if [ "$seq" != "$n" ] || [ "$ck" != "$(printf '%s' "$seq $sum" | cksum | cut -d' ' -f1)" ] ||
       [ "$(sha256sum < "$g/f$n" 2>/dev/null | cut -d' ' -f1)" != "$sum" ]; then
      if [ "$n" -le "$k" ]; then echo "acknowledged record $n is damaged: '$line'"; return 1; fi
      bad="record $n (unacknowledged) is damaged or incomplete: '$(printf '%q' "$line")'"
      continue
    fi
    [ -z "$bad" ] || { echo "intact record $n follows a damaged one ($bad)"; return 1; }
  done < "$g/records"
  [ "$n" -ge "$k" ] || { echo "only $n records, $k acknowledged"; return 1; }
  [ -z "$bad" ] || log "    note: $bad"
}

# pl_points LIST: the entry counts to replay to, ascending, each with the
# number of acknowledged records it must show: "TO K WHY" lines.
pl_points() {
  awk -v want="$POWERLOSS_POINTS" '
    function at(i, why) { if (!(i in pt)) pt[i] = why }
    /^#/ { next }
    { idx = $1; fl = $2; mark = $5; last = idx }
    mark == "ready" { ready = idx; lastf = idx; at(idx + 1, "ready") }
    ready == "" || idx <= ready { next }
    { k[idx] = acked }
    mark ~ /^ack[0-9]+$/ { acked = substr(mark, 4); pt[idx + 1] = "after mark " mark; k[idx + 1] = acked }
    fl ~ /F/ {
      at(idx, "before a flush"); at(idx + 1, "after a flush")
      if (idx - lastf > 2) at(int((lastf + idx) / 2), "between flushes")
      lastf = idx
    }
    END {
      at(last + 1, "end of the log")
      n = 0
      for (i in pt) { c[n++] = i + 0; if (!(i in k)) k[i] = acked }
      for (i = 1; i < n; i++) { v = c[i]; for (j = i - 1; j >= 0 && c[j] > v; j--) c[j + 1] = c[j]; c[j + 1] = v }
      if (want == "all" || n <= want) { for (i = 0; i < n; i++) print c[i], k[c[i]] + 0, pt[c[i]]; exit }
      # `want` points spread over the log, the end of it always among them
      for (i = 1; i <= want; i++) { j = int(i * n / want) - 1; print c[j], k[c[j]] + 0, pt[c[j]] }
    }' "$1"
}

# pl_check HOSTFS FMT REPLAYED K: one replay point; says what is wrong and
# returns 1 (its mounts and loops stay on the cleanup lists).
pl_check() {
  local fs=$1 fmt=$2 img=$3 k=$4 d=$T/pt loop rc
  rm -rf "$d"; mkdir -p "$d/host" "$d/guest"
  cp --sparse=always "$img" "$d/data" || fail "copy of the replayed device"
  pl_loop "$d/data"; loop=$LOOP
  mount "$loop" "$d/host" || { echo "host $fs does not mount"; return 1; }
  _pl_mounts+=("$d/host")
  rc=0; qemu-img check -q -f "$fmt" "$d/host/img.$fmt" >"$T/qcheck" 2>&1 || rc=$?
  # 3: leaks only; 63: the format has no checks (raw)
  case $rc in 0|3|63) ;; *) cat "$T/qcheck"; echo "qemu-img check: exit $rc"; return 1;; esac
  local id
  id=$("$UBLKD" add "$fmt" "$d/host/img.$fmt") || { echo "ublkd add $fmt of the replayed image failed"; return 1; }
  id=${id#/dev/ublkb}; echo "$id" >> "$T/.devs"
  mount "/dev/ublkb$id" "$d/guest" || { echo "guest ext4 does not mount"; return 1; }
  _pl_mounts+=("$d/guest")
  pl_verify "$d/guest" "$k" || return 1
  pl_umount "$d/guest"
  e2fsck -fn "/dev/ublkb$id" >"$T/fsck.out" 2>&1 || { cat "$T/fsck.out"; echo "e2fsck of the guest ext4 after journal replay"; return 1; }
  "$UBLKD" del -n "$id" || { echo "ublkd del $id"; return 1; }
  pl_umount "$d/host"
  pl_fsck "$fs" "$loop" || { echo "host $fs check after mount"; return 1; }
  _pl_cleanup
  rm -rf "$d"
}

powerloss_run() {
  local fs=$1 fmt=$2 d=$T/$1-$2 dm=ublkd-pl-$$ data logdev lw size
  log "$fs/$fmt: setup (cache=$POWERLOSS_CACHE)"
  mkdir -p "$d/host" "$d/guest"; : > "$T/acked"
  truncate -s "$(pl_host_size "$fs")" "$d/data"; truncate -s 1G "$d/log"
  pl_loop "$d/data"; data=$LOOP; pl_loop "$d/log"; logdev=$LOOP
  size=$(blockdev --getsz "$data")
  dmsetup create "$dm" --table "0 $size log-writes $data $logdev" || fail "dmsetup create log-writes"
  _pl_dms+=("$dm"); lw=/dev/mapper/$dm
  pl_mkfs "$fs" "$lw"
  pl_mount "$lw" "$d/host"
  qemu-img create -q -f "$fmt" "$d/host/img.$fmt" 64M || fail "qemu-img create $fmt"
  ublk_add "$fmt" "$d/host/img.$fmt" --cache="$POWERLOSS_CACHE" >/dev/null
  mkfs.ext4 -q -F "$DEV" || fail "mkfs.ext4 on $DEV"
  pl_mount "$DEV" "$d/guest"
  sync
  dmsetup message "$dm" 0 mark ready || fail "dmsetup message mark ready"
  log "$fs/$fmt: workload, $POWERLOSS_RECORDS records"
  pl_workload "$d/guest" "$dm"
  pl_umount "$d/guest"
  ublk_del "$ID"
  pl_umount "$d/host"
  dmsetup remove "$dm" || fail "dmsetup remove $dm"
  _pl_cleanup
  "$LWR" "$d/log" list > "$d/list" || fail "log-writes-replay list"
  log "$fs/$fmt: $(grep -vc '^#' "$d/list") log entries, $(grep -c ' ack[0-9]*$' "$d/list") ack marks"
  [ "$(grep -c ' ack[0-9]*$' "$d/list")" = "$POWERLOSS_RECORDS" ] || fail "the log lacks ack marks"
  pl_points "$d/list" > "$d/points"
  [ -s "$d/points" ] || fail "no replay points"
  truncate -s "$(pl_host_size "$fs")" "$d/replay"
  local from=0 to k why checked=0
  while read -r to k why; do
    "$LWR" "$d/log" replay "$d/replay" "$from" "$to" || fail "replay $from..$to"
    from=$to
    pl_check "$fs" "$fmt" "$d/replay" "$k" ||
      fail "$fs/$fmt: replayed to entry $to ($why, $k acknowledged): see above"
    checked=$((checked + 1))
    log "$fs/$fmt: point $to ($why): ok, $k acknowledged records present"
  done < "$d/points"
  log "$fs/$fmt: $checked replay points checked"
  rm -rf "$d"
}
