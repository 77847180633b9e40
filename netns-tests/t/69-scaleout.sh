#!/usr/bin/env bash
# N instances behind ECMP (issue 14). Three tunlb instances lb1..lb3, each on
# its own TUN with the same VIP 198.18.0.1:80 over the same b1..b4, --mode
# maglev, and a SNAT address of its own (198.18.0.1I, routed back to lbI by
# the backends), behind a router namespace whose route to the VIP is a
# resilient nexthop group (64 buckets, idle timer 3 s, hash over addresses,
# protocol and ports). Topology and helpers: scripts/lib-scaleout.sh.
#  1. 300 connections from 6 client addresses: each instance takes exactly
#     the connections the router's hash sends it (`ip route get` per tuple =
#     the SYNs on the wire to its MAC, dumpcap on the router's front bridge =
#     its own stats), and about a third: within mean +- 5 sd of
#     Binomial(300, b/64), b its buckets (21 or 22: [57, 140] or [61, 145]).
#     All connections from one client address get one backend, whichever
#     instance carried them.
#  2. The same 12 tuples (address, --local-port) sent to each instance in
#     turn (a policy rule in the router pins the VIP to one next hop): every
#     tuple gets the same X-Backend from all three, and the 12 reach more
#     than one backend.
#  3. Twelve rate-limited 1 MiB downloads, 4 per instance (ports chosen with
#     `ip route get`). lb4 joins the group under that load: it gets idle
#     buckets only (each download's tuple still routes to its instance), 160
#     new connections all succeed, lb4 takes its binomial share of them, and
#     it never sees a packet of a flow it does not know.
#  4. kill -9 of lb1 during the downloads. Short connections whose buckets
#     are the survivors' run across the kill and the removal of next hop 1
#     and all succeed; tuples whose bucket is lb1's fail until the script
#     removes next hop 1 from the group (immediately: no bucket stays on it),
#     then succeed. The downloads through the survivors complete with the
#     right sha256; the downloads lost are exactly those lb1 listed (tunlb
#     flows) before the kill.
# The only draws: the router's hash seed (random per boot) decides which
# tuple goes where; the bounds above are 5 sd wide, and the tuples of 3 and 4
# are chosen after asking the router (enough candidates that finding too few
# is more than 8 sd away).
SO_IDLE_TIMER=3
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=scripts/lib-scaleout.sh
. "$T_ROOT/scripts/lib-scaleout.sh"

URL="$VIP_URL/"
FILE_URL="$VIP_URL/file/small.bin"
LONG_RATE=48k

t_setup_scaleout 3

# new_flows_all: "N1 N2 N3 N4" (0 for an instance not running).
new_flows_all() {
  local i
  for i in 1 2 3 4; do so_new_flows "$P" "$i"; done | tr '\n' ' '
}
# established I: "ADDR:PORT" of the ESTABLISHED flows of instance I.
established() {
  so_query "$P" "$1" flows --json | t_json "[f['original']['src'] for f in d['flows'] if f['state'] == 'ESTABLISHED']"
}
# bounds N B: the 5-sd binomial bounds for a share of B buckets out of SO_BUCKETS.
bounds() { t_binomial_bounds "$1" "$2" "$SO_BUCKETS"; }
buckets_of() { so_buckets "$P" | awk -v i="$1" '$1 == i { n = $2 } END { print n + 0 }'; }
# pick N WANT BASE ADDRS...: N "ADDR PORT" tuples (from ADDRS, ports BASE..)
# that the router now sends to an instance in WANT ("2 3 4"), cycling over the
# addresses. 10*N + 200 candidates: with a share of 1/4 (the smallest here)
# N is more than 8 sd below the mean number of hits.
pick() {
  local n=$1 want=$2 base=$3 k
  shift 3
  local -a addrs=("$@")
  for ((k = 0; k < 10 * n + 200; k++)); do
    printf '%s %d\n' "${addrs[k % ${#addrs[@]}]}" "$((base + k))"
  done | so_predict_many "$P" | awk -v want=" $want " -v n="$n" \
    'index(want, " " $3 " ") && c < n { print $1, $2; c++ }'
}

# ---------------------------------------------------------------- 1. balance
N1=300
ADDRS1=(0 1 2 3 4 5)
read -r -a nf0 <<<"$(new_flows_all)"
t_capture_start router fr cap-front "$T_DIR/front.pcap" 'tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn'
out1=$(for a in "${ADDRS1[@]}"; do so_curl "$P" "$(so_client_addr "$a")" "$URL?n=[1-$((N1 / ${#ADDRS1[@]}))]"; done)
t_capture_stop cap-front
read -r -a nf1 <<<"$(new_flows_all)"
check_eq "1: $N1 connections from ${#ADDRS1[@]} client addresses answered" "$(awk '$3 == 200' <<<"$out1" | wc -l)" "$N1"
pred1=$(awk '$3 == 200 { print $1, $2 }' <<<"$out1" | so_predict_many "$P")
macs=$(for i in 1 2 3; do printf '%s %d\n' "$(ip netns exec "${P}lb$i" cat /sys/class/net/eth0/address)" "$i"; done)
# The first SYN of each tuple on the wire: "ADDR PORT INSTANCE".
wire1=$(tshark -n -r "$T_DIR/front.pcap" -T fields -e ip.src -e tcp.srcport -e eth.dst 2>/dev/null |
  awk 'NR == FNR { m[$1] = $2; next } !seen[$1 " " $2]++ { print $1, $2, ($3 in m) ? m[$3] : "none" }' <(printf '%s\n' "$macs") -)
check_eq "1: the SYN of each connection went to the instance ip route get names" \
  "$(awk 'NR == FNR { w[$1 " " $2] = $3; next } w[$1 " " $2] != $3 { bad++ } END { print bad + 0 }' <(printf '%s\n' "$wire1") - <<<"$pred1")" 0
for i in 1 2 3; do
  took=$((nf1[i - 1] - nf0[i - 1]))
  wire=$(awk -v i="$i" '$3 == i' <<<"$wire1" | wc -l)
  pred=$(awk -v i="$i" '$3 == i' <<<"$pred1" | wc -l)
  check_eq "1: lb$i: connections by its stats / on the wire / by the router's hash" "$took/$wire/$pred" "$pred/$pred/$pred"
  b=$(buckets_of "$i")
  read -r lo hi < <(bounds "$N1" "$b")
  check_range "1: lb$i took about a third (it holds $b of $SO_BUCKETS buckets; Binomial($N1, $b/$SO_BUCKETS) +- 5 sd)" "$took" "$lo" "$hi"
done
note "1: backends by client address: $(awk '$3 == 200 { print $1, $4 }' <<<"$out1" | sort -u | awk '{ printf "%s=%s ", $1, $2 }')"
check_eq "1: every client address got one backend, whichever instance carried it" \
  "$(awk '$3 == 200 { print $1, $4 }' <<<"$out1" | sort -u | awk '{ print $1 }' | uniq -d | wc -l)" 0

# ------------------------------------------------------ 2. same tuple, same backend
K=12
tuples2=$(for ((k = 0; k < K; k++)); do printf '%s %d\n' "$(so_client_addr $((10 + k)))" $((45000 + k)); done)
for i in 1 2 3; do
  so_pin "$P" "$i"
  before=$(so_new_flows "$P" "$i")
  res[i]=$(while read -r a port; do so_curl "$P" "$a" --local-port "$port" "$URL"; done <<<"$tuples2")
  check_eq "2: pinned to lb$i: it took the $K tuples" "$(($(so_new_flows "$P" "$i") - before))" "$K"
  so_unpin "$P"
  # The same tuples again, through the next instance: the client's TIME-WAIT
  # sockets would refuse the ports (tcp_tw_reuse 0, and curl binds).
  ip netns exec "${P}client" ss -K -tan state time-wait '( dport = :80 )' >/dev/null 2>&1 || true
  check_eq "2: ss -K removed the client's TIME-WAIT sockets" \
    "$(ip netns exec "${P}client" ss -Htan state time-wait | wc -l)" 0
done
agree=$(paste -d ' ' <(printf '%s\n' "${res[1]}") <(printf '%s\n' "${res[2]}") <(printf '%s\n' "${res[3]}") |
  awk '$3 == 200 && $7 == 200 && $11 == 200 && $1 == $5 && $5 == $9 && $2 == $6 && $6 == $10 && $4 == $8 && $8 == $12' | wc -l)
note "2: X-Backend per tuple: $(awk '{ printf "%s:%s=%s ", $1, $2, $4 }' <<<"${res[1]}")"
check_eq "2: the $K tuples got the same backend from lb1, lb2 and lb3" "$agree" "$K"
check_range "2: the $K tuples reached more than one backend" \
  "$(awk '$3 == 200 { print $4 }' <<<"${res[1]}" | sort -u | wc -l)" 2 4

# ------------------------------------------------- 3. downloads; lb4 joins
# A 16 KiB receive buffer: a rate-limited curl then reads (and its kernel
# acknowledges) every 16 KiB / 48 KB/s = 0.34 s, so a download's bucket is
# never idle for the 3 s idle timer. (With the default buffer curl paused for
# up to 2.5 s between reads, measured.)
tl_sysctl "${P}client" net.ipv4.tcp_rmem "4096 16384 16384"
long=$(for i in 1 2 3; do
  mapfile -t a < <(for ((k = 0; k < 4; k++)); do so_client_addr $((20 + 4 * (i - 1) + k)); done)
  pick 4 "$i" $((46000 + 1000 * i)) "${a[@]}" | sed "s/\$/ $i/"
done)
check_eq "3: 4 download tuples chosen per instance" "$(awk '{ c[$3]++ } END { print c[1] + 0, c[2] + 0, c[3] + 0 }' <<<"$long")" "4 4 4"
mapfile -t LONG <<<"$long"
declare -a LPID
for k in "${!LONG[@]}"; do
  read -r a port _ <<<"${LONG[k]}"
  tl_bg "$P" client "long-$k" "$T_DIR/long-$k.log" curl -sS --interface "$a" --local-port "$port" \
    --limit-rate "$LONG_RATE" --speed-limit 1 --speed-time 4 --max-time 60 -o "$T_DIR/long-$k.bin" "$FILE_URL"
  LPID[k]=$TL_PID
done
T_LONG=$(t_now_ms)
# all_established: each instance lists exactly its 4 downloads as ESTABLISHED.
all_established() {
  local i want have
  for i in 1 2 3; do
    want=$(awk -v i="$i" '$3 == i { print $1 ":" $2 }' <<<"$long" | sort)
    have=$(established "$i" | grep -Fx -f <(awk '{ print $1 ":" $2 }' <<<"$long") | sort || true)
    [ "$want" = "$have" ] || return 1
  done
}
if t_wait_until 10 all_established; then
  ok "3: each instance lists its 4 downloads ESTABLISHED (tunlb flows), as ip route get said, after ${T_WAITED_MS} ms"
else
  not_ok "3: each instance lists its 4 downloads: $(for i in 1 2 3; do echo "lb$i: $(established "$i" | tr '\n' ' ')"; done)"
fi

so_inst_start "$P" 4 2>>"$T_DIR/topology.log"
so_join "$P" 4
T_JOIN=$(t_now_ms)
nh4_fair() { [ "$(buckets_of 4)" -ge $((SO_BUCKETS / 4)) ]; }
if t_wait_until 15 nh4_fair; then
  ok "3: next hop 4 joined and holds $(buckets_of 4) buckets after ${T_WAITED_MS} ms (idle timer ${SO_IDLE_TIMER} s)"
else
  not_ok "3: next hop 4 holds $(buckets_of 4) buckets after 15 s, want >= $((SO_BUCKETS / 4))"
fi
note "3: buckets now: $(so_buckets "$P" | tr '\n' ' ')"
moved=$(awk '{ print $1, $2 }' <<<"$long" | so_predict_many "$P" |
  paste -d ' ' - <(awk '{ print $3 }' <<<"$long") | awk '$3 != $4' | wc -l)
check_eq "3: no download's bucket moved to lb4 (each tuple still routes to its instance)" "$moved" 0

N3=160
read -r -a nf0 <<<"$(new_flows_all)"
b4=$(buckets_of 4)
out3=$(for a in 0 1 2 3 4 5 6 7; do so_curl "$P" "$(so_client_addr "$a")" "$URL?n=[1-$((N3 / 8))]"; done)
read -r -a nf1 <<<"$(new_flows_all)"
check_eq "3: $N3 new connections after the join answered" "$(awk '$3 == 200' <<<"$out3" | wc -l)" "$N3"
took4=$((nf1[3] - nf0[3]))
pred4=$(awk '$3 == 200 { print $1, $2 }' <<<"$out3" | so_predict_many "$P" | awk '$3 == 4' | wc -l)
check_eq "3: lb4 took the connections the router's hash sends it" "$took4" "$pred4"
read -r lo hi < <(bounds "$N3" "$b4")
check_range "3: lb4's share (it holds $b4 of $SO_BUCKETS buckets; Binomial($N3, $b4/$SO_BUCKETS) +- 5 sd)" "$took4" "$lo" "$hi"
check_eq "3: lb4 saw no packet of a flow it does not know (stats: invalid_no_flow)" \
  "$(so_query "$P" 4 stats --json | t_json 'd["dropped"]["invalid_no_flow"]')" 0

# ------------------------------------------------------- 4. kill -9 of lb1
live=$(pick 300 "2 3 4" 48000 "$(so_client_addr 0)" "$(so_client_addr 1)" "$(so_client_addr 2)")
dead=$(pick 8 1 49000 "$(so_client_addr 3)" "$(so_client_addr 4)")
check_eq "4: 300 tuples on the survivors' buckets and 8 on lb1's chosen" \
  "$(wc -l <<<"$live") $(wc -l <<<"$dead")" "300 8"
mapfile -t lost_want < <(established 1 | grep -Fx -f <(awk '{ print $1 ":" $2 }' <<<"$long") | sort || true)
check_range "4: lb1 carries downloads when it is killed (tunlb flows)" "${#lost_want[@]}" 1 4
note "4: lb1's downloads at the kill: ${lost_want[*]}"

# Short connections to the survivors' buckets, one after another, across the
# kill and the removal; each line "TIME_MS ADDR PORT CODE BACKEND".
STOP=$T_DIR/live.stop
(while read -r a port; do
  [ -e "$STOP" ] && break
  printf '%s %s\n' "$(t_now_ms)" "$(so_curl "$P" "$a" --local-port "$port" "$URL")"
  sleep 0.05
done <<<"$live") >"$T_DIR/live.out" &
LOOP=$!
# since MS: lines of live.out started after MS.
since() { awk -v t="$1" '$1 > t' "$T_DIR/live.out" | wc -l; }
at_least_since() { [ "$(since "$1")" -ge "$2" ]; }
t_wait_until 10 at_least_since 0 3 || true
so_inst_kill "$P" 1 KILL
T_KILL=$(t_now_ms)
dead1=$(while read -r a port; do so_curl "$P" "$a" --local-port "$port" "$URL"; done <<<"$dead")
check_eq "4: lb1 killed, next hop 1 still in the group: the 8 tuples on its buckets fail" \
  "$(awk '$3 == 200' <<<"$dead1" | wc -l)" 0
# What a routing daemon does once BFD (or keepalived) says lb1 is gone; here
# only after 3 survivor connections have run with lb1 dead and still in the group.
t_wait_until 10 at_least_since "$T_KILL" 3 || true
so_leave "$P" 1
T_LEAVE=$(t_now_ms)
check_eq "4: next hop 1 left the group and holds no bucket" "$(buckets_of 1)" 0
dead2=$(while read -r a port; do so_curl "$P" "$a" --local-port "$port" "$URL"; done <<<"$dead")
check_eq "4: the same 8 tuples succeed once next hop 1 is out" "$(awk '$3 == 200' <<<"$dead2" | wc -l)" 8
t_wait_until 10 at_least_since "$T_LEAVE" 3 || true
touch "$STOP"
wait "$LOOP" || true
n_live=$(wc -l <"$T_DIR/live.out")
note "4: survivor connections: $n_live ($(since "$T_KILL") after the kill, $(since "$T_LEAVE") after the removal)"
check_eq "4: every survivor connection across the kill and the removal answered" \
  "$(awk '$4 == 200' "$T_DIR/live.out" | wc -l)" "$n_live"
check_range "4: survivor connections ran while lb1 was dead and still in the group" \
  "$(($(since "$T_KILL") - $(since "$T_LEAVE")))" 3 300

# The downloads.
want_sha=$(tl_sha256 "$P" small.bin)
intact=0 lost=()
for k in "${!LONG[@]}"; do
  read -r a port inst <<<"${LONG[k]}"
  rc=0
  wait "${LPID[k]}" 2>/dev/null || rc=$?
  if [ "$rc" -eq 0 ] && [ "$(t_sha "$T_DIR/long-$k.bin")" = "$want_sha" ]; then
    [ "$inst" = 1 ] || intact=$((intact + 1))
  else
    lost+=("$a:$port")
    note "4: download $a:$port via lb$inst: curl exit $rc: $(tail -n 1 "$T_DIR/long-$k.log" 2>/dev/null)"
  fi
done
note "4: downloads: started $(((T_JOIN - T_LONG) / 1000)) s before the join, lb1 killed $(((T_KILL - T_LONG) / 1000)) s after the start, done $((($(t_now_ms) - T_LONG) / 1000)) s after"
check_eq "4: the 8 downloads through lb2 and lb3 completed with the right sha256" "$intact" 8
check_eq "4: the downloads lost are exactly lb1's at the kill" \
  "$(printf '%s\n' "${lost[@]}" | sort | tr '\n' ' ')" "$(printf '%s\n' "${lost_want[@]}" | sort | tr '\n' ' ')"
