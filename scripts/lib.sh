# shellcheck shell=bash
# scripts/lib.sh: the tunlb network-namespace topology as a sourced library.
#
# Used by scripts/topology.sh (its command-line face), scripts/demo.sh and
# netns-tests/. Everything it creates lives in network namespaces named
# "${PREFIX}client", "${PREFIX}lb", "${PREFIX}b1".."${PREFIX}b4", joined by veth
# pairs created directly inside those namespaces; nothing is added to the
# root namespace. Addresses come from 198.18.0.0/15 only, and for IPv6 from
# the benchmarking range 2001:2::/48 (RFC 5180) only:
#
#   client 198.18.1.2/24 (eth0) --- c0 198.18.1.1/24  [lb]  br0 198.18.2.1/24
#                                   tl0 198.18.0.254/24 (made by tunlb)  |
#           VIP 198.18.0.1:80 is routed into tl0        vb1..vb4 ports of br0
#                                                          |
#                           b1..b4: 198.18.2.3 .. 198.18.2.6 (eth0), HTTP :80
#
# Dual stack (unless TL_IPV6=0): every node also has the IPv6 twin of each
# IPv4 address, 198.18.X.Y <-> 2001:2:0:X::Y (/64 for a /24), with the same
# routes: client 2001:2:0:1::2 (default via lb's c0 2001:2:0:1::1), lb's br0
# 2001:2:0:2::1, b1..b4 2001:2:0:2::3 .. ::6 (default via 2001:2:0:2::1); the
# IPv6 VIP is 2001:2::1 and tunlb's TUN takes 2001:2::fe/64 (TL_TUN_ADDR6,
# a second --tun-addr), so the VIP routes into it. Addresses are added with
# nodad (usable at once), router advertisements and autoconfiguration are off
# everywhere, lb forwards IPv6 as it forwards IPv4. The backends listen on
# both families (a second, IPv6-only socket: IPv4 connections stay on an
# AF_INET socket, so `ss` shows them as before).
#
# State (PID files, logs, the served files) lives in $(tl_state PREFIX), by
# default /run/tunlb-PREFIX. Processes are started with tl_bg, which records
# "PID NAMESPACE"; tl_stop and tl_down signal only recorded PIDs, and only
# while that PID still lives in that namespace (so a reused PID is never hit).
# When the state directory was lost (an interrupted run), tl_down also ends
# the processes still inside namespaces carrying the prefix (ip netns pids):
# those can only be this prefix's own.
#
# Functions (PREFIX is the per-run namespace prefix, e.g. "tl1234-"):
#   tl_up PREFIX                  build everything (removing leftovers first)
#   tl_down PREFIX                remove everything carrying PREFIX
#   tl_exec PREFIX NODE CMD...    run CMD in namespace PREFIX+NODE (client, lb, b1..)
#   tl_bg PREFIX NODE NAME LOG CMD...
#                                 start CMD in the background in PREFIX+NODE,
#                                 record it as NAME; sets TL_PID (a child of the
#                                 calling shell, so `wait "$TL_PID"` gives its status)
#   tl_stop PREFIX NAME [SIG] [SECONDS]
#                                 signal recorded NAME (default TERM), wait for it
#   tl_lb_start PREFIX LOG CMD... start CMD (e.g. the tunlb binary and its args)
#                                 in the lb namespace as "tunlb"; sets TL_PID
#   tl_wait_ready LOG PID [SECONDS]
#                                 wait for tunlb's "ready" line in LOG
#   tl_backend_stop / tl_backend_start PREFIX I
#   tl_isolate_backend PREFIX I LB_MTU BACKEND_MTU
#                                 take bI off the bridge onto its own routed veth
#   tl_sha256 PREFIX FILE         the known sha256 of a served file (big.bin, small.bin)
#   tl_backend_addr I / tl_backend_addr6 I
#                                 bI's IPv4 / IPv6 address
#
# IPv6 names: TL_VIP6, TL_TUN_ADDR6, TL_CLIENT_ADDR6, TL_LB_CLIENT_ADDR6,
# TL_LB_BACKEND_ADDR6, the twins of the IPv4 ones; tl_has_ipv6 PREFIX NODE says
# whether a node of a topology has IPv6 (TL_IPV6 when it was built).
#
# Environment: TUNLB_STATE_ROOT (default /run), TUNLB_DATA (a directory holding
# big.bin and small.bin and SHA256SUMS; made on first use when missing; default:
# inside the state directory), TUNLB_PYTHON (default /usr/bin/python3),
# TL_IPV6 (default 1: dual stack; 0: IPv4 only, IPv6 disabled on the client
# and the backends as before dual stack existed).

# Constants for the scripts that source this file.
# shellcheck disable=SC2034
TL_LIB_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
TL_VIP=198.18.0.1
TL_VIP_PORT=80
TL_TUN=tl0
TL_TUN_ADDR=198.18.0.254/24
TL_CLIENT_ADDR=198.18.1.2
TL_LB_CLIENT_ADDR=198.18.1.1
TL_LB_BACKEND_ADDR=198.18.2.1
TL_NBACKENDS=4
TL_BIG_MIB=64
# The IPv6 twins (2001:2::/48 only): 198.18.X.Y <-> 2001:2:0:X::Y.
TL_VIP6=2001:2::1
TL_TUN_ADDR6=2001:2::fe/64
TL_CLIENT_ADDR6=2001:2:0:1::2
TL_LB_CLIENT_ADDR6=2001:2:0:1::1
TL_LB_BACKEND_ADDR6=2001:2:0:2::1
TL_IPV6=${TL_IPV6:-1}

tl_log() { printf '[topology] %s\n' "$*" >&2; }
tl_die() { printf '[topology] error: %s\n' "$*" >&2; exit 1; }

tl_need_root() {
  [ "$(id -u)" -eq 0 ] || tl_die "this needs root (network namespaces, veth pairs): run it as root or with sudo"
}

# A prefix becomes part of namespace and state-directory names.
tl_check_prefix() {
  local p=${1-}
  [[ $p =~ ^[A-Za-z][A-Za-z0-9_.-]{1,30}$ ]] ||
    tl_die "bad prefix '$p': 2-31 characters from [A-Za-z0-9_.-], starting with a letter (e.g. tl1234-)"
}

tl_state() { printf '%s/tunlb-%s\n' "${TUNLB_STATE_ROOT:-/run}" "$1"; }
tl_data() { printf '%s\n' "${TUNLB_DATA:-$(tl_state "$1")/data}"; }
tl_backend_addr() { printf '198.18.2.%d\n' "$(($1 + 2))"; }
# The address's last group is the IPv4 one's last byte written as it is
# (198.18.2.3 <-> 2001:2:0:2::3): the plan stays readable for I <= 7.
tl_backend_addr6() { printf '2001:2:0:2::%d\n' "$(($1 + 2))"; }
# tl_has_ipv6 PREFIX NODE: true when IPv6 is enabled in PREFIX+NODE.
tl_has_ipv6() {
  [ "$(ip netns exec "$1$2" cat /proc/sys/net/ipv6/conf/all/disable_ipv6 2>/dev/null)" = 0 ]
}
tl_backends() { seq 1 "$TL_NBACKENDS"; }
tl_nodes() { printf '%s\n' client lb; local i; for i in $(tl_backends); do printf 'b%d\n' "$i"; done; }
tl_python() {
  if [ -n "${TUNLB_PYTHON-}" ]; then printf '%s\n' "$TUNLB_PYTHON"
  elif [ -x /usr/bin/python3 ]; then printf '%s\n' /usr/bin/python3
  else command -v python3 || tl_die "python3 is missing (apt-get install python3)"
  fi
}

tl_exec() {
  local p=$1 node=$2
  shift 2
  ip netns exec "${p}${node}" "$@"
}

# tl_sysctl NS KEY VALUE: write a sysctl inside namespace NS (no root-ns effect).
tl_sysctl() {
  local ns=$1 key=$2 val=$3
  # shellcheck disable=SC2016  # $1 and $2 belong to the inner sh
  ip netns exec "$ns" sh -c 'printf "%s\n" "$2" > "/proc/sys/$1"' sh "${key//.//}" "$val"
}

# Namespaces that carry the prefix, whatever state the last run left.
# tl_end_ns_pids NS: TERM, then after 3 s KILL, every process still running
# in namespace NS (only this run's namespaces are ever passed: their
# processes can only be its own). Prints nothing; returns 0.
tl_end_ns_pids() {
  local ns=$1 pids k
  pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
  [ -n "${pids// /}" ] || return 0
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for ((k = 0; k < 30; k++)); do
    [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break
    sleep 0.1
  done
  pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
  # shellcheck disable=SC2086
  [ -z "${pids// /}" ] || kill -KILL $pids 2>/dev/null || true
}

tl_list_ns() {
  ip netns list 2>/dev/null | awk -v p="$1" 'index($1, p) == 1 { print $1 }'
}

# True when PID is alive (not a zombie) and lives in network namespace NS.
tl_pid_in_ns() {
  local pid=$1 ns=$2 want have state
  [ -e "/run/netns/$ns" ] || return 1
  want="net:[$(stat -L -c %i "/run/netns/$ns")]"
  have=$(readlink "/proc/$pid/ns/net" 2>/dev/null) || return 1
  [ "$have" = "$want" ] || return 1
  state=$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null) || return 1
  [ "$state" != Z ] && [ "$state" != X ]
}

tl_pid_alive() {
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ "$state" != Z ] && [ "$state" != X ]
}

# tl_bg PREFIX NODE NAME LOG CMD...: start CMD in PREFIX+NODE in the background,
# stdout and stderr to LOG, record "PID NAMESPACE" as NAME. Sets TL_PID.
tl_bg() {
  local p=$1 node=$2 name=$3 log=$4
  shift 4
  local st
  st=$(tl_state "$p")
  mkdir -p "$st/pids"
  # Truncate here, not in the background job: a waiter that greps LOG right
  # after this returns must not see a previous run's lines.
  : >"$log"
  # ip netns exec execs CMD in place, so $! is CMD's own PID.
  NO_COLOR=1 ip netns exec "${p}${node}" "$@" </dev/null >>"$log" 2>&1 &
  TL_PID=$!
  printf '%s %s\n' "$TL_PID" "${p}${node}" >"$st/pids/$name.pid"
}

# tl_stop PREFIX NAME [SIGNAL] [SECONDS]: signal the recorded process NAME and
# wait up to SECONDS (default 5) for it to go; SIGKILL after that.
tl_stop() {
  local p=$1 name=$2 sig=${3:-TERM} secs=${4:-5}
  local f pid ns i
  f="$(tl_state "$p")/pids/$name.pid"
  [ -f "$f" ] || return 0
  read -r pid ns <"$f" || true
  rm -f "$f"
  [ -n "${pid-}" ] && [ -n "${ns-}" ] || return 0
  tl_pid_in_ns "$pid" "$ns" || return 0
  kill "-$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < secs * 10; i++)); do
    tl_pid_alive "$pid" || return 0
    sleep 0.1
  done
  tl_pid_in_ns "$pid" "$ns" && kill -KILL "$pid" 2>/dev/null
  return 0
}

# tl_make_data DIR: big.bin (64 MiB random), small.bin (1 MiB random) and
# their SHA256SUMS, made once and atomically (parallel runs may share DIR).
tl_make_data() {
  local dir=$1 tmp
  [ -f "$dir/SHA256SUMS" ] && return 0
  mkdir -p "$dir"
  tmp=$(mktemp -d "$dir/.tmp.XXXXXX")
  head -c "$((TL_BIG_MIB << 20))" /dev/urandom >"$tmp/big.bin"
  head -c "$((1 << 20))" /dev/urandom >"$tmp/small.bin"
  (cd "$tmp" && sha256sum big.bin small.bin >SHA256SUMS.tmp)
  mv -f "$tmp/big.bin" "$tmp/small.bin" "$dir/"
  mv -f "$tmp/SHA256SUMS.tmp" "$dir/SHA256SUMS"
  rmdir "$tmp"
}

tl_sha256() {
  awk -v f="$2" '$2 == f { print $1 }' "$(tl_data "$1")/SHA256SUMS"
}

# Start bI's HTTP server and wait until it listens.
tl_backend_start() {
  local p=$1 i=$2 st py k v6=()
  st=$(tl_state "$p")
  py=$(tl_python)
  mkdir -p "$st/logs"
  # With IPv6, a second listener on [::]:80; both must listen.
  local fams=(inet)
  if tl_has_ipv6 "$p" "b$i"; then v6=(--bind6 ::) fams+=(inet6); fi
  tl_bg "$p" "b$i" "server-b$i" "$st/logs/b$i.log" \
    "$py" "$TL_LIB_DIR/backend.py" --name "b$i" --data "$(tl_data "$p")" --port 80 "${v6[@]}"
  local f n
  for ((k = 0; k < 100; k++)); do
    n=0
    for f in "${fams[@]}"; do
      [ -n "$(ip netns exec "${p}b$i" ss -Hltn -f "$f" 'sport = :80' 2>/dev/null)" ] && n=$((n + 1))
    done
    [ "$n" -eq "${#fams[@]}" ] && return 0
    tl_pid_alive "$TL_PID" || break
    sleep 0.1
  done
  cat "$st/logs/b$i.log" >&2 || true
  tl_die "backend b$i did not start listening on :80"
}

tl_backend_stop() { tl_stop "$1" "server-b$2" TERM 5; }

# Turn transmit checksum offload off, so captures show real checksums.
tl_tx_off() {
  local ns=$1 dev=$2
  if command -v ethtool >/dev/null; then
    ip netns exec "$ns" ethtool -K "$dev" tx off >/dev/null 2>&1 ||
      tl_log "warning: ethtool -K $dev tx off failed in $ns"
  else
    tl_log "warning: ethtool is missing: transmit checksum offload stays on (apt-get install ethtool)"
  fi
}

tl_up() {
  local p=$1 st c lb ns i b k
  tl_need_root
  tl_check_prefix "$p"
  command -v ip >/dev/null || tl_die "ip is missing (apt-get install iproute2)"
  tl_down "$p"
  st=$(tl_state "$p")
  mkdir -p "$st/pids" "$st/logs"
  tl_make_data "$(tl_data "$p")"
  c="${p}client" lb="${p}lb"

  for ns in $(tl_nodes | sed "s/^/$p/"); do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
  done

  # lb: a router. rp_filter off before any interface exists, so every
  # interface (the TUN tunlb creates later too) inherits 0 from "default".
  tl_sysctl "$lb" net.ipv4.conf.all.rp_filter 0
  tl_sysctl "$lb" net.ipv4.conf.default.rp_filter 0
  if [ "$TL_IPV6" = 1 ]; then
    # Dual stack, quiet: no router advertisements accepted, no
    # autoconfiguration, no duplicate address detection (link-local
    # addresses usable at once too), before any interface exists.
    for ns in $(tl_nodes | sed "s/^/$p/"); do
      for k in accept_ra autoconf accept_dad; do
        tl_sysctl "$ns" "net.ipv6.conf.all.$k" 0
        tl_sysctl "$ns" "net.ipv6.conf.default.$k" 0
      done
    done
  else
    # client and backends: IPv4 only.
    for ns in "$c" $(tl_backends | sed "s/^/${p}b/"); do
      tl_sysctl "$ns" net.ipv6.conf.all.disable_ipv6 1
      tl_sysctl "$ns" net.ipv6.conf.default.disable_ipv6 1
    done
  fi
  tl_sysctl "$c" net.ipv4.tcp_tw_reuse 1

  # client <-> lb
  ip -n "$lb" link add c0 type veth peer name eth0 netns "$c"
  ip -n "$lb" addr add "$TL_LB_CLIENT_ADDR/24" dev c0
  ip -n "$lb" link set c0 up
  ip -n "$c" addr add "$TL_CLIENT_ADDR/24" dev eth0
  ip -n "$c" link set eth0 up
  ip -n "$c" route add default via "$TL_LB_CLIENT_ADDR"
  if [ "$TL_IPV6" = 1 ]; then
    ip -n "$lb" addr add "$TL_LB_CLIENT_ADDR6/64" dev c0 nodad
    ip -n "$c" addr add "$TL_CLIENT_ADDR6/64" dev eth0 nodad
    ip -n "$c" -6 route add default via "$TL_LB_CLIENT_ADDR6"
  fi
  tl_tx_off "$c" eth0
  tl_tx_off "$lb" c0

  # lb's backend bridge (inside lb) and one veth per backend.
  ip -n "$lb" link add br0 type bridge
  ip -n "$lb" addr add "$TL_LB_BACKEND_ADDR/24" dev br0
  if [ "$TL_IPV6" = 1 ]; then ip -n "$lb" addr add "$TL_LB_BACKEND_ADDR6/64" dev br0 nodad; fi
  ip -n "$lb" link set br0 up
  for i in $(tl_backends); do
    b="${p}b$i"
    ip -n "$lb" link add "vb$i" type veth peer name eth0 netns "$b"
    ip -n "$lb" link set "vb$i" master br0
    ip -n "$lb" link set "vb$i" up
    ip -n "$b" addr add "$(tl_backend_addr "$i")/24" dev eth0
    ip -n "$b" link set eth0 up
    ip -n "$b" route add default via "$TL_LB_BACKEND_ADDR"
    if [ "$TL_IPV6" = 1 ]; then
      ip -n "$b" addr add "$(tl_backend_addr6 "$i")/64" dev eth0 nodad
      ip -n "$b" -6 route add default via "$TL_LB_BACKEND_ADDR6"
    fi
    tl_tx_off "$b" eth0
    tl_tx_off "$lb" "vb$i"
  done

  tl_sysctl "$lb" net.ipv4.ip_forward 1
  if [ "$TL_IPV6" = 1 ]; then
    tl_sysctl "$lb" net.ipv6.conf.all.forwarding 1
    tl_sysctl "$lb" net.ipv6.conf.default.forwarding 1
  fi

  for i in $(tl_backends); do tl_backend_start "$p" "$i"; done
  tl_log "up: namespaces $(tl_list_ns "$p" | tr '\n' ' ')(state in $st)"
}

tl_down() {
  local p=$1 st f pid ns dev
  tl_check_prefix "$p"
  st=$(tl_state "$p")
  if [ -d "$st/pids" ]; then
    for f in "$st"/pids/*.pid; do
      [ -e "$f" ] || continue
      tl_stop "$p" "$(basename "$f" .pid)" TERM 3
    done
  fi
  for ns in $(tl_list_ns "$p"); do
    # Leftovers of an interrupted run: whatever still runs in our namespace.
    tl_end_ns_pids "$ns"
    # Persistent TUN/TAP devices are deleted here explicitly, never left to
    # the kernel's namespace teardown.
    for dev in $(ip -n "$ns" -o tuntap show 2>/dev/null | cut -d: -f1); do
      ip -n "$ns" tuntap del dev "$dev" mode tun 2>/dev/null ||
        ip -n "$ns" tuntap del dev "$dev" mode tap 2>/dev/null || true
    done
    ip netns del "$ns" 2>/dev/null || true
  done
  if [ -d "$st" ]; then
    rm -rf "$st"
  fi
  return 0
}

# tl_lb_start PREFIX LOG CMD...: start CMD (tunlb and its arguments, possibly
# behind setpriv) in the lb namespace, recorded as "tunlb". Sets TL_PID.
tl_lb_start() {
  local p=$1 log=$2
  shift 2
  tl_bg "$p" lb tunlb "$log" "$@"
}

# tl_wait_ready LOG PID [SECONDS]: wait for the "ready" log line; fails (and
# shows the log) when PID dies first or the time runs out.
tl_wait_ready() {
  local log=$1 pid=$2 secs=${3:-10} k
  for ((k = 0; k < secs * 20; k++)); do
    if grep -qw ready "$log" 2>/dev/null; then return 0; fi
    if ! tl_pid_alive "$pid"; then
      tl_log "tunlb (pid $pid) exited before it was ready; its log:"
      sed 's/^/    /' "$log" >&2
      return 1
    fi
    sleep 0.05
  done
  tl_log "tunlb (pid $pid) not ready after ${secs}s; its log:"
  sed 's/^/    /' "$log" >&2
  return 1
}

# tl_isolate_backend PREFIX I LB_MTU BACKEND_MTU: take bI's veth off the bridge
# and route bI's address over it alone, with the given MTUs on the lb end and
# the backend end. With LB_MTU < BACKEND_MTU the lb kernel, forwarding a
# full-size packet from the TUN toward bI, answers "fragmentation needed"
# toward the packet's source (the SNAT address, which routes into the TUN).
# With IPv6 (both ends at least 1280, the IPv6 minimum), the same for bI's
# IPv6 address: lb answers "packet too big" instead (routers never fragment
# IPv6). IPv6 answers neighbour solicitations only for an address of the
# receiving interface, so the veth's lb end gets the link-local fe80::1 and
# bI's default route goes via fe80::1 on it.
tl_isolate_backend() {
  local p=$1 i=$2 lbmtu=$3 bmtu=$4 lb="${1}lb" addr
  addr=$(tl_backend_addr "$i")
  ip -n "$lb" link set "vb$i" nomaster
  ip -n "$lb" link set "vb$i" mtu "$lbmtu"
  ip -n "${p}b$i" link set eth0 mtu "$bmtu"
  ip -n "$lb" route add "$addr/32" dev "vb$i" src "$TL_LB_BACKEND_ADDR"
  ip -n "$lb" neigh flush dev br0 to "$addr" 2>/dev/null || true
  ip -n "${p}b$i" neigh flush dev eth0 2>/dev/null || true
  if tl_has_ipv6 "$p" "b$i"; then
    addr=$(tl_backend_addr6 "$i")
    ip -n "$lb" addr add fe80::1/64 dev "vb$i" nodad
    ip -n "$lb" -6 route add "$addr/128" dev "vb$i" src "$TL_LB_BACKEND_ADDR6"
    ip -n "$lb" -6 neigh flush dev br0 to "$addr" 2>/dev/null || true
    ip -n "${p}b$i" -6 route replace default via fe80::1 dev eth0
  fi
}
