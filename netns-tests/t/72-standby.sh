#!/usr/bin/env bash
# A standby per instance (issue 14, "N instances behind ECMP", going beyond):
# the dead instance's own flows survive, with no state protocol between
# instances. Two instances lb1, lb2 behind the router's resilient group, run
# with --pickup --hash-key K --state-file $(so_state_file) --state-interval 1
# (SO_HA=1); lb1 has a standby namespace lb1s (same links, nothing running).
# Topology and helpers: scripts/lib-scaleout.sh.
#  1. Rate-limited 6 MiB downloads (1 MiB/s, paced by the backend): 3 through
#     lb1 whose clients use TCP keepalive (1 s), 3 through lb1 whose clients
#     send nothing (--no-keepalive), 3 through lb2 (tuples chosen with `ip
#     route get`). Once lb1 has saved them (two saves after they were seen
#     ESTABLISHED), right after one more save, 2 more keepalive downloads
#     through lb1 ("late": most likely not in any save when lb1 dies).
#  2. kill -9 of lb1, 1 s of outage (failure detection), then takeover by
#     lb1s: tunlb started there with lb1's exact command line (its state file
#     too), next hop 1 replaced to point at lb1s, the backends' route for
#     198.18.0.11 moved to lb1s.
#  3. Checks: the router's buckets did not move; the silent downloads are in
#     lb1s's table right after its start (only the restore can put them
#     there); all 11 downloads complete with the right sha256; the client
#     saw no RST; lb2's downloads kept their instance, and lb2 picked up or
#     restored nothing; lb1s counts restored + picked_up >= lb1's 8
#     downloads; 8 new connections on next hop 1's buckets are taken by lb1s.
#  4. A planned switchover: 3 silent downloads through lb2, started right
#     after one of its saves, then `takeover 2` while lb2 runs (SIGTERM: its
#     final save): they complete, restored by lb2s.
# No draw decides a check: the tuples are chosen after asking the router
# (enough candidates that finding too few is more than 8 sd away), and the
# late downloads complete whether a save caught them or not (picked up by
# their keepalive otherwise): which one happened is only reported.
SO_HA=1
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=scripts/lib-scaleout.sh
. "$T_ROOT/scripts/lib-scaleout.sh"

SIZE=$((6 << 20))
RATE=$((1 << 20))
DL_URL="$VIP_URL/file/big.bin?bytes=$SIZE&rate=$RATE"
STATE=$(so_state_file "$P" 1)

t_setup_scaleout 2 1
want=$(head -c "$SIZE" "$(tl_data "$P")/big.bin" | sha256sum | cut -d' ' -f1)

# established I: "ADDR:PORT" of the ESTABLISHED flows of instance I (or "1s").
established() {
  so_query "$P" "$1" flows --json | t_json "[f['original']['src'] for f in d['flows'] if f['state'] == 'ESTABLISHED']"
}
# listed_all I TUPLES: instance I lists every "ADDR PORT" of TUPLES as ESTABLISHED.
listed_all() {
  local want have
  want=$(awk '{ print $1 ":" $2 }' <<<"$2" | sort)
  have=$(established "$1" | grep -Fx -f <(printf '%s\n' "$want") | sort || true)
  [ "$want" = "$have" ]
}
stat_of() { so_query "$P" "$1" stats --json | t_json "$2"; }
mtime_ms() { date -r "$STATE" +%s%3N 2>/dev/null || echo 0; }
saved_after() { [ "$(mtime_ms)" -gt "$1" ]; }
# pick N WANT BASE ADDRS...: N "ADDR PORT" tuples the router now sends to
# instance WANT (1, 2 or 1s), ports BASE.. cycling over ADDRS. 10*N + 200
# candidates: with a share of 1/2, N is more than 8 sd below the mean of hits.
pick() {
  local n=$1 want=$2 base=$3 k
  shift 3
  local -a addrs=("$@")
  for ((k = 0; k < 10 * n + 200; k++)); do
    printf '%s %d\n' "${addrs[k % ${#addrs[@]}]}" "$((base + k))"
  done | so_predict_many "$P" | awk -v want="$want" -v n="$n" '$3 == want && c < n { print $1, $2; c++ }'
}

# downloads TAG TUPLES CURL_FLAGS...: one download per "ADDR PORT" of
# TUPLES, in the background (children of this shell), PIDs in DL[TAG.k].
declare -A DL
downloads() {
  local tag=$1 tuples=$2 k=0 a port
  shift 2
  while read -r a port; do
    tl_bg "$P" client "dl-$tag-$k" "$T_DIR/$tag.$k.log" curl -sS --interface "$a" --local-port "$port" \
      --speed-limit 1 --speed-time 15 --max-time 60 -o "$T_DIR/$tag.$k.bin" "$@" "$DL_URL"
    DL[$tag.$k]=$TL_PID
    k=$((k + 1))
  done <<<"$tuples"
}
# finished TAG: wait for TAG's downloads (in this shell: they are its
# children); GOOD is how many ended with status 0 and the right sha256.
finished() {
  local tag=$1 k=0 rc
  GOOD=0
  while [ -n "${DL[$tag.$k]-}" ]; do
    rc=0
    wait "${DL[$tag.$k]}" 2>/dev/null || rc=$?
    if [ "$rc" -eq 0 ] && [ "$(t_sha "$T_DIR/$tag.$k.bin")" = "$want" ]; then
      GOOD=$((GOOD + 1))
    else
      note "$tag $k: curl exit $rc, $(wc -c <"$T_DIR/$tag.$k.bin" 2>/dev/null || echo 0) bytes: $(tail -n 1 "$T_DIR/$tag.$k.log")"
    fi
    k=$((k + 1))
  done
}

# ------------------------------------------------------------ 1. downloads
ka=$(pick 3 1 41000 "$(so_client_addr 0)" "$(so_client_addr 1)" "$(so_client_addr 2)")
silent=$(pick 3 1 42000 "$(so_client_addr 3)" "$(so_client_addr 4)" "$(so_client_addr 5)")
late=$(pick 2 1 43000 "$(so_client_addr 6)" "$(so_client_addr 7)")
via2=$(pick 3 2 44000 "$(so_client_addr 8)" "$(so_client_addr 9)" "$(so_client_addr 10)")
fresh=$(pick 8 1 45000 "$(so_client_addr 11)" "$(so_client_addr 12)")
check_eq "tuples chosen: keepalive/silent/late via lb1, via lb2, new on next hop 1" \
  "$(for t in "$ka" "$silent" "$late" "$via2" "$fresh"; do wc -l <<<"$t"; done | tr '\n' ' ')" "3 3 2 3 8 "
buckets0=$(so_buckets "$P" | tr '\n' ' ')

t_capture_start router c0 cap-rst "$T_DIR/rst.pcap" 'tcp[tcpflags] & tcp-rst != 0'
T_START=$(t_now_ms)
downloads ka "$ka" --keepalive-time 1
downloads silent "$silent" --no-keepalive
downloads via2 "$via2" --keepalive-time 1
if t_wait_until 10 listed_all 1 "$ka"$'\n'"$silent" && t_wait_until 5 listed_all 2 "$via2"; then
  ok "lb1 lists its 6 downloads ESTABLISHED, lb2 its 3"
else
  not_ok "downloads ESTABLISHED: lb1: $(established 1 | tr '\n' ' '); lb2: $(established 2 | tr '\n' ' ')"
fi
# Two saves after they were seen: the second one's snapshot was taken after
# the first one's file was written, so after they were ESTABLISHED.
T_SEEN=$(t_now_ms)
t_wait_until 5 saved_after "$T_SEEN" && t_wait_until 5 saved_after "$(mtime_ms)"
check "lb1 saved its flows twice since then (--state-interval 1)" saved_after "$T_SEEN"

# The late downloads: right after a save, then lb1 dies before the next one
# (most likely: it saves every second).
t_wait_until 5 saved_after "$(mtime_ms)" || true
T_LATE=$(t_now_ms)
downloads late "$late" --keepalive-time 1
t_wait_until 2 listed_all 1 "$late" || note "late downloads not all ESTABLISHED on lb1 yet: $(established 1 | tr '\n' ' ')"

# ------------------------------------------------------------ 2. kill, takeover
so_inst_kill "$P" 1 KILL
T_KILL=$(t_now_ms)
if saved_after "$T_LATE"; then late_saved="a save came between their start and the kill"
else late_saved="no save between their start and the kill"; fi
note "lb1 killed $(((T_KILL - T_START) / 1000)).$(((T_KILL - T_START) % 1000 / 100)) s after the downloads started, $((T_KILL - T_LATE)) ms after the late ones ($late_saved); its last save $((T_KILL - $(mtime_ms))) ms before"
sleep 1 # failure detection (VRRP: about 3 advertisement intervals)
so_takeover "$P" 1 2>>"$T_DIR/topology.log"
T_TAKEN=$(t_now_ms)
restored_log=$(grep -o '[0-9]* flows restored.*' "$(so_log "$P" 1s)" || true)
note "takeover: lb1s ready after $SO_READY_MS ms, routes moved $((T_TAKEN - T_KILL)) ms after the kill; $restored_log"
check_eq "lb1s runs lb1's command line but --control" \
  "$(tr '\n' ' ' <"$(so_args_file "$P" 1)" | sed 's,--control [^ ]*,,')" \
  "$(tr '\0' ' ' <"/proc/$TL_PID/cmdline" | cut -d' ' -f2- | sed 's,--control [^ ]*,,')"
check_eq "next hop 1 now goes via lb1s" "$(so_active "$P" 1)" 1s
check_eq "the group's buckets did not move" "$(so_buckets "$P" | tr '\n' ' ')" "$buckets0"
check "the 3 silent downloads are in lb1s's table at once (only the restore can put them there)" \
  listed_all 1s "$silent"

# ------------------------------------------------------------ 3. the outcome
finished ka
check_eq "lb1's keepalive downloads complete with the right sha256" "$GOOD" 3
finished silent
check_eq "lb1's silent downloads complete with the right sha256" "$GOOD" 3
finished late
check_eq "lb1's late downloads complete with the right sha256" "$GOOD" 2
finished via2
check_eq "lb2's downloads complete with the right sha256" "$GOOD" 3
T_DONE=$(t_now_ms)
t_capture_stop cap-rst
check_eq "the client side saw no RST" "$(tshark -r "$T_DIR/rst.pcap" 2>/dev/null | wc -l)" 0
# Which segments, if any (time from the capture's start, ports, seq/ack):
# enough to tell whose flow it was and where it came from.
tshark -r "$T_DIR/rst.pcap" 2>/dev/null | head -5 | sed 's/^ */RST seen: /' | while read -r line; do note "$line"; done || true
check_eq "lb2's downloads still route to lb2" "$(so_predict_many "$P" <<<"$via2" | awk '$3 != 2' | wc -l)" 0
check_eq "lb2 restored and picked up nothing (stats restored, picked_up)" \
  "$(stat_of 2 "'%d %d' % (d['restored'], d['picked_up'])")" "0 0"
restored=$(stat_of 1s "d['restored']")
picked=$(stat_of 1s "d['picked_up']")
check_eq "lb1s: stats restored = its log line" "$restored" "${restored_log%% *}"
check_range "lb1s: restored + picked_up cover lb1's 8 downloads" "$((restored + picked))" 8 100
note "lb1s: restored $restored, picked_up $picked, remapped $(stat_of 1s "d['pickup_remapped']"), invalid_no_flow $(stat_of 1s "d['dropped']['invalid_no_flow']"); downloads done $(((T_DONE - T_START) / 1000)) s after the start"

# New connections on next hop 1's buckets: lb1s takes them.
before=$(so_new_flows "$P" 1s)
out=$(while read -r a port; do so_curl "$P" "$a" --local-port "$port" "$VIP_URL/"; done <<<"$fresh")
check_eq "8 new connections on next hop 1's buckets answered" "$(awk '$3 == 200' <<<"$out" | wc -l)" 8
check_eq "lb1s took them" "$(($(so_new_flows "$P" 1s) - before))" 8

# ------------------------------------------------------- 4. planned switchover
SIZE=$((3 << 20))
DL_URL="$VIP_URL/file/big.bin?bytes=$SIZE&rate=$RATE"
want=$(head -c "$SIZE" "$(tl_data "$P")/big.bin" | sha256sum | cut -d' ' -f1)
STATE=$(so_state_file "$P" 2)
planned=$(pick 3 2 46000 "$(so_client_addr 13)" "$(so_client_addr 14)")
t_wait_until 5 saved_after "$(mtime_ms)" || true
T_PLAN=$(t_now_ms)
downloads planned "$planned" --no-keepalive
t_wait_until 5 listed_all 2 "$planned" || note "planned: not all ESTABLISHED on lb2: $(established 2 | tr '\n' ' ')"
if saved_after "$T_PLAN"; then plan_saved="a periodic save came after their start"
else plan_saved="no periodic save after their start"; fi
log2=$(so_log "$P" 2)
so_takeover "$P" 2 2>>"$T_DIR/topology.log"
note "planned switchover $(($(t_now_ms) - T_PLAN)) ms after the downloads started ($plan_saved): lb2s ready after $SO_READY_MS ms; $(grep -o '[0-9]* flows restored.*' "$(so_log "$P" 2s)" || true)"
check "lb2 saved its flows on SIGTERM" grep -q "flows saved" "$log2"
check_eq "next hop 2 now goes via lb2s" "$(so_active "$P" 2)" 2s
finished planned
check_eq "planned switchover: the 3 silent downloads complete with the right sha256" "$GOOD" 3
check_range "lb2s restored them (stats restored)" "$(stat_of 2s "d['restored']")" 3 100
