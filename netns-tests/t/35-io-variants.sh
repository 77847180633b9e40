#!/usr/bin/env bash
# The other packet I/O paths of tunlb, when this build has them (the default
# path is covered by every other test): --io tun (the tun crate, one packet
# per read and write), --no-offload and --busy-poll 0 (off). Each: round robin, a
# 64 MiB download and a 64 MiB upload intact, with 2 threads.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup
help=$("$TUNLB_BIN" run --help)
variants=()
grep -q -- '--io <' <<<"$help" && variants+=("--io tun")
grep -q -- '--no-offload' <<<"$help" && variants+=("--no-offload")
grep -q -- '--busy-poll' <<<"$help" && variants+=("--busy-poll 0")
if [ ${#variants[@]} -eq 0 ]; then
  ok "this build has a single packet I/O path (no --io, no --no-offload): nothing more to test"
  exit 0
fi
big=$(tl_sha256 "$P" big.bin)
for v in "${variants[@]}"; do
  # shellcheck disable=SC2086  # $v is one flag or a flag and its value
  t_tunlb_start --mode nth --threads 2 $v
  rr=$(for _ in 1 2 3 4 5 6 7 8; do t_client curl -s --max-time 5 "$VIP_URL/" || echo fail; done | tr '\n' ' ')
  check_eq "$v: round robin" "$rr" "b1 b2 b3 b4 b1 b2 b3 b4 "
  got=$(t_client curl -s --max-time 60 "$VIP_URL/file/big.bin" | sha256sum | cut -d' ' -f1)
  check_eq "$v: 64 MiB download intact" "$got" "$big"
  got=$(t_client curl -s --max-time 60 -H 'Expect:' --data-binary "@$(tl_data "$P")/big.bin" "$VIP_URL/sha256" | cut -d' ' -f1)
  check_eq "$v: 64 MiB upload intact" "$got" "$big"
  check "$v: tunlb still running" tl_pid_alive "$TUNLB_PID"
  t_tunlb_stop
done
