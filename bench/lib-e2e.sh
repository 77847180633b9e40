# shellcheck shell=bash
# bench/lib-e2e.sh: the topology and process bookkeeping of bench/e2e.sh.
#
# Why not scripts/lib.sh: that library turns transmit checksum offload off on
# every veth (so tshark judges real checksums), which also turns TSO off and
# would measure a slower kernel than anyone runs; and its backends are a
# Python server. This file builds the same addresses with the kernel's
# default offloads and nginx backends, one fresh topology per measurement.
#
#   client 198.18.1.2/24 (eth0) --- c0 198.18.1.1/24 [lb] br0 198.18.2.1/24
#                                                          |  vb1..vb4
#                              b1..b4: 198.18.2.3 .. 198.18.2.6 (eth0)
#   VIP 198.18.0.1: port 80 (4 backends), port 5201 (b1 only, for iperf3)
#
# With family 6 (e2e_up PREFIX 6, the IPv6 configurations), every node also
# gets the IPv6 twin of its address from 2001:2::/48 (RFC 5180), as in
# scripts/lib.sh: 198.18.X.Y <-> 2001:2:0:X::Y (client 2001:2:0:1::2, lb
# 2001:2:0:1::1 and 2001:2:0:2::1, b1..b4 2001:2:0:2::3..6, VIP 2001:2::1),
# nginx and iperf3 listen on the IPv6 address too, lb forwards IPv6. Family 4
# (the default) keeps IPv6 disabled everywhere, as before.
#
# Every name carries the prefix given to e2e_up (e.g. "e2e1234-7-"); every
# interface is made inside those namespaces (veth pairs created in the lb
# namespace with their peer moved at creation); nothing touches the root
# namespace. Processes are started with e2e_bg, which records "PID NAMESPACE
# NAME" in $E2E_WORK/pids; e2e_stop_all signals only those PIDs, and only
# while the PID still lives in the namespace it was started in.
#
# Needs: E2E_WORK (a scratch directory) set by the caller.

# shellcheck disable=SC2034 # used by bench/e2e.sh
E2E_VIP=198.18.0.1
E2E_CLIENT=198.18.1.2
E2E_LB_C=198.18.1.1
E2E_LB_B=198.18.2.1
E2E_NB=4
E2E_VIP6=2001:2::1
E2E_CLIENT6=2001:2:0:1::2
E2E_LB_C6=2001:2:0:1::1
E2E_LB_B6=2001:2:0:2::1
E2E_LIB_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)

e2e_log() { printf '[e2e] %s\n' "$*" >&2; }
e2e_die() {
  printf '[e2e] error: %s\n' "$*" >&2
  exit 1
}
e2e_baddr() { printf '198.18.2.%d\n' "$(($1 + 2))"; }
e2e_baddr6() { printf '2001:2:0:2::%d\n' "$(($1 + 2))"; }

# e2e_sysctl NS KEY VALUE: write a sysctl inside namespace NS only.
e2e_sysctl() {
  # shellcheck disable=SC2016 # expanded by the inner sh
  ip netns exec "$1" sh -c 'printf "%s\n" "$2" > "/proc/sys/$1"' sh "${2//.//}" "$3"
}

# PID checks are the topology library's (scripts/lib.sh), shared with the tests.
# shellcheck source=scripts/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../scripts/lib.sh"
# True when PID is alive (not a zombie) and lives in network namespace NS.
e2e_pid_in_ns() { tl_pid_in_ns "$@"; }
e2e_pid_alive() { tl_pid_alive "$@"; }

# e2e_bg NS NAME LOG CMD...: start CMD in namespace NS in the background, its
# output to LOG; record it. Sets E2E_PID (`ip netns exec` execs CMD in place,
# so $! is CMD's own PID).
e2e_bg() {
  local ns=$1 name=$2 log=$3
  shift 3
  ip netns exec "$ns" "$@" </dev/null >"$log" 2>&1 &
  E2E_PID=$!
  printf '%s %s %s\n' "$E2E_PID" "$ns" "$name" >>"$E2E_WORK/pids"
}

# e2e_stop PID NS [SECONDS]: SIGTERM a recorded process, SIGKILL after SECONDS.
e2e_stop() {
  local pid=$1 ns=$2 secs=${3:-5} i
  e2e_pid_in_ns "$pid" "$ns" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < secs * 10; i++)); do
    e2e_pid_alive "$pid" || break
    sleep 0.1
  done
  if e2e_pid_in_ns "$pid" "$ns"; then
    e2e_log "pid $pid ($ns) ignored SIGTERM for ${secs}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# e2e_stop_all PREFIX: stop every recorded process started in a namespace
# carrying PREFIX, most recent first.
e2e_stop_all() {
  local p=$1 pid ns name
  [ -f "$E2E_WORK/pids" ] || return 0
  while read -r pid ns name; do
    case $ns in "$p"*) e2e_stop "$pid" "$ns" 5 ;; esac
  done < <(tac "$E2E_WORK/pids")
}

e2e_list_ns() { ip netns list 2>/dev/null | awk -v p="$1" 'index($1, p) == 1 { print $1 }'; }

# e2e_down PREFIX: stop recorded processes, then delete the namespaces.
# Whatever still runs inside them at that point (an nginx worker whose master
# was SIGKILLed) is a child of a process we started in a namespace we made:
# it is found by namespace membership (`ip netns pids`), never by name.
e2e_down() {
  local p=$1 ns pids
  e2e_stop_all "$p"
  for ns in $(e2e_list_ns "$p"); do
    pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
    if [ -n "${pids// /}" ]; then
      e2e_log "leftover processes in $ns: $pids(children of recorded ones): SIGTERM"
      tl_end_ns_pids "$ns"
    fi
    ip netns del "$ns" 2>/dev/null || true
  done
}

# e2e_nginx_conf I DIR [FAMILY]: write bI's nginx config into DIR/nginx.conf
# (FAMILY 6: it listens on bI's IPv6 address too).
e2e_nginx_conf() {
  local i=$1 dir=$2 listen6=''
  [ "${3:-4}" != 6 ] || listen6="listen [$(e2e_baddr6 "$i")]:80 backlog=4096;"
  sed -e "s|@DIR@|$dir|g" -e "s|@ADDR@|$(e2e_baddr "$i")|g" -e "s|@NAME@|b$i|g" \
    -e "s|@LISTEN6@|$listen6|" "$E2E_LIB_DIR/nginx.conf.in" >"$dir/nginx.conf"
}

# e2e_wait_listen NS PORT PID [SECONDS]: wait until something listens on PORT.
e2e_wait_listen() {
  local ns=$1 port=$2 pid=$3 secs=${4:-10} k
  for ((k = 0; k < secs * 20; k++)); do
    [ -n "$(ip netns exec "$ns" ss -Hltn "sport = :$port" 2>/dev/null)" ] && return 0
    e2e_pid_alive "$pid" || return 1
    sleep 0.05
  done
  return 1
}

# e2e_up PREFIX [FAMILY]: client, lb (a router, ip_forward=1), b1..b4 with
# nginx on :80 and an iperf3 server on b1:5201. Offloads stay at the kernel's
# defaults. FAMILY 6: dual stack, the servers on the IPv6 addresses too
# (iperf3 on b1's IPv6 address only: one test at a time either way).
e2e_up() {
  local p=$1 fam=${2:-4} ns i b dir k c="${1}client" lb="${1}lb"
  e2e_down "$p"
  for ns in "$c" "$lb" $(seq 1 "$E2E_NB" | sed "s/^/${p}b/"); do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    if [ "$fam" = 6 ]; then
      # Quiet IPv6: no router advertisements, no autoconfiguration, no
      # duplicate address detection (addresses usable at once).
      for k in accept_ra autoconf accept_dad; do
        e2e_sysctl "$ns" "net.ipv6.conf.all.$k" 0
        e2e_sysctl "$ns" "net.ipv6.conf.default.$k" 0
      done
    else
      e2e_sysctl "$ns" net.ipv6.conf.all.disable_ipv6 1
      e2e_sysctl "$ns" net.ipv6.conf.default.disable_ipv6 1
    fi
  done
  # lb is a router; rp_filter off before any interface exists, so the TUN
  # tunlb creates later inherits 0 too.
  e2e_sysctl "$lb" net.ipv4.conf.all.rp_filter 0
  e2e_sysctl "$lb" net.ipv4.conf.default.rp_filter 0
  e2e_sysctl "$lb" net.ipv4.ip_forward 1
  if [ "$fam" = 6 ]; then
    e2e_sysctl "$lb" net.ipv6.conf.all.forwarding 1
    e2e_sysctl "$lb" net.ipv6.conf.default.forwarding 1
  fi
  # The client opens tens of thousands of connections per run; HAProxy in
  # lb is a client of the backends in the same way.
  e2e_sysctl "$c" net.ipv4.tcp_tw_reuse 1
  e2e_sysctl "$lb" net.ipv4.tcp_tw_reuse 1

  ip -n "$lb" link add c0 type veth peer name eth0 netns "$c"
  ip -n "$lb" addr add "$E2E_LB_C/24" dev c0
  ip -n "$lb" link set c0 up
  ip -n "$c" addr add "$E2E_CLIENT/24" dev eth0
  ip -n "$c" link set eth0 up
  ip -n "$c" route add default via "$E2E_LB_C"
  # The VIP's prefix is reached through the lb (the default route says the
  # same; this line says it on purpose).
  ip -n "$c" route add 198.18.0.0/24 via "$E2E_LB_C"
  if [ "$fam" = 6 ]; then
    ip -n "$lb" addr add "$E2E_LB_C6/64" dev c0 nodad
    ip -n "$c" addr add "$E2E_CLIENT6/64" dev eth0 nodad
    ip -n "$c" -6 route add default via "$E2E_LB_C6"
    ip -n "$c" -6 route add 2001:2::/64 via "$E2E_LB_C6"
  fi

  ip -n "$lb" link add br0 type bridge
  ip -n "$lb" addr add "$E2E_LB_B/24" dev br0
  [ "$fam" != 6 ] || ip -n "$lb" addr add "$E2E_LB_B6/64" dev br0 nodad
  ip -n "$lb" link set br0 up
  for i in $(seq 1 "$E2E_NB"); do
    b="${p}b$i"
    ip -n "$lb" link add "vb$i" type veth peer name eth0 netns "$b"
    ip -n "$lb" link set "vb$i" master br0
    ip -n "$lb" link set "vb$i" up
    ip -n "$b" addr add "$(e2e_baddr "$i")/24" dev eth0
    ip -n "$b" link set eth0 up
    ip -n "$b" route add default via "$E2E_LB_B"
    if [ "$fam" = 6 ]; then
      ip -n "$b" addr add "$(e2e_baddr6 "$i")/64" dev eth0 nodad
      ip -n "$b" -6 route add default via "$E2E_LB_B6"
    fi
  done

  for i in $(seq 1 "$E2E_NB"); do
    b="${p}b$i"
    dir="$E2E_WORK/${p}nginx-b$i"
    mkdir -p "$dir"
    e2e_nginx_conf "$i" "$dir" "$fam"
    e2e_bg "$b" "nginx-b$i" "$dir/stderr.log" nginx -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf"
    e2e_wait_listen "$b" 80 "$E2E_PID" ||
      { cat "$dir/stderr.log" "$dir/error.log" >&2 2>/dev/null || true; e2e_die "nginx in $b did not listen on :80"; }
  done
  local ib
  ib=$(e2e_baddr 1)
  [ "$fam" != 6 ] || ib=$(e2e_baddr6 1)
  e2e_bg "${p}b1" iperf3-b1 "$E2E_WORK/${p}iperf3-server.log" iperf3 -s -B "$ib" -p 5201
  e2e_wait_listen "${p}b1" 5201 "$E2E_PID" ||
    { cat "$E2E_WORK/${p}iperf3-server.log" >&2; e2e_die "iperf3 -s in ${p}b1 did not listen on :5201"; }
}
