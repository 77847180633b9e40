#!/usr/bin/env bash
# Restarts without loss (issue 14): slow downloads whose clients send nothing
# but ACKs survive a restart of tunlb.
#  1. SIGTERM in the middle, then the same command: --state-file carries the
#     flows over; every download completes with the right sha256 and the
#     client sees no RST.
#  2. kill -9 with --pickup and a state file saved every second, clients with
#     TCP keepalive: every download completes.
#  3. Neither: the flows in flight are lost (the README says so).
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup

N=8
SIZE=$((16 << 20))
RATE=$((4 << 20)) # bytes/s per download: about 4 s each
want=$(head -c "$SIZE" "$(tl_data "$P")/big.bin" | sha256sum | cut -d' ' -f1)
STATE=$T_DIR/flows.state
CTL=$T_DIR/control.sock
# A download that got nothing for about 5 + 1 s gives up (curl -y 1 -Y 6), so
# that the lost ones of part 3 end soon. Those that must survive a kill -9
# wait longer: a backend whose segments were dropped while tunlb was down
# retransmits on its backed-off timer, and after a 1-2 s outage the next try
# can come 5 s or more after the flow is back (seen: picked up 1 s after the
# restart, data again 6 s later). curl -y SLOW: give up after SLOW + 5 s.
SLOW=20

# downloads TAG [CURL FLAGS...]: start N paced downloads of the first SIZE
# bytes of big.bin in the background; their PIDs in DL_PIDS.
downloads() {
  local tag=$1 i
  shift
  DL_PIDS=()
  for ((i = 1; i <= N; i++)); do
    t_client curl -s -o "$T_DIR/$tag.$i" --max-time 40 -y 1 -Y 6 "$@" \
      -w '%{http_code} port %{local_port}\n' "$VIP_URL/file/big.bin?bytes=$SIZE&rate=$RATE" \
      >"$T_DIR/$tag.$i.out" 2>&1 &
    DL_PIDS+=($!)
  done
}
# finished TAG: wait for the downloads (in this shell: they are its
# children); GOOD is how many ended with status 0 and the right sha256.
finished() {
  local tag=$1 i rc port
  GOOD=0
  for ((i = 1; i <= N; i++)); do
    rc=0
    wait "${DL_PIDS[$((i - 1))]}" || rc=$?
    if [ "$rc" -eq 0 ] && [ "$(t_sha "$T_DIR/$tag.$i")" = "$want" ]; then
      GOOD=$((GOOD + 1))
    else
      # Which connection, and what tunlb said of it: enough to tell a
      # flow that was never picked up from one that was but stalled.
      port=$(grep -o 'port [0-9]*' "$T_DIR/$tag.$i.out" | cut -d' ' -f2)
      note "$tag $i: curl exit $rc, $(wc -c <"$T_DIR/$tag.$i" 2>/dev/null || echo 0) bytes, client port ${port:-?}"
      [ -z "$port" ] || grep -E "198\.18\.1\.2:$port " "$TUNLB_LOG" | tail -3 | sed 's/^/  ..   /' || true
      # And the flow as the running tunlb holds it now (state, windows'
      # view, counters), if it holds it.
      [ -z "$port" ] || t_query flows "$CTL" 2>/dev/null | grep -E "198\.18\.1\.2:$port\b" | sed 's/^/  ..   flow: /' || true
    fi
  done
  # What the running tunlb dropped, when a download failed.
  if [ "$GOOD" -lt "$N" ]; then
    note "$tag: drops now: $(t_query stats "$CTL" --json 2>/dev/null | t_json "{k: v for k, v in d['dropped'].items() if v}" 2>/dev/null || echo '?')"
  fi
}
# resets FILE: RST segments from the VIP in a client-side capture.
resets() { tshark -r "$1" -Y "ip.src == $VIP && tcp.flags.reset == 1" 2>/dev/null | wc -l; }
# tun_gone: wait until the kernel has removed the TUN of a killed tunlb.
tun_gone() {
  t_wait_until 5 test -z "$(ip -n "${P}lb" link show "$TL_TUN" 2>/dev/null)" ||
    not_ok "the TUN of the killed tunlb is gone within 5 s"
  sleep 0.5 # down for a while: the backend's segments find no balancer
}
# lbstat EXPR: a value of `tunlb stats --json` (d is the document).
lbstat() { t_query stats "$CTL" --json | t_json "$1"; }

# --- 1. SIGTERM, then the same command, with --state-file ---------------
cmd=(--mode maglev --control "$CTL" --state-file "$STATE")
t_tunlb_start "${cmd[@]}"
t_capture_start client eth0 cap1 "$T_DIR/term.pcapng" "tcp"
downloads term
sleep 1.5
flows=$(lbstat "d['flows']")
t_stop_and_time TERM
check_eq "SIGTERM with --state-file: exit status" "$RC" 0
check "SIGTERM: the flows were saved" grep -q "flows saved" "$TUNLB_LOG"
sleep 0.5 # down for a while: the backend's segments find no balancer
t_tunlb_start "${cmd[@]}"
check "restart: the saved flows are restored before the first packet" \
  grep -Eq "state file .*: [1-9][0-9]* flows restored" "$TUNLB_LOG"
note "flows tracked before SIGTERM: $flows; $(grep -o '[0-9]* flows restored' "$TUNLB_LOG")"
finished term
check_eq "SIGTERM + restart: downloads complete with the right sha256" "$GOOD" "$N"
t_capture_stop cap1
check_eq "SIGTERM + restart: the client saw no RST" "$(resets "$T_DIR/term.pcapng")" 0
check_eq "stats: restored counted" "$(lbstat "d['restored']")" "$(grep -o '[0-9]* flows restored' "$TUNLB_LOG" | cut -d' ' -f1)"
t_tunlb_stop

# --- 2. kill -9 with --pickup and a state file saved every second ------
rm -f "$STATE"
cmd=(--mode maglev --control "$CTL" --pickup --hash-key "restart-test" --state-file "$STATE" --state-interval 1)
t_tunlb_start "${cmd[@]}"
downloads crash --keepalive-time 1 -y "$SLOW"
sleep 2.5
check "a periodic save exists while running" test -s "$STATE"
t_stop_and_time KILL
tun_gone
t_tunlb_start "${cmd[@]}"
finished crash
check_eq "kill -9 + restart (--pickup, --state-interval 1): downloads complete" "$GOOD" "$N"
note "after kill -9: $(grep -o '[0-9]* flows restored.*' "$TUNLB_LOG" | head -1); picked up: $(lbstat "d['picked_up']")"
t_tunlb_stop

# --- 2b. kill -9 with --pickup alone: the clients' keepalives bring them back
cmd=(--mode maglev --control "$CTL" --pickup --hash-key "restart-test" --trace)
t_tunlb_start "${cmd[@]}"
downloads pickup --keepalive-time 1 -y "$SLOW"
sleep 1.5
t_stop_and_time KILL
tun_gone
t_tunlb_start "${cmd[@]}"
finished pickup
check_eq "kill -9 + restart with --pickup alone, keepalive clients: downloads complete" "$GOOD" "$N"
[ "$GOOD" = "$N" ] || note "stats: $(t_query stats "$CTL" | tail -1)"
check_eq "every flow was picked up again" "$(lbstat "d['picked_up']")" "$N"
check_eq "none needed another port" "$(lbstat "d['pickup_remapped']")" 0
check_eq "--trace says PICKUP for each" "$(grep -c ' PICKUP 198.18.1.2:' "$TUNLB_LOG")" "$N"
t_tunlb_stop

# --- a damaged or foreign state file: one line, and tunlb starts empty ----
printf 'TUNLBST\n\003\000\000\000garbage' >"$STATE"
t_tunlb_start --mode maglev --control "$CTL" --state-file "$STATE"
check "a state file of another format version is refused in one line" \
  grep -q "has format version 3, this tunlb reads versions 1 and 2: starting with no flows" "$TUNLB_LOG"
check_eq "and tunlb starts with no flows" "$(lbstat "d['flows']")" 0
check "and serves" grep -qx 'b[1-4]' <<<"$(t_client curl -s --max-time 5 "$VIP_URL/")"
t_tunlb_stop # (saves its empty table)
printf 'not a state file at all' >"$STATE"
t_tunlb_start --mode maglev --control "$CTL" --state-file "$STATE"
check "a foreign file is refused in one line" grep -q "is not a tunlb state file (bad magic): starting with no flows" "$TUNLB_LOG"
t_tunlb_stop

# --- 3. neither: flows in flight are lost ----------------------------------
t_tunlb_start --mode maglev --control "$CTL"
downloads lost
sleep 1.5
t_stop_and_time TERM
sleep 0.5
t_tunlb_start --mode maglev --control "$CTL"
finished lost
lost=$((N - GOOD))
check_eq "without --state-file or --pickup: every download in flight is lost" "$lost" "$N"
check "the new process calls their packets INVALID (no flow)" test "$(lbstat "d['dropped']['invalid_no_flow']")" -gt 0
t_tunlb_stop
