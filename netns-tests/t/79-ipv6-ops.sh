#!/usr/bin/env bash
# IPv6 through the rest of the program (issue 15): what 77-ipv6 does not
# cover, on the same dual-stack topology, an IPv6 service [VIP6]:80:
#  - every selection mode: random, wrr, lc, maglev answer all 40 connections
#    (wrr exactly 10 each; maglev sends one client address to one backend);
#  - health checks: b3's server stopped, b3 goes down and takes no new
#    connection, none fails;
#  - a reload (SIGHUP) of an IPv6 [[service]] from the file: b4 removed, new
#    connections only to b1..b3;
#  - observers: `tunlb flows` (text and JSON), `tunlb stats --json`,
#    /metrics and --trace show the IPv6 tuples and backends.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup
CTL=$T_DIR/control.sock
B=()
for i in $(tl_backends); do B+=("[$(tl_backend_addr6 "$i")]:80"); done

# stat6 I FIELD: FIELD of bI's IPv6 backend in `tunlb stats --json`.
stat6() {
  t_query stats "$CTL" --json |
    t_json "next((str(b['$2']).lower() for b in d['backends'] if b['backend'] == '${B[$(($1 - 1))]}'), 'none')"
}
up6() { [ "$(stat6 "$1" up)" = "$2" ]; }

# --- every selection mode ---------------------------------------------------
for mode in random wrr lc maglev; do
  t6_start --mode "$mode" --control "$CTL" || continue
  tally=$(t_tally 40 "" "$VIP6_URL")
  note "--mode $mode: $(tr '\n' ' ' <<<"$tally")"
  check_eq "IPv6 --mode $mode: 40 connections, none failed" "$(t_count "$tally" fail)" 0
  total=0
  for i in $(tl_backends); do total=$((total + $(t_count "$tally" "b$i"))); done
  check_eq "IPv6 --mode $mode: 40 answered by b1..b4" "$total" 40
  case $mode in
  wrr)
    for i in $(tl_backends); do
      check_eq "IPv6 --mode wrr: b$i got 10 of 40" "$(t_count "$tally" "b$i")" 10
    done
    ;;
  maglev)
    top=$(awk '/^b/ { if ($2 > m) m = $2 } END { print m + 0 }' <<<"$tally")
    check_eq "IPv6 --mode maglev: one client address, one backend (40 of 40)" "$top" 40
    ;;
  esac
  t_tunlb_stop
done

# --- health checks ------------------------------------------------------------
HCONF=$T_DIR/health.toml
t_fast_health_conf "$HCONF"
t6_start --mode nth --health-check --config "$HCONF" --control "$CTL"
for i in $(tl_backends); do
  check_eq "IPv6 health: b$i up at start" "$(stat6 "$i" up)" true
done
tl_backend_stop "$P" 3
if t_wait_until 5 up6 3 false; then
  ok "IPv6 health: b3 down after ${T_WAITED_MS} ms once its server stopped"
else
  not_ok "IPv6 health: b3 down within 5 s (stats: up=$(stat6 3 up))"
fi
tally=$(t_tally 30 "" "$VIP6_URL")
note "b3 down: $(tr '\n' ' ' <<<"$tally")"
check_eq "IPv6 health: 30 connections with b3 down, none failed" "$(t_count "$tally" fail)" 0
check_eq "IPv6 health: b3 got none" "$(t_count "$tally" b3)" 0
t_tunlb_stop
tl_backend_start "$P" 3
t_wait_until 5 t_client curl -s --max-time 1 -o /dev/null "http://[$(tl_backend_addr6 3)]/" || true

# --- reload, and what observers see ------------------------------------------
CONF=$T_DIR/v6.toml
write_conf() { # write_conf BACKEND...
  {
    printf '[[service]]\nvip = "[%s]:80"\nmode = "nth"\nbackends = [' "$VIP6"
    local sep=""
    for b in "$@"; do
      printf '%s"%s"' "$sep" "$b"
      sep=", "
    done
    printf ']\n'
  } >"$CONF"
}
write_conf "${B[@]}"
METRICS=127.0.0.1:9106
io=(--tun "$TL_TUN" --tun-addr "$TL_TUN_ADDR" --tun-addr "$TL_TUN_ADDR6")
[ "${TL_IO:-}" != packet ] || io=(--io packet)
t_tunlb_start_cmd "$TUNLB_BIN" run "${io[@]}" --config "$CONF" --control "$CTL" --metrics "$METRICS" --trace
tally=$(t_tally 8 "" "$VIP6_URL")
check_eq "IPv6 from the file: 8 connections, 2 each" \
  "$(for i in $(tl_backends); do printf '%s ' "$(t_count "$tally" "b$i")"; done)" "2 2 2 2 "

# A slow download keeps a flow open while we look.
t_client curl -s --max-time 60 --limit-rate 8M -o "$T_DIR/dl.bin" "$VIP6_URL/file/big.bin" &
DL=$!
has_established() { t_query flows "$CTL" | grep -q ' ESTABLISHED '; }
t_wait_until 5 has_established || true
flows=$(t_query flows "$CTL" || true)
est=$(grep ' ESTABLISHED ' <<<"$flows" || true)
note "flows: $est"
check "tunlb flows: an ESTABLISHED IPv6 flow from the client to the VIP" \
  grep -q "src=$TL_CLIENT_ADDR6 dst=$VIP6 sport=[0-9]* dport=80 " <<<"$est"
check "tunlb flows: its reply tuple from a backend to the MASQUERADE address" \
  grep -Eq "src=2001:2:0:2::[3-6] dst=$VIP6 sport=80 " <<<"$est"
json_src=$(t_query flows "$CTL" --json |
  t_json "next((f['original']['src'] for f in d['flows'] if f['state'] == 'ESTABLISHED'), 'none')")
check "tunlb flows --json: the original source is [client]:port" grep -q "^\[$TL_CLIENT_ADDR6\]:[0-9]*$" <<<"$json_src"
check_eq "tunlb stats --json: b1 served IPv6 connections" "$(stat6 1 connections)" 3
tl_exec "$P" lb curl -s "http://$METRICS/metrics" >"$T_DIR/metrics.txt" || true
check "/metrics: per-backend series labelled with the IPv6 addresses" \
  grep -qF "tunlb_backend_connections_total{service=\"[$VIP6]:80\",backend=\"${B[0]}\"} 3" "$T_DIR/metrics.txt"
check "--trace: the NEW line names the IPv6 client and VIP" \
  grep -q "NEW \[$TL_CLIENT_ADDR6\]:[0-9]* -> \[$VIP6\]:80 => DNAT \[2001:2:0:2::" "$TUNLB_LOG"

# Reload without b4: flows stay, new connections avoid b4.
write_conf "${B[@]:0:3}"
kill -HUP "$TUNLB_PID"
t_wait_until 5 grep -q "reloaded: \[$VIP6\]:80 -> 3 backends" "$TUNLB_LOG" || true
check "IPv6 reload: the log says reloaded with 3 backends" grep -q "reloaded: \[$VIP6\]:80 -> 3 backends" "$TUNLB_LOG"
tally=$(t_tally 30 "" "$VIP6_URL")
note "after reload: $(tr '\n' ' ' <<<"$tally")"
check_eq "IPv6 reload: 30 connections, none failed" "$(t_count "$tally" fail)" 0
check_eq "IPv6 reload: b4 removed, got none" "$(t_count "$tally" b4)" 0
check_eq "IPv6 reload: b1..b3 10 each" \
  "$(for i in 1 2 3; do printf '%s ' "$(t_count "$tally" "b$i")"; done)" "10 10 10 "
wait "$DL" || true
check_eq "the download in flight across the reload arrived intact" \
  "$(t_sha "$T_DIR/dl.bin")" "$(tl_sha256 "$P" big.bin)"
check "tunlb still running" tl_pid_alive "$TUNLB_PID"
t_tunlb_stop
t_cleanup
