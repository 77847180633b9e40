#!/usr/bin/env bash
# Backend down. (1) b4's server stopped: a connection given to b4 gets b4's
# RST back through tunlb (curl: connection refused) at once, and the other
# backends keep serving. (2) b3 unreachable: lb's kernel answers "host
# unreachable" to the SNAT address (into the TUN), and tunlb translates it back
# to the client, which fails instead of waiting out its timeout: (a) at once
# with an "unreachable" route to b3 in lb, (b) after lb's failed ARP attempts
# (3 s, up to about 10 s from a stale entry) with b3's link down.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup
# With a control socket (tunlb flows), the refused flows' fate is visible too.
ctl=()
if "$TUNLB_BIN" run --help | grep -q -- '--control'; then ctl=(--control "$T_DIR/control.sock"); fi
t_tunlb_start --mode nth "${ctl[@]}"

# req: one curl from the client to the VIP; prints "EXIT MS BODY".
req() {
  local t0 rc=0 body
  t0=$(t_now_ms)
  body=$(t_client curl -s --max-time "${MAXT:-10}" "$VIP_URL/") || rc=$?
  printf '%s %s %s\n' "$rc" "$(($(t_now_ms) - t0))" "${body:--}"
}

tl_backend_stop "$P" 4
results=()
for n in 1 2 3 4 5 6 7 8; do results+=("$(req)"); done
note "b4 stopped, 8 requests (exit ms body): $(printf '[%s] ' "${results[@]}")"
for n in 0 1 2 4 5 6; do
  read -r rc ms body <<<"${results[$n]}"
  check_eq "request $((n + 1)) served by b$((n % 4 + 1)) while b4 is down" "$rc:$body" "0:b$((n % 4 + 1))"
done
for n in 3 7; do
  read -r rc ms body <<<"${results[$n]}"
  check_eq "request $((n + 1)) (b4's turn) refused: curl exit 7" "$rc" 7
  # Immediate in a quiet machine; 3.5 s leaves room for one or two lost SYNs
  # on a busy one (SYN retransmits after 1 s, then 2 s) and is still far from
  # the 10 s curl would wait without the RST.
  check_range "request $((n + 1)) (b4's turn) failed fast (ms, --max-time 10 s)" "$ms" 0 3500
done

if [ ${#ctl[@]} -gt 0 ]; then
  flows=$("$TUNLB_BIN" flows "${ctl[@]}" | grep 'backend=198.18.2.6:80' || true)
  note "b4's flows: $(if [ -n "$flows" ]; then awk '{ print $4, $3 "s" }' <<<"$flows" | tr '\n' ' '; else echo "none (removed)"; fi)"
  # Cleaned up: removed already, or CLOSE with at most 10 s to live (Linux).
  check_eq "refused flows are gone or CLOSE with <= 10 s left (others)" \
    "$(awk 'NF && !($4 == "CLOSE" && $3 <= 10) { n++ } END { print n + 0 }' <<<"$flows")" 0
else
  note "this tunlb has no control socket: the refused flows' state is not checked"
fi

tl_backend_start "$P" 4

# phase TITLE MAXTIME LIMIT_MS: 4 requests (nth: b1 b2 b3 b4); b3's must fail
# with curl exit 7 within LIMIT_MS, the others are served.
phase() {
  local title=$1 rc ms body n
  MAXT=$2
  results=()
  for n in 1 2 3 4; do results+=("$(req)"); done
  note "$title, 4 requests (exit ms body): $(printf '[%s] ' "${results[@]}")"
  for n in 0 1 3; do
    read -r rc ms body <<<"${results[$n]}"
    check_eq "$title: request $((n + 1)) served by b$((n + 1))" "$rc:$body" "0:b$((n + 1))"
  done
  read -r rc ms body <<<"${results[2]}"
  check_eq "$title: b3's turn gets curl exit 7 (host unreachable, translated ICMP)" "$rc" 7
  check_range "$title: b3's turn failed well before curl's ${MAXT} s limit (ms)" "$ms" 0 "$3"
}

ip -n "${P}lb" route add unreachable "$(tl_backend_addr 3)/32"
phase "unreachable route to b3" 20 3500
ip -n "${P}lb" route del unreachable "$(tl_backend_addr 3)/32"

ip -n "${P}b3" link set eth0 down
ip -n "${P}lb" neigh flush dev br0 to "$(tl_backend_addr 3)" 2>/dev/null || true
phase "b3's link down" 30 15000
check "tunlb still running" tl_pid_alive "$TUNLB_PID"
