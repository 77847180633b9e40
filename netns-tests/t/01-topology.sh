#!/usr/bin/env bash
# The topology itself: up is idempotent, an interrupted run (state directory
# lost, namespaces and servers left running) does not break the next `up`,
# and `down` leaves nothing with the prefix.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup
# Direct to a backend, routed by lb (no tunlb involved).
check_eq "client reaches b1 through lb's routing" "$(t_client curl -s --max-time 5 http://198.18.2.3/)" b1
check_eq "client reaches b4 through lb's routing" "$(t_client curl -s --max-time 5 http://198.18.2.6/)" b4

tl_up "$P" 2>>"$T_DIR/topology.log"
check_eq "a second 'up' rebuilds cleanly" "$(t_client curl -s --max-time 5 http://198.18.2.4/)" b2

# Simulate an interrupted run: the state directory (PID files) is lost while
# namespaces and backend servers keep running.
rm -rf "$(tl_state "$P")"
tl_up "$P" 2>>"$T_DIR/topology.log"
check_eq "'up' after an interrupted run" "$(t_client curl -s --max-time 5 http://198.18.2.5/)" b3
check_eq "exactly 6 namespaces carry the prefix" "$(tl_list_ns "$P" | wc -l)" 6

big=$(t_client curl -s --max-time 30 http://198.18.2.3/file/big.bin | sha256sum | cut -d' ' -f1)
check_eq "big.bin served with its known sha256" "$big" "$(tl_sha256 "$P" big.bin)"

rm -rf "$(tl_state "$P")"
tl_down "$P"
check_eq "'down' without state leaves no namespace" "$(tl_list_ns "$P" | wc -l)" 0
check "'down' leaves no state directory" test ! -e "$(tl_state "$P")"
# A second 'down', with nothing left to remove: exit 0, nothing said,
# nothing created.
if out=$(tl_down "$P" 2>&1); then rc=0; else rc=$?; fi
check_eq "'down' twice is harmless: exit status, then anything it printed" "$rc${out:+: $out}" 0
check_eq "'down' twice leaves no namespace" "$(tl_list_ns "$P" | wc -l)" 0
check "'down' twice leaves no state directory" test ! -e "$(tl_state "$P")"
