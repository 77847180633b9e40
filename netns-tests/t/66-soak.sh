#!/usr/bin/env bash
# Churn soak: wrk -t2 -c50 -d30s with 'Connection: close' (a new TCP
# connection per request, thousands per second) through tunlb, nth over
# b1..b4. Zero failed requests and zero socket errors; every request was its
# own flow; nothing dropped for lack of room; tunlb's RSS (VmRSS) grows by at
# most RSS_BOUND_KIB between the 10 s mark and the end; after the soak the
# table drains to empty and tunlb still serves.
#
# The config file shortens the closing and handshake timeouts to 5 s, so that
# the table and the eviction queue reach their steady state within the first
# 10 s. With Linux's defaults (TIME_WAIT 120 s) the table would grow for two
# minutes, by design; here any growth after 10 s is memory kept per
# connection. At about 3000 connections per second, 20 s bring some 60000
# connections: the bound catches anything from about 70 bytes kept per
# connection.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

DURATION=30
RSS_BOUND_KIB=4096
t_setup
if ! command -v wrk >/dev/null; then
  not_ok "wrk is missing (apt-get install wrk; .ci/run installs it)"
  exit 1
fi
CTL=$T_DIR/control.sock
CONF=$T_DIR/soak.toml
cat >"$CONF" <<'EOF'
[timeouts]
syn_sent = 5
syn_recv = 5
fin_wait = 5
close_wait = 5
last_ack = 5
time_wait = 5
close = 5
EOF
t_tunlb_start --mode nth --config "$CONF" --control "$CTL"
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$TUNLB_PID/status"; }
stat_of() { t_query stats "$CTL" --json | t_json "$1"; }

rss0=$(rss)
t0=$(t_now_ms)
tl_exec "$P" client timeout $((DURATION + 30)) wrk -t2 -c50 -d"${DURATION}s" --timeout 5s \
  -H 'Connection: close' "$VIP_URL/" >"$T_DIR/wrk.out" 2>&1 &
w=$!
samples=()
rss10=
for ((s = 5; s <= DURATION + 5; s += 5)); do
  while [ $(($(t_now_ms) - t0)) -lt $((s * 1000)) ] && tl_pid_alive "$w"; do sleep 0.1; done
  tl_pid_alive "$w" || break
  samples+=("${s}s:$(rss)KiB/$(stat_of 'd["flows"]')flows")
  [ "$s" -eq 10 ] && rss10=$(rss)
done
rc=0
wait "$w" || rc=$?
rss_end=$(rss)
note "RSS: start ${rss0} KiB; ${samples[*]}; end ${rss_end} KiB"
sed 's/^/    /' "$T_DIR/wrk.out"
check_eq "wrk ran to its end (exit)" "$rc" 0
requests=$(awk '/requests in/ { print $1 }' "$T_DIR/wrk.out")
check_range "wrk completed requests" "${requests:-0}" 1000 100000000
check_eq "wrk: no socket errors (connect, read, write, timeout)" "$(grep -i 'socket errors' "$T_DIR/wrk.out" || true)" ""
check_eq "wrk: no non-2xx/3xx responses" "$(grep -i 'non-2xx' "$T_DIR/wrk.out" || true)" ""
new=$(stat_of 'd["new_flows"]')
check_range "every request was its own connection through tunlb (new flows; requests ${requests:-0})" \
  "$new" "${requests:-0}" $((${requests:-0} + 200))
check_eq "no SYN dropped for lack of room (table_full, ports_exhausted)" \
  "$(stat_of 'd["dropped"]["table_full"] + d["dropped"]["ports_exhausted"]')" 0
if [ -n "$rss10" ]; then
  check_range "tunlb's RSS growth from the 10 s mark to the end (KiB; ${rss10} -> ${rss_end})" \
    $((rss_end - rss10)) -1000000 "$RSS_BOUND_KIB"
else
  not_ok "wrk ended before the 10 s mark: no RSS sample"
fi
empty() { [ "$(stat_of 'd["flows"]')" -eq 0 ]; }
if t_wait_until 20 empty; then
  ok "after the soak the table drained to 0 flows in ${T_WAITED_MS} ms (expired $(stat_of 'd["expired"]'))"
else
  not_ok "the table still holds $(stat_of 'd["flows"]') flows 20 s after the soak"
fi
check "after the soak: served" grep -qx 'b[1-4]' <<<"$(t_client curl -s --max-time 5 "$VIP_URL/")"
check "tunlb still running" tl_pid_alive "$TUNLB_PID"
