#!/usr/bin/env bash
# Redispatch (issue 12): a client whose SYN went to a backend that dies before
# answering is sent to another backend on its next SYN retransmission once the
# backend is down (HAProxy's `option redispatch`, IPVS's expire_nodest_conn);
# a retransmission to a backend that is still up keeps it.
# nth over b1 b2, health checks every 0.2 s (fall 2, rise 2, timeout 0.2 s).
# "Drops clients' SYNs" below is a blackhole route inside the backend's
# namespace toward the SNAT address (the VIP's): the backend's SYN-ACKs vanish,
# while the health checks (from the balancer's own address) still pass.
#  1. b1 drops clients' SYNs; a `curl --connect-timeout 10` sends its SYN to
#     b1 (nth's first turn; flows shows it SYN_SENT on b1); then b1's checks
#     fail too (a second blackhole, toward the balancer's address): b1 goes
#     down. The client's next SYN retransmission (Linux: 1 s, 3 s, 7 s after
#     the first) must go to b2: curl is answered by b2 in under 8 s.
#  2. b1 back up; both drop clients' SYNs, both stay up. A curl's SYN goes to
#     one of them (X); once the client has retransmitted it (the flow counts
#     2 original packets, still on X) the blackholes go: the next
#     retransmission is answered by X.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup
CTL=$T_DIR/control.sock
CONF=$T_DIR/health.toml
t_fast_health_conf "$CONF"
mapfile -t two < <(t_backend_flags 1 1)
t_tunlb_start --vip "$VIP:80" "${two[@]}" --mode nth --health-check --config "$CONF" --control "$CTL"
LB_ADDR=$TL_LB_BACKEND_ADDR
SNAT=$VIP # the default MASQUERADE address: the VIP's

# syn_flow: the SYN_SENT flow as "BACKEND CLIENT_PORT ORIGINAL_PACKETS", or "none".
syn_flow() {
  t_query flows "$CTL" --json |
    t_json "next(('%s %s %d' % (f['backend'], f['original']['src'].split(':')[1], f['original']['packets']) for f in d['flows'] if f['state'] == 'SYN_SENT'), 'none')"
}
has_syn_flow() { [ "$(syn_flow)" != none ]; }
# flow_of PORT: the flow of client port PORT as "STATE BACKEND PACKETS", or "gone".
flow_of() {
  t_query flows "$CTL" --json |
    t_json "next(('%s %s %d' % (f['state'], f['backend'], f['original']['packets']) for f in d['flows'] if f['original']['src'] == '$TL_CLIENT_ADDR:$1'), 'gone')"
}
retransmitted() { [ "$(flow_of "$1" | awk '{ print $3 }')" -ge 2 ] 2>/dev/null; }
name_of() {  # name_of ADDR:PORT: b1, b2 or the address itself
  local i
  for i in 1 2; do [ "$1" = "$(tl_backend_addr "$i"):80" ] && { echo "b$i"; return; }; done
  echo "$1"
}

t_wait_backend "$CTL" 1 true "up at start"
t_wait_backend "$CTL" 2 true "up at start"

# 1. b1 dies after the client's SYN reached it.
ip -n "${P}b1" route add blackhole "$SNAT/32"
t0=$(t_now_ms)
t_client curl -s --connect-timeout 10 --max-time 15 -D "$T_DIR/r1.headers" -o "$T_DIR/r1.body" "$VIP_URL/" &
c1=$!
if t_wait_until 5 has_syn_flow; then
  read -r be port pk <<<"$(syn_flow)"
  note "the client's SYN: port $port, backend $be, $pk original packet(s), $T_WAITED_MS ms after curl started"
  check_eq "1. the first SYN went to b1 (nth's first turn), which does not answer" "$(name_of "$be")" b1
else
  not_ok "1. the client's SYN shows as a SYN_SENT flow within 5 s"
fi
ip -n "${P}b1" route add blackhole "$LB_ADDR/32"
t_wait_backend "$CTL" 1 false "marked down while the client waits for its SYN-ACK"
down_ms=$(($(t_now_ms) - t0))
rc=0
wait "$c1" || rc=$?
ms=$(($(t_now_ms) - t0))
note "curl ended after $ms ms (b1 was down $down_ms ms after curl started); curl exit $rc"
check_eq "1. curl --connect-timeout 10 connected and got an answer (exit)" "$rc" 0
check_eq "1. the answer came from b2 (the retransmitted SYN was re-dispatched)" \
  "$(tr -d '\n' 2>/dev/null <"$T_DIR/r1.body")" b2
check_eq "1. X-Backend header of the answer" "$(t_header_backend "$T_DIR/r1.headers")" b2
check_range "1. time from curl's start to the answer (ms; SYN retransmissions at 1 s and 3 s)" "$ms" 0 7999
check_eq "1. flows: the client's connection is on b2 now" "$(flow_of "${port:-0}" | awk '{ print $2 }')" \
  "$(tl_backend_addr 2):80"

ip -n "${P}b1" route del blackhole "$LB_ADDR/32"
ip -n "${P}b1" route del blackhole "$SNAT/32"
t_wait_backend "$CTL" 1 true "up again once its checks pass"

# 2. Both up, both silent to clients: a retransmission keeps its backend.
for i in 1 2; do ip -n "${P}b$i" route add blackhole "$SNAT/32"; done
t_client curl -s --connect-timeout 10 --max-time 15 -D "$T_DIR/r2.headers" -o "$T_DIR/r2.body" "$VIP_URL/" &
c2=$!
be='' port=''
if t_wait_until 5 has_syn_flow; then
  read -r be port pk <<<"$(syn_flow)"
  note "the client's SYN: port $port, backend $be"
else
  not_ok "2. the client's SYN shows as a SYN_SENT flow within 5 s"
fi
if t_wait_until 5 retransmitted "${port:-0}"; then
  ok "2. the client retransmitted its SYN ($(flow_of "$port"))"
else
  not_ok "2. the client retransmitted its SYN within 5 s: flow $(flow_of "${port:-0}")"
fi
check_eq "2. after the retransmission the flow keeps its backend (both are up)" \
  "$(flow_of "${port:-0}" | awk '{ print $1, $2 }')" "SYN_SENT $be"
for i in 1 2; do ip -n "${P}b$i" route del blackhole "$SNAT/32"; done
rc=0
wait "$c2" || rc=$?
check_eq "2. curl connected once the blackholes were gone (exit)" "$rc" 0
check_eq "2. answered by the backend the first SYN went to" \
  "$(tr -d '\n' 2>/dev/null <"$T_DIR/r2.body")" "$(name_of "${be:-none}")"
check_eq "2. b1 and b2 stayed up" "$(t_backend_stat "$CTL" 1 up) $(t_backend_stat "$CTL" 2 up)" "true true"
check "tunlb still running" tl_pid_alive "$TUNLB_PID"
