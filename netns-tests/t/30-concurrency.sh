#!/usr/bin/env bash
# Concurrency: 200 connections open at the same time (each answer waits 1 s)
# all complete, balanced exactly 50 per backend in nth mode; with 1 and with
# 2 packet threads sharing the flow table.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup
for threads in 1 2; do
  t_tunlb_start --mode nth --threads "$threads"
  t0=$(t_now_ms)
  out=$(timeout 90 ip netns exec "${P}client" curl -s --max-time 30 --parallel --parallel-immediate \
    --parallel-max 200 -w 'connects=%{num_connects}\n' "$VIP_URL/?delay=1&n=[1-200]" 2>/dev/null || true)
  ms=$(($(t_now_ms) - t0))
  tally=$(awk '/^b[0-9]+$/ { c[$1]++ } /^connects=/ { sub("connects=", ""); n += $0 }
    END { for (b in c) print b, c[b]; print "connects", n + 0 }' <<<"$out" | sort)
  note "threads=$threads: $(tr '\n' ' ' <<<"$tally")in ${ms} ms"
  done_n=$(grep -c '^b[0-9]*$' <<<"$out" || true)
  check_eq "threads=$threads: 200 parallel connections all answered" "$done_n" 200
  check_eq "threads=$threads: 200 TCP connections opened" "$(t_count "$tally" connects)" 200
  for i in $(tl_backends); do
    check_eq "threads=$threads: b$i got 50" "$(t_count "$tally" "b$i")" 50
  done
  # 200 one-second answers one after another would take 200 s.
  check_range "threads=$threads: they ran concurrently (ms for all 200)" "$ms" 0 15000
  check "threads=$threads: tunlb still running" tl_pid_alive "$TUNLB_PID"
  t_tunlb_stop
done
