#!/usr/bin/env bash
# netns-tests/run.sh: end-to-end tests of the real tunlb binary through a real
# TUN device and the real kernel, with curl, tshark and setpriv as judges.
#
#   sudo netns-tests/run.sh [PATTERN...]     run the tests (those whose file name
#                                            contains one of the PATTERNs)
#
# Each test (netns-tests/t/NN-name.sh) gets its own namespace prefix and its own
# topology (scripts/lib.sh), removed when it ends, and prints one PASS or FAIL
# line per check. The run ends with "N passed, N failed" (checks) and exits 1
# when any check failed. Nothing is created in the root network namespace; the
# run checks that at the end.
#
# Two datapaths, one suite: the tests run on the TUN (the default datapath),
# then the ones in PACKET_TESTS (those whose subject is the engine's behaviour
# as seen from outside, not the TUN) run once more on the packet datapath
# (TL_IO=packet: --io packet, see t_io_args in lib.sh); their checks are named
# "name[packet]". 38-packet-io and 39-packet-paths are about that datapath
# alone and run once.
#
# Environment: TUNLB_BIN (default target/release/tunlb, built when missing),
# TL_TEST_TIMEOUT (seconds per test, default 240), TL_KEEP=1 keeps the scratch
# directory (logs, captures), TL_IO=packet runs every test on the packet
# datapath and nothing twice (the tests that cannot apply there fail),
# TL_PACKET_PASS=0 skips the second pass.
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

tl_need_root

export TUNLB_BIN=${TUNLB_BIN:-$ROOT/target/release/tunlb}
if [ ! -x "$TUNLB_BIN" ]; then
  echo "== building $TUNLB_BIN (cargo build --release)"
  (cd "$ROOT" && cargo build --release)
fi

missing=()
for cmd in ip ip6tables curl tshark ethtool setpriv ss awk sha256sum timeout; do
  command -v "$cmd" >/dev/null || missing+=("$cmd")
done
[ -x /usr/bin/python3 ] || command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  echo "netns-tests: missing tools: ${missing[*]}" >&2
  echo "  Debian: apt-get install iproute2 iptables curl tshark ethtool util-linux python3 coreutils" >&2
  echo "0 passed, 1 failed"
  exit 1
fi

RUN="tl$$"
WORK=$(mktemp -d /tmp/tunlb-netns.XXXXXX)
chmod 755 "$WORK"
RESULTS="$WORK/results"
: >"$RESULTS"

root_ns_snapshot() {
  ip -o link show | awk '{ print $2 }'
  ip -o addr show | awk '{ print $2, $3, $4 }'
  ip route show table all 2>/dev/null | grep -v '^local\|^broadcast\|^multicast\|^ff00\|^fe80' || true
  sysctl -n net.ipv4.ip_forward net.ipv4.conf.all.rp_filter
}

finish() {
  local rc=$? ns
  trap - EXIT INT TERM
  # Anything a killed test left: every prefix of this run, torn down.
  for ns in $(tl_list_ns "$RUN-" | sed -E 's/(client|lb|b[0-9]+)$//' | sort -u); do
    tl_down "$ns" >/dev/null 2>&1 || true
  done
  if [ -n "${TL_KEEP-}" ]; then echo "scratch kept in $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

before=$(root_ns_snapshot)
# One copy of the served files for every test (64 MiB of random data).
export TUNLB_DATA="$WORK/data"
tl_make_data "$TUNLB_DATA"

# The tests that run a second time on the packet datapath.
PACKET_TESTS=(10-nth 11-random 15-modes 20-affinity 25-spoof 30-concurrency 40-checksums 50-pmtu
  60-backend-down 61-health 62-reload 63-observe 64-faults 65-redispatch 67-control-stall
  68-selectors 72-standby 73-restart 74-pcap 75-events 77-ipv6 78-ipv6-pmtu 79-ipv6-ops
  86-sd-notify 90-signals)
# Not twice: the tests of the TUN or of the process alone (01, 35, 37, 70,
# 76, 80, 85, 95), and two long ones that pass on the packet datapath too
# (TL_IO=packet netns-tests/run.sh 66-soak 69-scaleout) but would make the
# suite too slow for CI to run twice.

# wanted NAME PATTERN...: NAME contains one of the PATTERNs (or none given).
wanted() {
  local name=$1 pat
  shift
  [ $# -eq 0 ] && return 0
  for pat in "$@"; do [[ $name == *"$pat"* ]] && return 0; done
  return 1
}

# run_test FILE IO: run one test (IO: "" the default, "packet"), add its checks
# to RESULTS.
idx=0
run_test() {
  local t=$1 io=$2 name label prefix tdir tres t0 t1 rc=0
  name=$(basename "$t" .sh)
  label=${name#[0-9][0-9]-}${io:+[$io]}
  idx=$((idx + 1))
  prefix="$RUN-$idx-"
  tdir="$WORK/$name${io:+-$io}"
  mkdir -p "$tdir"
  tres="$tdir/results"
  : >"$tres"
  echo "== $name${io:+ on the $io datapath} (namespaces $prefix*)"
  t0=$(date +%s%3N)
  TL_IO=$io TL_TEST_PREFIX=$prefix TL_TEST_DIR=$tdir TL_RESULTS=$tres \
    timeout -k 15 "${TL_TEST_TIMEOUT:-240}" bash "$t" </dev/null || rc=$?
  t1=$(date +%s%3N)
  if [ "$rc" -ne 0 ] && ! grep -q '^FAIL' "$tres"; then
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      echo "FAIL $label: timed out after ${TL_TEST_TIMEOUT:-240}s" | tee -a "$tres"
    else
      echo "FAIL $label: exited $rc without a FAIL line" | tee -a "$tres"
    fi
  fi
  if [ ! -s "$tres" ]; then
    echo "FAIL $label: ran no check" | tee -a "$tres"
  fi
  tl_down "$prefix" >/dev/null 2>&1 || true
  if [ -n "$(tl_list_ns "$prefix")" ]; then
    echo "FAIL $label: namespaces left behind: $(tl_list_ns "$prefix" | tr '\n' ' ')" | tee -a "$tres"
  fi
  cat "$tres" >>"$RESULTS"
  printf -- '-- %s: %d passed, %d failed, %d.%03ds\n' "$name${io:+[$io]}" \
    "$(grep -c '^PASS' "$tres" || true)" "$(grep -c '^FAIL' "$tres" || true)" \
    $(((t1 - t0) / 1000)) $(((t1 - t0) % 1000))
}

start_all=$(date +%s)
io=${TL_IO:-}
for t in "$ROOT"/netns-tests/t/[0-9]*.sh; do
  wanted "$(basename "$t" .sh)" "$@" || continue
  run_test "$t" "$io"
done
if [ -z "$io" ] && [ "${TL_PACKET_PASS:-1}" != 0 ]; then
  for name in "${PACKET_TESTS[@]}"; do
    t="$ROOT/netns-tests/t/$name.sh"
    [ -f "$t" ] || { echo "FAIL run: PACKET_TESTS names $name, which is not a test" | tee -a "$RESULTS"; continue; }
    wanted "$name" "$@" || continue
    run_test "$t" packet
  done
fi

after=$(root_ns_snapshot)
if [ "$before" = "$after" ]; then
  echo "PASS run: root network namespace untouched (links, addresses, routes, sysctls)" | tee -a "$RESULTS"
else
  echo "FAIL run: root network namespace changed:" | tee -a "$RESULTS"
  diff <(echo "$before") <(echo "$after") || true
fi

passed=$(grep -c '^PASS' "$RESULTS" || true)
failed=$(grep -c '^FAIL' "$RESULTS" || true)
echo
echo "== netns-tests summary ($(($(date +%s) - start_all))s)"
grep '^FAIL' "$RESULTS" || true
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
