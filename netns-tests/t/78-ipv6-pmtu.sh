#!/usr/bin/env bash
# IPv6 path MTU (issue 15) with MTU-1280 hops between the balancer and the
# backends, the IPv6 twin of 50-pmtu. Routers never fragment IPv6: a packet
# too big for the next hop is dropped and lb's kernel sends ICMPv6 "packet
# too big" (type 2, MTU 1280) to its source. tunlb serves [2001:2::1]:80 over
# b1..b4 in nth mode (t6_start); b1..b3 are isolated on their own routed
# veths (tl_isolate_backend), b4 stays on the bridge.
#  b1: 1280 on both ends: a 64 MiB download through it completes intact.
#  b2: lb's end 1280, b2's end 1500: b2 advertises MSS 1440, so the client's
#      full-size segments, rewritten to SNAT -> b2, do not fit the hop:
#      packet too big goes to the SNAT address (into the TUN) and tunlb must
#      translate it back to the client (RELATED ICMPv6, quoted header and
#      ICMPv6 checksum). A 64 MiB upload completes intact, the client learns
#      MTU 1280 for the VIP, and the message it got quotes its own packet to
#      the VIP.
#  b3: the same hop, but lb drops every packet too big it sends (ip6tables
#      OUTPUT): no translation reaches the client, which keeps sending
#      full-size segments into the hop. The same upload does not complete
#      (bounded: curl --max-time 15) and the client learns nothing: the
#      difference packet too big makes.
#  b4: the reply direction: lb's end toward the client (c0) drops to 1280
#      while the client's end stays 1500, so b4's full-size segments, once
#      rewritten to VIP -> client, do not fit: packet too big goes to the VIP
#      (into the TUN) and tunlb must translate it to b4. A 64 MiB download
#      from b4 completes and b4 learns MTU 1280 toward the SNAT address.
# TL_NAT66=kernel runs the same checks with ip6tables NAT66 in the middle.
# On the packet datapath (TL_IO=packet) tunlb sends packet too big itself,
# as a router (from lb's address, translated by its engine like any error
# about a flow): b3's drop in lb's OUTPUT chain does not apply there.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

# lacks WORD TEXT: TEXT does not contain WORD.
lacks() { ! grep -q -- "$1" <<<"$2"; }

t_setup
tl_isolate_backend "$P" 1 1280 1280
tl_isolate_backend "$P" 2 1280 1500
tl_isolate_backend "$P" 3 1280 1500
# Black-hole detection off (the kernel default), said explicitly: without a
# packet too big, nothing else may rescue the b3 upload.
tl_sysctl "${P}client" net.ipv4.tcp_mtu_probing 0
check_eq "b1 reachable over IPv6 over its 1280 link (direct)" \
  "$(t_client curl -s --max-time 5 "http://[$(tl_backend_addr6 1)]/")" b1
t6_start --mode nth || exit 1
big=$(tl_sha256 "$P" big.bin)

# Connection 1 (nth: b1): download across the 1280 hop.
got=$(t_client curl -s --max-time 60 -D "$T_DIR/dl.headers" "$VIP6_URL/file/big.bin" | sha256sum | cut -d' ' -f1)
check "download came from b1" grep -qi '^X-Backend: b1' "$T_DIR/dl.headers"
check_eq "IPv6: 64 MiB download across the MTU-1280 hop: sha256" "$got" "$big"

# Connection 2 (nth: b2): upload into the hop that needs packet too big.
t_capture_start client eth0 cap-client "$T_DIR/client.pcapng" "icmp6 and ip6[40] == 2"
t0=$(t_now_ms)
resp=$(t_client curl -s --max-time 60 -H 'Expect:' --data-binary "@$(tl_data "$P")/big.bin" "$VIP6_URL/sha256" || true)
ms=$(($(t_now_ms) - t0))
t_capture_stop cap-client
note "upload answered '$resp' after ${ms} ms"
check_eq "IPv6: 64 MiB upload through the hop reached b2 intact" "$resp" "$big b2"
route=$(t_client ip -6 route get "$VIP6")
note "client: $(tr '\n' ' ' <<<"$route")"
check "the client learned path MTU 1280 toward the VIP" grep -q 'mtu 1280' <<<"$route"
ptb=$(tshark -n -r "$T_DIR/client.pcapng" -Y "icmpv6.type == 2 && ipv6.dst == $TL_CLIENT_ADDR6" 2>/dev/null | wc -l)
note "packet too big messages seen at the client: $ptb"
check_range "packet too big arrived at the client, translated" "$ptb" 1 100000
inner=$(tshark -n -r "$T_DIR/client.pcapng" -Y "icmpv6.type == 2" -T fields -E occurrence=a -E aggregator=, \
  -e ipv6.src -e ipv6.dst -e tcp.srcport -e tcp.dstport -e icmpv6.mtu 2>/dev/null | awk 'NR == 1')
note "first packet too big (outer src,inner src / outer dst,inner dst / ports / mtu): $inner"
check "its quoted header is the client's own packet to the VIP ($TL_CLIENT_ADDR6 -> [$VIP6]:80), MTU 1280" \
  grep -qE "^[0-9a-f:]+,$TL_CLIENT_ADDR6"$'\t'"$TL_CLIENT_ADDR6,$VIP6"$'\t'"[0-9]+"$'\t'"80"$'\t'"1280$" <<<"$inner"
t_check_checksums "packet too big at the client" "$T_DIR/client.pcapng" "$VIP6" "$TL_CLIENT_ADDR6" 0

if [ "${TL_IO:-}" = packet ]; then
  # On the packet datapath tunlb itself sends packet too big (lb's kernel
  # forwards nothing, so no OUTPUT chain sees it): nothing in lb can drop
  # it before the translation, so connection 3 only keeps the nth order.
  note "packet datapath: tunlb sends packet too big itself; connection 3 (b3) keeps the nth order only"
  check_eq "connection 3 went to b3" "$(t_client curl -s --max-time 5 "$VIP6_URL/")" b3
else
  # Connection 3 (nth: b3): the same upload with every packet too big dropped
  # in lb before it reaches the balancer's translation.
  ip -n "${P}client" -6 route flush cache
  tl_exec "$P" lb ip6tables -I OUTPUT -p icmpv6 --icmpv6-type packet-too-big -j DROP
  t0=$(t_now_ms)
  resp=$(t_client curl -s --max-time 15 -H 'Expect:' --data-binary "@$(tl_data "$P")/big.bin" "$VIP6_URL/sha256" || true)
  ms=$(($(t_now_ms) - t0))
  dropped=$(tl_exec "$P" lb ip6tables -L OUTPUT -nvx | awk '/DROP/ { print $1; exit }')
  tl_exec "$P" lb ip6tables -D OUTPUT -p icmpv6 --icmpv6-type packet-too-big -j DROP
  note "without packet too big: answer '${resp}' after ${ms} ms; lb dropped ${dropped:-0} packet too big"
  check_eq "without packet too big the upload to b3 does not complete (15 s)" "$resp" ""
  check_range "lb did send packet too big (dropped here)" "${dropped:-0}" 1 100000
  route=$(t_client ip -6 route get "$VIP6")
  note "client: $(tr '\n' ' ' <<<"$route")"
  check "without packet too big the client learned no path MTU" lacks 'mtu 1280' "$route"
fi

# Connection 4 (nth: b4): packet too big in the reply direction.
ip -n "${P}client" -6 route flush cache
ip -n "${P}lb" link set c0 mtu 1280
t_capture_start b4 eth0 cap-b4 "$T_DIR/b4.pcapng" "icmp6 and ip6[40] == 2"
got=$(t_client curl -s --max-time 60 -D "$T_DIR/dl4.headers" "$VIP6_URL/file/big.bin" | sha256sum | cut -d' ' -f1)
t_capture_stop cap-b4
check "download came from b4" grep -qi '^X-Backend: b4' "$T_DIR/dl4.headers"
check_eq "IPv6: 64 MiB download through a 1280 hop on the client side: sha256" "$got" "$big"
route=$(tl_exec "$P" b4 ip -6 route get "$VIP6")
note "b4: $(tr '\n' ' ' <<<"$route")"
check "b4 learned path MTU 1280 toward the SNAT address" grep -q 'mtu 1280' <<<"$route"
inner=$(tshark -n -r "$T_DIR/b4.pcapng" -Y "icmpv6.type == 2" -T fields -E occurrence=a -E aggregator=, \
  -e ipv6.src -e ipv6.dst -e tcp.srcport -e tcp.dstport -e icmpv6.mtu 2>/dev/null | awk 'NR == 1')
note "first packet too big at b4 (outer src,inner src / outer dst,inner dst / ports / mtu): $inner"
b4=$(tl_backend_addr6 4)
check "its quoted header is b4's own packet to the SNAT address, MTU 1280" \
  grep -qE "^[0-9a-f:]+,$b4"$'\t'"$b4,$VIP6"$'\t'"80"$'\t'"[0-9]+"$'\t'"1280$" <<<"$inner"
t_check_checksums "packet too big at b4" "$T_DIR/b4.pcapng" "$VIP6" "$b4" 0
check "what is in the middle still runs" t6_alive
