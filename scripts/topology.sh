#!/usr/bin/env bash
# scripts/topology.sh: the tunlb test topology in network namespaces.
#
#   scripts/topology.sh up     [PREFIX]   client, lb, b1..b4 and the HTTP backends
#   scripts/topology.sh down   [PREFIX]   remove everything carrying PREFIX
#   scripts/topology.sh status [PREFIX]   namespaces, addresses, recorded processes
#   scripts/topology.sh exec   PREFIX NODE CMD...   run CMD in PREFIX+NODE (client|lb|b1..b4)
#   scripts/topology.sh lb-start PREFIX LOG CMD...  start CMD in the lb namespace in the
#                                         background (recorded for `down`), wait for its
#                                         "ready" log line, print its PID
#   scripts/topology.sh lb-stop PREFIX [SIGNAL]     signal that process, wait for it
#
# PREFIX defaults to $TUNLB_PREFIX, else "tlb-". Both up and down are idempotent;
# `up` first removes whatever an interrupted run with the same PREFIX left.
# Nothing is created in the root network namespace. See scripts/lib.sh.
#
# Example (as root):
#   scripts/topology.sh up tl1-
#   scripts/topology.sh lb-start tl1- /tmp/tunlb.log target/release/tunlb run --tun tl0 \
#       --tun-addr 198.18.0.254/24 --vip 198.18.0.1:80 --backend 198.18.2.3:80 --backend 198.18.2.4:80
#   scripts/topology.sh exec tl1- client curl -s http://198.18.0.1/
#   scripts/topology.sh down tl1-
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  sed -n '2,23s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
  exit 2
}

cmd=${1-}
[ $# -gt 0 ] && shift
case $cmd in
  up | down | status)
    p=${1:-${TUNLB_PREFIX:-tlb-}}
    tl_check_prefix "$p"
    tl_need_root
    case $cmd in
      up) tl_up "$p" ;;
      down) tl_down "$p"; tl_log "down: nothing left with prefix $p" ;;
      status)
        for ns in $(tl_list_ns "$p"); do
          echo "== $ns"
          ip -n "$ns" -br addr show | sed 's/^/   /'
        done
        st=$(tl_state "$p")
        if [ -d "$st/pids" ]; then
          for f in "$st"/pids/*.pid; do
            [ -e "$f" ] || continue
            read -r pid ns <"$f"
            if tl_pid_in_ns "$pid" "$ns"; then s=running; else s=gone; fi
            echo "process $(basename "$f" .pid): pid $pid in $ns ($s)"
          done
        fi
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
  lb-start)
    [ $# -ge 3 ] || usage
    p=$1 log=$2
    shift 2
    tl_check_prefix "$p"
    tl_need_root
    [ -e "/run/netns/${p}lb" ] || tl_die "no namespace ${p}lb: run '$0 up $p' first"
    tl_lb_start "$p" "$log" "$@"
    tl_wait_ready "$log" "$TL_PID" "${TUNLB_READY_TIMEOUT:-15}" || {
      tl_stop "$p" tunlb TERM 2
      exit 1
    }
    echo "$TL_PID"
    ;;
  lb-stop)
    [ $# -ge 1 ] || usage
    tl_check_prefix "$1"
    tl_need_root
    tl_stop "$1" tunlb "${2:-TERM}" 5
    ;;
  *) usage ;;
esac
