#!/usr/bin/env bash
# scripts/scaleout.sh: several tunlb instances behind an ECMP router, in
# network namespaces (the picture is in scripts/lib-scaleout.sh).
#
#   scripts/scaleout.sh up     PREFIX [N]   client, router, lb1..lb4, b1..b4; tunlb
#                                           started in lb1..lbN (default 3), all N
#                                           in the router's resilient group
#   scripts/scaleout.sh down   PREFIX       remove everything carrying PREFIX
#   scripts/scaleout.sh status PREFIX       group members, buckets per member, instances
#   scripts/scaleout.sh tally  PREFIX [N]   N connections (default 60) from the client:
#                                           per instance ("1s": a standby) and backend
#   scripts/scaleout.sh kill   PREFIX I     kill -9 instance I (a crash; its next hop stays)
#   scripts/scaleout.sh leave  PREFIX I     take next hop I out of the group (what a
#                                           routing daemon does once BFD says it is gone)
#   scripts/scaleout.sh join   PREFIX I     start instance I if needed, next hop I into the group
#   scripts/scaleout.sh standby PREFIX I    build lbIs, instance I's standby (same links, idle)
#   scripts/scaleout.sh takeover PREFIX I   lbIs takes instance I's role: tunlb started there
#                                           with lbI's command line (--state-file too), then
#                                           next hop I and the SNAT route moved to it
#                                           (lbI gets SIGTERM first if it still runs)
#   scripts/scaleout.sh exec   PREFIX NODE CMD...   run CMD in PREFIX+NODE
#                                           (client, router, lb1..lb4, b1..b4)
#   scripts/scaleout.sh demo   [PREFIX]     up, tally, kill one, leave, tally, join, down
#
# Run as root. Nothing is created in the root network namespace; addresses
# come from 198.18.0.0/15. TUNLB_BIN names the binary (default
# target/release/tunlb); SO_IDLE_TIMER (default 2 s) is the group's idle timer;
# SO_HA=1 at `up` runs the instances with --pickup --hash-key --state-file
# --state-interval 1, which a standby's takeover needs to keep their flows.
#
# Example:
#   scripts/scaleout.sh up so1-
#   scripts/scaleout.sh exec so1- client curl -s http://198.18.0.1/
#   scripts/scaleout.sh kill so1- 2; scripts/scaleout.sh leave so1- 2
#   SO_HA=1 scripts/scaleout.sh up so2- 2; scripts/scaleout.sh standby so2- 1
#   scripts/scaleout.sh kill so2- 1; scripts/scaleout.sh takeover so2- 1
#   scripts/scaleout.sh down so1-
set -euo pipefail

# shellcheck source=scripts/lib-scaleout.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/lib-scaleout.sh"

usage() {
  sed -n '2,/^set /s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
  exit 2
}

status() {
  local p=$1 i s
  echo "group $SO_GROUP: members $(so_members "$p" | tr '\n' ' ')"
  so_buckets "$p" | while read -r nh n; do echo "  next hop $nh (lb$nh): $n of $SO_BUCKETS buckets"; done
  for ((i = 1; i <= SO_MAX; i++)); do
    if so_inst_alive "$p" "$i"; then s="running, $(so_new_flows "$p" "$i") connections"
    else s="not running"; fi
    echo "instance $i (${p}lb$i, SNAT $(so_snat "$i")): $s"
    [ -e "/run/netns/${p}lb${i}s" ] || continue
    if so_inst_alive "$p" "${i}s"; then s="running, $(so_new_flows "$p" "${i}s") connections"
    else s="idle"; fi
    echo "  standby ${p}lb${i}s: $s; next hop $i is $(so_active "$p" "$i" | sed 's/^/lb/')'s"
  done
}

# tally P N: N connections, then how many each instance took (its stats,
# before and after) and each backend answered.
tally() {
  local p=$1 n=$2 out i c
  local -A before
  local -a inst=()
  for ((i = 1; i <= SO_MAX; i++)); do
    inst+=("$i")
    if [ -e "/run/netns/${p}lb${i}s" ]; then inst+=("${i}s"); fi
  done
  for i in "${inst[@]}"; do before[$i]=$(so_new_flows "$p" "$i"); done
  # From 8 client addresses: maglev hashes the client address.
  out=$(for ((i = 0; i < 8; i++)); do
    c=$(((n + 7 - i) / 8))
    [ "$c" -eq 0 ] || so_curl "$p" "$(so_client_addr "$i")" "http://$TL_VIP/?n=[1-$c]"
  done)
  echo "$n connections: $(awk '$3 == 200' <<<"$out" | wc -l) answered"
  for i in "${inst[@]}"; do
    c=$(($(so_new_flows "$p" "$i") - before[$i]))
    [ "$c" -eq 0 ] || echo "  instance $i: $c"
  done
  awk '$3 == 200 { c[$4]++ } END { for (b in c) print "  backend " b ": " c[b] }' <<<"$out" | sort
}

demo() {
  local p=$1
  trap 'so_down "$p"' EXIT
  trap 'exit 130' INT TERM
  echo "== up: 3 instances"
  so_up "$p" 3
  status "$p"
  echo "== 60 connections"
  tally "$p" 60
  echo "== kill -9 instance 2: its buckets still point at it"
  so_inst_kill "$p" 2 KILL
  tally "$p" 30
  echo "== the router drops next hop 2 (a routing daemon would, on BFD down)"
  so_leave "$p" 2
  status "$p"
  tally "$p" 60
  echo "== instance 4 joins; buckets move to it once idle for ${SO_IDLE_TIMER} s"
  so_join "$p" 4
  sleep "$((SO_IDLE_TIMER + 1))"
  status "$p"
  tally "$p" 60
}

cmd=${1-}
[ $# -gt 0 ] && shift
case $cmd in
  up | down | status | tally | kill | leave | join | standby | takeover)
    [ $# -ge 1 ] || usage
    p=$1
    tl_check_prefix "$p"
    tl_need_root
    case $cmd in
      up) so_up "$p" "${2:-3}" ;;
      down) so_down "$p"; tl_log "down: nothing left with prefix $p" ;;
      status) status "$p" ;;
      tally)
        [[ ${2:-60} =~ ^[1-9][0-9]{0,3}$ ]] || tl_die "tally: 1..9999 connections"
        tally "$p" "${2:-60}"
        ;;
      kill) [ $# -ge 2 ] || usage; so_check_inst "$2"; so_inst_kill "$p" "$2" KILL ;;
      leave) [ $# -ge 2 ] || usage; so_leave "$p" "$2" ;;
      join) [ $# -ge 2 ] || usage; so_join "$p" "$2" ;;
      standby) [ $# -ge 2 ] || usage; so_standby "$p" "$2" ;;
      takeover)
        [ $# -ge 2 ] || usage
        so_takeover "$p" "$2"
        tl_log "takeover: ${p}lb${2}s holds next hop $2 and SNAT $(so_snat "$2"); its tunlb was ready after ${SO_READY_MS} ms"
        ;;
    esac
    ;;
  exec)
    [ $# -ge 3 ] || usage
    p=$1 node=$2
    shift 2
    tl_check_prefix "$p"
    tl_need_root
    exec ip netns exec "${p}${node}" "$@"
    ;;
  demo)
    p=${1:-sodemo$$-}
    tl_check_prefix "$p"
    tl_need_root
    demo "$p"
    ;;
  *) usage ;;
esac
