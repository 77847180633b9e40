#!/usr/bin/env bash
# The selection modes beyond nth and random:
#  wrr    smooth weighted round robin: 5:1:1 gives exactly b1 b1 b2 b1 b3 b1 b1,
#         and 70 more connections split exactly 50/10/10;
#  lc     least connections: every flow in the table counts (closed ones stay
#         in TIME_WAIT), so 8 sequential connections go b1 b2 b3 b4 b1 b2 b3 b4;
#         weighted 3:1:1:1, the fewest flows per unit of weight (ties to the
#         first) gives b1 b2 b3 b4 b1 b1 b1 b2 b3 b4 b1 b1 (nth: b1 b1 b1 b2 ...);
#  maglev consistent hashing of the client address: 17 client addresses
#         (198.18.1.2 and 198.18.1.10-25 on the client), 5 requests each, all
#         5 to one backend; tunlb restarted (a new process, another thread
#         count, another random seed): every address maps to the same backend
#         again; the addresses spread over more than one backend.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup
seq_of() {  # seq_of N: N sequential requests, their answers on one line
  local k
  for ((k = 0; k < $1; k++)); do t_client curl -s --max-time 5 "$VIP_URL/" || echo fail; done | tr '\n' ' '
}

# wrr 5:1:1
mapfile -t w511 < <(t_backend_flags 5 1 1)
t_tunlb_start --vip "$VIP:80" "${w511[@]}" --mode wrr
check_eq "wrr 5:1:1: 7 requests in the smooth order" "$(seq_of 7)" "b1 b1 b2 b1 b3 b1 b1 "
tally=$(t_tally 70)
note "wrr 5:1:1, 70 more: $(tr '\n' ' ' <<<"$tally")"
check_eq "wrr 5:1:1: 70 more, none failed" "$(t_count "$tally" fail)" 0
check_eq "wrr 5:1:1: b1 b2 b3 b4 of 70" \
  "$(t_count "$tally" b1) $(t_count "$tally" b2) $(t_count "$tally" b3) $(t_count "$tally" b4)" "50 10 10 0"
t_tunlb_stop

# lc over b1..b4
t_tunlb_start --mode lc --control "$T_DIR/control.sock"
check_eq "lc: 8 sequential connections spread one per backend per round" "$(seq_of 8)" "b1 b2 b3 b4 b1 b2 b3 b4 "
check_eq "lc: stats shows 2 live flows on each backend" \
  "$(for i in $(tl_backends); do t_backend_stat "$T_DIR/control.sock" "$i" active; done | tr '\n' ' ')" "2 2 2 2 "
t_tunlb_stop
mapfile -t w3111 < <(t_backend_flags 3 1 1 1)
t_tunlb_start --vip "$VIP:80" "${w3111[@]}" --mode lc
check_eq "lc 3:1:1:1: 12 sequential connections by flows per unit of weight" "$(seq_of 12)" \
  "b1 b2 b3 b4 b1 b1 b1 b2 b3 b4 b1 b1 "
t_tunlb_stop

# maglev
addrs=("$TL_CLIENT_ADDR")
for n in $(seq 10 25); do
  ip -n "${P}client" addr add "198.18.1.$n/24" dev eth0
  addrs+=("198.18.1.$n")
done
# mapping RUN: for each client address, the backends of 5 requests from it,
# "ADDR bX" when all 5 agree, else "ADDR mixed:...". Each request has its own
# client port (per address and run): a SNAT tuple (the client's port is
# kept) that a backend still holds in TIME_WAIT from an earlier request is
# not what this test is about (t/64-faults.sh is).
mapping() {
  local a got i=0 lo k
  for a in "${addrs[@]}"; do
    lo=$((20000 + $1 * 2000 + i * 100))
    i=$((i + 1))
    got=$(for k in 0 1 2 3 4; do
      t_client curl -s --max-time 5 --interface "$a" --local-port "$((lo + k))" "$VIP_URL/" 2>/dev/null
      echo
    done | grep . | sort | uniq -c | awk '{ printf "%s%s:%s", (NR > 1 ? "," : ""), $2, $1 }')
    if [[ $got =~ ^(b[0-9]+):5$ ]]; then echo "$a ${BASH_REMATCH[1]}"; else echo "$a mixed:$got"; fi
  done
}
t_tunlb_start --mode maglev
first=$(mapping 0)
t_tunlb_stop
note "maglev, first instance: $(awk '{ print $2 }' <<<"$first" | tr '\n' ' ')"
check_eq "maglev: 5 requests from each of ${#addrs[@]} client addresses all went to one backend" \
  "$(grep -c ' b[0-9]*$' <<<"$first")" "${#addrs[@]}"
check_eq "maglev: client $TL_CLIENT_ADDR is sticky" "$(grep -c "^$TL_CLIENT_ADDR b[0-9]*\$" <<<"$first")" 1
check_range "maglev: the addresses spread over several backends" "$(awk '{ print $2 }' <<<"$first" | sort -u | wc -l)" 2 4
t_tunlb_start --mode maglev --threads 2
second=$(mapping 1)
note "maglev, after a restart: $(awk '{ print $2 }' <<<"$second" | tr '\n' ' ')"
diffs=$(diff <(echo "$first") <(echo "$second") | grep '^[<>]' | tr '\n' ' ' || true)
check_eq "maglev: after a restart (new process, 2 threads) every address maps to the same backend" "$diffs" ""
check "tunlb still running" tl_pid_alive "$TUNLB_PID"
