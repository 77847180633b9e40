#!/usr/bin/env bash
# TUN offloads (virtio-net header, TSO and checksum offload) and --mtu.
#
# The lb namespace's ingress veths (c0, vb1..vb4) get GRO on, as a real NIC
# has it, so the kernel forwards coalesced TCP super-packets into the TUN
# (veths have GRO off by default, and then every packet arrives alone). The
# veths of the client and backends keep transmit checksum offload off
# (scripts/lib.sh), so what they send and receive carries real checksums.
#
# 1. offload on (the default) and --no-offload, nth over b1 b2: captures on
#    the client's and the backends' veths during 1 MiB downloads and uploads
#    hold no bad IP/TCP checksum (the judge of t/40-checksums.sh), and the
#    transfers arrive intact; then a 64 MiB download and upload each: tunlb
#    stats counts far fewer forwarded packets per MiB with offload on (less
#    than a fifth of --no-offload's), i.e. it moved super-packets. tunlb's
#    device counters (stats --json) agree with the kernel's: packets and
#    bytes read equal the TUN's tx counters (ip -s link), super-packets read
#    are many with offload on and none with --no-offload.
# 2. --mtu 9000 with jumbo frames on every link: the TUN is created at MTU
#    9000; 64 MiB down and up arrive intact with offload on and off; with
#    --no-offload the packets crossing the TUN average more than 4000 bytes.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup
CTL=$T_DIR/control.sock
big=$(tl_sha256 "$P" big.bin)
small=$(tl_sha256 "$P" small.bin)
data=$(tl_data "$P")
mapfile -t two < <(t_backend_flags 1 1)
for dev in c0 $(tl_backends | sed 's/^/vb/'); do
  tl_exec "$P" lb ethtool -K "$dev" gro on >/dev/null 2>&1 || note "ethtool -K $dev gro on failed"
done

# forwarded: packets tunlb forwarded so far (both directions).
forwarded() { t_query stats "$CTL" --json | t_json 'd["forwarded"]["original"] + d["forwarded"]["reply"]'; }
dl() { t_client curl -s --max-time 60 "$VIP_URL/file/$1" | sha256sum | cut -d' ' -f1; }
ul() { t_client curl -s --max-time 60 -H 'Expect:' --data-binary "@$data/$1" "$VIP_URL/sha256" | cut -d' ' -f1; }

declare -A per_mib captured
for variant in on off; do
  flags=()
  [ "$variant" = off ] && flags=(--no-offload)
  t_tunlb_start --vip "$VIP:80" "${two[@]}" --mode nth --control "$CTL" "${flags[@]}"
  check "offload $variant: the ready line says 'offload $variant'" grep -q "ready: .*offload $variant" "$TUNLB_LOG"
  tso=$(tl_exec "$P" lb ethtool -k "$TL_TUN" 2>/dev/null | awk -F': ' '$1 == "tcp-segmentation-offload" { print $2 }')
  check_eq "offload $variant: the TUN's tcp-segmentation-offload (ethtool -k)" "${tso%% *}" "$variant"

  t_capture_start client eth0 cap-client "$T_DIR/client-$variant.pcapng"
  t_capture_start b1 eth0 cap-b1 "$T_DIR/b1-$variant.pcapng"
  t_capture_start b2 eth0 cap-b2 "$T_DIR/b2-$variant.pcapng"
  f0=$(forwarded)
  res="$(dl small.bin) $(dl small.bin) $(ul small.bin) $(ul small.bin)"
  f1=$(forwarded)
  t_capture_stop cap-client cap-b1 cap-b2
  check_eq "offload $variant: 2 downloads and 2 uploads of 1 MiB intact" "$res" "$small $small $small $small"
  captured[$variant]=$((f1 - f0))
  note "offload $variant: $((f1 - f0)) packets forwarded for the 4 MiB captured"
  t_check_checksums "offload $variant: client side" "$T_DIR/client-$variant.pcapng" "$VIP" "$TL_CLIENT_ADDR" 500
  for i in 1 2; do
    t_check_checksums "offload $variant: b$i side" "$T_DIR/b$i-$variant.pcapng" "$VIP" "$(tl_backend_addr "$i")" 300
  done
  rm -f "$T_DIR"/*-"$variant".pcapng

  f0=$(forwarded)
  check_eq "offload $variant: 64 MiB download intact" "$(dl big.bin)" "$big"
  check_eq "offload $variant: 64 MiB upload intact" "$(ul big.bin)" "$big"
  f1=$(forwarded)
  # tunlb's counters and the kernel's are read one after the other: a late
  # segment of the transfers may cross in between, so read again (5 tries).
  for _ in 1 2 3 4 5; do
    t_query stats "$CTL" --json >"$T_DIR/stats-$variant.json"
    ours=$(t_json '"%d %d" % (d["device"]["packets_read"], d["device"]["bytes_read"])' <"$T_DIR/stats-$variant.json")
    kernels=$(tl_exec "$P" lb ip -s -j link show "$TL_TUN" | t_json '"%d %d" % (d[0]["stats64"]["tx"]["packets"], d[0]["stats64"]["tx"]["bytes"])')
    [ "$ours" = "$kernels" ] && break
    sleep 0.2
  done
  note "offload $variant: tunlb's device counters $(t_json 'd["device"]' <"$T_DIR/stats-$variant.json")"
  check_eq "offload $variant: tunlb's packets and bytes read equal the TUN's tx counters (ip -s link)" "$ours" "$kernels"
  supers=$(t_json 'd["device"]["super_packets_read"]' <"$T_DIR/stats-$variant.json")
  if [ "$variant" = on ]; then
    check_range "offload on: super-packets read (stats --json device.super_packets_read)" "$supers" 100 100000000
  else
    check_eq "--no-offload: super-packets read" "$supers" 0
  fi
  check_eq "offload $variant: the device's offload flag in stats --json" \
    "$(t_json 'str(d["device"]["offload"]).lower()' <"$T_DIR/stats-$variant.json")" \
    "$([ "$variant" = on ] && echo true || echo false)"
  per_mib[$variant]=$(((f1 - f0) / (2 * TL_BIG_MIB)))
  note "offload $variant: $((f1 - f0)) packets forwarded for 128 MiB, ${per_mib[$variant]} per MiB"
  check "offload $variant: tunlb still running" tl_pid_alive "$TUNLB_PID"
  t_tunlb_stop
done
# Small transfers under capture coalesce less (about half as many packets in
# quiet runs, more under load): fewer than without offload is what this
# shows; the 64 MiB transfers below measure the factor.
check_range "the captured transfers with offload on went partly as super-packets (forwarded; --no-offload: ${captured[off]})" \
  "${captured[on]}" 1 $((captured[off] - 1))
check_range "forwarded packets per MiB with offload on (super-packets) is under a fifth of --no-offload's (${per_mib[off]}/MiB)" \
  "${per_mib[on]}" 1 $((per_mib[off] / 5))

# 2. MTU 9000 end to end.
for i in $(tl_backends); do
  ip -n "${P}b$i" link set eth0 mtu 9000
  ip -n "${P}lb" link set "vb$i" mtu 9000
done
ip -n "${P}lb" link set br0 mtu 9000
ip -n "${P}lb" link set c0 mtu 9000
ip -n "${P}client" link set eth0 mtu 9000
# tun_tx BYTES|PACKETS: what the kernel handed to tunlb through the TUN so far.
tun_tx() {
  tl_exec "$P" lb ip -s -j link show "$TL_TUN" | t_json "d[0]['stats64']['tx']['$1']"
}
for variant in on off; do
  flags=()
  [ "$variant" = off ] && flags=(--no-offload)
  t_tunlb_start --vip "$VIP:80" "${two[@]}" --mode nth --control "$CTL" --mtu 9000 "${flags[@]}"
  check_eq "mtu 9000, offload $variant: the TUN's MTU" \
    "$(tl_exec "$P" lb ip -j link show "$TL_TUN" | t_json 'd[0]["mtu"]')" 9000
  b0=$(tun_tx bytes) p0=$(tun_tx packets)
  check_eq "mtu 9000, offload $variant: 64 MiB download intact" "$(dl big.bin)" "$big"
  b1=$(tun_tx bytes) p1=$(tun_tx packets)
  check_eq "mtu 9000, offload $variant: 64 MiB upload intact" "$(ul big.bin)" "$big"
  avg=$(((b1 - b0) / (p1 - p0 > 0 ? p1 - p0 : 1)))
  note "mtu 9000, offload $variant: $((p1 - p0)) packets into tunlb during the download, $avg bytes on average"
  if [ "$variant" = off ]; then
    check_range "mtu 9000, --no-offload: jumbo packets crossed the TUN (average bytes per packet in the download)" \
      "$avg" 4000 9000
  fi
  check "mtu 9000, offload $variant: tunlb still running" tl_pid_alive "$TUNLB_PID"
  t_tunlb_stop
done

# 3. A persistent TUN that tunlb did not create (ip tuntap, multi-queue and
#    virtio-net header, as an administrator would prepare it): tunlb sets the
#    offload mask itself on attach, whatever the previous user left, with one
#    thread (one queue of a multi-queue device) and with two.
ip -n "${P}lb" tuntap add dev "$TL_TUN" mode tun multi_queue vnet_hdr
ip -n "${P}lb" addr add "$TL_TUN_ADDR" dev "$TL_TUN"
ip -n "${P}lb" link set "$TL_TUN" up
for run in "on 1" "off 1" "on 2" "off 2"; do
  read -r variant threads <<<"$run"
  flags=(--threads "$threads")
  [ "$variant" = off ] && flags+=(--no-offload)
  t_tunlb_start_cmd "$TUNLB_BIN" run --tun "$TL_TUN" --vip "$VIP:80" "${two[@]}" --mode nth --control "$CTL" "${flags[@]}"
  check "persistent TUN, $threads thread(s), offload $variant: attached ('attached' and 'offload $variant' in the ready line)" \
    grep -q "ready: tun $TL_TUN (attached, $threads queue(s), offload $variant)" "$TUNLB_LOG"
  tso=$(tl_exec "$P" lb ethtool -k "$TL_TUN" 2>/dev/null | awk -F': ' '$1 == "tcp-segmentation-offload" { print $2 }')
  check_eq "persistent TUN, $threads thread(s), offload $variant: the TUN's tcp-segmentation-offload" "${tso%% *}" "$variant"
  check_eq "persistent TUN, $threads thread(s), offload $variant: 64 MiB download intact" "$(dl big.bin)" "$big"
  t_tunlb_stop
done
check "the persistent TUN is left in place" test -n "$(ip -n "${P}lb" link show "$TL_TUN" 2>/dev/null)"
ip -n "${P}lb" tuntap del dev "$TL_TUN" mode tun multi_queue
