#!/usr/bin/env bash
# Signals: SIGTERM (with a transfer in flight) and SIGINT (idle) stop tunlb
# within a second, with exit status 0, and the TUN it created is gone.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup

t_tunlb_start --mode nth
t_client curl -s --max-time 30 --limit-rate 4M -o /dev/null "$VIP_URL/file/big.bin" &
dl=$!
sleep 0.5
t_stop_and_time TERM
check_eq "SIGTERM during a transfer: exit status" "$RC" 0
check_range "SIGTERM: gone within a second (ms)" "$MS" 0 1000
check "SIGTERM: the TUN tunlb created is removed" test -z "$(ip -n "${P}lb" link show "$TL_TUN" 2>/dev/null)"
kill "$dl" 2>/dev/null || true
wait "$dl" 2>/dev/null || true

t_tunlb_start --mode nth
check_eq "restarted after SIGTERM: serves" "$(t_client curl -s --max-time 5 "$VIP_URL/")" b1
t_stop_and_time INT
check_eq "SIGINT: exit status" "$RC" 0
check_range "SIGINT: gone within a second (ms)" "$MS" 0 1000
check "SIGINT: the TUN tunlb created is removed" test -z "$(ip -n "${P}lb" link show "$TL_TUN" 2>/dev/null)"
