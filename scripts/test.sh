#!/usr/bin/env bash
# scripts/test.sh: README command two, and the command .ci/run calls.
#
#   1. cargo test                     hermetic: engine, CLI, config (no root)
#   2. cargo build --release          the binary the end-to-end tests drive
#   3. netns-tests/run.sh             end-to-end through a real TUN, as root, then
#                                     a subset again on the packet datapath
#                                     (--io packet; run.sh's PACKET_TESTS)
#
# As root everything runs directly. As an ordinary user, steps 1-2 run as you
# and step 3 asks sudo for root (it creates network namespaces, veth pairs and
# TUN devices); without sudo, step 3 is skipped and says so.
# TUNLB_SKIP_NETNS=1 skips step 3. Arguments are passed to netns-tests/run.sh
# (test-name patterns). Prints a summary and exits non-zero on any failure.
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT
start=$(date +%s)

echo "== cargo test"
cargo_rc=0
cargo test 2>&1 | tee "$LOGS/cargo-test.log" || cargo_rc=$?
read -r c_pass c_fail < <(awk '/^test result:/ {
    for (i = 1; i <= NF; i++) { if ($(i + 1) ~ /^passed/) p += $i; if ($(i + 1) ~ /^failed/) f += $i } }
  END { print p + 0, f + 0 }' "$LOGS/cargo-test.log")
if [ "$cargo_rc" -ne 0 ] && [ "$c_fail" -eq 0 ]; then c_fail=1; fi  # did not build, or crashed

echo "== cargo build --release"
build_rc=0
cargo build --release || build_rc=$?

n_pass=0 n_fail=0 netns_note=
if [ -n "${TUNLB_SKIP_NETNS-}" ]; then
  netns_note="skipped (TUNLB_SKIP_NETNS is set)"
elif [ "$build_rc" -ne 0 ]; then
  netns_note="not run: cargo build --release failed"
  n_fail=1
else
  runner=(netns-tests/run.sh)
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then
      echo "== netns-tests need root (network namespaces, veth pairs, TUN devices): asking sudo"
      runner=(sudo -- env "TUNLB_BIN=$ROOT/target/release/tunlb" netns-tests/run.sh)
    else
      runner=()
      netns_note="skipped: not root and no sudo (run 'netns-tests/run.sh' as root)"
    fi
  fi
  if [ ${#runner[@]} -gt 0 ]; then
    echo "== netns-tests/run.sh"
    netns_rc=0
    "${runner[@]}" "$@" 2>&1 | tee "$LOGS/netns.log" || netns_rc=$?
    read -r n_pass n_fail < <(awk '/^[0-9]+ passed, [0-9]+ failed$/ { p = $1; f = $3 } END { print p + 0, f + 0 }' \
      "$LOGS/netns.log")
    if [ "$netns_rc" -ne 0 ] && [ "$n_fail" -eq 0 ]; then n_fail=1; fi
  fi
fi

echo
echo "== summary ($(($(date +%s) - start))s)"
echo "cargo test:  $c_pass passed, $c_fail failed"
if [ -n "$netns_note" ]; then echo "netns-tests: $netns_note"
else echo "netns-tests: $n_pass passed, $n_fail failed"; fi
total_fail=$((c_fail + n_fail + (build_rc != 0)))
echo "total: $((c_pass + n_pass)) passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
