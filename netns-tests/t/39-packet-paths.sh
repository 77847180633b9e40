#!/usr/bin/env bash
# The packet datapath (--io packet) and its next hops. Besides the usual
# topology, a router rt (lb r0 198.18.3.1 -- 198.18.3.2 rt 198.18.4.1 --
# 198.18.4.2 b5) with a backend b5 behind it: lb routes 198.18.4.0/24 via
# 198.18.3.2. tunlb balances nth over b1, b5, b4 (one request each, in turn).
# b4's link is down when tunlb starts.
#
# 1. b4 not there yet: its turn is refused with "host unreachable" (ARP fails;
#    tunlb answers as a router would: curl exit 7), b1 and b5 serve.
# 2. A backend behind a router (the next hop is not the destination): 30
#    connections give exactly 10 to b5 once b4 is up; a 64 MiB download from
#    b5 arrives intact; lb has no neighbour entry for b5's address (its
#    frames went to rt's MAC) and rt forwarded them; rt's own "host
#    unreachable" for b5 (an unreachable route in rt) reaches the client,
#    translated (curl exit 7 at once).
# 3. The neighbour that appears after tunlb started: b4's link comes up, and
#    within seconds its turn is served; then 30 connections give exactly 10
#    each to b1, b5 and b4.
# 4. A neighbour gone stale: b4's link goes down again and lb's entry for it
#    is left as it was (REACHABLE, then usable but unconfirmed). Its frames
#    must not go into the dead link for good: the kernel checks the entry
#    again (tunlb asks it to when it finds it STALE; the kernel here also
#    re-probes entries tunlb looks up on its own), it fails, and b4's turn
#    gets "host unreachable" within seconds instead of curl's timeout. lb's
#    neighbour timers are short here (reachable 0.5 s, first probe after
#    1 s, probes 0.5 s apart).
# 5. One hop, as a router: a second tunlb with b5 (behind rt) as its only
#    backend. A client SYN with TTL 1 is answered with ICMP "time exceeded"
#    from lb's client-side address (the client's kernel reports it on the
#    socket's error queue: EHOSTUNREACH, type 11, the offender) and makes
#    no flow; with TTL 2, lb forwards it with TTL 1 and rt answers "time
#    exceeded", which tunlb translates back to the client (from the VIP, as
#    every reply of the flow: kernel NAT does the same); with TTL 3 the
#    connection is made. So tunlb decrements the TTL exactly once.
# 6. IPv6 behind the router, through a link-local next hop (fe80::2 on r0,
#    as routes learned from router advertisements are): the IPv6 VIP's one
#    backend is b5's 2001:2:0:4::2; requests and a 64 MiB download are
#    served; lb's neighbour table holds rt's fe80::2 on r0 and nothing for
#    b5; with hop limit 2 rt's ICMPv6 "time exceeded" reaches the client,
#    translated (from the VIP); with hop limit 3 the connection is made.
# The lb kernel forwards none of it (IpForwDatagrams).
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup
LB=${P}lb RT=${P}rt
FAR=198.18.4.2
CTL=$T_DIR/control.sock

# The router and the backend behind it (namespaces carry the prefix: the
# cleanup removes them with the rest).
ip netns add "$RT"
ip netns add "${P}b5"
for ns in "$RT" "${P}b5"; do
  ip -n "$ns" link set lo up
  # Quiet IPv6 (no router advertisements, no autoconfiguration, no DAD),
  # as on the rest of the topology.
  for k in accept_ra autoconf accept_dad; do
    tl_sysctl "$ns" "net.ipv6.conf.all.$k" 0
    tl_sysctl "$ns" "net.ipv6.conf.default.$k" 0
  done
done
ip -n "$LB" link add r0 type veth peer name eth0 netns "$RT"
ip -n "$LB" addr add 198.18.3.1/24 dev r0
ip -n "$LB" link set r0 up
ip -n "$RT" addr add 198.18.3.2/24 dev eth0
ip -n "$RT" link set eth0 up
ip -n "$RT" link add eth1 type veth peer name eth0 netns "${P}b5"
ip -n "$RT" addr add 198.18.4.1/24 dev eth1
ip -n "$RT" link set eth1 up
ip -n "${P}b5" addr add "$FAR/24" dev eth0
ip -n "${P}b5" link set eth0 up
ip -n "${P}b5" route add default via 198.18.4.1
ip -n "$RT" route add 198.18.0.0/24 via 198.18.3.1
ip -n "$LB" route add 198.18.4.0/24 via 198.18.3.2
tl_sysctl "$RT" net.ipv4.ip_forward 1
# IPv6 the way routers are usually reached: through link-local next hops
# (lb's route to b5's prefix is via rt's fe80::2 on r0, rt's back to the
# VIP's prefix via lb's fe80::1).
FAR6=2001:2:0:4::2
ip -n "$LB" addr add fe80::1/64 dev r0 nodad
ip -n "$RT" addr add fe80::2/64 dev eth0 nodad
ip -n "$RT" addr add 2001:2:0:4::1/64 dev eth1 nodad
ip -n "${P}b5" addr add "$FAR6/64" dev eth0 nodad
ip -n "${P}b5" -6 route add default via 2001:2:0:4::1
ip -n "$RT" -6 route add 2001:2::/64 via fe80::1 dev eth0
ip -n "$LB" -6 route add 2001:2:0:4::/64 via fe80::2 dev r0
tl_sysctl "$RT" net.ipv6.conf.all.forwarding 1
for dev in "$LB r0" "$RT eth0" "$RT eth1" "${P}b5 eth0"; do
  # shellcheck disable=SC2086  # namespace and device
  tl_tx_off $dev
done
tl_backend_start "$P" 5
for k in base_reachable_time_ms:500 delay_first_probe_time:1 retrans_time_ms:500; do
  tl_sysctl "$LB" "net.ipv4.neigh.br0.${k%%:*}" "${k#*:}"
done

# b4 is not there yet.
B4=$(tl_backend_addr 4)
ip -n "${P}b4" link set eth0 down
ip -n "$LB" neigh flush dev br0 to "$B4" 2>/dev/null || true

forwarded() { tl_exec "$P" "$1" nstat -az IpForwDatagrams | awk '$1 == "IpForwDatagrams" { print $2 }'; }
fwd0=$(forwarded lb)
rt0=$(forwarded rt)
t_tunlb_start_cmd "$TUNLB_BIN" run --io packet --threads 2 --control "$CTL" --mode nth \
  --vip "$VIP:80" --backend "$(tl_backend_addr 1):80" --backend "$FAR:80" --backend "$B4:80"
check "ready line names c0, br0 and r0" grep -q 'ready: packet on c0,br0,r0 ' "$TUNLB_LOG"

# req: one curl to the VIP; prints "EXIT MS BODY".
req() {
  local t0 rc=0 body
  t0=$(t_now_ms)
  body=$(t_client curl -s --max-time "${MAXT:-10}" "$VIP_URL/") || rc=$?
  printf '%s %s %s\n' "$rc" "$(($(t_now_ms) - t0))" "${body:--}"
}
# round TITLE LIMIT_MS B4_WANT: 3 requests (nth: b1 b5 b4); b1 and b5 serve;
# b4's turn must give B4_WANT ("7": refused within LIMIT_MS, or "b4").
round() {
  local title=$1 rc ms body n results=()
  for n in 1 2 3; do results+=("$(req)"); done
  note "$title (exit ms body): $(printf '[%s] ' "${results[@]}")"
  read -r rc ms body <<<"${results[0]}"
  check_eq "$title: request 1 served by b1" "$rc:$body" "0:b1"
  read -r rc ms body <<<"${results[1]}"
  check_eq "$title: request 2 served by b5, behind the router" "$rc:$body" "0:b5"
  read -r rc ms body <<<"${results[2]}"
  if [ "$3" = 7 ]; then
    check_eq "$title: b4's turn refused: curl exit 7 (host unreachable)" "$rc" 7
    check_range "$title: and well before curl's ${MAXT:-10} s (ms)" "$ms" 0 "$2"
  else
    check_eq "$title: b4's turn served" "$rc:$body" "0:b4"
  fi
}

# (1) b4 absent: ARP for it fails, tunlb answers for the router it replaces.
MAXT=20 round "b4 not there yet" 12000 7

# (2) Behind a router.
check_eq "lb has no neighbour entry for b5 (frames went to rt's MAC)" \
  "$(ip -n "$LB" neigh show to "$FAR" | grep -c lladdr || true)" 0
rtn=$(($(forwarded rt) - rt0))
check_range "rt forwarded the packets to and from b5" "$rtn" 4 100000000
big=$(tl_sha256 "$P" big.bin)
# nth: the next request is b1's; the one after, b5's.
t_client curl -s --max-time 5 -o /dev/null "$VIP_URL/" || true
got=$(t_client curl -s --max-time 60 -D "$T_DIR/b5.headers" "$VIP_URL/file/big.bin" | sha256sum | cut -d' ' -f1)
check_eq "64 MiB download from b5 behind the router: sha256" "$got" "$big"
check_eq "and it came from b5" "$(t_header_backend "$T_DIR/b5.headers")" b5
t_client curl -s --max-time 2 -o /dev/null "$VIP_URL/" || true # b4's turn: refused
ip -n "$RT" route add unreachable "$FAR/32"
t_client curl -s --max-time 5 -o /dev/null "$VIP_URL/" || true # b1
t0=$(t_now_ms)
rc=0
t_client curl -s --max-time 20 -o /dev/null "$VIP_URL/" || rc=$?
ms=$(($(t_now_ms) - t0))
note "b5's turn with an unreachable route in rt: curl exit $rc after $ms ms"
check_eq "rt's own host unreachable for b5 reaches the client, translated: curl exit 7" "$rc" 7
check_range "at once (ms)" "$ms" 0 3500
ip -n "$RT" route del unreachable "$FAR/32"
t_client curl -s --max-time 2 -o /dev/null "$VIP_URL/" || true # b4's turn: refused

# (3) b4 appears (its default route went with its link: back too).
ip -n "${P}b4" link set eth0 up
ip -n "${P}b4" route replace default via "$TL_LB_BACKEND_ADDR"
t0=$(t_now_ms)
appeared=
for ((k = 0; k < 10; k++)); do
  out=$(for _ in 1 2 3; do t_client curl -s --max-time 4 "$VIP_URL/" || echo fail; done | tr '\n' ' ')
  if [ "$out" = "b1 b5 b4 " ]; then appeared=$(($(t_now_ms) - t0)); break; fi
done
note "b4's link up: its turn served after ${appeared:-never} ms"
check_range "b4 served within 15 s of its link coming up (ms)" "${appeared:-999999}" 0 15000
tally=$(t_tally 30 || true)
note "tally: $(tr '\n' ' ' <<<"$tally")"
check_eq "30 connections, none failed" "$(t_count "$tally" fail)" 0
for b in b1 b5 b4; do
  check_eq "$b got exactly 10 of 30" "$(t_count "$tally" "$b")" 10
done

# (4) b4 goes away, its entry left as it was.
ip -n "${P}b4" link set eth0 down
note "lb's entry for b4 after its link went down: $(ip -n "$LB" neigh show to "$B4" | tr '\n' ' ')"
MAXT=30 round "b4's link down, its neighbour entry left" 16000 7
note "lb's entry for b4 now: $(ip -n "$LB" neigh show to "$B4" | tr '\n' ' ')"

check "tunlb still running" tl_pid_alive "$TUNLB_PID"
t_tunlb_stop
note "$(grep -o 'packet datapath drops.*' "$TUNLB_LOG" || echo 'no packet datapath drops line')"

# (5) TTLs (t_hops_probe: a connect with that TTL, and the error it got).
CTL2=$T_DIR/control2.sock
t_tunlb_start_cmd "$TUNLB_BIN" run --io packet --control "$CTL2" --vip "$VIP:80" --backend "$FAR:80"
got=$(t_hops_probe "$VIP" 1)
note "TTL 1: $got"
check_eq "TTL 1: time exceeded (EHOSTUNREACH, ICMP, type 11 code 0) from lb's $TL_LB_CLIENT_ADDR" \
  "$got" "113 2 11 0 $TL_LB_CLIENT_ADDR"
check_eq "TTL 1: no flow made" "$("$TUNLB_BIN" flows --control "$CTL2" | grep -c "$FAR" || true)" 0
got=$(t_hops_probe "$VIP" 2)
note "TTL 2: $got"
check_eq "TTL 2: forwarded with TTL 1, rt's time exceeded reaches the client, translated (from the VIP)" \
  "$got" "113 2 11 0 $VIP"
check_eq "TTL 3: connected to b5 through lb and rt" "$(t_hops_probe "$VIP" 3)" connected
check_eq "the lb kernel forwarded no packet (IpForwDatagrams)" "$(($(forwarded lb) - fwd0))" 0
t_tunlb_stop
drops=$(grep -o 'packet datapath drops.*' "$TUNLB_LOG" || true)
note "${drops:-no packet datapath drops line}"
check "the drops line counts the TTL 1 SYN (ttl exceeded 1)" grep -q 'ttl exceeded 1 ' <<<"$drops "

# (6) IPv6 via a link-local next hop.
cat >"$T_DIR/v6.toml" <<EOF
[[service]]
vip = "[$VIP6]:80"
backends = ["[$FAR6]:80"]
EOF
t_tunlb_start_cmd "$TUNLB_BIN" run --io packet --control "$CTL2" --config "$T_DIR/v6.toml"
check_eq "IPv6 behind the router: served by b5" "$(t_client curl -s --max-time 5 "$VIP6_URL/")" b5
got=$(t_client curl -s --max-time 60 "$VIP6_URL/file/big.bin" | sha256sum | cut -d' ' -f1)
check_eq "IPv6 behind the router: 64 MiB download: sha256" "$got" "$big"
note "lb's IPv6 neighbours on r0: $(ip -n "$LB" -6 neigh show dev r0 | tr '\n' ' ')"
check "lb resolved rt's link-local next hop fe80::2 on r0" grep -q '^fe80::2 .*lladdr' <(ip -n "$LB" -6 neigh show dev r0)
check_eq "lb has no neighbour entry for b5's address" "$(ip -n "$LB" -6 neigh show to "$FAR6" | grep -c lladdr || true)" 0
got=$(t_hops_probe "$VIP6" 2)
note "hop limit 2: $got"
check_eq "hop limit 2: rt's ICMPv6 time exceeded reaches the client, translated (from the VIP)" \
  "$got" "113 3 3 0 $VIP6"
check_eq "hop limit 3: connected to b5 through lb and rt" "$(t_hops_probe "$VIP6" 3)" connected
check_eq "the lb kernel forwarded no IPv6 packet (Ip6OutForwDatagrams)" \
  "$(ip netns exec "$LB" nstat -az Ip6OutForwDatagrams | awk '$1 == "Ip6OutForwDatagrams" { print $2 }')" 0
t_tunlb_stop
