#!/usr/bin/env bash
# The packet datapath (--io packet): no TUN. The client's default route
# already points at lb's c0 and the backends' at lb's br0, so the VIP's
# packets reach the lb namespace as they are; tunlb reads them from packet
# sockets on c0 and br0 (the default: every Ethernet interface that is up,
# not the bridge ports vb1..vb4) and adds a blackhole route for the VIP (the
# default SNAT address) so the kernel neither forwards nor answers it.
#
# 1. nth over b1..b4, 2 threads (fanout): 40 connections give exactly 10 per
#    backend, and both threads read packets; a 64 MiB download and upload arrive with their sha256; a ping
#    and a TCP connection to lb's own address 198.18.1.1 still work while
#    tunlb runs (traffic not for tunlb is untouched); the lb kernel forwards
#    no packet (IpForwDatagrams unchanged); the blackhole route is there
#    while tunlb runs and gone after SIGTERM; so is the ingress drop filter
#    (tc, pref 213, on c0 and br0), which drops frames for the VIP after the
#    sockets have them (the clsact qdisc's drop count grows), and its
#    clsact qdisc. Both directions of a download are read by one thread.
#    Clsact qdiscs of the user's (one empty), with filters of theirs, stay
#    when tunlb exits, and their ingress filter after tunlb's still sees
#    the traffic that is not tunlb's.
#    A burst of small frames (8 paced downloads, offloads off): at most 2 %
#    of them lost to a full receive ring (a ring of 120 frames lost 13 %).
# 2. With GRO on lb's ingress veths (super-packets, by recv beside the rings, with
#    the virtio-net header): 64 MiB down and up arrive intact, and tunlb
#    read super-packets.
# 3. kill -9 leaves the route and the filter; a restart replaces them,
#    balances, and SIGTERM removes them. A restart on one interface of
#    the two reports the other's stale filter and leaves it. A start on the
#    TUN after kill -9 removes the route and filters that would drop the
#    VIP's traffic before the TUN, and balances.
# 4. Without CAP_NET_RAW (nobody with CAP_NET_ADMIN only): exit 1 with one
#    line naming CAP_NET_RAW and saying --io vnet needs only CAP_NET_ADMIN.
# 5. An interface tunlb listens on goes down, then up: tunlb does not spin
#    (its sockets' ENETDOWN is read), and balances throughout.
# 6. IPv6 on the same sockets, one instance serving an IPv4 and an IPv6
#    VIP: blackhole routes for both (/32 and /128); the IPv6 VIP round
#    robin and a 64 MiB download intact; a ping6 to lb's own IPv6 address
#    still answered; hop limit 1 gets ICMPv6 "time exceeded" from lb's
#    address and hop limit 2 reaches the (on-link) backend: exactly one
#    hop; a reload adds a second IPv6 VIP (its route, then the filters:
#    the ingress drop filter drops its frames too);
#    every route gone after SIGTERM; after kill -9 a restart replaces the
#    stale IPv6 routes; an IPv6 VIP that is lb's own address is refused at
#    start with one line naming it.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup
CTL=$T_DIR/control.sock
LB=${P}lb
big=$(tl_sha256 "$P" big.bin)
data=$(tl_data "$P")
mapfile -t backends < <(t_backend_flags)
start() {
  t_tunlb_start_cmd "$TUNLB_BIN" run --io packet --threads 2 --control "$CTL" \
    --vip "$VIP:80" "${backends[@]}" --mode nth "$@"
}
routes() { ip -n "$LB" route show proto 213 | tr -s ' ' | sed 's/ $//' | tr '\n' ';'; }
# The interfaces with tunlb's ingress drop filter; those with a clsact qdisc;
# the packets that lb's clsact qdiscs dropped, summed.
tc_drops_on() {
  local d
  for d in c0 br0; do
    ip netns exec "$LB" tc filter show dev "$d" ingress | grep -q 'pref 213 bpf .*direct-action' && printf '%s;' "$d"
  done
}
clsacts() {
  local d
  for d in c0 br0; do
    ip netns exec "$LB" tc qdisc show dev "$d" | grep -q '^qdisc clsact ' && printf '%s;' "$d"
  done
}
tc_dropped() {
  ip netns exec "$LB" tc -s qdisc show | awk '/^qdisc clsact/ { c = 1; next } /^qdisc/ { c = 0 } c && /dropped/ { sub(",", "", $7); n += $7 } END { print n + 0 }'
}
forwarded() { ip netns exec "$LB" nstat -az IpForwDatagrams | awk '$1 == "IpForwDatagrams" { print $2 }'; }
dl() { t_client curl -s --max-time 60 "$VIP_URL/file/$1" | sha256sum | cut -d' ' -f1; }
# ping ADDR: 3 ICMP echo requests from the client (raw socket; no ping(8)
# needed); succeeds when each is answered within 2 s.
ping3() {
  t_client "$(tl_python)" -c '
import os, socket, struct, sys, time
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    return ~(s + (s >> 16)) & 0xffff
dst, ident = sys.argv[1], os.getpid() & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(0.2)
for seq in range(1, 4):
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"tunlb-ping"
    s.sendto(body[:2] + struct.pack("!H", csum(body)) + body[4:], (dst, 0))
    end = time.monotonic() + 2
    while time.monotonic() < end:
        try:
            pkt, (src, _) = s.recvfrom(2048)
        except socket.timeout:
            continue
        ihl = (pkt[0] & 15) * 4
        t, _, _, i, q = struct.unpack("!BBHHH", pkt[ihl:ihl + 8])
        if src == dst and t == 0 and i == ident and q == seq:
            break
    else:
        sys.exit("no echo reply to request %d" % seq)
' "$1"
}
no_ping3() { ! ping3 "$@"; }
# Packets read so far by each packet thread, in one line.
thread_reads() { t_query stats "$CTL" --json | t_json '" ".join(str(t["packets_read"]) for t in d["device"]["threads"])'; }
ul() { t_client curl -s --max-time 60 -H 'Expect:' --data-binary "@$data/$1" "$VIP_URL/sha256" | cut -d' ' -f1; }

# A server of lb's own, on its client-side address.
tl_bg "$P" lb own-http "$T_DIR/own-http.log" "$(tl_python)" -m http.server --bind "$TL_LB_CLIENT_ADDR" \
  --directory "$T_DIR" 8080
for ((k = 0; k < 100; k++)); do
  [ -n "$(ip netns exec "$LB" ss -Hltn 'sport = :8080')" ] && break
  sleep 0.1
done

# (1)
fwd0=$(forwarded)
start
check_eq "the blackhole route for the VIP is there while tunlb runs" "$(routes)" "blackhole $VIP;"
check "ready line names the interfaces c0 and br0 (not the bridge ports)" \
  grep -q 'ready: packet on c0,br0 ' "$TUNLB_LOG"
check_eq "the ingress drop filter (tc, pref 213) is on c0 and br0 while tunlb runs" "$(tc_drops_on)" "c0;br0;"
check "the ready line says so" grep -q 'ingress drop filter on c0,br0' "$TUNLB_LOG"
tally=$(t_tally 40)
note "tally: $(tr '\n' ' ' <<<"$tally")"
check_eq "40 connections, none failed" "$(t_count "$tally" fail)" 0
for i in $(tl_backends); do
  check_eq "b$i got exactly 10 of 40" "$(t_count "$tally" "b$i")" 10
done
check_eq "64 MiB download: sha256 of the backend file" "$(dl big.bin)" "$big"
check_eq "64 MiB upload: the backend saw its sha256" "$(ul big.bin)" "$big"
check "a ping to lb's own address works while tunlb runs" \
  ping3 "$TL_LB_CLIENT_ADDR"
code=$(t_client curl -s --max-time 5 -o /dev/null -w '%{http_code}' "http://$TL_LB_CLIENT_ADDR:8080/")
check_eq "a TCP connection to lb's own address works while tunlb runs" "$code" 200
check_eq "the lb kernel forwarded no packet (IpForwDatagrams)" "$(($(forwarded) - fwd0))" 0
per_thread=$(thread_reads)
note "packets read per thread: $per_thread"
check "both packet threads read packets (the fanout program spreads the flows)" \
  awk '{ exit !(NF == 2 && $1 > 0 && $2 > 0) }' <<<"$per_thread"
# Both directions of a flow on one thread: each of three 8 MiB downloads
# (its data and its ACKs, one frame per segment here) read by one thread
# alone. (Split by direction, a thread would read about two thirds.)
for k in 1 2 3; do
  before=$(thread_reads)
  t_client curl -s -o /dev/null --max-time 30 "$VIP_URL/file/big.bin?bytes=$((8 << 20))"
  after=$(thread_reads)
  share=$(awk -v b="$before" -v a="$after" 'BEGIN { split(b, x, " "); split(a, y, " ");
    d1 = y[1] - x[1]; d2 = y[2] - x[2]; t = d1 + d2; m = d1 > d2 ? d1 : d2;
    print (t > 1000 ? int(m * 1000 / t) : 0) }')
  check_range "download $k: one thread read its frames, both directions (per mille of them)" "$share" 990 1000
done
dropped=$(tc_dropped)
note "frames dropped at lb's ingress hooks: $dropped"
check_range "the ingress drop filter dropped the VIP's frames (clsact qdisc drop count)" "$dropped" 40 1000000000
t_tunlb_stop
check_eq "no blackhole route of tunlb after SIGTERM" "$(routes)" ""
check_eq "no ingress drop filter after SIGTERM" "$(tc_drops_on)" ""
check_eq "no clsact qdisc left after SIGTERM" "$(clsacts)" ""
code=$(t_client curl -s --max-time 2 -o /dev/null -w '%{http_code}' "$VIP_URL/" || true)
check_eq "with tunlb stopped the VIP does not answer" "$code" 000

# (1b) A burst of small frames: offloads are off on these veths, so 8 paced
# downloads come as one frame per segment (and one per ACK), in bursts every
# 100 ms. A ring of 120 frames lost 13 % of them (SYN-ACKs too); its 4096
# frames of 2 KiB hold such a burst whole.
# Meanwhile c0 has a clsact qdisc of the user's, with an egress filter of
# theirs (one that passes everything on) and an ingress one after tunlb's
# (pref 49152) that drops pings to lb's own address; br0 has an empty one.
# tunlb adds its filter beside them, its own drops nothing of that, and it
# leaves all of it behind.
IFS=. read -r o1 o2 o3 o4 <<<"$TL_LB_CLIENT_ADDR"
lb_addr=$((((o1 * 256 + o2) * 256 + o3) * 256 + o4))
ip netns exec "$LB" tc qdisc add dev c0 clsact
ip netns exec "$LB" tc qdisc add dev br0 clsact
ip netns exec "$LB" tc filter add dev c0 egress pref 7 bpf da bytecode '1,6 0 0 4294967295'
ip netns exec "$LB" tc filter add dev c0 ingress pref 49152 bpf da bytecode \
  "8,40 0 0 12,21 0 5 2048,48 0 0 23,21 0 3 1,32 0 0 30,21 0 1 $lb_addr,6 0 0 2,6 0 0 4294967295"
start
check_eq "beside a user's clsact qdiscs: the ingress drop filter on c0 and br0" "$(tc_drops_on)" "c0;br0;"
check "a user's later ingress filter still sees what is not tunlb's (its drop of pings to lb's address holds)" \
  no_ping3 "$TL_LB_CLIENT_ADDR"
pids=()
for i in 1 2 3 4 5 6 7 8; do
  t_client curl -s -o /dev/null --max-time 30 -w '%{http_code}\n' \
    "$VIP_URL/file/big.bin?bytes=$((8 << 20))&rate=$((4 << 20))" >"$T_DIR/burst.$i" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}" || true
check_eq "8 paced downloads through interfaces without offloads: all complete" \
  "$(cat "$T_DIR"/burst.* | grep -c '^200$')" 8
read_=$(t_query stats "$CTL" --json | t_json 'd["device"]["packets_read"]')
lost=$(t_query stats "$CTL" --json | t_json 'd["device"]["drops"]["ring_full"]')
note "frames read: $read_, lost to a full ring: $lost"
check_range "at most 2 % of the frames lost to a full ring (stats device.drops.ring_full, per mille)" \
  "$(((${lost:-1000000} * 1000) / (read_ > 0 ? read_ : 1)))" 0 20
check "tunlb stats says the device's own drops in a line" \
  grep -Eq "^device drops: ring full $lost, socket queue full [0-9]+, bad frame" <<<"$(t_query stats "$CTL")"
t_tunlb_stop
check_eq "after SIGTERM: the user's clsact qdiscs stay, even the empty one" "$(clsacts)" "c0;br0;"
check "after SIGTERM: the user's egress filter stays" \
  grep -q 'pref 7 bpf' <<<"$(ip netns exec "$LB" tc filter show dev c0 egress)"
check "after SIGTERM: the user's ingress filter stays" \
  grep -q 'pref 49152 bpf' <<<"$(ip netns exec "$LB" tc filter show dev c0 ingress)"
check_eq "after SIGTERM: no ingress drop filter of tunlb beside them" "$(tc_drops_on)" ""
ip netns exec "$LB" tc qdisc del dev c0 clsact
ip netns exec "$LB" tc qdisc del dev br0 clsact

# (2) Super-packets.
for dev in c0 $(tl_backends | sed 's/^/vb/'); do
  tl_exec "$P" lb ethtool -K "$dev" gro on >/dev/null 2>&1 || note "ethtool -K $dev gro on failed"
done
start
check_eq "GRO on: 64 MiB download: sha256" "$(dl big.bin)" "$big"
check_eq "GRO on: 64 MiB upload: sha256" "$(ul big.bin)" "$big"
supers=$(t_query stats "$CTL" --json | t_json 'd["device"]["super_packets_read"]')
check_range "GRO on: tunlb read super-packets (stats device.super_packets_read)" "$supers" 1 100000000
t_tunlb_stop

# (3) kill -9, then a restart.
start
tl_stop "$P" tunlb KILL 5
wait "$TUNLB_PID" 2>/dev/null || true
check_eq "kill -9 leaves the blackhole route behind" "$(routes)" "blackhole $VIP;"
check_eq "kill -9 leaves the ingress drop filters behind" "$(tc_drops_on)" "c0;br0;"
start
check "the restart removed the stale route" grep -q "removed a stale blackhole route for $VIP" "$TUNLB_LOG"
check "the restart replaced the stale filters" grep -q "replaced a stale ingress drop filter on br0" "$TUNLB_LOG"
check_eq "after the restart: the ingress drop filter on c0 and br0" "$(tc_drops_on)" "c0;br0;"
check_eq "after the restart: one blackhole route" "$(routes)" "blackhole $VIP;"
first=$(for _ in 1 2 3 4; do t_client curl -s --max-time 5 "$VIP_URL/" || echo fail; done | tr '\n' ' ')
check_eq "after the restart requests flow" "$first" "b1 b2 b3 b4 "
t_tunlb_stop
check_eq "no blackhole route after the restart's SIGTERM" "$(routes)" ""
check_eq "no ingress drop filter nor clsact qdisc after the restart's SIGTERM" "$(tc_drops_on)|$(clsacts)" "|"

# (3b) kill -9, then a restart on c0 only (it serves nothing: the backends
# answer on br0): br0's stale filter is reported, not touched (another
# tunlb may own it); a restart on both removes it.
start
tl_stop "$P" tunlb KILL 5
wait "$TUNLB_PID" 2>/dev/null || true
start --iface c0
check "a restart on c0 alone names br0's stale ingress drop filter" \
  grep -q "ingress drop filters of another tunlb or an earlier run left on br0" "$TUNLB_LOG"
t_tunlb_stop
check_eq "br0's stale filter stays; c0's is gone" "$(tc_drops_on)" "br0;"
start
t_tunlb_stop
check_eq "a restart on both interfaces, then SIGTERM: no filter, no qdisc" "$(tc_drops_on)|$(clsacts)" "|"

# (3c) kill -9, then a start on the TUN (--io vnet, the default): the stale
# route and filters for the VIP would drop its traffic before the TUN sees
# it; tunlb removes them, and requests flow through the TUN.
start
tl_stop "$P" tunlb KILL 5
wait "$TUNLB_PID" 2>/dev/null || true
t_tunlb_start --control "$CTL" --mode nth
check "a start on the TUN removed the stale route for the VIP" \
  grep -q "removed a stale blackhole route for $VIP (proto 213) left by a tunlb on the packet datapath" "$TUNLB_LOG"
check "and the stale ingress drop filter on c0" grep -q "removed a stale ingress drop filter on c0" "$TUNLB_LOG"
check_eq "no route, filter nor clsact qdisc of the packet datapath left" "$(routes)|$(tc_drops_on)|$(clsacts)" "||"
first=$(for _ in 1 2 3 4; do t_client curl -s --max-time 5 "$VIP_URL/" || echo fail; done | tr '\n' ' ')
check_eq "requests flow through the TUN" "$first" "b1 b2 b3 b4 "
t_tunlb_stop

# (4) No CAP_NET_RAW.
BIN=$T_DIR/bin/tunlb
mkdir -p "$T_DIR/bin"
chmod 755 "$T_DIR" "$T_DIR/bin"
install -m 755 "$TUNLB_BIN" "$BIN"
rc=0
timeout 10 ip netns exec "$LB" setpriv --reuid=65534 --regid=65534 --clear-groups \
  --inh-caps=-all,+net_admin --ambient-caps=+net_admin --bounding-set=-all,+net_admin \
  "$BIN" run --io packet --control "$T_DIR/nocap.sock" --vip "$VIP:80" "${backends[@]}" \
  >"$T_DIR/nocap.out" 2>&1 || rc=$?
check_eq "without CAP_NET_RAW: exit status" "$rc" 1
note "it said: $(cat "$T_DIR/nocap.out")"
check_eq "without CAP_NET_RAW: one line" "$(wc -l <"$T_DIR/nocap.out")" 1
check "the line names CAP_NET_RAW and says --io vnet needs only CAP_NET_ADMIN" \
  grep -q 'needs CAP_NET_RAW, which this process lacks.*--io vnet (the TUN, the default) needs only CAP_NET_ADMIN' \
  "$T_DIR/nocap.out"
check_eq "and it added no route" "$(routes)" ""

# (5) An interface that goes down while tunlb listens on it: its packet
# socket reports ENETDOWN until the error is read; tunlb reads it and goes
# back to sleep (before, its thread spun at 100 % of a CPU until exit), and
# balances on, before and after the interface comes back.
ip -n "$LB" link add x0 type veth peer name x1
ip -n "$LB" link set x0 up
ip -n "$LB" link set x1 up
start
check "tunlb listens on x0 too" grep -q "packet on [^ ]*x0" "$TUNLB_LOG"
ticks() { awk '{ print $14 + $15 }' "/proc/$TUNLB_PID/stat"; }
four() { for _ in 1 2 3 4; do t_client curl -s --max-time 5 "$VIP_URL/" || echo fail; done | tr '\n' ' '; }
HZ=$(getconf CLK_TCK)
# x0_then STATE: set x0 STATE; tunlb must then sleep (a spinning thread
# takes about 2 * HZ ticks in 2 s, an idle one about 0) and balance.
x0_then() {
  local t0 spent
  ip -n "$LB" link set x0 "$1"
  sleep 0.2
  t0=$(ticks)
  sleep 2
  spent=$(($(ticks) - t0))
  check "x0 $1: tunlb sleeps (CPU ticks in 2 s: $spent, bound $HZ = half a CPU)" test "$spent" -lt "$HZ"
  check_eq "x0 $1: requests flow" "$(four)" "b1 b2 b3 b4 "
}
x0_then down
x0_then up
t_tunlb_stop
ip -n "$LB" link del x0

# (6) IPv6. ping6 ADDR: 3 ICMPv6 echo requests from the client (the kernel
# fills in an ICMPv6 raw socket's checksum).
ping6() {
  t_client "$(tl_python)" -c '
import os, socket, struct, sys, time
dst, ident = sys.argv[1], os.getpid() & 0xffff
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.settimeout(0.2)
for seq in range(1, 4):
    s.sendto(struct.pack("!BBHHH", 128, 0, 0, ident, seq) + b"tunlb-ping", (dst, 0))
    end = time.monotonic() + 2
    while time.monotonic() < end:
        try:
            pkt, addr = s.recvfrom(2048)
        except socket.timeout:
            continue
        t, _, _, i, q = struct.unpack("!BBHHH", pkt[:8])
        if addr[0] == dst and t == 129 and i == ident and q == seq:
            break
    else:
        sys.exit("no echo reply to request %d" % seq)
' "$1"
}
routes6() { ip -n "$LB" -6 route show proto 213 | awk '{ print $1, $2 }' | tr '\n' ';'; }
t_v6_conf "$T_DIR/v6.toml"
start6() {
  t_tunlb_start_cmd "$TUNLB_BIN" run --io packet --control "$CTL" \
    --vip "$VIP:80" "${backends[@]}" --mode nth --config "$T_DIR/v6.toml"
}
fwd6() { ip netns exec "$LB" nstat -az Ip6OutForwDatagrams | awk '$1 == "Ip6OutForwDatagrams" { print $2 }'; }
f60=$(fwd6)
start6
check_eq "IPv6: the blackhole routes for both VIPs are there" "$(routes)|$(routes6)" "blackhole $VIP;|blackhole $VIP6;"
four6=$(for _ in 1 2 3 4; do t_client curl -s --max-time 5 "$VIP6_URL/" || echo fail; done | tr '\n' ' ')
check_eq "IPv6 VIP round robin on the packet datapath" "$four6" "b1 b2 b3 b4 "
check_eq "the IPv4 VIP beside it" "$(t_client curl -s --max-time 5 "$VIP_URL/")" b1
got=$(t_client curl -s --max-time 60 "$VIP6_URL/file/big.bin" | sha256sum | cut -d' ' -f1)
check_eq "IPv6: 64 MiB download: sha256" "$got" "$big"
check "a ping6 to lb's own IPv6 address works while tunlb runs" ping6 "$TL_LB_CLIENT_ADDR6"
got=$(t_hops_probe "$VIP6" 1)
note "hop limit 1: $got"
check_eq "hop limit 1: time exceeded (EHOSTUNREACH, ICMPv6, type 3 code 0) from lb's $TL_LB_CLIENT_ADDR6" \
  "$got" "113 3 3 0 $TL_LB_CLIENT_ADDR6"
check_eq "hop limit 2: connected (one hop: lb)" "$(t_hops_probe "$VIP6" 2)" connected
# A large packet with hop limit 1: its error quotes 1232 bytes of it (the
# IPv6 minimum MTU in all).
t_client "$(tl_python)" -c '
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_TCP)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 1)
s.sendto(bytes([0x9c, 0x40, 0, 80]) + bytes(8) + bytes([0x50, 0x10]) + bytes(6) + b"x" * 1400, (sys.argv[1], 0))
' "$VIP6"
sleep 0.5
check "a 1420-byte IPv6 packet with hop limit 1: tunlb still runs" tl_pid_alive "$TUNLB_PID"
check "and still serves the IPv6 VIP" grep -qx 'b[1-4]' <<<"$(t_client curl -s --max-time 5 "$VIP6_URL/")"
# A reload that adds a second IPv6 VIP: its /128 route, then the filter.
VIP6B=2001:2::2
cat >>"$T_DIR/v6.toml" <<EOF
[[service]]
vip = "[$VIP6B]:80"
mode = "nth"
backends = ["[$(tl_backend_addr6 4)]:80"]
EOF
kill -HUP "$TUNLB_PID"
t_wait_until 5 grep -q "now receiving for $VIP6B" "$TUNLB_LOG" || true
check "IPv6 reload: the new VIP is received (blackhole route, filter)" grep -q "now receiving for $VIP6B" "$TUNLB_LOG"
d0=$(tc_dropped)
check_eq "IPv6 reload: the new VIP answers" "$(t_client curl -s --max-time 5 "http://[$VIP6B]/")" b4
check_range "IPv6 reload: the ingress drop filter drops the new VIP's frames too (clsact drop count)" \
  "$(($(tc_dropped) - d0))" 4 1000000
check_eq "IPv6 reload: both /128 routes" "$(routes6)" "blackhole $VIP6;blackhole $VIP6B;"
check_eq "the lb kernel forwarded no IPv6 packet (Ip6OutForwDatagrams)" "$(($(fwd6) - f60))" 0
t_tunlb_stop
check_eq "IPv6: no blackhole route of tunlb after SIGTERM" "$(routes)|$(routes6)" "|"
check "the drops line counts the hop limit 1 SYN and the large packet" grep -q 'ttl exceeded 2 ' "$TUNLB_LOG"
start6
tl_stop "$P" tunlb KILL 5
wait "$TUNLB_PID" 2>/dev/null || true
check_eq "IPv6: kill -9 leaves the routes behind" "$(routes6)" "blackhole $VIP6;blackhole $VIP6B;"
start6
check "IPv6: the restart removed the stale route" grep -q "removed a stale blackhole route for $VIP6" "$TUNLB_LOG"
check_eq "IPv6 after the restart" "$(t_client curl -s --max-time 5 "$VIP6_URL/")" b1
t_tunlb_stop
check_eq "IPv6: no route after the restart's SIGTERM" "$(routes)|$(routes6)" "|"
rc=0
timeout 10 ip netns exec "$LB" "$TUNLB_BIN" run --io packet --control "$T_DIR/local6.sock" \
  --vip "[$TL_LB_CLIENT_ADDR6]:80" --backend "[$(tl_backend_addr6 1)]:80" >"$T_DIR/local6.out" 2>&1 || rc=$?
note "an IPv6 VIP on lb's own address: exit $rc: $(cat "$T_DIR/local6.out")"
check_range "an IPv6 VIP on lb's own address is refused (exit status)" "$rc" 1 2
check "the line names the address" grep -q "$TL_LB_CLIENT_ADDR6" "$T_DIR/local6.out"
check_eq "and it added no route" "$(routes6)" ""
