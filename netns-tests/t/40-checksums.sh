#!/usr/bin/env bash
# Checksums judged by tshark: captures on the client's veth (packets tunlb
# rewrote toward the client) and on every backend's veth (packets tunlb
# rewrote toward the backends), read with IP and TCP checksum validation on,
# hold no bad checksum. Transmit checksum offload is off on every veth
# (scripts/lib.sh), so the locally sent packets carry real checksums too.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup
t_tunlb_start --mode nth
t_capture_start client eth0 cap-client "$T_DIR/client.pcapng"
for i in $(tl_backends); do
  t_capture_start "b$i" eth0 "cap-b$i" "$T_DIR/b$i.pcapng"
done

# Work: short answers, 1 MiB downloads from every backend, 1 MiB uploads to
# every backend (full-size segments in both directions).
for _ in 1 2 3 4 5 6 7 8; do t_client curl -s --max-time 5 -o /dev/null "$VIP_URL/"; done
small=$(tl_sha256 "$P" small.bin)
bad=0
for i in $(tl_backends); do
  got=$(t_client curl -s --max-time 20 "$VIP_URL/file/small.bin" | sha256sum | cut -d' ' -f1)
  [ "$got" = "$small" ] || bad=$((bad + 1))
  got=$(t_client curl -s --max-time 20 -H 'Expect:' --data-binary "@$(tl_data "$P")/small.bin" "$VIP_URL/sha256" | cut -d' ' -f1)
  [ "$got" = "$small" ] || bad=$((bad + 1))
done
check_eq "4 downloads and 4 uploads of 1 MiB intact" "$bad" 0
mapfile -t caps < <(tl_backends | sed 's/^/cap-b/')
t_capture_stop cap-client "${caps[@]}"

# judge FILE SRC DST: read FILE once with IP and TCP checksum validation on;
# print "PACKETS BAD GOOD FFFF": packets, packets with a bad IP/TCP/ICMP
# checksum (inner headers of ICMP errors included), packets SRC -> DST whose
# TCP checksum was verified good, and packets SRC -> DST whose TCP checksum is
# 0xffff where a full computation gives 0x0000. tshark marks that last case
# "bad" (its RFC 1624 note), but both encode the same sum and every receiver
# accepts it; Linux senders emit it now and then too. So it is counted apart.
judge() {
  tshark -n -r "$1" -o tcp.check_checksum:TRUE -o ip.check_checksum:TRUE -T fields -E occurrence=a \
    -E aggregator=, -e ip.src -e ip.dst -e ip.checksum.status -e tcp.checksum.status \
    -e icmp.checksum.status -e tcp.checksum -e tcp.checksum_calculated 2>/dev/null |
    awk -F '\t' -v src="$2" -v dst="$3" '
      { n++; bad_here = 0; ffff_here = 0
        split($1, s, ","); split($2, d, ",")
        mine = (s[1] == src && d[1] == dst)
        for (i = 3; i <= 5; i += 2) { k = split($i, v, ","); for (j = 1; j <= k; j++) if (v[j] == "0") bad_here = 1 }
        k = split($4, st, ","); split($6, ck, ","); split($7, calc, ",")
        for (j = 1; j <= k; j++) {
          if (st[j] != "0") continue
          if (ck[j] == "0xffff" && calc[j] == "0x0000") ffff_here = 1; else bad_here = 1
        }
        bad += bad_here
        if (mine && ffff_here) ffff++
        if (mine && $4 == "1") good++ }
      END { print n + 0, bad + 0, good + 0, ffff + 0 }'
}
check_judge() {  # check_judge WHERE FILE SRC DST MIN_GOOD
  local total bad good ffff
  read -r total bad good ffff < <(judge "$2" "$3" "$4")
  note "$1 capture: $total packets; $3 -> $4: $good with a verified good TCP checksum, $ffff with 0xffff for 0x0000"
  check_range "$1 side: packets $3 -> $4 captured and judged good" "$good" "$5" 1000000
  check_eq "$1 side: bad IP/TCP/ICMP checksums" "$bad" 0
}
check_judge client "$T_DIR/client.pcapng" "$VIP" "$TL_CLIENT_ADDR" 100
for i in $(tl_backends); do
  check_judge "b$i" "$T_DIR/b$i.pcapng" "$VIP" "$(tl_backend_addr "$i")" 50
done
