#!/bin/bash
# A throwaway single-host Ceph cluster for the RBD tests: one mon and one OSD on
# memstore (the data lives in the OSD's memory), all on 127.0.0.1, no systemd,
# no mgr (nothing the tests do needs one), everything under DIR.
#
#   tests/ceph/cluster.sh start DIR   # DIR/ceph.conf, DIR/keyring; pool "rbd" ready
#   tests/ceph/cluster.sh stop DIR    # kills the daemons started from DIR, waits for them
#
# Clients use it with `CEPH_CONF=DIR/ceph.conf` (or conf=DIR/ceph.conf in an rbd: name);
# the conf names the admin keyring.  Needs ceph-mon, ceph-osd and ceph-common
# (`make deps-ceph`).  Memory is kept small: the machine is shared.
set -euo pipefail

die() { echo "cluster.sh: $*" >&2; exit 1; }

free_port() {
    # The first port from a random start that nothing listens on.
    local p=$((20000 + RANDOM % 20000)) i
    for ((i = 0; i < 200; i++, p++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
    die "no free port"
}

# A new cephx secret, as `ceph-authtool --gen-print-key` prints it: base64 of a
# CryptoKey (type 1 = AES, a creation time left at 0, 16 random bytes).
gen_key() {
    { printf '\x01\x00'; head -c 8 /dev/zero; printf '\x10\x00'; head -c 16 /dev/urandom; } | base64
}

# Whether the daemon of pid file $1 has exited (one that failed its init
# does: waiting on for it to come up would only run into the deadline).  No
# pid file yet is not yet known; one seen and gone (removed at exit) is gone.
exited() {
    local f=$1 pid
    if [[ -f $f ]]; then
        pid=$(cat "$f" 2>/dev/null)
        [[ -n $pid ]] || return 1
        _seen[$f]=1
        ! kill -0 "$pid" 2>/dev/null
    else
        [[ -n ${_seen[$f]:-} ]]
    fi
}
declare -A _seen

stop() {
    local dir=$1 f pid pids=() i
    for f in "$dir"/run/*.pid; do
        [[ -f $f ]] || continue
        pid=$(cat "$f")
        # Only a ceph daemon whose command line names this cluster's conf.
        if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "$dir/ceph.conf"; then
            # Killed outright: the cluster is thrown away, memstore would dump every
            # object into DIR on a clean shutdown, and the mon's clean shutdown (its
            # RocksDB) took seconds under TCG (tests/vm).
            kill -KILL "$pid" 2>/dev/null && pids+=("$pid")
        fi
        rm -f "$f"
    done
    for ((i = 0; i < 100; i++)); do
        local alive=()
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
        ((${#alive[@]} == 0)) && return 0
        pids=("${alive[@]}")
        sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        local alive=()
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
        ((${#alive[@]} == 0)) && return 0
        sleep 0.1
    done
    die "daemons ${pids[*]} did not exit"
}

start() {
    local dir=$1
    for b in ceph-mon ceph-osd monmaptool ceph rbd; do
        command -v "$b" >/dev/null || die "$b not found (make deps-ceph)"
    done
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    # Unix socket paths (admin sockets) must fit in sun_path.
    ((${#dir} < 70)) || die "DIR too long for admin sockets: $dir"
    mkdir -p "$dir"/{run,log,mon.a,osd.0}

    local fsid port
    fsid=$(cat /proc/sys/kernel/random/uuid)
    port=$(free_port)
    cat > "$dir/ceph.conf" <<CONF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$port
public network = 127.0.0.0/8
public addr = 127.0.0.1
keyring = $dir/keyring
run dir = $dir/run
admin socket = $dir/run/\$name.asok
pid file = $dir/run/\$name.pid
log file = $dir/log/\$name.log
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
ms bind msgr1 = false
ms async op threads = 1
# a dead cluster makes clients fail fast instead of hang
client mount timeout = 10
rados mon op timeout = 10
rados osd op timeout = 30
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
mon warn on insecure global id reclaim allowed = false
[mon]
mon data = $dir/mon.\$id
mon cluster log file = $dir/log/cluster.log
[osd]
osd data = $dir/osd.\$id
# Not from the host name: a machine without one ("(none)", as in the test VM)
# is no valid CRUSH name, and the OSD's init fails with EINVAL.
crush location = root=default host=ublkd-test
osd objectstore = memstore
memstore device bytes = 2147483648
osd memory target = 268435456
osd op num shards = 1
osd op num threads per shard = 2
osd max object name len = 256
osd max object namespace len = 64
osd class load list = *
osd class default list = *
CONF
    local conf=$dir/ceph.conf
    # Keys and keyrings are written here, not by ceph-authtool: under TCG (tests/vm)
    # every Ceph binary costs a second or more to start.
    local uuid key id pid
    key=$(gen_key)
    cat > "$dir/keyring" <<KEYS
[mon.]
	key = $(gen_key)
	caps mon = "allow *"
[client.admin]
	key = $(gen_key)
	caps mds = "allow *"
	caps mgr = "allow *"
	caps mon = "allow *"
	caps osd = "allow *"
KEYS
    printf '[osd.0]\n\tkey = %s\n' "$key" > "$dir/osd.0/keyring"
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$port]" "$dir/monmap" >/dev/null
    ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/keyring"
    ceph-mon -c "$conf" -i a

    uuid=$(cat /proc/sys/kernel/random/uuid)
    printf '{"cephx_secret": "%s"}\n' "$key" > "$dir/osd.0/new.json"
    # Every mon command in one `ceph` session (its interactive mode reads them from
    # stdin; -i is the input of each, which only `osd new` reads), with no separate
    # wait for the mon (the client waits up to --connect-timeout): under TCG each
    # `ceph` run costs ~4 s of Python.  The session exits 0 whatever its commands
    # did, so their replies are checked.  The pool needs no OSD yet; what `rbd pool
    # init` would add (the application tag) is the last command.  The OSD's mkfs
    # runs meanwhile.
    printf '%s\n' "osd new $uuid" "osd pool create rbd 8 8" "osd pool application enable rbd rbd" |
        ceph -c "$conf" --connect-timeout 60 -i "$dir/osd.0/new.json" >"$dir/log/setup.out" 2>&1 &
    pid=$!
    ceph-osd -c "$conf" -i 0 --mkfs --no-mon-config --key "$key" --osd-uuid "$uuid" 2>>"$dir/log/osd-mkfs.log" \
        || die "ceph-osd --mkfs failed (see $dir/log/osd-mkfs.log)"
    wait "$pid" || true
    rm -f "$dir/osd.0/new.json"
    grep -q "^0" "$dir/log/setup.out" && grep -q "pool 'rbd' created" "$dir/log/setup.out" &&
        grep -q "enabled application 'rbd' on pool 'rbd'" "$dir/log/setup.out" ||
        { cat "$dir/log/setup.out" >&2; die "the mon did not come up, or setting up osd.0 and pool rbd failed"; }
    ceph-osd -c "$conf" -i 0 --keyring "$dir/osd.0/keyring" 2>>"$dir/log/osd-start.log"
    local end=$((SECONDS + 120))
    # Up is read from the OSD's log (it logs "state: booting -> active" once it sees
    # itself up in the osdmap), not by polling `osd dump`: seconds per poll under TCG.
    until grep -q 'state: booting -> active' "$dir/log/osd.0.log" 2>/dev/null; do
        if exited "$dir/run/osd.0.pid"; then
            tail -n 5 "$dir/log/osd-start.log" >&2 || true
            die "osd.0 exited before it came up (see $dir/log/osd.0.log)"
        fi
        ((SECONDS < end)) || die "osd.0 did not come up within 120 s (see $dir/log)"
        sleep 0.2
    done

}

case "${1:-}" in
    # A start that fails half-way stops what it started.
    start) [[ $# == 2 ]] || die "usage: $0 start DIR"
           [[ -e $2/ceph.conf ]] && die "$2 already holds a cluster (stop it first)"
           (start "$2") || { stop "$2"; exit 1; } ;;
    stop)  [[ $# == 2 ]] || die "usage: $0 stop DIR"; stop "$2" ;;
    *) die "usage: $0 start|stop DIR" ;;
esac
