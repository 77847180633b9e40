#!/usr/bin/env bash
# A healthy backend is never refused: with the heaviest backend's server
# stopped and health checks on (every 0.2 s, fall 2, rise 2, timeout 0.2 s),
# once the checks mark it down, 100 sequential connections all succeed and
# all reach the light backend that is up:
#  - random 99:1 (b1 weight 99, b2 weight 1). A selector that redraws a fixed
#    number of times (64) refuses about 0.99^64 = 53 % of them;
#  - nth 9999:1. A selector that passes a bounded number of turns (4096) to
#    the next one refuses 2 SYNs in 3 (the cycle is 10 000 turns long); at
#    99:1 it would not show (a 100-turn cycle fits in 4096 turns).
# The counters agree: no SYN dropped for lack of a backend, no RST sent.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

N=100
t_setup
CONF=$T_DIR/health.toml
t_fast_health_conf "$CONF"

# b1 (the heavy one) has no server from here on; tunlb starts with it up
# (every backend starts up) and its checks mark it down.
tl_backend_stop "$P" 1


# heavy_down MODE W1 W2: tunlb over b1 (weight W1) and b2 (weight W2) in MODE,
# b1 marked down, then N connections.
heavy_down() {
  local mode=$1 w1=$2 w2=$3 tally label="$1 $2:$3, b1 down"
  CTL=$T_DIR/control-$mode.sock
  mapfile -t flags < <(t_backend_flags "$w1" "$w2")
  t_tunlb_start --vip "$VIP:80" "${flags[@]}" --mode "$mode" --health-check --config "$CONF" --control "$CTL" ||
    return 0
  if t_wait_until 5 t_backend_up "$CTL" 1 false; then
    ok "$label: the checks marked b1 down after ${T_WAITED_MS} ms"
  else
    not_ok "$label: b1 marked down within 5 s: stats says up=$(t_backend_stat "$CTL" 1 up)"
  fi
  check_eq "$label: b2 is up" "$(t_backend_stat "$CTL" 2 up)" true
  # || true: curl exits non-zero when its last transfer failed.
  tally=$(t_tally "$N") || true
  note "$label, $N connections: $(tr '\n' ' ' <<<"$tally")"
  check_eq "$label: $N connections, none failed" "$(t_count "$tally" fail)" 0
  check_eq "$label: all $N answered by b2" "$(t_count "$tally" b2)" "$N"
  check_eq "$label: stats: no SYN dropped for lack of a backend" \
    "$(t_query stats "$CTL" --json | t_json 'd["dropped"]["no_backend"]')" 0
  check_eq "$label: stats: no RST sent" "$(t_query stats "$CTL" --json | t_json 'd["resets_sent"]')" 0
  check_eq "$label: stats: b2 took $N connections" "$(t_backend_stat "$CTL" 2 connections)" "$N"
  t_tunlb_stop
}

heavy_down random 99 1
heavy_down nth 9999 1
