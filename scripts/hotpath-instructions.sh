#!/usr/bin/env bash
# Instructions per packet on the engine's paths, counted by callgrind
# (repeatable, unlike wall-clock time on a shared machine). Runs each mode
# with N and 2N packets; the difference divided by N is the per-packet cost.
#   scripts/hotpath-instructions.sh [N]
set -euo pipefail
n=${1:-20000}
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."
command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install valgrind" >&2; exit 1; }
cargo build --release --example hotpath >/dev/null 2>&1
bin=target/release/examples/hotpath
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
count() { valgrind --tool=callgrind --callgrind-out-file="$tmp/out" "$bin" "$1" "$2" 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'; }
for mode in original reply big syn verified; do
  a=$(count "$mode" "$n"); b=$(count "$mode" $((2 * n)))
  printf '%-9s %6d instructions per packet\n' "$mode" $(((b - a) / n))
done
