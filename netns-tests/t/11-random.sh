#!/usr/bin/env bash
# random mode: one weighted draw per NEW connection. Counts must sit within
# mean +- 5 standard deviations of the binomial (a false alarm about once in
# 1.7 million runs per count); a weight-0 backend gets nothing.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

N=1000
t_setup

t_tunlb_start --mode random
tally=$(t_tally "$N")
note "1:1:1:1 tally: $(tr '\n' ' ' <<<"$tally")"
check_eq "1:1:1:1: $N connections, none failed" "$(t_count "$tally" fail)" 0
read -r lo hi < <(t_binomial_bounds "$N" 1 4)
for i in $(tl_backends); do
  check_range "1:1:1:1: b$i share (5 sigma)" "$(t_count "$tally" "b$i")" "$lo" "$hi"
done
t_tunlb_stop

mapfile -t weighted < <(t_backend_flags 3 1 0)
t_tunlb_start --vip "$VIP:80" "${weighted[@]}" --mode random
tally=$(t_tally "$N")
note "3:1:0 tally: $(tr '\n' ' ' <<<"$tally")"
check_eq "3:1:0: $N connections, none failed" "$(t_count "$tally" fail)" 0
read -r lo hi < <(t_binomial_bounds "$N" 3 4)
check_range "3:1:0: b1 (weight 3) share (5 sigma)" "$(t_count "$tally" b1)" "$lo" "$hi"
read -r lo hi < <(t_binomial_bounds "$N" 1 4)
check_range "3:1:0: b2 (weight 1) share (5 sigma)" "$(t_count "$tally" b2)" "$lo" "$hi"
check_eq "3:1:0: b3 (weight 0) gets none" "$(t_count "$tally" b3)" 0
check_eq "3:1:0: b4 (not configured) gets none" "$(t_count "$tally" b4)" 0
