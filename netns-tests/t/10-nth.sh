#!/usr/bin/env bash
# nth mode: one shared counter, so 400 sequential connections land exactly
# 100 per backend (the seed's iptables recipe gave 100/75/56/42 + 127 un-NATed).
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup
t_tunlb_start --mode nth

first=$(for _ in 1 2 3 4 5 6 7 8; do t_client curl -s --max-time 5 "$VIP_URL/"; done | tr '\n' ' ')
check_eq "8 requests go round robin" "$first" "b1 b2 b3 b4 b1 b2 b3 b4 "

tally=$(t_tally 400)
note "tally: $(tr '\n' ' ' <<<"$tally")"
check_eq "400 connections, none failed" "$(t_count "$tally" fail)" 0
check_eq "each request was its own TCP connection" "$(t_count "$tally" connects)" 400
for i in $(tl_backends); do
  check_eq "b$i got exactly 100 of 400" "$(t_count "$tally" "b$i")" 100
done
check "tunlb still running" tl_pid_alive "$TUNLB_PID"
