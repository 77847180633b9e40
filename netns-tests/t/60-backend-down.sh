#!/usr/bin/env bash
# Backend down. (1) b4's server stopped: a connection given to b4 gets b4's
# RST back through tunlb (curl: connection refused) at once, and the other
# backends keep serving. (2) b3's link down: lb's kernel cannot resolve b3 and
# answers "host unreachable" to the SNAT address (into the TUN) after its
# ARP attempts (about 3 s); tunlb translates it back to the client, which
# fails fast instead of waiting out its timeout.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup
# With a control socket (tunlb flows), the refused flows' fate is visible too.
ctl=()
if "$TUNLB_BIN" run --help | grep -q -- '--control'; then ctl=(--control "$T_DIR/control.sock"); fi
t_tunlb_start --mode nth "${ctl[@]}"

# req URL: prints "EXIT MS BODY" for one curl from the client.
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
  check_range "request $((n + 1)) (b4's turn) failed fast (ms, --max-time 10 s)" "$ms" 0 1000
done

if [ ${#ctl[@]} -gt 0 ]; then
  flows=$("$TUNLB_BIN" flows "${ctl[@]}" | grep 'backend=198.18.2.6:80' || true)
  note "b4's flows: $(awk '{ print $4, $3 "s" }' <<<"$flows" | tr '\n' ' ')"
  check_eq "both refused flows are tracked as CLOSE, gone within 10 s" \
    "$(awk '$4 == "CLOSE" && $3 <= 10 { n++ } END { print n + 0 }' <<<"$flows")" 2
else
  note "this tunlb has no control socket: the refused flows' state is not checked"
fi

tl_backend_start "$P" 4
ip -n "${P}b3" link set eth0 down
ip -n "${P}lb" neigh flush dev br0 to "$(tl_backend_addr 3)" 2>/dev/null || true
MAXT=20
results=()
for n in 1 2 3 4; do results+=("$(req)"); done
note "b3 unreachable, 4 requests (exit ms body): $(printf '[%s] ' "${results[@]}")"
for n in 0 1 3; do
  read -r rc ms body <<<"${results[$n]}"
  check_eq "request $((n + 1)) served by b$((n + 1)) while b3 is unreachable" "$rc:$body" "0:b$((n + 1))"
done
read -r rc ms body <<<"${results[2]}"
check_eq "b3's turn: curl exit 7 (no route to host, from translated ICMP)" "$rc" 7
check_range "b3's turn failed well before curl's 20 s limit (ms)" "$ms" 0 8000
check "tunlb still running" tl_pid_alive "$TUNLB_PID"
