# shellcheck shell=bash
# scripts/lib-scaleout.sh: several tunlb instances behind an ECMP router, in
# network namespaces. Sourced by scripts/scaleout.sh (its command-line face)
# and netns-tests/t/69-scaleout.sh. It sources scripts/lib.sh and keeps its
# conventions: a per-run PREFIX on every namespace, processes started with
# tl_bg and ended by recorded PID (tl_stop), state in $(tl_state PREFIX),
# addresses only from 198.18.0.0/15, nothing in the root namespace, and
# tl_down PREFIX removes it all.
#
#   client 198.18.1.2/24 (+ 198.18.1.100..131, more client addresses)
#      | eth0
#      | c0 198.18.1.1/24
#   router   198.18.0.1/32 -> nexthop group 100, type resilient (64 buckets,
#      |     idle timer), members: nexthop I = via 198.18.3.(10+I) dev fr;
#      |     fib_multipath_hash_policy=1 (source and destination ports hashed)
#      | fr: bridge 198.18.3.1/24 (front)     bk: bridge, no address (back)
#      |   ports f1..f4                          ports k1..k4, vb1..vb4
#   lb1..lb4: eth0 198.18.3.(10+I)/24 -- fr   eth1 198.18.2.(10+I)/24 -- bk
#      tunlb on its own TUN tl0 (198.18.0.254/24): VIP 198.18.0.1:80 over
#      b1..b4, --mode maglev, --snat 198.18.0.(10+I) (inside the TUN prefix,
#      so it routes into tl0; the backends route it back to lbI)
#   b1..b4: 198.18.2.3..6/24 on bk, HTTP :80 (scripts/backend.py); routes
#      198.18.0.(10+I)/32 via 198.18.2.(10+I): each instance's SNAT address
#      goes back to that instance
#
# A standby lbIs (so_standby) has the same two links as lbI: eth0
# 198.18.3.(20+I)/24 on fr, eth1 198.18.2.(20+I)/24 on bk, and runs nothing
# until so_takeover starts tunlb there with lbI's recorded command line and
# moves lbI's role to it: next hop I via 198.18.3.(20+I) (same id, so the
# group's buckets stay where they are) and, on the backends,
# 198.18.0.(10+I)/32 via 198.18.2.(20+I). See README.md, "More than one instance".
#
# The two bridges sit in the router namespace only to save namespaces: bk
# has no address, so the router never routes between the sides. An lb has no
# default route (only 198.18.1.0/24 via the router): once its tunlb dies (and
# its TUN with it) it answers what still reaches it with ICMP "network
# unreachable" instead of sending it back to the router in a loop.
#
# Functions (P is the prefix; I is an instance number, 1..SO_MAX):
#   so_up P [N]             build everything, start b1..b4 and instances 1..N
#                           (default 3), group = 1..N
#   so_down P               tl_down P
#   so_inst_start P I       start tunlb in lbI (recorded as tunlb-lbI), wait ready
#   so_inst_kill P I [SIG]  signal it (default KILL) and wait for it to go
#   so_inst_alive P I       true when instance I runs
#   so_standby P I          build lbI's standby namespace lbIs (no process yet)
#   so_takeover P I         lbIs takes lbI's role: lbI stopped with SIGTERM
#                           if it still runs (its last save), tunlb started in
#                           lbIs with lbI's exact command line (its --snat,
#                           --hash-key, --state-file...), then the backends'
#                           route for lbI's SNAT address and next hop I moved
#                           to lbIs; SO_READY_MS: milliseconds to its "ready"
#   so_active P I           who holds role I now: "I" or "Is" (next hop I's via)
#   so_join P I             next hop I into the group (started first if needed)
#   so_leave P I            next hop I out of the group (what a routing daemon
#                           does when BFD or keepalived says the instance is gone)
#   so_members P            the group's next-hop ids, one a line
#   so_buckets P            "NHID COUNT" per member: buckets held
#   so_predict P SRC SPORT  the instance the router sends SRC:SPORT -> VIP:80 to
#                           (ip route get, the router's own hash), or "none"
#   so_query P I WHAT ARGS  `tunlb WHAT --control` of instance I (stats, flows)
#   so_control P I          instance I's control socket path
# Where a function takes a running instance (so_inst_kill, so_inst_alive,
# so_query, so_new_flows, so_control), I may also name a standby: "1s".
#
# Environment: TUNLB_BIN (default target/release/tunlb of this checkout),
# SO_IDLE_TIMER (seconds a bucket must be idle before it moves; default 2),
# SO_BUCKETS (default 64), SO_HA (1: every instance runs with --pickup
# --hash-key "$SO_HASH_KEY" --state-file $(so_state_file P I) --state-interval
# "$SO_STATE_INTERVAL", what a standby needs; default 0), SO_HASH_KEY (default
# scaleout-lab), SO_STATE_INTERVAL (seconds, default 1), and those of
# scripts/lib.sh.

# shellcheck source=scripts/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

# shellcheck disable=SC2034  # constants for the scripts that source this file
SO_MAX=4
SO_GROUP=100
SO_CLIENT_EXTRA=32 # client addresses 198.18.1.100 .. 198.18.1.131
SO_BUCKETS=${SO_BUCKETS:-64}
SO_IDLE_TIMER=${SO_IDLE_TIMER:-2}
SO_ROUTER_FRONT=198.18.3.1
SO_HA=${SO_HA:-0}
SO_HASH_KEY=${SO_HASH_KEY:-scaleout-lab}
SO_STATE_INTERVAL=${SO_STATE_INTERVAL:-1}
SO_TUNLB_BIN=${TUNLB_BIN:-$(cd -- "$TL_LIB_DIR/.." && pwd)/target/release/tunlb}

so_lb_front() { printf '198.18.3.%d\n' "$(($1 + 10))"; }
so_lb_back() { printf '198.18.2.%d\n' "$(($1 + 10))"; }
so_standby_front() { printf '198.18.3.%d\n' "$(($1 + 20))"; }
so_standby_back() { printf '198.18.2.%d\n' "$(($1 + 20))"; }
so_snat() { printf '198.18.0.%d\n' "$(($1 + 10))"; }
so_client_addr() { printf '198.18.1.%d\n' "$(($1 + 100))"; } # 0 .. SO_CLIENT_EXTRA-1
# I is an instance number or a standby ("1s").
so_control() { printf '%s/lb%s.sock\n' "$(tl_state "$1")" "$2"; }
so_log() { printf '%s/logs/lb%s.log\n' "$(tl_state "$1")" "$2"; }
# so_state_file P I: instance I's --state-file under SO_HA (its standby restores it).
so_state_file() { printf '%s/lb%d.state\n' "$(tl_state "$1")" "$2"; }
# so_args_file P I: instance I's tunlb command line, one argument a line, as
# so_inst_start last ran it (so_takeover runs exactly that in lbIs).
so_args_file() { printf '%s/lb%d.args\n' "$(tl_state "$1")" "$2"; }
so_nodes() {
  local i
  printf '%s\n' client router
  for ((i = 1; i <= SO_MAX; i++)); do printf 'lb%d\n' "$i"; done
  for i in $(tl_backends); do printf 'b%d\n' "$i"; done
}
so_check_inst() {
  if ! [[ ${1-} =~ ^[0-9]+$ ]] || [ "$1" -lt 1 ] || [ "$1" -gt "$SO_MAX" ]; then
    tl_die "bad instance '${1-}': 1..$SO_MAX"
  fi
}

# so_veth P NS_A DEV_A NS_B DEV_B: a veth pair between two of our namespaces,
# both ends up, transmit checksum offload off (as scripts/lib.sh does).
so_veth() {
  local a=$2 da=$3 b=$4 db=$5
  ip -n "$1$a" link add "$da" type veth peer name "$db" netns "$1$b"
  ip -n "$1$a" link set "$da" up
  ip -n "$1$b" link set "$db" up
  tl_tx_off "$1$a" "$da"
  tl_tx_off "$1$b" "$db"
}

so_up() {
  local p=$1 n=${2:-3} st r c ns i k
  tl_need_root
  tl_check_prefix "$p"
  command -v ip >/dev/null || tl_die "ip is missing (apt-get install iproute2)"
  if ! [[ $n =~ ^[1-9]$ ]] || [ "$n" -gt "$SO_MAX" ]; then tl_die "bad instance count '$n': 1..$SO_MAX"; fi
  [ -x "$SO_TUNLB_BIN" ] || tl_die "no tunlb binary at $SO_TUNLB_BIN (cargo build --release, or set TUNLB_BIN)"
  tl_down "$p"
  st=$(tl_state "$p")
  mkdir -p "$st/pids" "$st/logs"
  tl_make_data "$(tl_data "$p")"
  r="${p}router" c="${p}client"

  for ns in $(so_nodes | sed "s/^/$p/"); do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    tl_sysctl "$ns" net.ipv6.conf.all.disable_ipv6 1
    tl_sysctl "$ns" net.ipv6.conf.default.disable_ipv6 1
  done
  # Routers: forwarding on, reverse-path filtering off before any interface
  # exists (the TUN inherits "default").
  for ns in "$r" $(seq 1 "$SO_MAX" | sed "s/^/${p}lb/"); do
    tl_sysctl "$ns" net.ipv4.conf.all.rp_filter 0
    tl_sysctl "$ns" net.ipv4.conf.default.rp_filter 0
    tl_sysctl "$ns" net.ipv4.ip_forward 1
  done
  # A dead instance's namespace answers each SYN still routed to it with
  # ICMP "network unreachable" (its TUN is gone), so those connections fail at
  # once; the default per-destination rate limit (1 per second) would leave
  # most of them to time out instead.
  for ((i = 1; i <= SO_MAX; i++)); do tl_sysctl "${p}lb$i" net.ipv4.icmp_ratelimit 0; done
  so_l4_hash "$r"
  # No reuse of a port in TIME-WAIT for a new connection: within 60 s, a
  # 4-tuple seen twice is the same connection.
  tl_sysctl "$c" net.ipv4.tcp_tw_reuse 0
  # Ephemeral ports below 40000: tuples with a chosen port (curl
  # --local-port) use 40000 and up and never meet an ephemeral port's
  # TIME-WAIT socket.
  tl_sysctl "$c" net.ipv4.ip_local_port_range "20000 39999"

  # client <-> router
  so_veth "$p" router c0 client eth0
  ip -n "$r" addr add "198.18.1.1/24" dev c0
  ip -n "$c" addr add "$TL_CLIENT_ADDR/24" dev eth0
  for ((i = 0; i < SO_CLIENT_EXTRA; i++)); do
    ip -n "$c" addr add "$(so_client_addr "$i")/24" dev eth0
  done
  ip -n "$c" route add default via 198.18.1.1

  # The two switches.
  ip -n "$r" link add fr type bridge
  ip -n "$r" addr add "$SO_ROUTER_FRONT/24" dev fr
  ip -n "$r" link set fr up
  ip -n "$r" link add bk type bridge
  ip -n "$r" link set bk up

  for ((i = 1; i <= SO_MAX; i++)); do
    ns="${p}lb$i"
    so_veth "$p" router "f$i" "lb$i" eth0
    ip -n "$r" link set "f$i" master fr
    ip -n "$ns" addr add "$(so_lb_front "$i")/24" dev eth0
    ip -n "$ns" route add 198.18.1.0/24 via "$SO_ROUTER_FRONT"
    so_veth "$p" router "k$i" "lb$i" eth1
    ip -n "$r" link set "k$i" master bk
    ip -n "$ns" addr add "$(so_lb_back "$i")/24" dev eth1
    ip -n "$r" nexthop add id "$i" via "$(so_lb_front "$i")" dev fr
  done

  for i in $(tl_backends); do
    ns="${p}b$i"
    so_veth "$p" router "vb$i" "b$i" eth0
    ip -n "$r" link set "vb$i" master bk
    ip -n "$ns" addr add "$(tl_backend_addr "$i")/24" dev eth0
    for ((k = 1; k <= SO_MAX; k++)); do
      ip -n "$ns" route add "$(so_snat "$k")/32" via "$(so_lb_back "$k")"
    done
  done
  for i in $(tl_backends); do tl_backend_start "$p" "$i"; done

  for ((i = 1; i <= n; i++)); do so_inst_start "$p" "$i"; done
  ip -n "$r" nexthop add id "$SO_GROUP" group "$(seq -s / 1 "$n")" type resilient \
    buckets "$SO_BUCKETS" idle_timer "$SO_IDLE_TIMER" ||
    tl_die "cannot make a resilient nexthop group (Linux >= 5.13 and iproute2 >= 5.13 needed)"
  ip -n "$r" route add "$TL_VIP/32" nhid "$SO_GROUP"
  tl_log "up: $n instances behind group $SO_GROUP in ${r} (state in $st)"
}

so_down() { tl_down "$1"; }

# so_l4_hash NS: ECMP by addresses, protocol and ports in router NS.
# Policy 1 ("layer 4") uses the packet's skb->hash when one is set, and a
# packet that a local socket sent over a veth keeps its socket's hash
# (sk_txhash: random per connection, drawn again after a retransmission
# timeout): measured here, the same 5-tuple went to different instances on
# different connections, and `ip route get` could not predict any of it. A
# router fed by a NIC gets the NIC's RSS hash of the headers instead. So the
# lab uses policy 3 (custom) with explicit fields, which always hashes the
# headers: 0x0037 = source and destination address, protocol, source and
# destination port (Linux >= 5.12). Older kernels fall back to policy 1.
so_l4_hash() {
  if ip netns exec "$1" test -e /proc/sys/net/ipv4/fib_multipath_hash_fields; then
    tl_sysctl "$1" net.ipv4.fib_multipath_hash_fields 0x0037
    tl_sysctl "$1" net.ipv4.fib_multipath_hash_policy 3
  else
    tl_log "warning: no fib_multipath_hash_fields (Linux < 5.12): policy 1, which follows the sockets' own hash over veth"
    tl_sysctl "$1" net.ipv4.fib_multipath_hash_policy 1
  fi
}

# so_inst_start P I [EXTRA ARGS...]: tunlb in lbI, recorded as tunlb-lbI; its
# command line saved in so_args_file (for its standby).
so_inst_start() {
  local p=$1 i=$2 b log
  shift 2
  so_check_inst "$i"
  local -a args=(run --tun "$TL_TUN" --tun-addr "$TL_TUN_ADDR" --vip "$TL_VIP:$TL_VIP_PORT"
    --mode maglev --snat "$(so_snat "$i")" --control "$(so_control "$p" "$i")")
  for b in $(tl_backends); do args+=(--backend "$(tl_backend_addr "$b"):80"); done
  if [ "$SO_HA" = 1 ]; then
    args+=(--pickup --hash-key "$SO_HASH_KEY" --state-file "$(so_state_file "$p" "$i")"
      --state-interval "$SO_STATE_INTERVAL")
  fi
  args+=("$@")
  printf '%s\n' "${args[@]}" >"$(so_args_file "$p" "$i")"
  log=$(so_log "$p" "$i")
  tl_bg "$p" "lb$i" "tunlb-lb$i" "$log" "$SO_TUNLB_BIN" "${args[@]}"
  tl_wait_ready "$log" "$TL_PID" 15 || tl_die "instance $i (tunlb in ${p}lb$i) did not start"
}

so_inst_kill() {
  local f pid ns
  f="$(tl_state "$1")/pids/tunlb-lb$2.pid"
  [ -f "$f" ] && read -r pid ns <"$f" || return 0
  # When it is this shell's child, collect it here, with bash's "Killed"
  # notice for it out of the way.
  { tl_stop "$1" "tunlb-lb$2" "${3:-KILL}" 5; wait "$pid" || true; } 2>/dev/null
}

so_inst_alive() {
  local f pid ns
  f="$(tl_state "$1")/pids/tunlb-lb$2.pid"
  [ -f "$f" ] && read -r pid ns <"$f" && tl_pid_in_ns "$pid" "$ns"
}

so_members() {
  ip -n "${1}router" nexthop show id "$SO_GROUP" 2>/dev/null |
    awk '{ for (i = 1; i < NF; i++) if ($i == "group") { n = split($(i + 1), m, "/"); for (j = 1; j <= n; j++) { sub(/,.*/, "", m[j]); print m[j] } } }'
}

# so_group_set P IDS...: the group's members become IDS (same bucket count;
# buckets of the members kept stay where they are unless idle, see
# Documentation/networking/nexthop-group-resilient.rst).
so_group_set() {
  local p=$1
  shift
  [ $# -ge 1 ] || tl_die "a resilient group keeps at least one next hop"
  ip -n "${p}router" nexthop replace id "$SO_GROUP" group "$(printf '%s/' "$@" | sed 's,/$,,')" \
    type resilient buckets "$SO_BUCKETS" idle_timer "$SO_IDLE_TIMER"
}

so_join() {
  local p=$1 i=$2
  local -a m
  so_check_inst "$i"
  so_inst_alive "$p" "$i" || so_inst_start "$p" "$i"
  mapfile -t m < <(so_members "$p")
  if [[ " ${m[*]} " == *" $i "* ]]; then return 0; fi
  so_group_set "$p" "${m[@]}" "$i"
}

so_leave() {
  local p=$1 i=$2 x
  local -a keep=()
  so_check_inst "$i"
  for x in $(so_members "$p"); do [ "$x" = "$i" ] || keep+=("$x"); done
  so_group_set "$p" "${keep[@]}"
}

# so_standby P I: lbI's standby namespace lbIs, wired as lbI is (front and
# back bridges, route to the clients via the router), with the same sysctls;
# nothing runs in it until so_takeover. Idempotent.
so_standby() {
  local p=$1 i=$2 ns
  so_check_inst "$i"
  ns="${p}lb${i}s"
  [ -e "/run/netns/$ns" ] && return 0
  [ -e "/run/netns/${p}router" ] || tl_die "no lab with prefix $p (so_up first)"
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  tl_sysctl "$ns" net.ipv6.conf.all.disable_ipv6 1
  tl_sysctl "$ns" net.ipv6.conf.default.disable_ipv6 1
  tl_sysctl "$ns" net.ipv4.conf.all.rp_filter 0
  tl_sysctl "$ns" net.ipv4.conf.default.rp_filter 0
  tl_sysctl "$ns" net.ipv4.ip_forward 1
  tl_sysctl "$ns" net.ipv4.icmp_ratelimit 0
  so_veth "$p" router "f${i}s" "lb${i}s" eth0
  ip -n "${p}router" link set "f${i}s" master fr
  ip -n "$ns" addr add "$(so_standby_front "$i")/24" dev eth0
  ip -n "$ns" route add 198.18.1.0/24 via "$SO_ROUTER_FRONT"
  so_veth "$p" router "k${i}s" "lb${i}s" eth1
  ip -n "${p}router" link set "k${i}s" master bk
  ip -n "$ns" addr add "$(so_standby_back "$i")/24" dev eth1
}

# so_takeover P I: the standby lbIs takes instance I's role, as keepalived or
# a routing daemon would once lbI is found dead. Sets SO_READY_MS: the
# milliseconds from the start of the standby's tunlb to its "ready" (the
# restore included), and TL_PID (its PID, a child of the calling shell).
#  1. lbI, if it still runs, is stopped with SIGTERM: its final save (a planned
#     switchover). After a crash its last periodic save is what is left.
#  2. tunlb starts in lbIs with lbI's recorded command line, only --control
#     changed: the same --snat, --mode maglev, --hash-key and --pickup, and
#     the same --state-file, restored before the first packet. It starts now,
#     not hot in advance: a running process could not restore later.
#  3. The backends route lbI's SNAT address to lbIs, and next hop I (same id,
#     so the resilient group's buckets stay where they are) goes via lbIs.
so_takeover() {
  local p=$1 i=$2 log t0 t1 b args pid
  local -a a
  so_check_inst "$i"
  args=$(so_args_file "$p" "$i")
  [ -s "$args" ] || tl_die "instance $i never started: no command line to take over"
  so_standby "$p" "$i"
  ! so_inst_alive "$p" "${i}s" || tl_die "standby ${p}lb${i}s already runs"
  if so_inst_alive "$p" "$i"; then so_inst_kill "$p" "$i" TERM; fi
  mapfile -t a <"$args"
  for ((b = 0; b < ${#a[@]} - 1; b++)); do
    if [ "${a[b]}" = --control ]; then a[b + 1]=$(so_control "$p" "${i}s"); fi
  done
  log=$(so_log "$p" "${i}s")
  t0=$(date +%s%3N)
  tl_bg "$p" "lb${i}s" "tunlb-lb${i}s" "$log" "$SO_TUNLB_BIN" "${a[@]}"
  pid=$TL_PID
  tl_wait_ready "$log" "$pid" 15 || tl_die "standby ${i}s (tunlb in ${p}lb${i}s) did not start"
  t1=$(date +%s%3N)
  for b in $(tl_backends); do
    ip -n "${p}b$b" route replace "$(so_snat "$i")/32" via "$(so_standby_back "$i")"
  done
  ip -n "${p}router" nexthop replace id "$i" via "$(so_standby_front "$i")" dev fr
  TL_PID=$pid
  # shellcheck disable=SC2034  # for the caller
  SO_READY_MS=$((t1 - t0))
}

so_active() {
  so_via_inst "$(ip -n "${1}router" nexthop show id "$2" 2>/dev/null |
    awk '{ for (i = 1; i < NF; i++) if ($i == "via") print $(i + 1) }')"
}

so_buckets() {
  ip -n "${1}router" nexthop bucket show id "$SO_GROUP" 2>/dev/null |
    awk '{ for (i = 1; i < NF; i++) if ($i == "nhid") c[$(i + 1)]++ } END { for (n in c) print n, c[n] }' |
    sort -n
}

# so_via_inst ADDR: the instance owning front address ADDR: "I" (lbI), "Is"
# (its standby) or "none".
so_via_inst() {
  case $1 in
    198.18.3.1[0-9]) printf '%d\n' "$((${1##*.} - 10))" ;;
    198.18.3.2[0-9]) printf '%ds\n' "$((${1##*.} - 20))" ;;
    *) echo none ;;
  esac
}

so_predict() {
  local p=$1 src=$2 sport=$3 via
  via=$(ip -n "${p}router" route get "$TL_VIP" from "$src" iif c0 ipproto tcp sport "$sport" dport "$TL_VIP_PORT" 2>/dev/null |
    awk '{ for (i = 1; i < NF; i++) if ($i == "via") { print $(i + 1); exit } }')
  so_via_inst "$via"
}

# so_predict_many P: for each "SRC SPORT" line on stdin, print "SRC SPORT I"
# (as so_predict, in one `ip -batch`).
so_predict_many() {
  local p=$1 in out
  in=$(cat)
  [ -n "$in" ] || return 0
  out=$(awk -v vip="$TL_VIP" -v port="$TL_VIP_PORT" \
    '{ printf "route get %s from %s iif c0 ipproto tcp sport %s dport %s\n", vip, $1, $2, port }' <<<"$in" |
    ip -n "${p}router" -force -batch - 2>/dev/null |
    awk -v vip="$TL_VIP" '$1 == vip { v = "none"; for (i = 1; i < NF; i++) if ($i == "via") v = $(i + 1); print v }')
  if [ "$(wc -l <<<"$out")" -ne "$(wc -l <<<"$in")" ]; then
    # A lookup failed: one at a time, so that each answer keeps its line.
    while read -r src sport; do printf '%s %s %s\n' "$src" "$sport" "$(so_predict "$p" "$src" "$sport")"; done <<<"$in"
    return 0
  fi
  paste -d ' ' <(printf '%s\n' "$in") <(while read -r via; do so_via_inst "$via"; done <<<"$out")
}

# so_new_flows P I: the connections instance I has taken (0 when it is not running).
so_new_flows() {
  local v
  v=$(so_query "$1" "$2" stats --json 2>/dev/null | tr ',{}' '\n' | awk -F: '$1 == "\"new_flows\"" { print $2 }')
  printf '%s\n' "${v:-0}"
}

so_query() {
  local p=$1 i=$2 what=$3
  shift 3
  tl_exec "$p" "lb$i" "$SO_TUNLB_BIN" "$what" --control "$(so_control "$p" "$i")" "$@"
}

# so_pin P I: send every client packet for the VIP to instance I, past the
# group (a policy rule in the router); so_unpin P undoes it.
so_pin() {
  local r="${1}router" t=$((200 + $2))
  so_check_inst "$2"
  so_unpin "$1"
  ip -n "$r" route replace "$TL_VIP/32" via "$(so_lb_front "$2")" dev fr table "$t"
  ip -n "$r" rule add pref 10 iif c0 to "$TL_VIP/32" lookup "$t"
}
so_unpin() {
  local k
  for ((k = 0; k < 8; k++)); do
    ip -n "${1}router" rule del pref 10 2>/dev/null || return 0
  done
}

# so_curl P SRC CURL_ARGS...: curl from the client namespace, source address
# SRC, to the VIP; prints one line per transfer: "SRC_IP SRC_PORT HTTP_CODE
# X-BACKEND" (port 0 and code 000 when the connection failed). Bounded: 5 s
# per transfer. Pass the URL (e.g. "http://198.18.0.1/?n=[1-50]") in ARGS.
so_curl() {
  local p=$1 src=$2
  shift 2
  ip netns exec "${p}client" curl -s --connect-timeout 3 --max-time 5 --interface "$src" -o /dev/null \
    -w '%{local_ip} %{local_port} %{http_code} %header{x-backend}\n' "$@" 2>/dev/null || true
}
