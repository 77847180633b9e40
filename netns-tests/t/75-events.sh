#!/usr/bin/env bash
# tunlb events: two listeners at once (text and --json) follow one curl from
# [NEW] through every [UPDATE] to [DESTROY] (TIME_WAIT cut to 1 s), in
# conntrack -E's layout. Then a listener is stopped (SIGSTOP) while 1500
# connections go through: they all succeed, the other listener sees every
# one of them, and the stopped one, resumed, says how many events it lost.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup
printf '[timeouts]\ntime_wait = 1\n' >"$T_DIR/lb.toml"
t_tunlb_start --mode nth --config "$T_DIR/lb.toml"
CTL=$(t_default_sock)
B1=$(tl_backend_addr 1)

listening() { grep -q '^tunlb: listening for events' "$1"; }
tl_bg "$P" lb ev-text "$T_DIR/ev-text.log" "$TUNLB_BIN" events
TEXT_PID=$TL_PID
tl_bg "$P" lb ev-json "$T_DIR/ev-json.log" "$TUNLB_BIN" events --json
check "the text listener is listening" t_wait_until 5 listening "$T_DIR/ev-text.log"
check "the JSON listener is listening" t_wait_until 5 listening "$T_DIR/ev-json.log"

rc=0
t_client curl -s --max-time 5 -o /dev/null "$VIP_URL/" || rc=$?
check_eq "curl: exit" "$rc" 0
destroyed() { grep -q '^\[DESTROY\]' "$T_DIR/ev-text.log" && [ "$(grep -c '"type":"destroy"' "$T_DIR/ev-json.log")" -ge 1 ]; }
check "both listeners see the flow destroyed (TIME_WAIT of 1 s)" t_wait_until 10 destroyed
sed 's/^/    /' "$T_DIR/ev-text.log"

ip4='198\.18\.[0-9]+\.[0-9]+'
tuple="src=$TL_CLIENT_ADDR dst=$VIP sport=([0-9]+) dport=80"
check "[NEW] in conntrack -E's layout, [UNREPLIED], the backend and the decision" \
  grep -qE "^    \[NEW\] tcp      6 (119|120) SYN_SENT $tuple \[UNREPLIED\] src=$B1 dst=$ip4 sport=80 dport=[0-9]+ backend=$B1:80 \(nth: backend 1 of 4\)\$" \
  "$T_DIR/ev-text.log"
states=$(grep -E '^ \[UPDATE\] ' "$T_DIR/ev-text.log" | awk '{ print $5 }' | tr '\n' ' ')
check "[UPDATE] per state change, from SYN_RECV to TIME_WAIT: $states" \
  grep -qE '^SYN_RECV ESTABLISHED (FIN_WAIT|CLOSE_WAIT)( [A-Z_]+)* TIME_WAIT $' <<<"$states"
check "an [UPDATE] to ESTABLISHED is [ASSURED] with the established timeout" \
  grep -qE "^ \[UPDATE\] tcp      6 4(3199[0-9]|32000) ESTABLISHED $tuple src=$B1 .* \[ASSURED\] backend=$B1:80\$" "$T_DIR/ev-text.log"
check "[DESTROY] with packet counts, [ASSURED] and the reason" \
  grep -qE "^\[DESTROY\] tcp      6 $tuple packets=[0-9]+ bytes=[0-9]+ src=$B1 dst=$ip4 sport=80 dport=[0-9]+ packets=[0-9]+ bytes=[0-9]+ \[ASSURED\] backend=$B1:80 \(timeout\)\$" \
  "$T_DIR/ev-text.log"
t_events() { grep -E '^ *\[(NEW|UPDATE|DESTROY)\]' "$T_DIR/ev-text.log" | awk '{ print $1 }' | tr -d '[]' | tr 'A-Z\n' 'a-z '; }
j_events() { grep '^{' "$T_DIR/ev-json.log" | t_json_lines "d['type']" | tr '\n' ' '; }
t_json_lines() { "$(tl_python)" -c 'import json, sys
for l in sys.stdin: d = json.loads(l); print(eval(sys.argv[1]))' "$1"; }
check_eq "the JSON listener saw the same events, in the same order" "$(j_events)" "$(t_events)"
check_eq "JSON: the NEW event's backend, mode and state" \
  "$(grep '^{' "$T_DIR/ev-json.log" | head -n 1 | t_json_lines "' '.join([d['type'], d['backend'], d['mode'], str(d['backend_index']), d['state']])")" \
  "new $B1:80 nth 1 SYN_SENT"

# A stopped listener: its queue fills, the datapath does not wait.
kill -STOP "$TEXT_PID"
tally=$(t_tally 1500)
kill -CONT "$TEXT_PID"
check_eq "1500 connections with a listener stopped: failures" "$(t_count "$tally" fail)" 0
news() { grep -c '"type":"new"' "$T_DIR/ev-json.log"; }
all_done() { [ "$(grep -c '"type":"destroy"' "$T_DIR/ev-json.log")" -ge 1501 ]; }
check "the reading listener saw every flow destroyed (TIME_WAIT of 1 s)" t_wait_until 20 all_done
check_eq "the reading listener saw every NEW flow" "$(news)" 1501
lost_said() { grep -qE '^tunlb: [0-9]+ events lost: this reader did not keep up$' "$T_DIR/ev-text.log"; }
check "the stopped listener, resumed, says it lost events" t_wait_until 10 lost_said
# Once it has caught up: what it got and what it lost is what the other got.
counts() {
  lost=$(awk '/^tunlb: [0-9]+ events lost/ { n += $2 } END { print n + 0 }' "$T_DIR/ev-text.log")
  got=$(grep -cE '^ *\[(NEW|UPDATE|DESTROY)\]' "$T_DIR/ev-text.log")
  jgot=$(grep -c '^{"' "$T_DIR/ev-json.log" || true)
}
caught_up() { counts; [ $((lost + got)) -eq "$jgot" ]; }
t_wait_until 10 caught_up || true
note "the stopped listener: $got events, $lost lost; the reading one: $jgot"
check_range "the stopped listener lost some" "$lost" 1 100000
check_eq "events it got plus events it lost" "$((lost + got))" "$jgot"
check_eq "tunlb still forwards: a curl" "$(t_client curl -s --max-time 5 -o /dev/null -w '%{http_code}' "$VIP_URL/")" 200
check_eq "tunlb stats still answers on its socket" "$(t_query stats "$CTL" --json | t_json 'd["new_flows"]')" 1502
tl_stop "$P" ev-text TERM 5
tl_stop "$P" ev-json TERM 5
