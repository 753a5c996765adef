#!/bin/bash
# nbd protocol driver against qemu-nbd 7.2 and nbdkit on loopback (TCP and
# a unix socket): info, map (block status) against qemu-img map on the same
# URL, convert from and to nbd URLs, compare, writes/zeroes/discards read
# back through qemu-io, a server killed and restarted under writes with
# reconnect-delay (requests succeed) and without (clear -EIO, no hang), open
# errors, TLS-PSK.
. "$(dirname "$0")/lib.sh"
require_cmd qemu-nbd python3 timeout
"$UBLKD" img info 'nbd://127.0.0.1:1/x' 2>&1 | grep -q "Unknown protocol\|unknown protocol" &&
    skip "ublkd built without CONFIG_NBD"

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
# wait_for COND...: up to 5 s for a server to come up
wait_for() {
    local i
    for i in $(seq 50); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    fail "server did not come up: $*"
}
# qnbd NAME IMAGE ARGS...: qemu-nbd serving IMAGE as export 'exp'; pid in qnbd_pid
qnbd() {
    local img=$1
    shift
    qemu-nbd -f raw -x exp -t "$@" "$img" 2>>qemu-nbd.log &
    qnbd_pid=$!
    pids+=("$qnbd_pid")
}
stop() { kill "$1" 2>/dev/null; wait "$1" 2>/dev/null; }

"$QEMU_IMG" create -q -f raw disk.raw 64M
"$QEMU_IO" -f raw -c 'write -P 0xab 1M 2M' -c 'write -P 0x11 20M 64k' disk.raw >/dev/null
cp disk.raw orig.raw
SOCK=$WORK/s.sock
USOCK="nbd+unix:///exp?socket=$SOCK"
qnbd disk.raw -k "$SOCK" --discard=unmap
wait_for test -S "$SOCK"
P1=$qnbd_pid

# ---- info, map, compare, convert from ----
expect_rc 0 uimg info "$USOCK"
expect_out "virtual size: 64 MiB (67108864 bytes)"
uimg map -f raw --output=json "$USOCK" >u.map || fail "map"
"$QEMU_IMG" map -f raw --output=json "$USOCK" >q.map
same_output "map --output=json $USOCK" u.map q.map
grep -q '"zero": true' u.map || fail "map shows no hole: block status not used"
expect_rc 0 uimg compare -f raw -F raw "$USOCK" orig.raw
expect_rc 0 uimg convert -f raw -O qcow2 "$USOCK" from.qcow2
expect_rc 0 "$QEMU_IMG" compare -f qcow2 -F raw from.qcow2 orig.raw
# image-opts spelling, as QEMU names the options
expect_rc 0 uimg info --image-opts "driver=nbd,server.type=unix,server.path=$SOCK,export=exp"
expect_out "virtual size: 64 MiB"

# ---- writes, zeroes, discards through ublkd, read back through qemu-io ----
expect_rc 0 uimg io -f raw -c 'write -P 0x5a 8M 1M' -c 'write -z 1M 64k' -c 'discard 2M 1M' \
    -c flush "$USOCK"
expect_rc 0 "$QEMU_IO" -f raw -c 'read -P 0x5a 8M 1M' -c 'read -P 0 1M 64k' -c 'read -P 0 2M 1M' \
    -c 'read -P 0xab 1114112 983040' "$USOCK"
# two threads each with its own event loop, requests hop to the connection's
expect_rc 0 uimg bench -f raw -w -c 1024 -d 16 -s 16k -o 16M --pattern=0x77 --threads=2 "$USOCK"
expect_rc 0 "$QEMU_IO" -f raw -c 'read -P 0x77 16M 16M' "$USOCK"

# ---- convert to an nbd URL over TCP ----
PORT=$(free_port)
"$QEMU_IMG" create -q -f raw tcp.raw 64M
qnbd tcp.raw -b 127.0.0.1 -p "$PORT"
wait_for "$QEMU_IMG" info "nbd://127.0.0.1:$PORT/exp"
expect_rc 0 uimg convert -n -f raw -O raw orig.raw "nbd://127.0.0.1:$PORT/exp"
expect_rc 0 "$QEMU_IMG" compare -f raw -F raw tcp.raw orig.raw
expect_rc 0 uimg compare -f raw -F raw "nbd://127.0.0.1:$PORT/exp" orig.raw
TCP_PID=$qnbd_pid
stop "$TCP_PID"

# ---- nbdkit ----
if command -v nbdkit >/dev/null; then
    cp orig.raw kit.raw
    KSOCK=$WORK/k.sock
    nbdkit -f -U "$KSOCK" file kit.raw 2>>nbdkit.log &
    pids+=($!)
    KIT=$!
    wait_for test -S "$KSOCK"
    KURL="nbd+unix:///?socket=$KSOCK"
    uimg map -f raw --output=json "$KURL" >u.map || fail "map nbdkit"
    "$QEMU_IMG" map -f raw --output=json "$KURL" >q.map
    same_output "map --output=json (nbdkit)" u.map q.map
    expect_rc 0 uimg io -f raw -c 'write -P 0x3c 4M 256k' -c 'write -z 5M 1M' "$KURL"
    expect_rc 0 "$QEMU_IO" -f raw -c 'read -P 0x3c 4M 256k' -c 'read -P 0 5M 1M' "$KURL"
    stop "$KIT"
    # a memory disk over TCP
    KPORT=$(free_port)
    nbdkit -f -i 127.0.0.1 -p "$KPORT" memory 16M 2>>nbdkit.log &
    pids+=($!)
    KIT=$!
    wait_for "$QEMU_IMG" info "nbd://127.0.0.1:$KPORT"
    expect_rc 0 uimg bench -f raw -w -c 128 -d 8 -s 64k --pattern=0x42 "nbd://127.0.0.1:$KPORT"
    expect_rc 0 "$QEMU_IO" -f raw -c 'read -P 0x42 0 8M' "nbd://127.0.0.1:$KPORT"
    stop "$KIT"
else
    echo "nbdkit not installed: its part skipped" >&2
fi

# ---- open errors name the server and the export ----
DEAD=$(free_port)
expect_rc 1 timeout 20 "$UBLKD" img info "nbd://127.0.0.1:$DEAD/foo"
expect_out "Could not connect to NBD server 127.0.0.1:$DEAD (export 'foo')"
expect_rc 1 timeout 20 "$UBLKD" img info "nbd+unix:///nope?socket=$SOCK"
expect_out "export 'nope'"
expect_out "no export named 'nope'"
expect_rc 1 "$UBLKD" img info "nbd+unix:///exp"
expect_out "needs ?socket=PATH"
expect_rc 1 "$UBLKD" img info "nbd://127.0.0.1:99999/exp"
expect_out "bad port '99999'"

# ---- reconnect: the server goes away under a write loop and comes back ----
# nbdkit's rate filter holds the writes to 64 MiB/s, so that the server is
# killed in the middle however fast this machine is (qemu-nbd without it).
RSOCK=$WORK/r.sock
rserve() {
    rm -f "$RSOCK"
    if command -v nbdkit >/dev/null; then
        nbdkit -f -U "$RSOCK" --filter=rate file disk.raw rate=64M 2>>nbdkit.log &
    else
        qemu-nbd -f raw -x '' -t -k "$RSOCK" disk.raw 2>>qemu-nbd.log &
    fi
    rpid=$!
    pids+=("$rpid")
}
stop "$P1"
rserve
wait_for test -S "$RSOCK"
recon="json:{\"driver\":\"raw\",\"file\":{\"driver\":\"nbd\",\"server\":{\"type\":\"unix\",\"path\":\"$RSOCK\"},\"reconnect-delay\":15}}"
# One open: the connection must survive the restart.  256 KiB writes wrap
# over the disk (below its last 256 KiB): 200 MiB, about 3 s at 64 MiB/s.
timeout 60 "$UBLKD" img bench -w -c 800 -d 16 -s 256k --pattern=0x5e "$recon" >loop.out 2>&1 &
LOOP=$!
sleep 1
kill -0 "$LOOP" 2>/dev/null || { cat loop.out >&2; fail "the write loop ended before the server was killed"; }
stop "$rpid"
sleep 1.5
rserve
wait "$LOOP" || { cat loop.out >&2; fail "writes across a server restart with reconnect-delay=15 failed"; }
grep -q nbd-reconnected loop.out || { cat loop.out >&2; fail "the restart did not happen under the writes (no reconnect seen)"; }
stop "$rpid"
qnbd disk.raw -k "$SOCK" --discard=unmap
P1=$qnbd_pid
wait_for "$QEMU_IMG" info "$USOCK"
expect_rc 0 "$QEMU_IO" -f raw -c 'read -P 0x5e 0 63M' "$USOCK"

# reconnect-delay=0 (the default): the requests fail with EIO at once
norecon="json:{\"driver\":\"raw\",\"file\":{\"driver\":\"nbd\",\"server\":{\"type\":\"unix\",\"path\":\"$SOCK\"},\"export\":\"exp\"}}"
timeout 30 "$UBLKD" img bench -w -c 10000000 -d 16 -s 4k --random "$norecon" >eio.out 2>&1 &
B=$!
sleep 1
t0=$(date +%s)
stop "$P1"
wait "$B"
rc=$?
t1=$(date +%s)
[ "$rc" = 124 ] && fail "requests hung after the server went away (reconnect-delay=0)"
[ "$rc" != 0 ] || fail "bench succeeded without its server"
grep -q "Input/output error" eio.out || { cat eio.out >&2; fail "no EIO after the server went away"; }
[ $((t1 - t0)) -le 5 ] || fail "EIO took $((t1 - t0)) s"

# reconnect-delay=2 and the server stays away: the waiting requests fail
# with EIO after the delay, not later and not never
rserve
wait_for test -S "$RSOCK"
recon2=${recon/\"reconnect-delay\":15/\"reconnect-delay\":2}
timeout 30 "$UBLKD" img bench -w -c 10000000 -d 16 -s 4k --random "$recon2" >eio2.out 2>&1 &
B=$!
sleep 1
t0=$(date +%s)
stop "$rpid"
wait "$B"
rc=$?
t1=$(date +%s)
[ "$rc" = 124 ] && fail "requests hung after reconnect-delay=2 ran out"
[ "$rc" != 0 ] || fail "bench succeeded without its server (reconnect-delay=2)"
grep -q "Input/output error" eio2.out || { cat eio2.out >&2; fail "no EIO after reconnect-delay=2"; }
[ $((t1 - t0)) -ge 1 ] && [ $((t1 - t0)) -le 6 ] ||
    fail "EIO after $((t1 - t0)) s with reconnect-delay=2"

# a server that accepts but never answers: open gives up at open-timeout
python3 -c '
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(4)
open(sys.argv[1], "w").write(str(s.getsockname()[1])); time.sleep(30)' "$WORK/mute.port" &
pids+=($!)
wait_for test -s "$WORK/mute.port"
MUTE=$(cat "$WORK/mute.port")
expect_rc 1 timeout 20 "$UBLKD" img info --image-opts \
    "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$MUTE,export=x,open-timeout=1"
expect_out "Could not connect to NBD server 127.0.0.1:$MUTE (export 'x'): timed out after 1 s"

# ---- TLS with a pre-shared key ----
if command -v psktool >/dev/null; then
    mkdir tls
    psktool -u qemu -p tls/keys.psk >/dev/null 2>&1 || fail "psktool"
    TSOCK=$WORK/t.sock
    qnbd orig.raw -k "$TSOCK" --object "tls-creds-psk,id=tls0,dir=$WORK/tls,endpoint=server" \
        --tls-creds tls0
    wait_for test -S "$TSOCK"
    tls_opts="driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=$TSOCK,file.export=exp"
    expect_rc 0 uimg io --object "tls-creds-psk,id=tls0,dir=$WORK/tls,endpoint=client" \
        --image-opts -c 'read -P 0xab 1M 2M' -c 'read -P 0x11 20M 64k' "$tls_opts,file.tls-creds=tls0"
    expect_rc 1 uimg info --image-opts "$tls_opts"
    expect_out "requires TLS"
    expect_rc 1 uimg info --image-opts "$tls_opts,file.tls-creds=nosuch"
    expect_out "No TLS credentials with id 'nosuch'"
else
    echo "psktool (gnutls-bin) not installed: TLS part skipped" >&2
fi

# ---- TLS with x509 certificates (a CA, the server's for localhost, a client's) ----
if command -v certtool >/dev/null; then
    mkdir -p x509/srv x509/cli
    cd x509
    cert() {  # cert NAME TEMPLATE-LINES...: key and CA-signed certificate
        local n=$1
        shift
        certtool --generate-privkey >"$n-key.pem" 2>/dev/null
        printf '%s\n' "$@" "expiration_days = 10" >"$n.info"
        certtool --generate-certificate --load-ca-certificate ca-cert.pem \
            --load-ca-privkey ca-key.pem --load-privkey "$n-key.pem" --template "$n.info" \
            --outfile "$n-cert.pem" 2>/dev/null || fail "certtool $n"
    }
    certtool --generate-privkey >ca-key.pem 2>/dev/null
    printf 'cn = test CA\nca\ncert_signing_key\nexpiration_days = 10\n' >ca.info
    certtool --generate-self-signed --load-privkey ca-key.pem --template ca.info \
        --outfile ca-cert.pem 2>/dev/null || fail "certtool CA"
    cert server "cn = localhost" "dns_name = localhost" "tls_www_server" "encryption_key" "signing_key"
    cert client "cn = client" "tls_www_client" "encryption_key" "signing_key"
    cp ca-cert.pem server-cert.pem server-key.pem srv/
    cp ca-cert.pem client-cert.pem client-key.pem cli/
    cd "$WORK"
    XPORT=$(free_port)
    qnbd orig.raw -b 127.0.0.1 -p "$XPORT" \
        --object "tls-creds-x509,id=x0,dir=$WORK/x509/srv,endpoint=server" --tls-creds x0
    xopts="driver=raw,file.driver=nbd,file.server.type=inet,file.server.host=localhost"
    xopts+=",file.server.port=$XPORT,file.export=exp,file.tls-creds=x0"
    xobj="tls-creds-x509,id=x0,dir=$WORK/x509/cli,endpoint=client"
    wait_for "$UBLKD" img info --object "$xobj" --image-opts "$xopts"
    expect_rc 0 uimg io --object "$xobj" --image-opts -c 'read -P 0xab 1M 2M' "$xopts"
    # the server's certificate does not name 127.0.0.1: verification refuses it
    expect_rc 1 uimg info --object "$xobj" --image-opts "${xopts/host=localhost/host=127.0.0.1}"
else
    echo "certtool (gnutls-bin) not installed: x509 part skipped" >&2
fi
exit 0
