#!/usr/bin/env bash
# README command one: scripts/demo.sh runs end to end (with the binary under
# test, installing nothing), shows b1 b2 b3 b4 b1 ... in nth mode, and tears
# down every namespace it made.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

tl_need_root
trap t_cleanup EXIT
trap 'exit 143' TERM INT
rc=0
TUNLB_PREFIX=$P TUNLB_NO_INSTALL=1 TUNLB_BIN=$TUNLB_BIN timeout 120 "$T_ROOT/scripts/demo.sh" \
  >"$T_DIR/demo.out" 2>&1 </dev/null || rc=$?
check_eq "scripts/demo.sh exit status" "$rc" 0
check "nth mode went b1 b2 b3 b4 b1 b2 b3 b4" grep -q 'round robin as expected: b1 b2 b3 b4 b1 b2 b3 b4' "$T_DIR/demo.out"
check "weighted random mode answered 8 times" \
  grep -qE 'one weighted draw per connection: (b[1-4] ){7}b[1-4]$' "$T_DIR/demo.out"
check "the iptables ruleset was printed" grep -q -- '-j DNAT --to-destination 198.18.2.6:80' "$T_DIR/demo.out"
check_eq "no namespace left with the demo's prefix" "$(tl_list_ns "$P" | wc -l)" 0
[ "$T_FAILED" -eq 0 ] || sed 's/^/    demo: /' "$T_DIR/demo.out" | tail -n 40
