#!/usr/bin/env bash
# docs/lab.md cannot rot: every command of the lab runs, in order, in one
# shell (netns-tests/lab.py), with this test's namespace prefix and scratch
# directory, and its output must be what the lab shows (with its [..] and
# ... wildcards). One PASS or FAIL line per command.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

tl_need_root
trap t_cleanup EXIT
trap 'exit 143' TERM INT
[ -x "$TUNLB_BIN" ] || tl_die "no tunlb binary at $TUNLB_BIN (cargo build --release)"
command -v tshark >/dev/null || tl_die "tshark is missing"

cd "$T_ROOT"
while IFS= read -r line; do
  case $line in
    "OK "*) ok "lab: ${line#OK }" ;;
    "NOTOK "*) not_ok "lab: ${line#NOTOK }" ;;
    *) printf '%s\n' "$line" ;;
  esac
done < <("$(tl_python)" "$T_ROOT/netns-tests/lab.py" "$T_ROOT/docs/lab.md" "$T_DIR/lab-run" \
  "P=$P" "L=$T_DIR/lab" "T=$TUNLB_BIN")
check "the lab ran to its end (its last command passed)" grep -q "^PASS lab: lab: scripts/topology.sh down" "$T_RESULTS"
