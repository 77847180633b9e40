#!/usr/bin/env bash
# Faults.
#  1. A backend dies mid-transfer: b1's server is killed (SIGKILL, by its
#     recorded PID) during a rate-limited download from it. The client's curl
#     ends with an error promptly (the kernel closes the dead process's socket:
#     what was queued still arrives, then a FIN, and the body comes up
#     short), not a hang; `tunlb flows` soon no
#     longer shows the flow ESTABLISHED; health checks take b1 out and new
#     connections all go elsewhere.
#  2. tunlb killed with SIGKILL during a download and started again at once
#     with the same arguments (same TUN name, same control socket): it is
#     ready within seconds and serves new connections. The download in flight
#     is lost, as conntrack's flows are on reboot (no loose pickup): its
#     packets reach the new instance and are dropped (invalid_no_flow for the
#     client's, no_service for the backend's) and the client gives up at its
#     --max-time.
#  3. After that restart, connections whose SNAT tuple a backend still holds
#     in TIME_WAIT (from other client addresses, before the restart) are
#     served (see below).
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup
CTL=$T_DIR/control.sock
CONF=$T_DIR/health.toml
printf '[health]\ninterval = 0.2\nrise = 2\nfall = 2\ntimeout = 0.2\n' >"$CONF"
ARGS=(--mode nth --health-check --config "$CONF" --control "$CTL")
t_tunlb_start "${ARGS[@]}"
B1=$(tl_backend_addr 1):80

# flow_state PORT: the state of the flow from the client's PORT, or "gone".
flow_state() {
  t_query flows "$CTL" --json |
    t_json "next((f['state'] for f in d['flows'] if f['original']['src'] == '$TL_CLIENT_ADDR:$1'), 'gone')"
}
not_established() { [ "$(flow_state "$1")" != ESTABLISHED ]; }
is_down() { [ "$(t_backend_stat "$CTL" "$1" up)" = false ]; }
dl_port() {  # the client port of the one ESTABLISHED flow on BACKEND
  t_query flows "$CTL" --json |
    t_json "next((f['original']['src'].split(':')[1] for f in d['flows'] if f['state'] == 'ESTABLISHED' and f['backend'] == '$1'), 0)"
}

# 1. A backend dies mid-transfer.
t_client curl -s --max-time 60 --limit-rate 8M -D "$T_DIR/d1.headers" -o "$T_DIR/d1.bin" \
  "$VIP_URL/file/big.bin" &
d1=$!
t_wait_until 5 grep -qsi '^X-Backend' "$T_DIR/d1.headers" || true
check_eq "download 1 is served by b1" "$(t_header_backend "$T_DIR/d1.headers")" b1
sleep 1
port=$(dl_port "$B1")
check_eq "download 1's flow is ESTABLISHED before the kill" "$(flow_state "$port")" ESTABLISHED
read -r server _ <"$(tl_state "$P")/pids/server-b1.pid"
t0=$(t_now_ms)
# Reaped here, quietly: no "Killed" job notice on stderr.
{ tl_stop "$P" server-b1 KILL 5; wait "$server" || true; } 2>/dev/null
for ((k = 0; k < 300; k++)); do
  tl_pid_alive "$d1" || break
  sleep 0.1
done
ms=$(($(t_now_ms) - t0))
if tl_pid_alive "$d1"; then
  not_ok "download 1: curl still running 30 s after b1's server was killed (a hang)"
  kill "$d1" 2>/dev/null || true
fi
rc=0
wait "$d1" || rc=$?
size=$(stat -c %s "$T_DIR/d1.bin" 2>/dev/null || echo 0)
note "download 1: curl exit $rc ${ms} ms after the kill, $size of $((TL_BIG_MIB << 20)) bytes"
check "download 1: curl reports an error (exit $rc), not success" test "$rc" -ne 0
check_range "download 1: curl ended promptly after the kill (ms)" "$ms" 0 10000
check_range "download 1: the body came up short (bytes)" "$size" 0 $(((TL_BIG_MIB << 20) - 1))
rm -f "$T_DIR/d1.bin"
if t_wait_until 10 not_established "$port"; then
  ok "download 1's flow left ESTABLISHED (now: $(flow_state "$port"))"
else
  not_ok "download 1's flow still ESTABLISHED 10 s after curl ended"
fi
if t_wait_until 5 is_down 1; then ok "health checks took b1 down"; else not_ok "b1 not marked down within 5 s"; fi
tally=$(t_tally 12)
note "b1 dead, 12 connections: $(tr '\n' ' ' <<<"$tally")"
check_eq "b1 dead: 12 connections, none failed" "$(t_count "$tally" fail)" 0
check_eq "b1 dead: none went to b1" "$(t_count "$tally" b1)" 0
tl_backend_start "$P" 1

# 2. tunlb killed with SIGKILL, restarted at once.
t_client curl -s --max-time 8 --limit-rate 4M -D "$T_DIR/d2.headers" -o "$T_DIR/d2.bin" \
  "$VIP_URL/file/big.bin" &
d2=$!
t_wait_until 5 grep -qsi '^X-Backend' "$T_DIR/d2.headers" || true
sleep 0.5
old=$TUNLB_PID
kill -KILL "$old"
rc=0
wait "$old" 2>/dev/null || rc=$?
check_eq "tunlb killed: exit status (SIGKILL)" "$rc" 137
t0=$(t_now_ms)
t_tunlb_start "${ARGS[@]}"
ms=$(($(t_now_ms) - t0))
check_range "restarted at once on the same TUN name and control socket: ready (ms)" "$ms" 0 5000
check_eq "the restarted instance serves new connections" \
  "$(for _ in 1 2 3 4; do t_client curl -s --max-time 5 "$VIP_URL/" || echo fail; done | tr '\n' ' ')" "b1 b2 b3 b4 "
# lost: packets of the old download the new instance dropped: the client's
# (to VIP:80, a service, not a SYN: invalid_no_flow) and the backend's (to
# VIP:client port, no service there: no_service).
lost() { t_query stats "$CTL" --json | t_json 'd["dropped"]["invalid_no_flow"] + d["dropped"]["no_service"]'; }
lost_some() { [ "$(lost)" -gt 0 ]; }
if t_wait_until 5 lost_some; then
  ok "the lost download's packets reach the new instance and are dropped ($(t_query stats "$CTL" --json | t_json '"invalid_no_flow=%d no_service=%d" % (d["dropped"]["invalid_no_flow"], d["dropped"]["no_service"])'))"
else
  not_ok "the new instance dropped none of the old download's packets within 5 s (invalid_no_flow + no_service = $(lost))"
fi
rc=0
wait "$d2" || rc=$?
size=$(stat -c %s "$T_DIR/d2.bin" 2>/dev/null || echo 0)
note "download 2 (in flight across the SIGKILL): curl exit $rc, $size of $((TL_BIG_MIB << 20)) bytes"
check "download 2 is lost with the killed instance's flows (curl exit $rc)" test "$rc" -ne 0
check_eq "the restarted instance did not pick the lost flow up" \
  "$(t_query flows "$CTL" --json | t_json "len([f for f in d['flows'] if f['state'] == 'ESTABLISHED'])")" 0
rm -f "$T_DIR/d2.bin"
check "tunlb still running" tl_pid_alive "$TUNLB_PID"

# 3. Backends' TIME_WAIT across a restart. One instance (a single backend,
#    b1) carries 8 connections from client address A, each from its own port
#    4500j, and b1 closes each first: b1 holds (b1:80, VIP:4500j) in
#    TIME_WAIT for 60 s. tunlb is killed and started again, then 8 other
#    client addresses B_j connect from port 4500j at once. MASQUERADE keeps
#    their ports, so each SYN reaches a TIME_WAIT socket of b1; B_j's TCP
#    timestamps have their own random offset, so about half the SYNs are
#    older than A's and b1 answers them with its TIME_WAIT ACK. The client
#    answers that ACK with an RST whose sequence number is exactly what b1
#    expects (RFC 793), which clears the TIME_WAIT, and its next SYN goes
#    through -- if the RST gets to b1. Every connection must succeed.
A=198.18.1.30
ip -n "${P}client" addr add "$A/24" dev eth0
for j in 0 1 2 3 4 5 6 7; do ip -n "${P}client" addr add "198.18.1.4$j/24" dev eth0; done
ONE=(--vip "$VIP:80" --backend "$B1" --control "$CTL")
kill -KILL "$TUNLB_PID"
wait "$TUNLB_PID" 2>/dev/null || true
t_tunlb_start_cmd "$TUNLB_BIN" run $(t_io_args | tr '\n' ' ') "${ONE[@]}"
for j in 0 1 2 3 4 5 6 7; do
  # --ignore-content-length: curl reads to b1's FIN, so b1 closes first.
  t_client curl -s --max-time 5 --ignore-content-length --interface "$A" --local-port "4500$j" \
    -o /dev/null "$VIP_URL/" || true
done
tw=$(tl_exec "$P" b1 ss -Htn state time-wait "( sport = :80 )" | grep -c "$VIP:4500[0-7]" || true)
check_eq "b1 holds the 8 connections from $A in TIME_WAIT" "$tw" 8
kill -KILL "$TUNLB_PID"
wait "$TUNLB_PID" 2>/dev/null || true
t_tunlb_start_cmd "$TUNLB_BIN" run $(t_io_args | tr '\n' ' ') "${ONE[@]}"
pids=()
for j in 0 1 2 3 4 5 6 7; do
  t_client curl -s --max-time 5 --interface "198.18.1.4$j" --local-port "4500$j" \
    -o "$T_DIR/tw-$j.out" -w '%{http_code} %{time_total}\n' "$VIP_URL/" >"$T_DIR/tw-$j.res" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || true; done
served=0 results=()
for j in 0 1 2 3 4 5 6 7; do
  [ "$(cat "$T_DIR/tw-$j.out" 2>/dev/null)" = b1 ] && served=$((served + 1))
  results+=("4500$j:$(tr -d '\n' <"$T_DIR/tw-$j.res")")
done
note "connections from B_j (port: http code, seconds): ${results[*]}"
note "the new instance's drops: $(t_query stats "$CTL" | tail -n 1)"
check_eq "after a restart, 8 connections from other addresses onto b1's TIME_WAIT tuples: all served" "$served" 8
check "tunlb still running" tl_pid_alive "$TUNLB_PID"
