#!/usr/bin/env bash
# Signals: SIGTERM (with a transfer in flight) and SIGINT (idle) stop tunlb
# within a second, with exit status 0, and the TUN it created is gone.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup

# stop_and_time SIGNAL: send SIGNAL to tunlb; sets RC (its exit status, 999
# when it still runs after 3 s, then it is killed) and MS. Runs in this shell:
# tunlb is its child, so `wait` yields the status.
stop_and_time() {
  local t0 k
  RC=0
  t0=$(t_now_ms)
  kill "-$1" "$TUNLB_PID"
  for ((k = 0; k < 300; k++)); do
    tl_pid_alive "$TUNLB_PID" || break
    sleep 0.01
  done
  if tl_pid_alive "$TUNLB_PID"; then
    kill -KILL "$TUNLB_PID" 2>/dev/null || true
    wait "$TUNLB_PID" 2>/dev/null || true
    RC=999 MS=$(($(t_now_ms) - t0))
    return
  fi
  MS=$(($(t_now_ms) - t0))
  wait "$TUNLB_PID" || RC=$?
}

t_tunlb_start --mode nth
t_client curl -s --max-time 30 --limit-rate 4M -o /dev/null "$VIP_URL/file/big.bin" &
dl=$!
sleep 0.5
stop_and_time TERM
check_eq "SIGTERM during a transfer: exit status" "$RC" 0
check_range "SIGTERM: gone within a second (ms)" "$MS" 0 1000
check "SIGTERM: the TUN tunlb created is removed" test -z "$(ip -n "${P}lb" link show "$TL_TUN" 2>/dev/null)"
kill "$dl" 2>/dev/null || true
wait "$dl" 2>/dev/null || true

t_tunlb_start --mode nth
check_eq "restarted after SIGTERM: serves" "$(t_client curl -s --max-time 5 "$VIP_URL/")" b1
stop_and_time INT
check_eq "SIGINT: exit status" "$RC" 0
check_range "SIGINT: gone within a second (ms)" "$MS" 0 1000
check "SIGINT: the TUN tunlb created is removed" test -z "$(ip -n "${P}lb" link show "$TL_TUN" 2>/dev/null)"
