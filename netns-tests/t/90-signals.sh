#!/usr/bin/env bash
# Signals: SIGTERM (with a transfer in flight) and SIGINT (idle) stop tunlb
# within a second, with exit status 0, and what it added is gone (the TUN it
# created; on the packet datapath, its blackhole routes).
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup

t_tunlb_start --mode nth
check "while tunlb runs, $T_ADDED is there" test -n "$(t_added)"
t_client curl -s --max-time 30 --limit-rate 4M -o /dev/null "$VIP_URL/file/big.bin" &
dl=$!
sleep 0.5
t_stop_and_time TERM
check_eq "SIGTERM during a transfer: exit status" "$RC" 0
check_range "SIGTERM: gone within a second (ms)" "$MS" 0 1000
check "SIGTERM: $T_ADDED is removed" test -z "$(t_added)"
kill "$dl" 2>/dev/null || true
wait "$dl" 2>/dev/null || true

t_tunlb_start --mode nth
check_eq "restarted after SIGTERM: serves" "$(t_client curl -s --max-time 5 "$VIP_URL/")" b1
t_stop_and_time INT
check_eq "SIGINT: exit status" "$RC" 0
check_range "SIGINT: gone within a second (ms)" "$MS" 0 1000
check "SIGINT: $T_ADDED is removed" test -z "$(t_added)"
