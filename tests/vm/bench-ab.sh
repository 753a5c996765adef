#!/bin/bash
# bench-ab.sh - A/B one fio job across several ublkd binaries/configs in one VM boot.
#
# Each config gets a fresh device per round, rounds interleave the configs, so
# host load hits all of them alike; a null_blk control row ("CTL") shows how
# disturbed a round was.  Prints IOPS, daemon CPU per I/O and the daemon's
# voluntary sleeps per I/O.  Take the median over rounds: under QEMU TCG on a
# shared host single runs vary by 2x.
#
#   tests/vm/ublk-vm -w DIR -- env ROUNDS=3 \
#     CONFIGS="label|ENV=val|/abs/ublkd add-args...;ctl|X=1|CTL;loop|X=1|LOOP \$IMG" \
#     $PWD/tests/vm/bench-ab.sh
# '$IMG' in add-args is a 1 GiB random-filled raw file on ext4 on a
# memory-backed null_blk (as in bench.sh); '$CTL' is the control row's
# null_blk (memory_backed=0), a backing device that costs no copy; '$TMPIMG'
# is a 768 MiB random-filled raw file on the guest's tmpfs (O_DIRECT there
# since 6.6; do not combine it with '$IMG' in a 2 GiB guest).  Binaries must be visible in the
# guest (under / or DIR).  JOB (fio args) defaults to 4k randread QD32.
set -u
export PATH=$PATH:/usr/sbin:/sbin
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
RT=${RT:-3}
CFG=/sys/kernel/config/nullb
T=$(mktemp -d /tmp/ab.XXXXXX)
nullb() {  # nullb NAME MEMBACKED SIZE_MB -> device path
  mkdir $CFG/$1
  echo "$2" > $CFG/$1/memory_backed; echo 1 > $CFG/$1/submit_queues; echo "$3" > $CFG/$1/size
  echo 4096 > $CFG/$1/blocksize; echo 2 > $CFG/$1/queue_mode; echo 1 > $CFG/$1/power
  local d
  for d in /dev/$1 /dev/nullb$(cat $CFG/$1/index); do
    for _ in $(seq 50); do [ -b $d ] && { echo $d; return; }; sleep 0.1; done
  done
}
if [[ $CONFIGS == *'$IMG'* ]]; then
  store=$(nullb store 1 1400)
  mkfs.ext4 -q -F $store >/dev/null; mkdir $T/fs; mount $store $T/fs
  fallocate -l 1G $T/fs/img.raw
  dd if=/dev/urandom of=$T/fs/img.raw bs=1M count=1024 conv=notrunc oflag=direct status=none
fi
IMG=$T/fs/img.raw
if [[ $CONFIGS == *'$TMPIMG'* ]]; then
  dd if=/dev/urandom of=$T/tmp.raw bs=1M count=768 status=none
fi
TMPIMG=$T/tmp.raw
CTL=$(nullb ctl 0 4096)
HZ=$(getconf CLK_TCK)
JOB=${JOB:---rw=randread --bs=4k --iodepth=32 --numjobs=1}
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }   # all vCPUs, ticks
sleeps() { cat /proc/$1/task/*/status 2>/dev/null | awk '/^voluntary_ctxt/{s+=$2} END{print s+0}'; }
IFS=';' read -ra CS <<< "$CONFIGS"
for r in $(seq ${ROUNDS:-3}); do
  for c in "${CS[@]}"; do
    IFS='|' read -r label envs args <<< "$c"
    args=${args//\$IMG/$IMG}; args=${args//\$CTL/$CTL}; args=${args//\$TMPIMG/$TMPIMG}
    if [ "$args" = CTL ]; then
      dev=$CTL pid=$$
    elif [[ $args == LOOP\ * ]]; then
      dev=$(losetup --direct-io=on --show -f ${args#LOOP }) pid=$$
    else
      bin=${args%% *}
      dev=$(env $envs $bin add ${args#* }) || { echo "r$r $label: add failed"; continue; }
      id=${dev#/dev/ublkb}; pid=$($bin list -n $id --json | jq -r '.[0].pid')
    fi
    c0=$(awk '{print $14+$15}' /proc/$pid/stat); x0=$(sleeps $pid); b0=$(busy)
    read -r iops ios < <(fio --name=ab --filename="$dev" --direct=1 --ioengine=io_uring $JOB \
      --size=512M --time_based --runtime=$RT --ramp_time=1 --group_reporting --output-format=json 2>/dev/null |
      jq -r '[(.jobs[0].read.iops + .jobs[0].write.iops), (.jobs[0].read.total_ios + .jobs[0].write.total_ios)] | map(floor) | @tsv')
    c1=$(awk '{print $14+$15}' /proc/$pid/stat); x1=$(sleeps $pid); b1=$(busy)
    case $args in CTL) ;; LOOP\ *) losetup -d $dev ;; *) $bin del -n $id ;; esac
    ios=${ios:-0}; [ "$ios" -gt 0 ] || ios=1
    if [ "$pid" = $$ ]; then
      echo "r$r $label: iops=${iops:-0} vm-cpu/io=$(( (b1-b0)*1000000/HZ/ios ))us"
    else
      echo "r$r $label: iops=${iops:-0} cpu/io=$(( (c1-c0)*1000000/HZ/ios ))us vm-cpu/io=$(( (b1-b0)*1000000/HZ/ios ))us sleeps/io=$(( (x1-x0)*100/ios ))%"
    fi
  done
done
[ -d $T/fs ] && umount $T/fs
exit 0
