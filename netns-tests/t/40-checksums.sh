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
sleep 0.3
t_capture_stop cap-client
for i in $(tl_backends); do t_capture_stop "cap-b$i"; done

judge() {  # judge FILE FILTER: number of packets matching FILTER, checksums validated
  tshark -n -r "$1" -o tcp.check_checksum:TRUE -o ip.check_checksum:TRUE -Y "$2" 2>/dev/null | wc -l
}
BAD='tcp.checksum.status == 0 || ip.checksum.status == 0 || icmp.checksum.status == 0'
total=$(judge "$T_DIR/client.pcapng" 'ip')
good=$(judge "$T_DIR/client.pcapng" "ip.src == $VIP && tcp.checksum.status == 1")
note "client capture: $total packets, $good from the VIP with a good TCP checksum"
check_range "client side: packets from the VIP captured and judged good" "$good" 100 1000000
check_eq "client side: bad IP/TCP/ICMP checksums" "$(judge "$T_DIR/client.pcapng" "$BAD")" 0
for i in $(tl_backends); do
  f="$T_DIR/b$i.pcapng"
  good=$(judge "$f" "ip.src == $VIP && ip.dst == $(tl_backend_addr "$i") && tcp.checksum.status == 1")
  note "b$i capture: $(judge "$f" ip) packets, $good from the SNAT address with a good TCP checksum"
  check_range "b$i side: packets from the SNAT address captured and judged good" "$good" 50 1000000
  check_eq "b$i side: bad IP/TCP/ICMP checksums" "$(judge "$f" "$BAD")" 0
done
ffff=$(for f in "$T_DIR"/*.pcapng; do judge "$f" 'tcp.checksum.ffff'; done | awk '{ s += $1 } END { print s + 0 }')
[ "$ffff" -eq 0 ] || note "info: $ffff TCP checksums are 0xffff where a full computation gives 0x0000 (valid, RFC 1624)"
