#!/usr/bin/env bash
# bench/e2e.sh: tunlb side by side with kernel NAT, HAProxy and no balancer,
# end to end, on the same network-namespace topology (issue 5, part 2).
#
# Usage (root):
#   bench/e2e.sh [--rounds N] [--duration S] [--quick] [--configs LIST]
#                [--bin PATH] [--no-build] [--no-install] [--out BASE] [--keep]
#
#   --rounds N      rounds of A B C D, interleaved (default 3)
#   --duration S    seconds per wrk / iperf3 run (default 10)
#   --quick         1 round of 3 s runs, results to /tmp/tunlb-e2e-quick.{json,md}
#   --configs LIST  comma-separated subset of tunlb,packet,alt,kernel,haproxy,direct,
#                   fwd, pktfwd, afpfwd and of the IPv6 ones, tunlb6,packet6,kernel6,haproxy6,direct6
#                   (fwd, pktfwd, afpfwd and the IPv6 ones are never in the default list;
#                   e.g. --configs kernel6,haproxy6, or --configs tunlb,fwd)
#   --alt ARGS      add configuration "alt": tunlb again with these extra flags
#                   (e.g. "--threads 2", or "--io packet --threads 2": an alt
#                   with --io packet gets no TUN), in the same rounds, for an A/B choice;
#                   split on spaces, and not flags tunlb already gets (--mode,
#                   --vip, --backend, --config, --control, TUNLB_ARGS): tunlb
#                   refuses a flag given twice
#   --tests LIST    comma-separated subset of the measurements (default all:
#                   conn_close,keepalive,seq_close,iperf_1,iperf_1R,iperf_4,iperf_4R),
#                   e.g. --tests keepalive for a quick A/B of one of them
#   --alt-bin PATH  run configuration "alt" with this tunlb binary (another
#                   build: measure a change before and after in the same
#                   rounds, e.g. --alt-bin /tmp/tunlb-before); --alt ARGS may
#                   then be left out
#   --bin PATH      use this tunlb binary instead of `cargo build --release`
#   --no-build      use target/release/tunlb as it is
#   --no-install    only report missing Debian packages, do not apt-get them
#   --out BASE      write BASE.json and BASE.md (default bench/results/latest)
#   --keep          keep the scratch directory (logs, raw outputs)
#   Environment: TUNLB_ARGS="--threads 2" adds flags to `tunlb run` (recorded
#   in the results; the default is tunlb's defaults, one packet thread).
#
# What it measures. The same client, four nginx backends and the same load
# generators, with in the middle, in turn:
#   A tunlb    the release build, nth mode, 4 backends (the binary is copied
#              first, so a concurrent rebuild cannot change it mid-run);
#   A" packet  (with --configs ...,packet only) the same on the packet
#              datapath, `--io packet` instead of the TUN: packet sockets on
#              c0 and br0, blackhole routes and ingress drop filters for the VIP (docs/datapaths.md);
#   A' alt     (with --alt ARGS only) the same binary with ARGS added: a
#              variant measured side by side, with its own ratios;
#   B kernel   iptables in the lb namespace: the DNAT nth cascade printed by
#              `tunlb iptables` (--every 4/3/2, then unconditional) and
#              MASQUERADE in place of its SNAT --to-source;
#   C haproxy  HAProxy `mode tcp`, roundrobin, listening on the VIP (which is
#              then a local address of lb, in that configuration only);
#   D direct   the client talks to b1 itself, routed through lb, no balancer;
#   E fwd      (with --configs ...,fwd only) examples/tunfwd.rs in tunlb's
#              place: a minimal static-NAT forwarder on a TUN (one blocking
#              read and one write per packet, no table, no offloads), the
#              floor under tunlb's TUN datapath (issue 13);
#   F pktfwd   (with --configs ...,pktfwd only) examples/pktfwd.rs: tunlb's
#              own packet sockets (--io packet's rings, filter, blackhole
#              route and ingress drop filter, next hops) with the same static
#              NAT and no engine, the
#              floor under tunlb's packet datapath.
#   G afpfwd   (with --configs ...,afpfwd only) bench/reference/afpfwd.c,
#              built here with cc: a minimal AF_PACKET static-NAT forwarder
#              that shares no code with tunlb, rebuilt from issue 13's
#              description of its prototype (TPACKET_V2 ring, frames
#              rewritten in place, one sendmmsg per batch, poll): the floor
#              of the design itself, beside pktfwd's.
# The IPv6 row (issue 15; only when --configs names them): the same four on
# a dual-stack topology with the IPv6 twins of the addresses (2001:2::/48,
# VIP 2001:2::1, b1..b4 2001:2:0:2::3..6, see bench/lib-e2e.sh):
#   tunlb6     `tunlb run --tun tl0 --tun-addr 198.18.0.254/24 --tun-addr
#              2001:2::fe/64 --vip '[2001:2::1]:80' --backend
#              '[2001:2:0:2::3]:80' ... --mode nth` (SNAT: the VIP's address,
#              tunlb's default), the 5201 service in a config file;
#   packet6    the same services on the packet datapath (`--io packet`: a
#              /128 blackhole route for the VIP, no TUN);
#   kernel6    ip6tables NAT66 in lb, conntrack: the same DNAT nth cascade and
#              MASQUERADE, as `tunlb iptables` prints it for the IPv6 services
#              (ip6tables lines), or when this tunlb cannot print them yet,
#              the same rules written here;
#   haproxy6   HAProxy as in C, bound to the IPv6 VIP (a /128 on lb's lo);
#   direct6    the client to b1's IPv6 address, routed through lb.
# Every configuration of every round gets a fresh topology (new namespaces,
# new backends), so no run inherits TIME_WAIT sockets, conntrack entries or
# a balancer's leftovers from another. Per configuration and round:
#   conn_close  wrk -t2 -c50 -dS --latency, `Connection: close`: new connections/s,
#               p50/p99 latency;
#   keepalive   the same without `Connection: close`: requests/s;
#   seq_close   wrk -t1 -c1 -dS --latency, `Connection: close`: one connection
#               at a time, the latency of sequential requests at light load;
#   iperf_1, iperf_1R, iperf_4, iperf_4R
#               iperf3 -t S, 1 and 4 streams, client to server and reverse (-R),
#               through VIP:5201, a service with one backend (b1), because
#               iperf3's control and data connections must meet the same server;
#   CPU         around each run: the balancer's process CPU time (utime+stime
#               from /proc/PID/stat, all threads) for tunlb and HAProxy; for
#               every configuration the machine-wide softirq and busy time from
#               /proc/stat (busy: user, nice, system, irq, softirq; until
#               2026-12-03 it counted steal as well), and the share of the
#               CPU time stolen by the hypervisor (a run with much of it is
#               flagged in the report). Kernel NAT has no process: its work is inside the
#               machine-wide softirq, along with every namespace's TCP stack,
#               so compare its softirq with the direct row's (the difference
#               is roughly the cost of conntrack + NAT). This kernel uses tick
#               accounting: a task is charged for softirq work done while it
#               runs, so tunlb's CPU includes the forwarding its write()s drive.
# Reported: the median over rounds of each number, per configuration. When
# some runs lost more than 10 % of the machine's CPU time to steal, the
# report adds the same medians and ratios over the other runs only ("calm"
# in the JSON: "Without the runs the host disturbed", each cell with its n).
#
# How to read the ratios: tunlb/kernel and tunlb/HAProxy divide tunlb's median
# by the other's, for the same metric (above 1 is better for tunlb on rates
# and throughput, below 1 is better on latency and CPU). The machine has few
# cores shared by the client, the backends, the balancer and possibly other
# people's builds: the absolute numbers are noisy, the ratios measured in the
# same interleaved rounds are the result. Goals from issue 5: new connections
# >= 0.85x kernel and >= 1.3x HAProxy; keep-alive >= 0.8x kernel; bulk >= 0.75x
# kernel.
#
# Network safety: everything runs in namespaces named e2e<PID>-<n>-*, joined by
# veth pairs, a bridge and tunlb's TUN inside them; addresses are from
# 198.18.0.0/15; nothing is added to the root namespace. Every load run is
# bounded (wrk -d, iperf3 -t, and `timeout` around both). Processes are
# stopped by their recorded PIDs; an EXIT trap removes everything.
set -euo pipefail
# The rest is one compound command, read whole before it runs: editing this
# file during a (long) run cannot change or break the run.
{

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/bench"
# shellcheck source-path=SCRIPTDIR source=lib-e2e.sh
. "$BENCH/lib-e2e.sh"

ROUNDS='' DUR='' QUICK='' KEEP='' NO_BUILD='' NO_INSTALL='' BIN='' OUT='' ALT='' ALT_BIN=''
ALL_TESTS="conn_close keepalive seq_close iperf_1 iperf_1R iperf_4 iperf_4R"
TESTS=$ALL_TESTS
CONFIGS=tunlb,kernel,haproxy,direct
WRK_THREADS=2 WRK_CONNS=50 TUNLB_HAS_CONTROL=''

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

while [ $# -gt 0 ]; do
  case $1 in
    --rounds) ROUNDS=${2:?--rounds needs N}; shift 2 ;;
    --duration) DUR=${2:?--duration needs seconds}; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --configs) CONFIGS=${2:?--configs needs a list}; shift 2 ;;
    --bin) BIN=${2:?--bin needs a path}; shift 2 ;;
    --alt) ALT=${2:?--alt needs tunlb flags}; shift 2 ;;
    --tests) TESTS=$(tr ',' ' ' <<<"${2:?--tests needs a list}"); shift 2 ;;
    --alt-bin) ALT_BIN=${2:?--alt-bin needs a path}; shift 2 ;;
    --no-build) NO_BUILD=1; shift ;;
    --no-install) NO_INSTALL=1; shift ;;
    --out) OUT=${2:?--out needs a path}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) printf 'e2e.sh: unknown argument %s (see --help)\n' "$1" >&2; exit 2 ;;
  esac
done
if [ -n "$QUICK" ]; then
  ROUNDS=${ROUNDS:-1} DUR=${DUR:-3} OUT=${OUT:-${TMPDIR:-/tmp}/tunlb-e2e-quick}
fi
ROUNDS=${ROUNDS:-3} DUR=${DUR:-10} OUT=${OUT:-$BENCH/results/latest}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || e2e_die "--rounds wants a positive whole number, got '$ROUNDS'"
[[ $DUR =~ ^[1-9][0-9]*$ ]] || e2e_die "--duration wants whole seconds >= 1, got '$DUR'"
# --alt puts its configuration right after tunlb's (or last, without tunlb),
# unless --configs placed it.
if [ -n "$ALT$ALT_BIN" ] && [[ ,$CONFIGS, != *,alt,* ]]; then
  if [[ ,$CONFIGS, == *,tunlb,* ]]; then CONFIGS=${CONFIGS/tunlb/tunlb,alt}; else CONFIGS+=,alt; fi
fi
for t in $TESTS; do
  [[ " $ALL_TESTS " == *" $t "* ]] || e2e_die "unknown test '$t' (${ALL_TESTS// /, })"
done
IFS=, read -ra CFGS <<<"$CONFIGS"
for c in "${CFGS[@]}"; do
  case $c in
    tunlb | packet | kernel | haproxy | direct | fwd | pktfwd | afpfwd | tunlb6 | packet6 | kernel6 | haproxy6 | direct6) ;;
    alt) [ -n "$ALT$ALT_BIN" ] || e2e_die "configuration 'alt' needs --alt \"FLAGS\" (the variant's extra tunlb flags) or --alt-bin PATH (another build)" ;;
    *) e2e_die "unknown configuration '$c' (tunlb, packet, alt, kernel, haproxy, direct, fwd, pktfwd, afpfwd, tunlb6, packet6, kernel6, haproxy6, direct6)" ;;
  esac
done

# ---- dependencies -----------------------------------------------------------
[ "$(id -u)" -eq 0 ] || e2e_die "run as root: it creates network namespaces, a TUN device and iptables rules inside them"
export PATH="$PATH:/usr/sbin:/sbin"

need_pkgs() {
  local missing=() pair cmd pkg created=
  for pair in ip:iproute2 ss:iproute2 wrk:wrk haproxy:haproxy nginx:nginx-light iperf3:iperf3 \
    iptables:iptables ip6tables:iptables jq:jq timeout:coreutils; do
    cmd=${pair%%:*} pkg=${pair#*:}
    command -v "$cmd" >/dev/null || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [ -n "$NO_INSTALL" ] || ! command -v apt-get >/dev/null; then
    e2e_die "missing packages: ${missing[*]} (Debian: apt-get install ${missing[*]})"
  fi
  e2e_log "installing ${missing[*]} with apt-get"
  # nginx's and haproxy's maintainer scripts would start their services in
  # the root namespace; a policy-rc.d that says "no" prevents that (only if
  # none exists, and only for the duration of the install).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created=1
  fi
  local rc=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } || rc=$?
  [ -z "$created" ] || rm -f /usr/sbin/policy-rc.d
  [ "$rc" -eq 0 ] || e2e_die "apt-get install ${missing[*]} failed"
}
need_pkgs
[ -c /dev/net/tun ] || e2e_die "/dev/net/tun is missing: tunlb needs the TUN driver"

contains() { local x; for x in "${CFGS[@]}"; do [ "$x" = "$1" ] && return 0; done; return 1; }

E2E_WORK=$(mktemp -d "${TMPDIR:-/tmp}/tunlb-e2e.XXXXXX")
chmod 755 "$E2E_WORK"
RUNID="e2e$$-"

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  e2e_down "$RUNID" || true
  if [ -n "$KEEP" ] || [ "$rc" -ne 0 ]; then
    e2e_log "scratch directory kept: $E2E_WORK"
  else
    rm -rf "$E2E_WORK"
  fi
  [ -z "$(e2e_list_ns "$RUNID")" ] || e2e_log "warning: namespaces left: $(e2e_list_ns "$RUNID" | tr '\n' ' ')"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if contains tunlb || contains packet || contains alt || contains kernel || contains tunlb6 || contains packet6 || contains kernel6; then
  if [ -z "$BIN" ]; then
    BIN="$ROOT/target/release/tunlb"
    if [ -z "$NO_BUILD" ]; then
      command -v cargo >/dev/null || e2e_die "cargo is missing: install Rust, or pass --bin PATH"
      e2e_log "cargo build --release"
      (cd "$ROOT" && cargo build --release --quiet) || e2e_die "cargo build --release failed"
    fi
  fi
  [ -x "$BIN" ] || e2e_die "no tunlb binary at $BIN (build it, or pass --bin PATH)"
  cp "$BIN" "$E2E_WORK/tunlb"
  BIN="$E2E_WORK/tunlb"
  if "$BIN" run --help 2>/dev/null | grep -q -- '--control'; then TUNLB_HAS_CONTROL=1; fi
fi
# --alt-bin: the other build, copied the same way.
ALT_BIN_SHA=''
if [ -n "$ALT_BIN" ]; then
  if [ ! -f "$ALT_BIN" ] || [ ! -x "$ALT_BIN" ]; then e2e_die "--alt-bin $ALT_BIN: not an executable file"; fi
  cp "$ALT_BIN" "$E2E_WORK/tunlb-alt"
  ALT_BIN_SHA=$(sha256sum "$E2E_WORK/tunlb-alt" | cut -c1-16)
fi
# The minimal forwarders (examples/tunfwd.rs, examples/pktfwd.rs), copied
# like tunlb's binary.
for fwd_cfg in fwd pktfwd; do
  contains "$fwd_cfg" || continue
  fwd_bin=tunfwd
  [ "$fwd_cfg" = fwd ] || fwd_bin=pktfwd
  if [ -z "$NO_BUILD" ]; then
    e2e_log "cargo build --release --example $fwd_bin"
    (cd "$ROOT" && cargo build --release --quiet --example "$fwd_bin") || e2e_die "cargo build --release --example $fwd_bin failed"
  fi
  [ -x "$ROOT/target/release/examples/$fwd_bin" ] || e2e_die "no $fwd_bin at target/release/examples/$fwd_bin (cargo build --release --example $fwd_bin)"
  cp "$ROOT/target/release/examples/$fwd_bin" "$E2E_WORK/$fwd_bin"
done
if contains afpfwd; then
  command -v cc >/dev/null || e2e_die "configuration afpfwd needs a C compiler: apt-get install gcc"
  cc -O2 -Wall -o "$E2E_WORK/afpfwd" "$BENCH/reference/afpfwd.c" || e2e_die "cc bench/reference/afpfwd.c failed"
fi

# ---- the services -------------------------------------------------------------
BACKENDS80=() BACKEND5201="$(e2e_baddr 1):5201"
for i in $(seq 1 "$E2E_NB"); do BACKENDS80+=("$(e2e_baddr "$i"):80"); done
TUNLB_FLAGS=(--vip "$E2E_VIP:80" --mode nth)
for b in "${BACKENDS80[@]}"; do TUNLB_FLAGS+=(--backend "$b"); done
# The one-backend iperf3 service lives in a config file; the :80 service on
# the command line, as a user would type it.
cat >"$E2E_WORK/tunlb-iperf.toml" <<EOF
[[service]]
vip = "$E2E_VIP:5201"
mode = "nth"
backends = ["$BACKEND5201"]
EOF
# The same services over IPv6 (tunlb6, packet6, kernel6).
BACKENDS80_6=() BACKEND5201_6="[$(e2e_baddr6 1)]:5201"
for i in $(seq 1 "$E2E_NB"); do BACKENDS80_6+=("[$(e2e_baddr6 "$i")]:80"); done
TUNLB_FLAGS6=(--vip "[$E2E_VIP6]:80" --mode nth)
for b in "${BACKENDS80_6[@]}"; do TUNLB_FLAGS6+=(--backend "$b"); done
cat >"$E2E_WORK/tunlb-iperf6.toml" <<EOF
[[service]]
vip = "[$E2E_VIP6]:5201"
mode = "nth"
backends = ["$BACKEND5201_6"]
EOF

read -ra TUNLB_EXTRA <<<"${TUNLB_ARGS-}"
read -ra ALT_EXTRA <<<"$ALT"
CLK_TCK=$(getconf CLK_TCK)
BAL_PID='' BAL_NS='' TARGET=''

# start_tunlb P CFG [FLAGS...]: tunlb (CFG tunlb, packet, alt, tunlb6 or
# packet6) with FLAGS added; CFG packet runs the packet datapath instead of
# the TUN; CFG tunlb6 the IPv6 services, with an IPv6 prefix on the TUN too;
# packet6 the IPv6 services on the packet datapath.
start_tunlb() {
  local p=$1 cfg=$2 log="$E2E_WORK/${1}$2.log" ctl=() io=(--tun tl0 --tun-addr 198.18.0.254/24)
  local svc=("${TUNLB_FLAGS[@]}" --config "$E2E_WORK/tunlb-iperf.toml")
  shift 2
  [ "$cfg" != packet ] || io=(--io packet)
  # An alt variant on the packet datapath (--alt "--io packet ...") gets no TUN.
  [ "$cfg" != alt ] || [[ " ${ALT_EXTRA[*]} " != *" --io packet "* ]] || io=()
  if [ "$cfg" = tunlb6 ]; then
    io+=(--tun-addr 2001:2::fe/64)
    svc=("${TUNLB_FLAGS6[@]}" --config "$E2E_WORK/tunlb-iperf6.toml")
  fi
  if [ "$cfg" = packet6 ]; then
    io=(--io packet)
    svc=("${TUNLB_FLAGS6[@]}" --config "$E2E_WORK/tunlb-iperf6.toml")
  fi
  # Its own control socket, so it never meets another tunlb's default one.
  [ -z "$TUNLB_HAS_CONTROL" ] || ctl=(--control "$E2E_WORK/${p}$cfg.sock")
  local bin=$BIN
  [ "$cfg" != alt ] || [ -z "$ALT_BIN" ] || bin=$E2E_WORK/tunlb-alt
  e2e_bg "${p}lb" "$cfg" "$log" env NO_COLOR=1 "$bin" run "${io[@]}" \
    "${svc[@]}" "${ctl[@]}" "${TUNLB_EXTRA[@]}" "$@"
  BAL_PID=$E2E_PID BAL_NS="${p}lb"
  wait_ready "$log" tunlb
}

# wait_ready LOG NAME: wait (10 s at most) for the balancer just started to
# log "ready"; if it does not (or dies), show its log, prefixed with NAME.
wait_ready() {
  local log=$1 name=$2 k
  for ((k = 0; k < 200; k++)); do
    grep -qw ready "$log" 2>/dev/null && return 0
    e2e_pid_alive "$BAL_PID" || break
    sleep 0.05
  done
  sed "s/^/    $name: /" "$log" >&2
  return 1
}

# start_fwd P CFG: a minimal forwarder in lb: CFG fwd, the TUN one
# (examples/tunfwd.rs); CFG pktfwd, the packet-socket one (examples/pktfwd.rs);
# CFG afpfwd, the reference one (bench/reference/afpfwd.c).
start_fwd() {
  local p=$1 cfg=$2 log="$E2E_WORK/${1}$2.log" b backs=() cmd
  for b in "${BACKENDS80[@]}"; do backs+=("${b%:*}"); done
  if [ "$cfg" = fwd ]; then
    cmd=("$E2E_WORK/tunfwd" tl0 198.18.0.254/24 "$E2E_CLIENT" "$E2E_VIP" "${backs[@]}")
  elif [ "$cfg" = afpfwd ]; then
    cmd=("$BENCH/reference/afpfwd.sh" "$E2E_WORK/afpfwd" c0 br0 "$E2E_CLIENT" "$E2E_VIP" "${backs[@]}")
  else
    cmd=("$E2E_WORK/pktfwd" "$E2E_CLIENT" "$E2E_VIP" "${backs[@]}")
  fi
  e2e_bg "${p}lb" "$cfg" "$log" "${cmd[@]}"
  BAL_PID=$E2E_PID BAL_NS="${p}lb"
  wait_ready "$log" "$cfg"
}

# The ruleset tunlb prints for the same services, with MASQUERADE in place
# of its SNAT --to-source (the VIP is not an address anything routes back
# to in this configuration; MASQUERADE takes br0's 198.18.2.1).
start_kernel() {
  local p=$1 line args
  "$BIN" iptables "${TUNLB_FLAGS[@]}" --config "$E2E_WORK/tunlb-iperf.toml" >"$E2E_WORK/iptables-printed.txt"
  grep '^iptables ' "$E2E_WORK/iptables-printed.txt" |
    sed -E 's/-j SNAT --to-source [0-9.]+$/-j MASQUERADE/' >"$E2E_WORK/iptables-rules.txt"
  grep -q -- '--every 4 --packet 0' "$E2E_WORK/iptables-rules.txt" ||
    { cat "$E2E_WORK/iptables-printed.txt" >&2; e2e_log "tunlb iptables printed no nth cascade"; return 1; }
  while read -r line; do
    read -ra args <<<"$line"
    ip netns exec "${p}lb" "${args[@]}" || { e2e_log "failed: $line"; return 1; }
  done <"$E2E_WORK/iptables-rules.txt"
  BAL_PID='' BAL_NS=''
}

# start_kernel6 P: the IPv6 twin of start_kernel, with ip6tables (NAT66,
# conntrack). The rules are those `tunlb iptables` prints for the IPv6
# services (its ip6tables lines) when it can; else the same cascade written
# here: DNAT nth --every 4/3/2 then unconditional, MASQUERADE out of lb (br0's
# 2001:2:0:2::1).
start_kernel6() {
  local p=$1 line args i n=$E2E_NB out="$E2E_WORK/ip6tables-rules.txt"
  if "$BIN" iptables "${TUNLB_FLAGS6[@]}" --config "$E2E_WORK/tunlb-iperf6.toml" >"$E2E_WORK/ip6tables-printed.txt" 2>&1 &&
    grep -q '^ip6tables .*--every 4 --packet 0' "$E2E_WORK/ip6tables-printed.txt"; then
    grep '^ip6tables ' "$E2E_WORK/ip6tables-printed.txt" |
      sed -E 's/-j SNAT --to-source [0-9a-fA-F:.]+$/-j MASQUERADE/' >"$out"
  else
    e2e_log "kernel6: tunlb iptables printed no IPv6 rules ($(head -c 200 "$E2E_WORK/ip6tables-printed.txt" | tr '\n' ' ')); using the same cascade written by bench/e2e.sh"
    : >"$out"
    for ((i = 1; i <= n; i++)); do
      line="ip6tables -t nat -A PREROUTING -p tcp -d $E2E_VIP6 --dport 80 -m conntrack --ctstate NEW"
      [ "$i" -eq "$n" ] || line+=" -m statistic --mode nth --every $((n - i + 1)) --packet 0"
      printf '%s -j DNAT --to-destination %s\n' "$line" "${BACKENDS80_6[$((i - 1))]}" >>"$out"
    done
    printf '%s\n' "ip6tables -t nat -A PREROUTING -p tcp -d $E2E_VIP6 --dport 5201 -m conntrack --ctstate NEW -j DNAT --to-destination $BACKEND5201_6" \
      "ip6tables -t nat -A POSTROUTING -p tcp -m conntrack --ctstate DNAT --ctorigdst $E2E_VIP6 --ctorigdstport 80 -j MASQUERADE" \
      "ip6tables -t nat -A POSTROUTING -p tcp -m conntrack --ctstate DNAT --ctorigdst $E2E_VIP6 --ctorigdstport 5201 -j MASQUERADE" >>"$out"
  fi
  while read -r line; do
    read -ra args <<<"$line"
    ip netns exec "${p}lb" "${args[@]}" || { e2e_log "failed: $line"; return 1; }
  done <"$out"
  BAL_PID='' BAL_NS=''
}

# start_haproxy P [6]: HAProxy on the VIP (with 6: the IPv6 VIP and backends).
start_haproxy() {
  local p=$1 fam=${2:-4} cfg="$E2E_WORK/${1}haproxy.cfg" web='' i vip=$E2E_VIP one=$BACKEND5201
  if [ "$fam" = 6 ]; then
    # HAProxy reads an IPv6 address's port after its last colon.
    vip=$E2E_VIP6 one="$(e2e_baddr6 1):5201"
    for i in $(seq 1 "$E2E_NB"); do web+="    server b$i $(e2e_baddr6 "$i"):80"$'\n'; done
  else
    for i in $(seq 1 "$E2E_NB"); do web+="    server b$i $(e2e_baddr "$i"):80"$'\n'; done
  fi
  awk -v vip="$vip" -v web="${web%$'\n'}" -v ip="    server b1 $one" '
    { gsub(/@VIP@/, vip) } /@WEB_SERVERS@/ { print web; next } /@IPERF_SERVERS@/ { print ip; next } { print }
  ' "$BENCH/haproxy.cfg.in" >"$cfg"
  if [ "$fam" = 6 ]; then
    ip -n "${p}lb" addr add "$vip/128" dev lo nodad
  else
    ip -n "${p}lb" addr add "$vip/32" dev lo
  fi
  e2e_bg "${p}lb" haproxy "$E2E_WORK/${p}haproxy.log" haproxy -db -f "$cfg"
  BAL_PID=$E2E_PID BAL_NS="${p}lb"
  e2e_wait_listen "${p}lb" 80 "$BAL_PID" && e2e_wait_listen "${p}lb" 5201 "$BAL_PID" && return 0
  sed 's/^/    haproxy: /' "$E2E_WORK/${p}haproxy.log" >&2
  return 1
}

# ---- measuring ------------------------------------------------------------------
# snap: "balancer_ticks softirq_ticks busy_ticks steal_ticks all_ticks" right
# now. Busy is user + nice + system + irq + softirq; steal (field 8 of the
# cpu line: the hypervisor running other guests on these CPUs) is kept apart:
# it is no work of this machine's, and a run that lost much of its CPU to it
# is not comparable with the others (the report flags it).
snap() {
  local bal=0
  if [ -n "$BAL_PID" ] && e2e_pid_alive "$BAL_PID"; then
    bal=$(sed 's/^.*) //' "/proc/$BAL_PID/stat" | awk '{ print $12 + $13 }')
  fi
  awk -v bal="$bal" '$1 == "cpu" {
    busy = $2 + $3 + $4 + $7 + $8; all = $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9
    print bal, $8, busy, $9, all; exit }' /proc/stat
}

# Builds of other people running now (reported, never touched).
others_busy() { { ps -C rustc,cargo,cc,ld -o pid= 2>/dev/null || true; } | wc -l; }

# record P ROUND CFG TEST JSON BEFORE AFTER: add the CPU deltas, append a line.
record() {
  local round=$2 cfg=$3 test=$4 json=$5 b a
  read -ra b <<<"$6"
  read -ra a <<<"$7"
  jq -c --argjson round "$round" --arg cfg "$cfg" --arg test "$test" --argjson tck "$CLK_TCK" \
    --argjson bal "$(case $cfg in tunlb | packet | alt | haproxy | fwd | pktfwd | afpfwd | tunlb6 | packet6 | haproxy6) true ;; *) false ;; esac && echo $((a[0] - b[0])) || echo null)" \
    --argjson sirq $((a[1] - b[1])) --argjson busy $((a[2] - b[2])) \
    --argjson steal $((a[3] - b[3])) --argjson all $((a[4] - b[4])) \
    --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" --argjson others "$(others_busy)" \
    '. + {round: $round, config: $cfg, test: $test, loadavg: $load, other_build_procs: $others,
          steal_share: (if $all > 0 then $steal / $all else null end),
          cpu_s: {balancer: (if $bal == null then null else $bal / $tck end),
                  softirq_machine: ($sirq / $tck), busy_machine: ($busy / $tck),
                  steal_machine: ($steal / $tck)}}' <<<"$json" >>"$E2E_WORK/runs.jsonl"
}

# The progress lines' tail: the run's steal, when above 5 % (jq, after a
# run line of record).
STEAL_NOTE='(if (.steal_share // 0) > 0.05 then ", steal \(.steal_share * 100 | round) %" else "" end)'

run_wrk() { # P ROUND CFG TEST [close [THREADS CONNS]]
  local p=$1 round=$2 cfg=$3 test=$4 close=${5-} before after out line
  local hdr=() threads=${6:-$WRK_THREADS} conns=${7:-$WRK_CONNS}
  [ -n "$close" ] && hdr=(-H 'Connection: close')
  out="$E2E_WORK/${p}wrk-$test.txt"
  before=$(snap)
  timeout --kill-after=5 $((DUR + 30)) ip netns exec "${p}client" \
    wrk -t"$threads" -c"$conns" -d"${DUR}s" --latency -s "$BENCH/wrk-report.lua" "${hdr[@]}" \
    "http://$(url_host "$TARGET")/" >"$out" 2>&1 || true
  after=$(snap)
  line=$(sed -n 's/^WRKJSON //p' "$out")
  if [ -z "$line" ]; then
    e2e_log "$cfg $test: wrk gave no result:"; sed 's/^/    /' "$out" >&2
    line='{"error":"wrk gave no result"}'
  else
    line=$(jq -c '. + {rps: (.requests / (.duration_us / 1e6)), p50_ms: (.lat_us.p50 / 1000), p99_ms: (.lat_us.p99 / 1000)}' <<<"$line")
  fi
  record "$p" "$round" "$cfg" "$test" "$line" "$before" "$after"
  jq -r '"  \(.config) \(.test): " + (if .error then "ERROR \(.error)" else
    "\(.rps | floor) req/s, p50 \(.p50_ms) ms, p99 \(.p99_ms) ms, errors \(.errors | tostring)" end) +
    '"$STEAL_NOTE" \
    < <(tail -n1 "$E2E_WORK/runs.jsonl") >&2
}

run_iperf() { # P ROUND CFG TEST STREAMS [-R]
  local p=$1 round=$2 cfg=$3 test=$4 n=$5 before after out line
  local rev=()
  [ -z "${6-}" ] || rev=("$6")
  local host=$TARGET
  out="$E2E_WORK/${p}iperf-$test.json"
  before=$(snap)
  timeout --kill-after=5 $((DUR + 30)) ip netns exec "${p}client" \
    iperf3 -c "$host" -p 5201 -t "$DUR" -P "$n" "${rev[@]}" -J --connect-timeout 3000 >"$out" 2>&1 || true
  after=$(snap)
  if line=$(jq -c 'if .error then {error: .error} else
      {streams: (.start.test_start.num_streams), reverse: (.start.test_start.reverse == 1),
       bytes: .end.sum_received.bytes, seconds: .end.sum_received.seconds,
       gbps: (.end.sum_received.bits_per_second / 1e9), retransmits: .end.sum_sent.retransmits} end' "$out" 2>/dev/null); then :
  else
    line=$(jq -cn --arg e "$(head -c 300 "$out")" '{error: ("iperf3: " + $e)}')
  fi
  record "$p" "$round" "$cfg" "$test" "$line" "$before" "$after"
  jq -r '"  \(.config) \(.test): " + (if .error then "ERROR \(.error)" else
    "\(.gbps * 100 | round / 100) Gbit/s, \(.retransmits) retransmits" end) +
    '"$STEAL_NOTE" < <(tail -n1 "$E2E_WORK/runs.jsonl") >&2
  sleep 1 # iperf3 -s takes a moment before it accepts the next test
}

# sanity P CFG: 8 HTTP/1.0 requests; prints the backends that answered.
sanity() {
  local p=$1 host=$TARGET k got=()
  for k in 1 2 3 4 5 6 7 8; do
    # shellcheck disable=SC2016 # expanded by the inner bash
    got+=("$(timeout 5 ip netns exec "${p}client" bash -c \
      'exec 3<>"/dev/tcp/$1/80" && printf "GET / HTTP/1.0\r\nHost: x\r\n\r\n" >&3 && tail -n1 <&3' sh "$host" 2>/dev/null || echo fail)")
  done
  printf '%s\n' "${got[*]}"
}

# url_host ADDR: ADDR as a URL's host ([...] around an IPv6 address).
url_host() { case $1 in *:*) printf '[%s]\n' "$1" ;; *) printf '%s\n' "$1" ;; esac; }

balancer_alive() {
  [ -z "$BAL_PID" ] && return 0
  e2e_pid_in_ns "$BAL_PID" "$BAL_NS"
}

# one_config ROUND CFG N: fresh topology, start the balancer, run every test.
one_config() {
  local round=$1 cfg=$2 p="${RUNID}$3-" seen t ok=1 extra=null stats tun
  e2e_log "round $round/$ROUNDS: $cfg (namespaces ${p}*)"
  local fam=4
  case $cfg in *6) fam=6 ;; esac
  e2e_up "$p" "$fam"
  BAL_PID='' BAL_NS='' TARGET=$E2E_VIP
  [ "$fam" != 6 ] || TARGET=$E2E_VIP6
  case $cfg in
    tunlb) start_tunlb "$p" tunlb || ok= ;;
    packet) start_tunlb "$p" packet || ok= ;;
    alt) start_tunlb "$p" alt "${ALT_EXTRA[@]}" || ok= ;;
    kernel) start_kernel "$p" || ok= ;;
    haproxy) start_haproxy "$p" || ok= ;;
    direct) TARGET=$(e2e_baddr 1) ;;
    fwd | pktfwd | afpfwd) start_fwd "$p" "$cfg" || ok= ;;
    tunlb6 | packet6) start_tunlb "$p" "$cfg" || ok= ;;
    kernel6) start_kernel6 "$p" || ok= ;;
    haproxy6) start_haproxy "$p" 6 || ok= ;;
    direct6) TARGET=$(e2e_baddr6 1) ;;
  esac
  if [ -z "$ok" ]; then
    record "$p" "$round" "$cfg" start '{"error":"the balancer did not start"}' "0 0 0" "0 0 0"
    e2e_down "$p"
    return 0
  fi
  seen=$(sanity "$p")
  e2e_log "  8 requests answered by: $seen"
  record "$p" "$round" "$cfg" sanity "$(jq -cn --arg s "$seen" '{answered_by: ($s | split(" "))}')" "0 0 0" "0 0 0"

  for t in $TESTS; do
    if ! balancer_alive; then
      e2e_log "  $cfg died before $t; its log:"
      tail -n 30 "$E2E_WORK/${p}$cfg.log" | sed 's/^/    /' >&2 || true
      record "$p" "$round" "$cfg" "$t" '{"error":"the balancer process died"}' "0 0 0" "0 0 0"
      continue
    fi
    case $t in
      conn_close) run_wrk "$p" "$round" "$cfg" "$t" close ;;
      keepalive) run_wrk "$p" "$round" "$cfg" "$t" ;;
      seq_close) run_wrk "$p" "$round" "$cfg" "$t" close 1 1 ;;
      iperf_1) run_iperf "$p" "$round" "$cfg" "$t" 1 ;;
      iperf_1R) run_iperf "$p" "$round" "$cfg" "$t" 1 -R ;;
      iperf_4) run_iperf "$p" "$round" "$cfg" "$t" 4 ;;
      iperf_4R) run_iperf "$p" "$round" "$cfg" "$t" 4 -R ;;
    esac
    sleep 1
  done

  # What the balancer says about itself afterwards.
  case $cfg in
    tunlb | packet | alt | tunlb6 | packet6)
      if balancer_alive; then
        # Its counters (drop reasons), and the TUN's own queue drops.
        stats=null
        if [ -n "$TUNLB_HAS_CONTROL" ]; then
          stats=$(timeout 5 "$BIN" stats --control "$E2E_WORK/${p}$cfg.sock" --json 2>/dev/null | jq -c . 2>/dev/null) || stats=null
          [ -n "$stats" ] || stats=null
        fi
        tun=null
        [[ $cfg == packet* ]] || tun=$(ip -n "${p}lb" -s -j link show tl0 | jq -c '.[0].stats64 // null') || tun=null
        e2e_stop "$BAL_PID" "$BAL_NS" 5
        extra=$(jq -Rs --argjson stats "$stats" --argjson tun "$tun" \
          '{tunlb_stats: $stats, tl0_link_stats: $tun, tunlb_log_tail: (split("\n") | map(select(length > 0)) | .[-12:])}' \
          "$E2E_WORK/${p}$cfg.log")
      else
        extra=$(jq -Rs '{tunlb_died: true, tunlb_log_tail: (split("\n") | .[-30:])}' "$E2E_WORK/${p}$cfg.log")
      fi ;;
    kernel | kernel6)
      local ipt=iptables
      [ "$cfg" = kernel ] || ipt=ip6tables
      extra=$(ip netns exec "${p}lb" "$ipt" -t nat -L PREROUTING -nvx |
        jq -Rs --arg ct "$(ip netns exec "${p}lb" cat /proc/sys/net/netfilter/nf_conntrack_count)" \
          '{nat_prerouting: (split("\n") | map(select(length > 0))), conntrack_count_after: ($ct | tonumber)}') ;;
    haproxy | haproxy6)
      balancer_alive || extra='{"haproxy_died": true}' ;;
    fwd | pktfwd | afpfwd)
      balancer_alive || extra='{"forwarder_died": true}'
      e2e_stop "$BAL_PID" "$BAL_NS" 5 ;;
  esac
  record "$p" "$round" "$cfg" after "$extra" "0 0 0" "0 0 0"
  e2e_down "$p"
}

# ---- the run ---------------------------------------------------------------------
START=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg) OTHERS0=$(others_busy)
e2e_log "$ROUNDS round(s) of ${CFGS[*]}, ${DUR}s per run; scratch $E2E_WORK"
: >"$E2E_WORK/runs.jsonl"
n=0
for ((r = 1; r <= ROUNDS; r++)); do
  for c in "${CFGS[@]}"; do
    n=$((n + 1))
    one_config "$r" "$c" "$n"
  done
done
END=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# ---- results -----------------------------------------------------------------------
git_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git_dirty=$(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | wc -l)
meta=$(jq -n --arg t0 "$START" --arg t1 "$END" --arg nproc "$(nproc)" --arg kernel "$(uname -r)" \
  --arg rev "$git_rev" --argjson dirty "$git_dirty" --argjson rounds "$ROUNDS" --argjson dur "$DUR" \
  --arg cfgs "${CFGS[*]}" --arg load0 "$LOAD0" --arg load1 "$(cut -d' ' -f1-3 /proc/loadavg)" \
  --argjson others0 "$OTHERS0" --argjson others1 "$(others_busy)" --argjson quick "$([ -n "$QUICK" ] && echo true || echo false)" \
  --arg bin_sha "$([ -f "$E2E_WORK/tunlb" ] && sha256sum "$E2E_WORK/tunlb" | cut -c1-16 || echo none)" \
  --arg model "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
  --arg wrk "$(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2)" --arg haproxy "$(haproxy -v | head -n1 | cut -d' ' -f1-3)" \
  --arg nginx "$(nginx -v 2>&1 | sed 's/.*: //')" --arg iperf3 "$(iperf3 -v | head -n1 | cut -d' ' -f1-2)" \
  --arg tunlb_args "${TUNLB_ARGS-}" --arg alt_args "$ALT" --arg alt_bin "$ALT_BIN_SHA" --arg iptables "$(iptables -V)" --arg rules "$(cat "$E2E_WORK/iptables-rules.txt" 2>/dev/null || true)" \
  --arg rules6 "$(cat "$E2E_WORK/ip6tables-rules.txt" 2>/dev/null || true)" \
  '{started: $t0, finished: $t1, nproc: ($nproc | tonumber), kernel: $kernel, cpu_model: $model,
    tunlb_commit: $rev, tunlb_extra_args: $tunlb_args, alt_extra_args: $alt_args, alt_binary_sha256_16: $alt_bin, tunlb_src_files_modified: $dirty, tunlb_binary_sha256_16: $bin_sha,
    rounds: $rounds, duration_s: $dur, quick: $quick, order: ($cfgs | split(" ")),
    wrk: "-t2 -c50 --latency", loadavg_start: $load0, loadavg_end: $load1,
    other_build_procs_start: $others0, other_build_procs_end: $others1,
    tools: {wrk: $wrk, haproxy: $haproxy, nginx: $nginx, iperf3: $iperf3, iptables: $iptables},
    kernel_nat_rules: ($rules | split("\n") | map(select(length > 0))),
    kernel_nat66_rules: ($rules6 | split("\n") | map(select(length > 0))),
    note: "absolute numbers on a shared 2-core machine are noisy; the ratios are the result"}')

mkdir -p "$(dirname "$OUT")"
jq -s --argjson meta "$meta" -f "$BENCH/e2e-summary.jq" "$E2E_WORK/runs.jsonl" >"$OUT.json.tmp"
mv "$OUT.json.tmp" "$OUT.json"
jq -r -f "$BENCH/e2e-table.jq" "$OUT.json" >"$OUT.md"
cat "$OUT.md"
e2e_log "wrote $OUT.json and $OUT.md"
if jq -e '[.runs[] | select(.error)] | length > 0' "$OUT.json" >/dev/null; then
  e2e_log "some runs failed (see \"error\" in $OUT.json)"
  exit 3
fi
exit 0
}
