#!/usr/bin/env bash
# Health checks (--health-check with a fast [health] table: every 0.2 s, fall
# 2, rise 2, timeout 0.2 s), nth over b1 b2 b3, judged by `tunlb stats --json`
# and by where new connections land:
#  - b3's server stopped: b3 goes down within a bounded time, new connections
#    all go to b1 and b2 (none fails);
#  - b2's checks fail while its server lives (a blackhole route in b2 toward
#    the balancer's own address drops the checks' SYN-ACKs, not the traffic
#    to the VIP): b2 goes down, its established download keeps going;
#  - both back: up again, and they take connections again;
#  - downloads from b1 and b2 in flight all along arrive intact;
#  - every backend down: a new connection gets an RST at once (curl exit 7),
#    the log says "every backend of ... is down" once; one back: served.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup
CTL=$T_DIR/control.sock
CONF=$T_DIR/health.toml
t_fast_health_conf "$CONF"
mapfile -t three < <(t_backend_flags 1 1 1)
t_tunlb_start --vip "$VIP:80" "${three[@]}" --mode nth --health-check --config "$CONF" --control "$CTL"
want=$(tl_sha256 "$P" big.bin)
LB_ADDR=$TL_LB_BACKEND_ADDR

tally_line() { tr '\n' ' ' <<<"$1"; }

for i in 1 2 3; do
  check_eq "b$i is up at start" "$(t_backend_stat "$CTL" "$i" up)" true
done

# Two long downloads: nth gives the first to b1, the second to b2.
dl_start() {  # dl_start NAME: sets DL_PID
  t_client curl -s --max-time 60 --limit-rate 8M -D "$T_DIR/$1.headers" \
    -o "$T_DIR/$1.bin" "$VIP_URL/file/big.bin" &
  DL_PID=$!
  t_wait_until 5 grep -qsi '^X-Backend' "$T_DIR/$1.headers" || true
}
dl_start d1
d1=$DL_PID
dl_start d2
d2=$DL_PID
check_eq "download 1 is served by b1" "$(t_header_backend "$T_DIR/d1.headers")" b1
check_eq "download 2 is served by b2" "$(t_header_backend "$T_DIR/d2.headers")" b2

# (1) b3's server stopped (by its recorded PID).
tl_backend_stop "$P" 3
t_wait_backend "$CTL" 3 false "marked down after its server stopped"
check "the log names b3 down" grep -q "backend $(tl_backend_addr 3):80 of $VIP:80 is down" "$TUNLB_LOG"
tally=$(t_tally 30)
note "b3 down, 30 connections: $(tally_line "$tally")"
check_eq "b3 down: 30 connections, none failed" "$(t_count "$tally" fail)" 0
check_eq "b3 down: none went to b3" "$(t_count "$tally" b3)" 0
check_eq "b3 down: b1 got half" "$(t_count "$tally" b1)" 15
check_eq "b3 down: b2 got half" "$(t_count "$tally" b2)" 15

# (2) b2's checks fail, its server and its download live on.
ip -n "${P}b2" route add blackhole "$LB_ADDR/32"
t_wait_backend "$CTL" 2 false "marked down while its checks time out"
tally=$(t_tally 10)
note "b2 and b3 down, 10 connections: $(tally_line "$tally")"
check_eq "b2 and b3 down: all 10 connections to b1" "$(t_count "$tally" b1)" 10
check "download 2 (on b2, now down) is still in flight" tl_pid_alive "$d2"
check "download 1 (on b1) is still in flight" tl_pid_alive "$d1"
check_eq "flows: b2 keeps its ESTABLISHED download flow while down" \
  "$(t_query flows "$CTL" --json | t_json "len([f for f in d['flows'] if f['backend'] == '$(tl_backend_addr 2):80' and f['state'] == 'ESTABLISHED'])")" 1

# (3) Both back.
ip -n "${P}b2" route del blackhole "$LB_ADDR/32"
tl_backend_start "$P" 3
t_wait_backend "$CTL" 2 true "up again once its checks pass"
t_wait_backend "$CTL" 3 true "up again once its server is back"
check "the log names b3 up again" grep -q "backend $(tl_backend_addr 3):80 of $VIP:80 is up" "$TUNLB_LOG"
tally=$(t_tally 30)
note "all up again, 30 connections: $(tally_line "$tally")"
check_eq "all up again: 30 connections, none failed" "$(t_count "$tally" fail)" 0
for i in 1 2 3; do
  check_eq "all up again: b$i got 10 of 30" "$(t_count "$tally" "b$i")" 10
done

for n in 1 2; do
  pid=$d1
  [ "$n" = 2 ] && pid=$d2
  rc=0
  wait "$pid" || rc=$?
  check_eq "download $n completed (curl exit)" "$rc" 0
  check_eq "download $n intact (sha256)" "$(t_sha "$T_DIR/d$n.bin")" "$want"
  rm -f "$T_DIR/d$n.bin"
done

# (4) Every backend down.
for i in 1 2 3; do tl_backend_stop "$P" "$i"; done
for i in 1 2 3; do t_wait_backend "$CTL" "$i" false "down with every server stopped"; done
t0=$(t_now_ms)
rc=0
t_client curl -s --max-time 10 -o /dev/null "$VIP_URL/" || rc=$?
ms=$(($(t_now_ms) - t0))
check_eq "every backend down: curl gets connection refused (exit 7)" "$rc" 7
# An RST at once; 3.5 s leaves room for a lost SYN on a busy machine.
check_range "every backend down: curl failed fast (ms, --max-time 10 s)" "$ms" 0 3500
check_range "stats: resets sent" "$(t_query stats "$CTL" --json | t_json 'd["resets_sent"]')" 1 1000
check_range "stats: no_backend drops" "$(t_query stats "$CTL" --json | t_json 'd["dropped"]["no_backend"]')" 1 1000
sleep 1 # five more check rounds, all down
all_down=$(grep -c "every backend of $VIP:80 is down" "$TUNLB_LOG" || true)
check_eq "the log says 'every backend of $VIP:80 is down' once" "$all_down" 1

tl_backend_start "$P" 1
t_wait_backend "$CTL" 1 true "up again after all were down"
check_eq "b1 back: served by b1" "$(t_client curl -s --max-time 5 "$VIP_URL/")" b1
check "tunlb still running" tl_pid_alive "$TUNLB_PID"
