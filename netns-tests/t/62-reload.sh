#!/usr/bin/env bash
# Live reconfiguration: services come from --config FILE; SIGHUP re-reads it.
# A rate-limited 64 MiB download runs through b1 the whole time, while:
#  1. b1 is drained (weight=0) and b3 added: new connections avoid b1 and
#     reach b3 at once;
#  2. two invalid files (a bad backend weight, broken TOML) are refused with
#     one "reload refused" line each, and the previous configuration serves on;
#  3. b1 is removed from the file altogether;
#  4. a second service on a new VIP (b4) is added: it answers at once, on
#     either datapath (--io packet extends its blackhole routes and socket
#     filter), and the first VIP serves on;
#  5. a third service on an address local to lb is refused (the kernel
#     would answer for it), as at start, and both VIPs serve on.
# `tunlb flows` shows the download's flow ESTABLISHED on b1 before and after
# every reload, and the download arrives intact (the flow was never lost).
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup
CTL=$T_DIR/control.sock
CONF=$T_DIR/tunlb.toml
B1=$(tl_backend_addr 1):80 B2=$(tl_backend_addr 2):80 B3=$(tl_backend_addr 3):80 B4=$(tl_backend_addr 4):80
want=$(tl_sha256 "$P" big.bin)

# write_conf BACKENDS...: the config file with one nth service over BACKENDS
# (written to a temporary file and renamed, as an operator's tool would).
write_conf() {
  local list
  list=$(printf '"%s", ' "$@")
  printf '[[service]]\nvip = "%s:80"\nmode = "nth"\nbackends = [%s]\n' "$VIP" "${list%, }" >"$CONF.tmp"
  mv -f "$CONF.tmp" "$CONF"
}
# more_lines PATTERN N: the log holds more than N lines matching PATTERN.
more_lines() { [ "$(grep -c -- "$1" "$TUNLB_LOG" || true)" -gt "$2" ]; }
# hup PATTERN: SIGHUP tunlb, wait (5 s at most) for one more log line
# matching PATTERN than before.
hup() {
  local before
  before=$(grep -c -- "$1" "$TUNLB_LOG" || true)
  kill -HUP "$TUNLB_PID"
  t_wait_until 5 more_lines "$1" "$before"
}
# dl_flow: the download's flow as "STATE BACKEND" (by its client port), or "gone".
dl_flow() {
  t_query flows "$CTL" --json |
    t_json "next((f['state'] + ' ' + f['backend'] for f in d['flows'] if f['original']['src'] == '$TL_CLIENT_ADDR:$DL_PORT'), 'gone')"
}
seq_of() {  # seq_of N: N sequential requests, their answers on one line
  local k
  for ((k = 0; k < $1; k++)); do t_client curl -s --max-time 5 "$VIP_URL/" || echo fail; done | tr '\n' ' '
}

write_conf "$B1" "$B2"
mapfile -t io < <(t_io_args)
t_tunlb_start_cmd "$TUNLB_BIN" run "${io[@]}" --config "$CONF" --control "$CTL"
check_eq "services from the file: round robin over b1 b2" "$(seq_of 4)" "b1 b2 b1 b2 "

# The download: nth's next turn is b1.
t_client curl -s --max-time 60 --limit-rate 8M -D "$T_DIR/dl.headers" -o "$T_DIR/dl.bin" \
  "$VIP_URL/file/big.bin" &
dl=$!
t_wait_until 5 grep -qsi '^X-Backend' "$T_DIR/dl.headers" || true
check_eq "the download is served by b1" "$(t_header_backend "$T_DIR/dl.headers")" b1
DL_PORT=$(t_query flows "$CTL" --json |
  t_json "next((f['original']['src'].split(':')[1] for f in d['flows'] if f['state'] == 'ESTABLISHED' and f['backend'] == '$B1'), 0)")
note "the download's flow: client port $DL_PORT"
check_eq "flows before any reload: the download ESTABLISHED on b1" "$(dl_flow)" "ESTABLISHED $B1"

# 1. Drain b1, add b3.
write_conf "$B1,weight=0" "$B2" "$B3"
check "reload 1 (drain b1, add b3): 'reloaded' logged" hup 'reloaded:'
check "reload 1: the log line shows 3 backends" grep -q "reloaded: $VIP:80 -> 3 backends (nth)" "$TUNLB_LOG"
check_eq "reload 1: new connections avoid b1 and reach b3" "$(seq_of 6)" "b2 b3 b2 b3 b2 b3 "
check_eq "reload 1: stats shows b1 with weight 0" "$(t_backend_stat "$CTL" 1 weight)" 0
check_eq "reload 1: stats shows b3 (weight 1)" "$(t_backend_stat "$CTL" 3 weight)" 1
check_eq "reload 1: flows: the download still ESTABLISHED on b1" "$(dl_flow)" "ESTABLISHED $B1"

# 2. Invalid files: refused, one error line each, the previous config runs on.
refused=0
printf '[[service]]\nvip = "%s:80"\nbackends = ["%s", "%s,weight=x"]\n' "$VIP" "$B2" "$B4" >"$CONF"
if hup 'reload refused'; then
  refused=$((refused + 1))
  ok "invalid file (bad weight): 'reload refused' logged: $(grep 'reload refused' "$TUNLB_LOG" | tail -n 1 | sed 's/.*reload refused/reload refused/')"
else
  not_ok "invalid file (bad weight): no 'reload refused' line within 5 s"
fi
check_eq "bad weight refused: still the previous config (b2 b3, no b1, no b4)" "$(seq_of 4)" "b2 b3 b2 b3 "
printf '[[service]\nvip = "%s:80"\n' "$VIP" >"$CONF"
if hup 'reload refused'; then
  refused=$((refused + 1))
  ok "invalid file (broken TOML): 'reload refused' logged: $(grep 'reload refused' "$TUNLB_LOG" | tail -n 1 | sed 's/.*reload refused/reload refused/')"
else
  not_ok "invalid file (broken TOML): no 'reload refused' line within 5 s"
fi
check_eq "broken TOML refused: still the previous config" "$(seq_of 4)" "b2 b3 b2 b3 "
check_eq "one 'reload refused' line per invalid file" "$(grep -c 'reload refused' "$TUNLB_LOG" || true)" "$refused"
check_eq "after the refusals: stats still shows b3, b1 drained" \
  "$(t_backend_stat "$CTL" 3 weight) $(t_backend_stat "$CTL" 1 weight) $(t_backend_stat "$CTL" 4 weight)" "1 0 none"
check_eq "after the refusals: flows: the download still ESTABLISHED on b1" "$(dl_flow)" "ESTABLISHED $B1"

# 3. b1 removed altogether.
write_conf "$B2" "$B3"
check "reload 3 (b1 removed): 'reloaded' logged" hup 'reloaded:'
check_eq "reload 3: b1 no longer in stats" "$(t_backend_stat "$CTL" 1 weight)" none
check_eq "reload 3: new connections to b2 and b3" "$(seq_of 4)" "b2 b3 b2 b3 "
check_eq "reload 3: flows: the download still ESTABLISHED on b1" "$(dl_flow)" "ESTABLISHED $B1"

# 4. A second service on a new VIP.
VIP2=198.18.0.2
write_conf "$B2" "$B3"
printf '[[service]]\nvip = "%s:80"\nbackends = ["%s"]\n' "$VIP2" "$B4" >>"$CONF"
check "reload 4 (a second VIP): 'reloaded' logged" hup 'reloaded:'
check_eq "reload 4: the new VIP answers at once, from b4" \
  "$(for k in 1 2; do t_client curl -s --max-time 5 "http://$VIP2/" || echo fail; done | tr '\n' ' ')" "b4 b4 "
check_eq "reload 4: the first VIP still round robin over b2 b3" "$(seq_of 2)" "b2 b3 "
if [ "${TL_IO:-}" = packet ]; then
  check "reload 4: --io packet logs the new address it receives for" grep -q "now receiving for $VIP2" "$TUNLB_LOG"
  check_eq "reload 4: blackhole routes for both VIPs" "$(ip -n "${P}lb" route show proto 213 | awk '{print $1, $2}' | sort | tr '\n' ';')" "blackhole $VIP;blackhole $VIP2;"
fi
check_eq "reload 4: flows: the download still ESTABLISHED on b1" "$(dl_flow)" "ESTABLISHED $B1"

# 5. A VIP that is local to lb: refused.
printf '[[service]]\nvip = "%s:8080"\nbackends = ["%s"]\n' "$TL_LB_CLIENT_ADDR" "$B4" >>"$CONF"
check "reload 5 (a local VIP): refused, naming the address" hup "reload refused.*$TL_LB_CLIENT_ADDR (VIP) is a local address"
check_eq "reload 5: both VIPs serve on" \
  "$(t_client curl -s --max-time 5 "http://$VIP2/" || echo fail) $(seq_of 2)" "b4 b2 b3 "
if [ "${TL_IO:-}" = packet ]; then
  check_eq "reload 5: no blackhole route for the local address" \
    "$(ip -n "${P}lb" route show proto 213 | grep -c "$TL_LB_CLIENT_ADDR" || true)" 0
fi
check "the download was still in flight after every reload" tl_pid_alive "$dl"

rc=0
wait "$dl" || rc=$?
check_eq "the download completed (curl exit)" "$rc" 0
check_eq "the download arrived intact (sha256): its flow was kept" "$(t_sha "$T_DIR/dl.bin")" "$want"
rm -f "$T_DIR/dl.bin"
check "tunlb still running" tl_pid_alive "$TUNLB_PID"
