#!/usr/bin/env bash
# Path MTU with an MTU-1280 hop between the balancer and a backend.
#  b1: its veth is 1280 on both ends (off the bridge, routed): a 64 MiB
#      download through it completes intact (the backend's MSS shows the hop).
#  b2: the lb end of its veth is 1280, the backend end 1500, so b2 advertises
#      MSS 1460 and the client's full-size segments reach a hop they do not
#      fit: lb's kernel sends "fragmentation needed" to their source, the SNAT
#      address, which routes into the TUN; tunlb must translate it back to the
#      client (RELATED ICMP), or the upload stalls. A 64 MiB upload completes
#      intact and the client's route cache learns MTU 1280 for the VIP.
#  b3: the reply direction: lb's end toward the client (c0) drops to 1280
#      while the client's end stays 1500, so b3's full-size segments, once
#      tunlb has rewritten them to VIP -> client, do not fit: lb's kernel sends
#      frag-needed to the VIP (into the TUN) and tunlb must translate it to
#      b3. A 64 MiB download from b3 completes and b3 learns MTU 1280.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup
tl_isolate_backend "$P" 1 1280 1280
tl_isolate_backend "$P" 2 1280 1500
check_eq "b1 reachable over its 1280 link (direct)" "$(t_client curl -s --max-time 5 http://198.18.2.3/)" b1
t_tunlb_start --mode nth
big=$(tl_sha256 "$P" big.bin)

# Connection 1 (nth: b1): download across the 1280 hop.
got=$(t_client curl -s --max-time 60 -D "$T_DIR/dl.headers" "$VIP_URL/file/big.bin" | sha256sum | cut -d' ' -f1)
check "download came from b1" grep -qi '^X-Backend: b1' "$T_DIR/dl.headers"
check_eq "64 MiB download across the MTU-1280 hop: sha256" "$got" "$big"

# Connection 2 (nth: b2): upload into the hop that needs frag-needed.
t_capture_start client eth0 cap-client "$T_DIR/client.pcapng" icmp
t0=$(t_now_ms)
resp=$(t_client curl -s --max-time 60 -H 'Expect:' --data-binary "@$(tl_data "$P")/big.bin" "$VIP_URL/sha256" || true)
ms=$(($(t_now_ms) - t0))
t_capture_stop cap-client
note "upload answered '$resp' after ${ms} ms"
check_eq "64 MiB upload through the hop reached b2 intact" "$resp" "$big b2"
route=$(t_client ip route get "$VIP")
note "client: $(tr '\n' ' ' <<<"$route")"
check "the client learned path MTU 1280 toward the VIP" grep -q 'mtu 1280' <<<"$route"
fragneeded=$(tshark -n -r "$T_DIR/client.pcapng" -Y "icmp.type == 3 && icmp.code == 4 && ip.dst == $TL_CLIENT_ADDR" 2>/dev/null | wc -l)
note "frag-needed messages seen at the client: $fragneeded"
check_range "frag-needed arrived at the client, translated by tunlb" "$fragneeded" 1 100000
inner=$(tshark -n -r "$T_DIR/client.pcapng" -Y "icmp.type == 3 && icmp.code == 4" -T fields -e ip.src -e ip.dst -e tcp.srcport -e tcp.dstport -e icmp.mtu 2>/dev/null | awk 'NR == 1')
note "first frag-needed (outer src,inner src / outer dst,inner dst / ports / mtu): $inner"
check "its inner header is the client's own packet to the VIP (${TL_CLIENT_ADDR} -> ${VIP}:80)" \
  grep -qE "^[0-9.]+,$TL_CLIENT_ADDR"$'\t'"$TL_CLIENT_ADDR,$VIP"$'\t'"[0-9]+"$'\t'"80"$'\t'"1280" <<<"$inner"

# Connection 3 (nth: b3): frag-needed in the reply direction.
# Forget what part 2 taught the client, or its SYN would advertise MSS 1240.
ip -n "${P}client" route flush cache
ip -n "${P}lb" link set c0 mtu 1280
t_capture_start b3 eth0 cap-b3 "$T_DIR/b3.pcapng" icmp
got=$(t_client curl -s --max-time 60 -D "$T_DIR/dl3.headers" "$VIP_URL/file/big.bin" | sha256sum | cut -d' ' -f1)
t_capture_stop cap-b3
check "download came from b3" grep -qi '^X-Backend: b3' "$T_DIR/dl3.headers"
check_eq "64 MiB download through a 1280 hop on the client side: sha256" "$got" "$big"
route=$(tl_exec "$P" b3 ip route get "$VIP")
note "b3: $(tr '\n' ' ' <<<"$route")"
check "b3 learned path MTU 1280 toward the SNAT address" grep -q 'mtu 1280' <<<"$route"
inner=$(tshark -n -r "$T_DIR/b3.pcapng" -Y "icmp.type == 3 && icmp.code == 4" -T fields -e ip.src -e ip.dst -e tcp.srcport -e tcp.dstport -e icmp.mtu 2>/dev/null | awk 'NR == 1')
note "first frag-needed at b3 (outer src,inner src / outer dst,inner dst / ports / mtu): $inner"
check "its inner header is b3's own packet to the SNAT address" \
  grep -qE "^[0-9.]+,198\.18\.2\.5"$'\t'"198\.18\.2\.5,$VIP"$'\t'"80"$'\t'"[0-9]+"$'\t'"1280" <<<"$inner"
check "tunlb still running" tl_pid_alive "$TUNLB_PID"
