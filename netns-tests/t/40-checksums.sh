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

# Judged by t_check_checksums (netns-tests/lib.sh): tshark with IP and TCP
# checksum validation on, 0xffff-for-0x0000 counted apart.
t_check_checksums "client side" "$T_DIR/client.pcapng" "$VIP" "$TL_CLIENT_ADDR" 100
for i in $(tl_backends); do
  t_check_checksums "b$i side" "$T_DIR/b$i.pcapng" "$VIP" "$(tl_backend_addr "$i")" 50
done
