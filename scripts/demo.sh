#!/usr/bin/env bash
# scripts/demo.sh: README command one. Builds tunlb, brings up the namespace
# topology (client, lb, b1..b4), balances 8 curl requests in nth mode
# (b1 b2 b3 b4 b1 ...), then in weighted random mode, prints the equivalent
# iptables rules and tears everything down.
#
# Run it as root, or as an ordinary user with sudo: then only the steps that
# need root (installing packages, creating namespaces, running tunlb and curl
# inside them) go through sudo; cargo builds as you.
#
# Environment: TUNLB_NO_INSTALL=1 to only report missing packages,
# TUNLB_PREFIX to choose the namespace prefix (default tldemo<PID>-),
# TUNLB_BIN to use an already built binary (then nothing is built).
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
TOPO="$ROOT/scripts/topology.sh"
BIN=${TUNLB_BIN:-$ROOT/target/release/tunlb}
P=${TUNLB_PREFIX:-tldemo$$-}
VIP=198.18.0.1:80
BACKENDS=(198.18.2.3:80 198.18.2.4:80 198.18.2.5:80 198.18.2.6:80)

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

told_sudo=
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  else
    command -v sudo >/dev/null || die "this step needs root and sudo is missing: run the demo as root"
    if [ -z "$told_sudo" ]; then
      echo "demo: asking sudo for root: network namespaces, veth pairs, the TUN device and packages need it; the build does not." >&2
      told_sudo=1
    fi
    sudo -- "$@"
  fi
}

# 1. Tools: command -> Debian package.
need_pkgs() {
  local missing=() cmd pkg
  for pair in ip:iproute2 curl:curl python3:python3 ethtool:ethtool; do
    cmd=${pair%%:*} pkg=${pair#*:}
    if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null; then missing+=("$pkg"); fi
  done
  if [ ${#missing[@]} -eq 0 ]; then return 0; fi
  if [ -n "${TUNLB_NO_INSTALL-}" ] || ! command -v apt-get >/dev/null; then
    die "missing packages: ${missing[*]} (Debian: apt-get install ${missing[*]})"
  fi
  say "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  as_root "$TOPO" lb-stop "$P" TERM >/dev/null 2>&1 || true
  as_root "$TOPO" down "$P" >/dev/null 2>&1 || true
  [ -n "${WORK-}" ] && rm -rf "$WORK"
  if [ "$rc" -eq 0 ]; then
    say "torn down: no namespace with prefix $P is left"
  else
    echo "demo: failed (exit $rc); namespaces with prefix $P removed" >&2
  fi
  exit "$rc"
}

client_curl() { as_root "$TOPO" exec "$P" client curl -s --max-time 5 "$@"; }

run_service() {  # run_service TITLE FLAGS...: start tunlb, 8 requests, stop
  local title=$1 got=() i b
  shift
  say "$title: tunlb run $*"
  as_root "$TOPO" lb-start "$P" "$WORK/tunlb.log" "$BIN" run --tun tl0 --tun-addr 198.18.0.254/24 "$@" --trace >/dev/null ||
    die "tunlb did not become ready (log above)"
  grep -w ready "$WORK/tunlb.log" | sed 's/^/  log: /' || true
  for i in 1 2 3 4 5 6 7 8; do
    b=$(client_curl "http://${VIP%:*}/") || b="(failed)"
    got+=("$b")
    printf '  curl #%d  http://%s/  ->  %s\n' "$i" "${VIP%:*}" "$b"
  done
  echo "  tunlb's trace of the first two connections:"
  awk '/NEW|STATE/ && n++ < 8' "$WORK/tunlb.log" | sed -E 's/^[^ ]+ +[A-Z]+ +/    /'
  as_root "$TOPO" lb-stop "$P" TERM
  echo "  on SIGTERM tunlb printed its counters:"
  sed -n '/stopped:/,$p' "$WORK/tunlb.log" | sed -E 's/^[^ ]+ +[A-Z]+ +/    /'
  RESULT="${got[*]}"
}

main() {
  need_pkgs
  if [ -z "${TUNLB_BIN-}" ]; then
    command -v cargo >/dev/null || die "cargo is missing: install Rust (https://rustup.rs) and rerun"
    say "building tunlb (cargo build --release)"
    (cd "$ROOT" && cargo build --release)
  fi
  [ -x "$BIN" ] || die "no tunlb binary at $BIN"

  WORK=$(mktemp -d)
  chmod 755 "$WORK"
  trap cleanup EXIT
  trap 'exit 130' INT TERM

  say "topology up (prefix $P): client 198.18.1.2 -> lb -> b1..b4 198.18.2.3..6, VIP $VIP"
  as_root "$TOPO" up "$P"

  local flags=() b
  for b in "${BACKENDS[@]}"; do flags+=(--backend "$b"); done
  run_service "nth mode" --vip "$VIP" "${flags[@]}" --mode nth
  if [ "$RESULT" = "b1 b2 b3 b4 b1 b2 b3 b4" ]; then
    echo "  => round robin as expected: $RESULT"
  else
    die "nth mode gave '$RESULT', expected 'b1 b2 b3 b4 b1 b2 b3 b4'"
  fi

  local wflags=(--vip "$VIP" --backend "${BACKENDS[0]},weight=3" --backend "${BACKENDS[1]}"
    --backend "${BACKENDS[2]}" --backend "${BACKENDS[3]}" --mode random)
  run_service "weighted random mode (b1 has weight 3: half of the connections)" "${wflags[@]}"
  echo "  => one weighted draw per connection: $RESULT"

  say "the same service as iptables rules: tunlb iptables ${wflags[*]}"
  "$BIN" iptables "${wflags[@]}"
  say "and the nth service: tunlb iptables --vip $VIP ${flags[*]} --mode nth"
  "$BIN" iptables --vip "$VIP" "${flags[@]}" --mode nth
}

main "$@"
