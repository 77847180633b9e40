#!/usr/bin/env bash
# scripts/gen-docs.sh: regenerate the checked-in man pages and completion
# scripts from the CLI, for packagers who do not run the binary at build time.
#
#   contrib/man/tunlb.1, contrib/man/tunlb-SUBCOMMAND.1   tunlb man --out
#   contrib/completions/tunlb.bash, _tunlb, tunlb.fish    tunlb completions
#
# Both come from the clap definitions in src/cli.rs (and the flag structs of
# src/config.rs it flattens), so run this after
# changing a flag or a subcommand; `cargo test --test cli_docs` fails until
# the copies match. Pages of subcommands that no longer exist are removed.
#
# The binary is target/release/tunlb, built first (incrementally), unless
# TUNLB_BIN names another one. Exit status: 0 once the files are written.
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [ -n "${TUNLB_BIN-}" ]; then
  BIN=$TUNLB_BIN
else
  cargo build --release --quiet
  BIN=$ROOT/target/release/tunlb
fi

# Generate everything into a scratch directory first: a failure half-way
# leaves the checked-in copies as they were.
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/man" "$TMP/completions"
"$BIN" man --out "$TMP/man"
"$BIN" completions bash >"$TMP/completions/tunlb.bash"
"$BIN" completions zsh >"$TMP/completions/_tunlb"
"$BIN" completions fish >"$TMP/completions/tunlb.fish"

mkdir -p contrib/man contrib/completions
rm -f contrib/man/*.1
cp "$TMP"/man/*.1 contrib/man/
cp "$TMP"/completions/{tunlb.bash,_tunlb,tunlb.fish} contrib/completions/
echo "wrote $(find contrib/man -name '*.1' | wc -l) man pages to contrib/man and 3 scripts to contrib/completions"
