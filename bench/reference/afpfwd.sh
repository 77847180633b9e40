#!/usr/bin/env bash
# afpfwd.sh BIN IF_CLIENT IF_BACKENDS CLIENT VIP BACKEND...: run afpfwd
# (afpfwd.c) in bench/e2e.sh's lb namespace. Looks up the client's and the
# backends' MACs (a TCP connection attempt to each makes the kernel resolve
# it), adds a blackhole route for the VIP so the kernel drops the frames
# afpfwd forwards (the namespace is deleted after the run, the route with
# it), then becomes afpfwd.
set -euo pipefail
bin=$1 ifc=$2 ifb=$3 client=$4 vip=$5
shift 5
for a in "$client" "$@"; do
  timeout 1 bash -c "exec 3<>/dev/tcp/$a/80" >/dev/null 2>&1 || true
done
mac() {
  local m
  m=$(ip neigh show "$1" | awk '{ for (i = 1; i < NF; i++) if ($i == "lladdr") { print $(i + 1); exit } }')
  [ -n "$m" ] || { echo "afpfwd.sh: no MAC for $1" >&2; exit 1; }
  echo "$m"
}
ip route add blackhole "$vip/32"
args=("$ifc" "$ifb" "$client" "$(mac "$client")" "$vip")
for b; do args+=("$b" "$(mac "$b")"); done
exec "$bin" "${args[@]}"
