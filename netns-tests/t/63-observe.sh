#!/usr/bin/env bash
# Looking at a running tunlb: `tunlb flows` (conntrack -L style, and --json),
# `tunlb stats` (ipvsadm style, and --json) and the Prometheus listener
# (--metrics 127.0.0.1:9100 inside the lb namespace). tunlb runs without
# --control: `tunlb flows` run inside the lb namespace finds the default
# per-namespace socket, one run in another namespace does not. Checked against
# what was actually sent: 8 short connections (TIME_WAIT), a live download
# (ESTABLISHED, its client port as ss sees it), then 20 more connections.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup
METRICS=127.0.0.1:9100
t_tunlb_start --mode nth --metrics "$METRICS"
B1=$(tl_backend_addr 1):80

# The default control socket: /run/tunlb/TUN.NETNS.sock (packet.NETNS.sock
# on the packet datapath), NETNS the inode of the lb namespace.
sock=$(t_default_sock)
check "the log names the per-namespace default control socket $sock" grep -qF "control socket $sock" "$TUNLB_LOG"
check_eq "the control socket is a socket of mode 0600" "$(stat -c '%F %a' "$sock" 2>/dev/null)" "socket 600"
flows() { tl_exec "$P" lb "$TUNLB_BIN" flows "$@"; }
stats() { tl_exec "$P" lb "$TUNLB_BIN" stats "$@"; }
rc=0
t_client "$TUNLB_BIN" flows >"$T_DIR/other-ns.out" 2>&1 || rc=$?
check_eq "tunlb flows in another namespace (the client's) does not reach this instance: exit" "$rc" 1

for _ in 1 2 3 4 5 6 7 8; do t_client curl -s --max-time 5 -o /dev/null "$VIP_URL/"; done
# A long download: nth's ninth turn is b1. Killed (our own PID) at the end.
t_client curl -s --max-time 60 --limit-rate 2M -o /dev/null "$VIP_URL/file/big.bin" &
dl=$!
dl_established() { [ -n "$(t_client ss -Htn state established dst "$VIP")" ]; }
t_wait_until 5 dl_established || true
sleep 0.5
cport=$(t_client ss -Htn state established dst "$VIP" | awk '{ split($3, a, ":"); print a[2]; exit }')
note "the download's client port (ss in the client): ${cport:-none}"

# tunlb flows, text.
rc=0
flows >"$T_DIR/flows.txt" 2>&1 || rc=$?
sed 's/^/    /' "$T_DIR/flows.txt"
check_eq "tunlb flows (default socket, lb namespace): exit" "$rc" 0
check_eq "tunlb flows: the summary line counts 9 flows" "$(tail -n 1 "$T_DIR/flows.txt")" "tunlb: 9 flow entries"
est=$(grep ' ESTABLISHED ' "$T_DIR/flows.txt" || true)
check_eq "tunlb flows: one ESTABLISHED flow" "$(grep -c . <<<"$est")" 1
re="^tcp +6 ([0-9]+) ESTABLISHED src=$TL_CLIENT_ADDR dst=$VIP sport=$cport dport=80 packets=[1-9][0-9]* bytes=[1-9][0-9]* "
re+="src=${B1%:*} dst=$VIP sport=80 dport=([0-9]+) packets=[1-9][0-9]* bytes=([0-9]+) \[ASSURED\] backend=$B1\$"
if [[ $est =~ $re ]]; then
  ok "tunlb flows: the download's original tuple (client:$cport -> VIP:80), reply tuple (b1:80 -> VIP:${BASH_REMATCH[2]}), [ASSURED], backend=$B1"
  check_range "tunlb flows: the ESTABLISHED timeout left (s, Linux's 5 days)" "${BASH_REMATCH[1]}" 431900 432000
  check_range "tunlb flows: reply bytes of the download so far" "${BASH_REMATCH[3]}" 100000 100000000
else
  not_ok "tunlb flows: the ESTABLISHED line does not match /$re/: $est"
fi
check_eq "tunlb flows: 8 TIME_WAIT [ASSURED] flows (the short connections)" \
  "$(grep -cE '^tcp +6 ([0-9]|[1-9][0-9]|1[01][0-9]|120) TIME_WAIT .* \[ASSURED\] backend=' "$T_DIR/flows.txt" || true)" 8

# tunlb flows --json.
flows --json >"$T_DIR/flows.json"
check "tunlb flows --json parses (python3 json.load)" "$(tl_python)" -c 'import json, sys; json.load(open(sys.argv[1]))' "$T_DIR/flows.json"
keys=$(t_json "sorted(set(tuple(sorted(f.keys())) + tuple('original.' + k for k in sorted(f['original'])) + tuple('reply.' + k for k in sorted(f['reply'])) for f in d['flows']))" <"$T_DIR/flows.json")
check_eq "tunlb flows --json: every flow has the documented keys" "$(tr '\n' ' ' <<<"$keys")" \
  "('assured', 'backend', 'original', 'reply', 'seen_reply', 'state', 'timeout_secs', 'original.bytes', 'original.dst', 'original.packets', 'original.src', 'reply.bytes', 'reply.dst', 'reply.packets', 'reply.src') "
check_eq "tunlb flows --json: the download's flow" \
  "$(t_json "[' '.join([f['original']['src'], f['original']['dst'], f['reply']['src'], f['backend'], f['state'], str(f['assured']), str(f['seen_reply'])]) for f in d['flows'] if f['state'] == 'ESTABLISHED']" <"$T_DIR/flows.json")" \
  "$TL_CLIENT_ADDR:$cport $VIP:80 $B1 $B1 ESTABLISHED True True"
check_eq "tunlb flows --json: 9 flows" "$(t_json 'len(d["flows"])' <"$T_DIR/flows.json")" 9

# metrics_conns: the same from tunlb_backend_connections_total.
metrics_conns() {
  local i out=()
  for i in $(tl_backends); do
    out+=("$(awk -v want="tunlb_backend_connections_total{service=\"$VIP:80\",backend=\"$(tl_backend_addr "$i"):80\"}" \
      '$1 == want { print $2 }' "$1")")
  done
  echo "${out[*]}"
}
conns_json() {
  stats --json | t_json "' '.join(str(next((b['connections'] for b in d['backends'] if b['backend'] == '198.18.2.%d:80' % i), 'none')) for i in range(3, 7))"
}

# tunlb stats, text and JSON: 9 connections, b1 3 (2 short + the download).
stats >"$T_DIR/stats.txt"
sed 's/^/    /' "$T_DIR/stats.txt"
check "tunlb stats: the service line" grep -qE "^TCP +$VIP:80 nth\$" "$T_DIR/stats.txt"
check "tunlb stats: the device line (queues, offloads, packets read)" \
  grep -qE "^device $(t_device): 1 queue\(s\), offload on; read [1-9][0-9]* packets \([0-9]+ super-packets\), [1-9][0-9]* bytes; write errors 0\$" "$T_DIR/stats.txt"
text_conns=$(for i in $(tl_backends); do
  awk -v b="$(tl_backend_addr "$i"):80" '$1 == "->" && $2 == b { printf "%s/%s/%s/%s ", $3, $4, $5, $6 }' "$T_DIR/stats.txt"
done)
check_eq "tunlb stats: weight/state/flows/conns per backend" "$text_conns" "1/up/3/3 1/up/2/2 1/up/2/2 1/up/2/2 "
check_eq "tunlb stats --json: connections per backend" "$(conns_json)" "3 2 2 2"
check_eq "tunlb stats --json: flows and new_flows" "$(stats --json | t_json '"%d %d" % (d["flows"], d["new_flows"])')" "9 9"

# Metrics.
mcurl() { tl_exec "$P" lb curl -s --max-time 5 "$@"; }
code=$(mcurl -D "$T_DIR/metrics.headers" -o "$T_DIR/metrics.txt" -w '%{http_code}' "http://$METRICS/metrics" || true)
check_eq "GET /metrics: status" "$code" 200
check "GET /metrics: Content-Type is Prometheus text 0.0.4" grep -qi '^Content-Type: text/plain; version=0.0.4' "$T_DIR/metrics.headers"
badlines=$(grep -vE '^# (HELP|TYPE) [a-z_]+ |^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? [0-9]+$' "$T_DIR/metrics.txt" || true)
check_eq "/metrics: every line is a comment or 'name{labels} value'" "$badlines" ""
missing=()
for m in tunlb_flows tunlb_flows_created_total tunlb_flows_expired_total tunlb_flows_evicted_total \
  tunlb_packets_forwarded_total tunlb_packets_dropped_total tunlb_icmp_translated_total \
  tunlb_resets_sent_total tunlb_backend_up tunlb_backend_active_flows tunlb_backend_connections_total \
  tunlb_backend_packets_total tunlb_backend_bytes_total tunlb_device_queues tunlb_device_offload \
  tunlb_device_packets_read_total tunlb_device_super_packets_read_total tunlb_device_bytes_read_total \
  tunlb_device_write_errors_total; do
  grep -qE "^# TYPE $m (counter|gauge)\$" "$T_DIR/metrics.txt" || missing+=("$m")
done
check_eq "/metrics: every metric the README documents has a TYPE line" "${missing[*]}" ""
check_eq "/metrics: tunlb_backend_connections_total per backend" "$(metrics_conns "$T_DIR/metrics.txt")" "3 2 2 2"
check_eq "/metrics: tunlb_flows and tunlb_flows_created_total" \
  "$(awk '$1 == "tunlb_flows" || $1 == "tunlb_flows_created_total" { printf "%s ", $2 }' "$T_DIR/metrics.txt")" "9 9 "
reasons=$(stats --json | t_json 'len(d["dropped"])')
check_eq "/metrics: one tunlb_packets_dropped_total{reason=...} line per drop reason of stats --json" \
  "$(grep -cE '^tunlb_packets_dropped_total\{reason="[a-z0-9_]+"\} [0-9]+$' "$T_DIR/metrics.txt" || true)" "$reasons"
check_eq "/metrics: every drop counter equals stats --json's" \
  "$(awk -F'[{}"]' '/^tunlb_packets_dropped_total\{/ { split($5, v, " "); print $3 "=" v[1] }' "$T_DIR/metrics.txt" | sort | tr '\n' ' ')" \
  "$(stats --json | t_json 'sorted("%s=%d" % (k, v) for k, v in d["dropped"].items())' | tr '\n' ' ')"
for r in no_backend invalid_no_flow bad_checksum table_full; do
  check "/metrics: tunlb_packets_dropped_total{reason=\"$r\"} is there" grep -q "^tunlb_packets_dropped_total{reason=\"$r\"} [0-9]" "$T_DIR/metrics.txt"
done
check_eq "/metrics: tunlb_backend_up is 1 for all four" \
  "$(grep -c '^tunlb_backend_up{.*} 1$' "$T_DIR/metrics.txt" || true)" 4
for path in / /foo /metrics/x; do
  check_eq "GET $path: 404" "$(mcurl -o /dev/null -w '%{http_code}' "http://$METRICS$path" || true)" 404
done

# 20 more connections (nth: 5 each): stats and metrics follow.
tally=$(t_tally 20)
check_eq "20 more connections, none failed" "$(t_count "$tally" fail)" 0
mcurl -o "$T_DIR/metrics2.txt" "http://$METRICS/metrics" || true
check_eq "after 20 more: tunlb stats --json connections" "$(conns_json)" "8 7 7 7"
check_eq "after 20 more: /metrics connections" "$(metrics_conns "$T_DIR/metrics2.txt")" "8 7 7 7"
check "the download was live throughout" tl_pid_alive "$dl"
kill "$dl" 2>/dev/null || true
wait "$dl" 2>/dev/null || true
check "tunlb still running" tl_pid_alive "$TUNLB_PID"
