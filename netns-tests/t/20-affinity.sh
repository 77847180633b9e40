#!/usr/bin/env bash
# Flow affinity: a 64 MiB download (rate-limited so that it lasts seconds)
# arrives intact, with the backend file's sha256, from the one backend its
# flow was given, while 40 other connections are balanced around it.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup
t_tunlb_start --mode nth
want=$(tl_sha256 "$P" big.bin)

t_client curl -s --max-time 90 --limit-rate 16M -D "$T_DIR/big.headers" \
  -o "$T_DIR/big.bin" "$VIP_URL/file/big.bin" &
dl=$!
for ((k = 0; k < 100; k++)); do
  grep -q '^X-Backend' "$T_DIR/big.headers" 2>/dev/null && break
  sleep 0.05
done

tally=$(t_tally 40)
note "40 connections during the download: $(tr '\n' ' ' <<<"$tally")"
check "the download was still in flight when the 40 others had finished" tl_pid_alive "$dl"
check_eq "40 connections during the download, none failed" "$(t_count "$tally" fail)" 0
for i in $(tl_backends); do
  # nth: the download took b1's turn first, the next 40 go b2 b3 b4 b1 ...
  check_eq "b$i got 10 of the 40 short connections" "$(t_count "$tally" "b$i")" 10
done

rc=0
wait "$dl" || rc=$?
check_eq "curl finished the download" "$rc" 0
backend=$(awk -F': *' 'tolower($1) == "x-backend" { gsub(/\r/, "", $2); print $2 }' "$T_DIR/big.headers")
check_eq "the download came from one backend (b1, the first nth turn)" "$backend" b1
check_eq "64 MiB arrived" "$(stat -c %s "$T_DIR/big.bin" 2>/dev/null || echo 0)" $((64 << 20))
check_eq "sha256 of the download equals the backend file's" \
  "$(sha256sum "$T_DIR/big.bin" | cut -d' ' -f1)" "$want"
rm -f "$T_DIR/big.bin"
check "tunlb still running" tl_pid_alive "$TUNLB_PID"
