#!/usr/bin/env bash
# IPv6 (NAT66, issue 15) on the dual-stack topology (scripts/lib.sh: the
# IPv6 twin of every address, from 2001:2::/48): tunlb serves
# --vip '[2001:2::1]:80' over b1..b4's IPv6 addresses with its TUN holding
# both prefixes (--tun-addr 198.18.0.254/24 --tun-addr 2001:2::fe/64), SNAT
# the VIP's address (the default).
#  - nth: 8 requests round robin, then 400 sequential connections land
#    exactly 100 per backend;
#  - a 64 MiB download and a 64 MiB upload, byte-exact (sha256);
#  - 200 connections open at the same time all answered, 50 per backend;
#  - tshark judges every TCP (and ICMPv6) checksum on the client's and on
#    each backend's side: verified good, none bad;
#  - one instance serves an IPv4 and an IPv6 VIP at once (--vip for IPv4,
#    the IPv6 service from the config file's [[service]]), both balanced.
# TL_NAT66=kernel runs the same checks (the dual-stack one excepted) with
# ip6tables NAT66 in the middle instead (t6_start, netns-tests/lib.sh).
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup
check_eq "client reaches b1 over IPv6 through lb's routing" \
  "$(t_client curl -s --max-time 5 "http://[$(tl_backend_addr6 1)]/")" b1
t6_start --mode nth || exit 1

first=$(for _ in 1 2 3 4 5 6 7 8; do t_client curl -s --max-time 5 "$VIP6_URL/"; done | tr '\n' ' ')
check_eq "IPv6: 8 requests go round robin" "$first" "b1 b2 b3 b4 b1 b2 b3 b4 "

tally=$(t_tally 400 "" "$VIP6_URL")
note "tally: $(tr '\n' ' ' <<<"$tally")"
check_eq "IPv6: 400 connections, none failed" "$(t_count "$tally" fail)" 0
check_eq "IPv6: each request was its own TCP connection" "$(t_count "$tally" connects)" 400
for i in $(tl_backends); do
  check_eq "IPv6: b$i got exactly 100 of 400" "$(t_count "$tally" "b$i")" 100
done

# 408 connections so far: the next one goes to b1, the one after to b2.
big=$(tl_sha256 "$P" big.bin)
got=$(t_client curl -s --max-time 60 -D "$T_DIR/dl.headers" "$VIP6_URL/file/big.bin" | sha256sum | cut -d' ' -f1)
check "IPv6: the download came from b1" grep -qi '^X-Backend: b1' "$T_DIR/dl.headers"
check_eq "IPv6: 64 MiB download: sha256" "$got" "$big"
resp=$(t_client curl -s --max-time 60 -H 'Expect:' --data-binary "@$(tl_data "$P")/big.bin" "$VIP6_URL/sha256" || true)
check_eq "IPv6: 64 MiB upload reached b2 intact (its sha256 and name)" "$resp" "$big b2"

# 200 at once (each answer waits 1 s); 410 so far, a multiple of 2 but not
# of 4: still exactly 50 each over 200.
t0=$(t_now_ms)
out=$(timeout 90 ip netns exec "${P}client" curl -s --max-time 30 --parallel --parallel-immediate \
  --parallel-max 200 -w 'connects=%{num_connects}\n' "$VIP6_URL/?delay=1&n=[1-200]" 2>/dev/null || true)
ms=$(($(t_now_ms) - t0))
tally=$(awk '/^b[0-9]+$/ { c[$1]++ } /^connects=/ { sub("connects=", ""); n += $0 }
  END { for (b in c) print b, c[b]; print "connects", n + 0 }' <<<"$out" | sort)
note "200 parallel: $(tr '\n' ' ' <<<"$tally")in ${ms} ms"
check_eq "IPv6: 200 parallel connections all answered" "$(grep -c '^b[0-9]*$' <<<"$out" || true)" 200
check_eq "IPv6: 200 TCP connections opened" "$(t_count "$tally" connects)" 200
for i in $(tl_backends); do
  check_eq "IPv6, parallel: b$i got 50" "$(t_count "$tally" "b$i")" 50
done
check_range "IPv6: the 200 ran concurrently (ms for all)" "$ms" 0 15000

# Checksums, judged by tshark on both sides (t_check_checksums).
t_capture_start client eth0 cap-client "$T_DIR/client.pcapng" "tcp or icmp6"
for i in $(tl_backends); do
  t_capture_start "b$i" eth0 "cap-b$i" "$T_DIR/b$i.pcapng" "tcp or icmp6"
done
small=$(tl_sha256 "$P" small.bin)
bad=0
for i in $(tl_backends); do
  got=$(t_client curl -s --max-time 20 "$VIP6_URL/file/small.bin" | sha256sum | cut -d' ' -f1)
  [ "$got" = "$small" ] || bad=$((bad + 1))
  got=$(t_client curl -s --max-time 20 -H 'Expect:' --data-binary "@$(tl_data "$P")/small.bin" "$VIP6_URL/sha256" | cut -d' ' -f1)
  [ "$got" = "$small" ] || bad=$((bad + 1))
done
check_eq "IPv6: 4 downloads and 4 uploads of 1 MiB intact" "$bad" 0
mapfile -t caps < <(tl_backends | sed 's/^/cap-b/')
t_capture_stop cap-client "${caps[@]}"
t_check_checksums "IPv6 client side" "$T_DIR/client.pcapng" "$VIP6" "$TL_CLIENT_ADDR6" 100
for i in $(tl_backends); do
  t_check_checksums "IPv6 b$i side" "$T_DIR/b$i.pcapng" "$VIP6" "$(tl_backend_addr6 "$i")" 50
done
check "IPv6: what is in the middle still runs" t6_alive

if t6_kernel; then
  note "TL_NAT66=kernel: the dual-stack tunlb instance is not checked"
  exit 0
fi
t_tunlb_stop

# One instance, both families: the IPv4 service on the command line, the
# IPv6 one in the config file.
t_v6_conf "$T_DIR/v6.toml"
mapfile -t b4 < <(t_backend_flags)
t6_start --vip "$VIP:80" "${b4[@]}" --mode nth --config "$T_DIR/v6.toml" || exit 1
four4=$(for _ in 1 2 3 4; do t_client curl -s --max-time 5 "$VIP_URL/" || echo fail; done | tr '\n' ' ')
four6=$(for _ in 1 2 3 4; do t_client curl -s --max-time 5 "$VIP6_URL/" || echo fail; done | tr '\n' ' ')
check_eq "dual stack, one instance: the IPv4 VIP round robin" "$four4" "b1 b2 b3 b4 "
check_eq "dual stack, one instance: the IPv6 VIP round robin" "$four6" "b1 b2 b3 b4 "
tally4=$(t_tally 40 "" "$VIP_URL")
tally6=$(t_tally 40 "" "$VIP6_URL")
check_eq "dual stack: 40 IPv6 connections, 10 each" \
  "$(for i in $(tl_backends); do t_count "$tally6" "b$i"; done | tr '\n' ' ')" "10 10 10 10 "
check_eq "dual stack: 40 IPv4 connections, 10 each" \
  "$(for i in $(tl_backends); do t_count "$tally4" "b$i"; done | tr '\n' ' ')" "10 10 10 10 "
check "dual stack: tunlb still running" tl_pid_alive "$TUNLB_PID"
