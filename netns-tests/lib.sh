# shellcheck shell=bash
# netns-tests/lib.sh: helpers shared by the netns tests (sourced by each test).
#
# The runner (netns-tests/run.sh) gives every test its own namespace prefix
# (TL_TEST_PREFIX), its own scratch directory (TL_TEST_DIR) and a results file
# (TL_RESULTS) where `ok` and `not_ok` append one "PASS name" / "FAIL name" line
# per check. A test script runs alone too: `sudo netns-tests/t/10-nth.sh`.

set -euo pipefail

T_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$T_ROOT/scripts/lib.sh"

T_NAME=$(basename "$0" .sh)
T_NAME=${T_NAME#[0-9][0-9]-}
# On the packet datapath the check names say so ("nth[packet]: ...").
if [ "${TL_IO:-}" = packet ]; then T_NAME="${T_NAME}[packet]"; fi
P=${TL_TEST_PREFIX:-tl$$-}
T_DIR=${TL_TEST_DIR:-$(mktemp -d)}
T_RESULTS=${TL_RESULTS:-$T_DIR/results}
TUNLB_BIN=${TUNLB_BIN:-$T_ROOT/target/release/tunlb}
T_FAILED=0
TUNLB_LOG=$T_DIR/tunlb.log
TUNLB_PID=
VIP=$TL_VIP
VIP_URL="http://$TL_VIP"
# IPv6 (the topology is dual stack, scripts/lib.sh): the VIP's twin.
VIP6=$TL_VIP6
# shellcheck disable=SC2034  # for the tests
VIP6_URL="http://[$TL_VIP6]"
mkdir -p "$T_DIR"

note() { printf '  .. %s\n' "$*"; }
ok() { printf 'PASS %s: %s\n' "$T_NAME" "$*" | tee -a "$T_RESULTS"; }
not_ok() {
  printf 'FAIL %s: %s\n' "$T_NAME" "$*" | tee -a "$T_RESULTS"
  T_FAILED=1
}
# check DESCRIPTION CMD...: PASS when CMD succeeds.
check() {
  local what=$1
  shift
  if "$@"; then ok "$what"; else not_ok "$what"; fi
}
# check_eq DESCRIPTION GOT WANT
check_eq() {
  if [ "$2" = "$3" ]; then ok "$1 ($2)"; else not_ok "$1: got '$2', want '$3'"; fi
}
# check_range DESCRIPTION VALUE LOW HIGH (inclusive)
check_range() {
  if [ "$2" -ge "$3" ] && [ "$2" -le "$4" ]; then ok "$1 ($2 in [$3, $4])"
  else not_ok "$1: $2 not in [$3, $4]"; fi
}

t_cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  tl_down "$P" >/dev/null 2>&1 || true
  if [ "$rc" -ne 0 ] && [ "$T_FAILED" -eq 0 ]; then
    not_ok "the test script itself failed (exit $rc)"
  fi
  [ "$T_FAILED" -eq 0 ] || exit 1
  exit 0
}

# t_setup: the topology for this test, removed on any exit.
t_setup() {
  tl_need_root
  trap t_cleanup EXIT
  trap 'exit 143' TERM INT
  [ -x "$TUNLB_BIN" ] || tl_die "no tunlb binary at $TUNLB_BIN (cargo build --release)"
  tl_up "$P" 2>"$T_DIR/topology.log" || { cat "$T_DIR/topology.log" >&2; return 1; }
}

# t_setup_scaleout N [STANDBY...]: t_setup for the scale-out lab
# (scripts/lib-scaleout.sh, sourced by the test): N instances, and a standby
# for each instance named; removed on any exit. Its log is shown when the
# topology fails to come up.
t_setup_scaleout() {
  local n=$1 i
  shift
  T_SO_UP=
  tl_need_root
  trap t_cleanup_scaleout EXIT
  trap 'exit 143' TERM INT
  [ -x "$TUNLB_BIN" ] || tl_die "no tunlb binary at $TUNLB_BIN (cargo build --release)"
  so_up "$P" "$n" 2>"$T_DIR/topology.log"
  for i in "$@"; do so_standby "$P" "$i" 2>>"$T_DIR/topology.log"; done
  T_SO_UP=1
}
t_cleanup_scaleout() {
  local rc=$?
  [ -n "$T_SO_UP" ] || sed 's/^/    topology: /' "$T_DIR/topology.log" >&2 2>/dev/null || true
  (exit "$rc")
  t_cleanup
}

# shellcheck disable=SC2120  # weights are optional
# t_backend_flags [W1 W2 ...]: --backend flags for b1..bN, with weights when given.
t_backend_flags() {
  local i
  if [ $# -eq 0 ]; then
    for i in $(tl_backends); do printf -- '--backend\n%s:80\n' "$(tl_backend_addr "$i")"; done
  else
    i=0
    for w in "$@"; do
      i=$((i + 1))
      printf -- '--backend\n%s:80,weight=%s\n' "$(tl_backend_addr "$i")" "$w"
    done
  fi
}

# t_backend_flags6 [W1 W2 ...]: the same over b1..bN's IPv6 addresses
# ('--backend [2001:2:0:2::3]:80').
# shellcheck disable=SC2120  # weights are optional
t_backend_flags6() {
  local i w
  if [ $# -eq 0 ]; then
    for i in $(tl_backends); do printf -- '--backend\n[%s]:80\n' "$(tl_backend_addr6 "$i")"; done
  else
    i=0
    for w in "$@"; do
      i=$((i + 1))
      printf -- '--backend\n[%s]:80,weight=%s\n' "$(tl_backend_addr6 "$i")" "$w"
    done
  fi
}

# t6_start ARGS...: the IPv6 service [VIP6]:80 over b1..b4 in the middle,
# ready. Normally tunlb, with both prefixes on its TUN (--tun-addr IPv4 and
# IPv6) and ARGS added. With TL_NAT66=kernel, the kernel instead: ip6tables
# NAT66 in lb, the nth cascade over b1..b4 and SNAT to the VIP's address
# (what tunlb does by default), ARGS ignored: the same checks run against
# the kernel, which validates a test itself while tunlb cannot serve IPv6.
t6_start() {
  if [ "${TL_NAT66:-}" = kernel ]; then
    local i n=$TL_NBACKENDS st
    for ((i = 1; i <= n; i++)); do
      st=()
      [ "$i" -eq "$n" ] || st=(-m statistic --mode nth --every $((n - i + 1)) --packet 0)
      tl_exec "$P" lb ip6tables -t nat -A PREROUTING -p tcp -d "$VIP6" --dport 80 -m conntrack --ctstate NEW \
        "${st[@]}" -j DNAT --to-destination "[$(tl_backend_addr6 "$i")]:80"
    done
    tl_exec "$P" lb ip6tables -t nat -A POSTROUTING -p tcp -m conntrack --ctstate DNAT \
      --ctorigdst "$VIP6" --ctorigdstport 80 -j SNAT --to-source "$VIP6"
    # The TUN's IPv6 prefix on a device, as tl0 would hold it (one end of a
    # veth pair inside lb: no dummy driver here): lb's kernel can then route
    # an ICMPv6 error about a reply (toward the VIP) before NAT rewrites it
    # toward the backend.
    ip -n "${P}lb" link add v6vip type veth peer name v6vip-peer
    ip -n "${P}lb" addr add "$TL_TUN_ADDR6" dev v6vip nodad
    ip -n "${P}lb" link set v6vip-peer up
    ip -n "${P}lb" link set v6vip up
    note "TL_NAT66=kernel: ip6tables NAT66 in the middle instead of tunlb"
    return 0
  fi
  local -a args=(run --tun "$TL_TUN" --tun-addr "$TL_TUN_ADDR" --tun-addr "$TL_TUN_ADDR6")
  # The packet datapath (TL_IO=packet) needs no TUN: the VIP's packets reach
  # lb's interfaces as they are, in both families.
  [ "${TL_IO:-}" != packet ] || args=(run --io packet)
  if [[ " $* " != *" --vip "* ]]; then
    args+=(--vip "[$VIP6]:$TL_VIP_PORT")
    mapfile -t -O "${#args[@]}" args < <(t_backend_flags6)
  fi
  t_tunlb_start_cmd "$TUNLB_BIN" "${args[@]}" "$@"
}
# t6_alive: what is in the middle still runs (always true for the kernel).
t6_alive() { [ "${TL_NAT66:-}" = kernel ] || tl_pid_alive "$TUNLB_PID"; }
t6_kernel() { [ "${TL_NAT66:-}" = kernel ]; }

# t_stop_and_time SIGNAL: send SIGNAL to tunlb; sets RC (its exit status, 999
# when it still runs after 3 s, then it is killed) and MS. Runs in this shell:
# tunlb is its child, so `wait` yields the status.
t_stop_and_time() {
  local t0 k
  RC=0
  t0=$(t_now_ms)
  kill "-$1" "$TUNLB_PID"
  for ((k = 0; k < 300; k++)); do
    tl_pid_alive "$TUNLB_PID" || break
    sleep 0.01
  done
  if tl_pid_alive "$TUNLB_PID"; then
    kill -KILL "$TUNLB_PID" 2>/dev/null || true
    wait "$TUNLB_PID" 2>/dev/null || true
    RC=999 MS=$(($(t_now_ms) - t0))
    return
  fi
  MS=$(($(t_now_ms) - t0))
  wait "$TUNLB_PID" || RC=$?
}

# t_backend_up CTL I true|false: `tunlb stats` (socket CTL) says bI is up / down.
t_backend_up() { [ "$(t_backend_stat "$1" "$2" up)" = "$3" ]; }
# t_wait_backend CTL I true|false WHAT: bI reaches the state within 5 s (one
# PASS or FAIL line; with fast checks, fall or rise takes about 0.4 s).
t_wait_backend() {
  if t_wait_until 5 t_backend_up "$1" "$2" "$3"; then
    ok "b$2 $4 after ${T_WAITED_MS} ms (stats: \"up\": $3)"
  else
    not_ok "b$2 $4 within 5 s: stats says up=$(t_backend_stat "$1" "$2" up)"
  fi
}

# t_fast_health_conf FILE: a config file with fast health checks only (every
# 0.2 s, rise 2, fall 2, timeout 0.2 s): a backend is marked down in ~0.5 s.
t_fast_health_conf() {
  printf '[health]\ninterval = 0.2\nrise = 2\nfall = 2\ntimeout = 0.2\n' >"$1"
}

# t_tunlb_start_cmd CMD...: run CMD (a tunlb command line) in the lb namespace
# and wait for "ready".
t_tunlb_start_cmd() {
  local -a cmd
  cmd=("$@")
  tl_lb_start "$P" "$TUNLB_LOG" "${cmd[@]}"
  TUNLB_PID=$TL_PID
  if ! tl_wait_ready "$TUNLB_LOG" "$TUNLB_PID" 15; then
    not_ok "tunlb became ready: ${cmd[*]}"
    return 1
  fi
}
# t_io_args: the datapath flags of `tunlb run`, one per line: the topology's
# TUN, or with TL_IO=packet the packet datapath (--io packet, no TUN; the VIP's
# packets reach lb's interfaces as they are).
t_io_args() {
  if [ "${TL_IO:-}" = packet ]; then printf -- '--io\npacket\n'
  else printf -- '--tun\n%s\n--tun-addr\n%s\n' "$TL_TUN" "$TL_TUN_ADDR"; fi
}
# t_hops_probe ADDR HOPS: from the client, a TCP connect to ADDR port 80
# (IPv4 or IPv6) with TTL / hop limit HOPS; prints "connected", or what the
# client's kernel put on the socket's error queue about the ICMP(v6) error
# that failed it: "ERRNO ORIGIN TYPE CODE OFFENDER" (origin 2 ICMP, 3 ICMPv6).
t_hops_probe() {
  t_client "$(tl_python)" - "$1" "$2" <<'PY'
import socket, struct, sys
addr, hops = sys.argv[1], int(sys.argv[2])
v6 = ":" in addr
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET)
if v6:
    level, hops_opt, recverr = socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 25
else:
    level, hops_opt, recverr = socket.IPPROTO_IP, socket.IP_TTL, 11
s.setsockopt(level, hops_opt, hops)
s.setsockopt(level, recverr, 1)
s.settimeout(5)
try:
    s.connect((addr, 80))
    print("connected")
except OSError as e:
    out = "%s - - - -" % e.errno
    try:
        _, anc, _, _ = s.recvmsg(512, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        for lvl, kind, d in anc:
            if lvl == level and kind == recverr:
                errno_, origin, etype, code = struct.unpack("=IBBB", d[:7])
                if v6:
                    who = socket.inet_ntop(socket.AF_INET6, d[24:40])
                else:
                    who = socket.inet_ntoa(d[20:24])
                out = "%d %d %d %d %s" % (errno_, origin, etype, code, who)
    except OSError:
        pass
    print(out)
PY
}
# t_v6_conf FILE: write to FILE the IPv6 service [VIP6]:80, nth over b1..b4's
# IPv6 addresses, as a config file's [[service]].
t_v6_conf() {
  local -a b6
  mapfile -t b6 < <(tl_backends | while read -r i; do printf '"[%s]:80"\n' "$(tl_backend_addr6 "$i")"; done)
  printf '[[service]]\nvip = "[%s]:80"\nmode = "nth"\nbackends = [%s]\n' "$VIP6" "$(IFS=,; echo "${b6[*]}")" >"$1"
}
# t_device: the device name tunlb reports and names its default control
# socket after: the topology's TUN, or on the packet datapath "packet" (the
# socket) and "c0,br0" (the device line of `tunlb stats`).
t_sock_name() { if [ "${TL_IO:-}" = packet ]; then echo packet; else echo "$TL_TUN"; fi; }
t_device() { if [ "${TL_IO:-}" = packet ]; then echo c0,br0; else echo "$TL_TUN"; fi; }
# t_default_sock: the instance's default control socket in lb,
# /run/tunlb/NAME.NETNS.sock (NETNS: the inode of the lb namespace).
t_default_sock() { echo "/run/tunlb/$(t_sock_name).$(stat -L -c %i "/run/netns/${P}lb").sock"; }
# t_tunlb_start ARGS...: tunlb run with ARGS in the lb namespace, wait for "ready".
# The default service (when ARGS has no --vip): the VIP over b1..b4. The
# datapath: t_io_args (TL_IO=packet: the packet datapath).
t_tunlb_start() {
  local -a args=(run)
  mapfile -t -O 1 args < <(t_io_args)
  if [[ " $* " != *" --vip "* ]]; then
    args+=(--vip "$VIP:$TL_VIP_PORT")
    # shellcheck disable=SC2119
    mapfile -t -O "${#args[@]}" args < <(t_backend_flags)
  fi
  t_tunlb_start_cmd "$TUNLB_BIN" "${args[@]}" "$@"
}
t_tunlb_stop() { tl_stop "$P" tunlb TERM 5; TUNLB_PID=; }
# t_added: what a running tunlb added to lb and removes when it exits: its TUN
# (the `ip link` line), or on the packet datapath its blackhole routes (proto
# 213). Empty when there is none. T_ADDED names it for check lines (one VIP).
t_added() {
  if [ "${TL_IO:-}" = packet ]; then ip -n "${P}lb" route show proto 213
  else ip -n "${P}lb" link show "$TL_TUN" 2>/dev/null || true; fi
}
if [ "${TL_IO:-}" = packet ]; then T_ADDED="the blackhole route it added"; else T_ADDED="the TUN it created"; fi

# t_client CMD...: run CMD in the client namespace.
t_client() { tl_exec "$P" client "$@"; }

# t_tally N [URL_SUFFIX [BASE_URL]]: N sequential connections (one curl, URL
# globbing, each answer closes its connection) to BASE_URL (default VIP_URL;
# VIP6_URL for IPv6); prints "bK COUNT" lines, a "fail COUNT" line and a
# "connects COUNT" line (TCP connections curl opened).
t_tally() {
  local n=$1 suffix=${2-} base=${3:-$VIP_URL}
  timeout 180 ip netns exec "${P}client" curl -s --max-time 10 -w 'connects=%{num_connects}\n' \
    "$base/?n=[1-$n]$suffix" 2>/dev/null |
    awk -v n="$n" '
      /^b[0-9]+$/ { c[$1]++; got++ }
      /^connects=/ { sub("connects=", ""); conn += $0 }
      END { for (b in c) print b, c[b]; print "fail", n - got; print "connects", conn + 0 }' |
    sort
}
# t_count TALLY KEY: the count for KEY (0 when absent).
t_count() { awk -v k="$2" '$1 == k { v = $2 } END { print v + 0 }' <<<"$1"; }

# t_capture_start NODE DEV NAME FILE [FILTER]: capture with dumpcap in namespace
# PREFIX+NODE on DEV (capture filter default "tcp or icmp"), recorded as NAME.
t_capture_start() {
  local node=$1 dev=$2 name=$3 file=$4 filter=${5:-tcp or icmp} k
  rm -f "$file"
  tl_bg "$P" "$node" "$name" "$T_DIR/$name.log" dumpcap -q -i "$dev" -f "$filter" -w "$file"
  for ((k = 0; k < 100; k++)); do
    [ -s "$file" ] && grep -q 'Capturing on' "$T_DIR/$name.log" 2>/dev/null && break
    tl_pid_alive "$TL_PID" || break
    sleep 0.05
  done
  sleep 0.2
  [ -s "$file" ] || { cat "$T_DIR/$name.log" >&2; not_ok "tshark started on $node:$dev"; return 1; }
}
# t_capture_stop NAME...: stop captures. dumpcap hands packets over from the
# kernel in blocks every 250 ms and drops a partial block on SIGINT: wait 1 s
# first, so that the captures hold every packet sent before the call.
t_capture_stop() {
  local name
  sleep 1
  for name in "$@"; do tl_stop "$P" "$name" INT 5; done
}

# Binomial bounds: mean +- 5 standard deviations for N draws with probability
# W/SUM, clamped to [0, N]. Prints "LOW HIGH".
t_binomial_bounds() {
  awk -v n="$1" -v w="$2" -v s="$3" 'BEGIN {
    p = w / s; m = n * p; sd = sqrt(n * p * (1 - p));
    lo = int(m - 5 * sd); hi = int(m + 5 * sd + 0.999999);
    if (lo < 0) lo = 0; if (hi > n) hi = n; print lo, hi }'
}

# Milliseconds since the epoch.
t_now_ms() { date +%s%3N; }

# t_wait_until SECONDS CMD...: run CMD every 0.1 s until it succeeds; fails
# after SECONDS. Sets T_WAITED_MS (time until success, or the whole wait).
# shellcheck disable=SC2034  # T_WAITED_MS is for the tests
t_wait_until() {
  local secs=$1 t0 end
  shift
  t0=$(t_now_ms)
  end=$((t0 + secs * 1000))
  while :; do
    if "$@"; then
      T_WAITED_MS=$(($(t_now_ms) - t0))
      return 0
    fi
    if [ "$(t_now_ms)" -ge "$end" ]; then
      T_WAITED_MS=$(($(t_now_ms) - t0))
      return 1
    fi
    sleep 0.1
  done
}

# t_json CODE: read JSON from stdin into `d` and print the Python expression
# CODE (lists one item per line, booleans as true/false). Fails on bad JSON.
t_json() {
  "$(tl_python)" -c '
import json, sys
d = json.load(sys.stdin)
v = eval(sys.argv[1])
if isinstance(v, bool):
    print("true" if v else "false")
elif isinstance(v, (list, tuple)):
    for x in v:
        print(x)
else:
    print(v)' "$1"
}

# t_query WHAT CONTROL [--json]: `tunlb WHAT --control CONTROL`, in the lb
# namespace (the socket is a file, but the answers are the instance's).
t_query() {
  local what=$1 ctl=$2
  shift 2
  tl_exec "$P" lb "$TUNLB_BIN" "$what" --control "$ctl" "$@"
}

# t_backend_stat CONTROL I FIELD: FIELD (up, weight, active, connections,
# packets, bytes) of backend bI in `tunlb stats --json` (the first service
# that has it); "none" when bI is not configured.
t_backend_stat() {
  t_query stats "$1" --json |
    t_json "next((str(b['$3']).lower() for b in d['backends'] if b['backend'] == '$(tl_backend_addr "$2"):80'), 'none')"
}

# t_header_backend FILE: the X-Backend header curl saved (-D FILE).
t_header_backend() {
  awk -F': *' 'tolower($1) == "x-backend" { gsub(/\r/, "", $2); print $2 }' "$1" 2>/dev/null
}

# t_sha FILE: the sha256 of FILE (empty when FILE is missing).
t_sha() { sha256sum "$1" 2>/dev/null | cut -d' ' -f1; }

# t_checksum_judge FILE SRC DST: read capture FILE once with IP and TCP
# checksum validation on; print "PACKETS BAD GOOD FFFF": packets, packets with
# a bad IP/TCP/ICMP/ICMPv6 checksum (inner headers of ICMP errors included,
# but not the TCP checksum of a segment an ICMPv6 error quotes, cut short;
# SRC and DST may be IPv4 or IPv6 addresses, as tshark prints them), packets
# SRC -> DST whose TCP checksum was verified good, and packets SRC -> DST
# whose TCP checksum is 0xffff where a full computation gives 0x0000. tshark
# marks that last case "bad" (its RFC 1624 note), but both encode the same sum
# and every receiver accepts it; Linux senders emit it now and then too. So it
# is counted apart.
t_checksum_judge() {
  tshark -n -r "$1" -o tcp.check_checksum:TRUE -o ip.check_checksum:TRUE -T fields -E occurrence=a \
    -E aggregator=, -e ip.src -e ip.dst -e ip.checksum.status -e tcp.checksum.status \
    -e icmp.checksum.status -e tcp.checksum -e tcp.checksum_calculated \
    -e ipv6.src -e ipv6.dst -e icmpv6.checksum.status -e icmpv6.type 2>/dev/null |
    awk -F '\t' -v src="$2" -v dst="$3" '
      { n++; bad_here = 0; ffff_here = 0
        split($1, s, ","); split($2, d, ","); split($8, s6, ","); split($9, d6, ",")
        mine = (s[1] == src && d[1] == dst) || ($1 == "" && s6[1] == src && d6[1] == dst)
        # ip, icmp and icmpv6 checksum status (the TCP one just below)
        split("3 5 10", cols, " ")
        for (c in cols) { k = split($(cols[c]), v, ","); for (j = 1; j <= k; j++) if (v[j] == "0") bad_here = 1 }
        k = split($4, st, ","); split($6, ck, ","); split($7, calc, ",")
        # An ICMPv6 error quotes its packet cut at 1280 bytes: tshark sums the
        # quoted TCP segment over what is there and calls it bad. Its ICMPv6
        # checksum (above) is what such a packet is judged by.
        split($11, t6, ","); if ($11 != "" && t6[1] + 0 < 128) k = 0
        for (j = 1; j <= k; j++) {
          if (st[j] != "0") continue
          if (ck[j] == "0xffff" && calc[j] == "0x0000") ffff_here = 1; else bad_here = 1
        }
        bad += bad_here
        if (mine && ffff_here) ffff++
        if (mine && $4 == "1") good++ }
      END { print n + 0, bad + 0, good + 0, ffff + 0 }'
}

# t_check_checksums LABEL FILE SRC DST MIN_GOOD: at least MIN_GOOD packets
# SRC -> DST with a verified good TCP checksum in FILE, and no bad checksum.
t_check_checksums() {
  local total bad good ffff
  read -r total bad good ffff < <(t_checksum_judge "$2" "$3" "$4")
  note "$1 capture: $total packets; $3 -> $4: $good with a verified good TCP checksum, $ffff with 0xffff for 0x0000"
  check_range "$1: packets $3 -> $4 captured and judged good" "$good" "$5" 100000000
  check_eq "$1: bad IP/TCP/ICMP/ICMPv6 checksums" "$bad" 0
}
