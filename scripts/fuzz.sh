#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS]: fuzz the engine's packet path for a bounded time
# (default 60 s) and report executions, coverage and crashes.
#
# The target (fuzz/fuzz_targets/engine.rs, harness in fuzz/src/lib.rs) turns
# bytes into a sequence of packets in both directions, fed to an engine with
# live flows, and checks the invariants after every packet: no panic, every
# forwarded packet parses and carries valid checksums and exactly its flow's
# translation, the table stays within max_flows, every packet is counted.
#
# cargo fuzz needs nightly-only rustc flags (-Z sanitizer, -C passes=sancov).
# Only the stable toolchain is installed here, so the script sets
# RUSTC_BOOTSTRAP=1, which lets stable rustc accept them. With a nightly
# toolchain installed, FUZZ_TOOLCHAIN=nightly runs `cargo +nightly fuzz`
# instead.
#
# Environment:
#   FUZZ_TARGET     fuzz target (default: engine)
#   FUZZ_SANITIZER  none (default: ~6x faster, the code under test is safe
#                   Rust) or address (also checks the unsafe code of
#                   dependencies)
#   FUZZ_JOBS       parallel fuzzing processes (default: 1)
#   FUZZ_TOOLCHAIN  a rustup toolchain name for `cargo +NAME fuzz`
#
# The committed seeds (fuzz/corpus/TARGET) are read, never written: new inputs
# go to fuzz/target/corpus/TARGET and crashes to fuzz/artifacts/TARGET.
# Integer-overflow checks are on (cargo fuzz -a). Exit status: 0 if the run
# ended clean, 1 on a crash or a failed build.
set -euo pipefail

usage() {
  sed -n '2,3p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 2
}
SECONDS_TO_RUN=${1:-60}
case "$SECONDS_TO_RUN" in
  -h | --help) usage ;;
  '' | *[!0-9]*) echo "fuzz.sh: SECONDS must be a whole number, got '$SECONDS_TO_RUN'" >&2; usage ;;
esac

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT/fuzz"
TARGET=${FUZZ_TARGET:-engine}
SANITIZER=${FUZZ_SANITIZER:-none}
JOBS=${FUZZ_JOBS:-1}

if ! command -v cargo-fuzz >/dev/null 2>&1 && [ -x "${HOME:-/root}/.cargo/bin/cargo-fuzz" ]; then
  export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "== installing cargo-fuzz (cargo install cargo-fuzz --locked)"
  cargo install cargo-fuzz --locked
fi

cargo_fuzz=(cargo)
if [ -n "${FUZZ_TOOLCHAIN-}" ]; then
  cargo_fuzz+=("+$FUZZ_TOOLCHAIN")
else
  export RUSTC_BOOTSTRAP=1
fi
cargo_fuzz+=(fuzz)
flags=(-s "$SANITIZER" -a)

WORK="target/corpus/$TARGET"
SEEDS="corpus/$TARGET"
ARTIFACTS="artifacts/$TARGET"
mkdir -p "$WORK" "$ARTIFACTS"
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
crashes_before=$(find "$ARTIFACTS" -type f | wc -l)

echo "== building fuzz target '$TARGET' (sanitizer: $SANITIZER)"
if ! "${cargo_fuzz[@]}" build "${flags[@]}" "$TARGET"; then
  echo "fuzz.sh: the fuzz target did not build" >&2
  exit 1
fi

echo "== fuzzing '$TARGET' for $SECONDS_TO_RUN s ($JOBS job(s)); seeds: $SEEDS ($(find "$SEEDS" -type f | wc -l) files)"
start=$(date +%s)
parallel=()
if [ "$JOBS" -gt 1 ]; then
  parallel=(-jobs="$JOBS" -workers="$JOBS")
fi
rc=0
"${cargo_fuzz[@]}" run "${flags[@]}" "$TARGET" "$WORK" "$SEEDS" -- \
  -max_total_time="$SECONDS_TO_RUN" -max_len=4096 -print_final_stats=1 \
  -artifact_prefix="$ARTIFACTS/" "${parallel[@]}" \
  >"$LOG" 2>&1 || rc=$?
elapsed=$(($(date +%s) - start))

# With -jobs > 1 libFuzzer writes each worker's output to fuzz-N.log.
if [ "$JOBS" -gt 1 ]; then
  cat fuzz-*.log >>"$LOG" 2>/dev/null || true
  rm -f fuzz-*.log
fi
grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::|panicked|ERROR|SUMMARY' "$LOG" || true
last=$(grep -E '^#[0-9]+[[:space:]]' "$LOG" | tail -1 || true)
execs=$(awk '/^stat::number_of_executed_units:/ { s += $NF } END { print s + 0 }' "$LOG")
rate=$(awk '/^stat::average_exec_per_sec:/ { s += $NF } END { print s + 0 }' "$LOG")
cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
corpus=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
crashes=$(($(find "$ARTIFACTS" -type f | wc -l) - crashes_before))

echo
echo "fuzz: target $TARGET, ${elapsed} s, $execs executions (${rate}/s), coverage ${cov:-?} edges / ${ft:-?} features, corpus ${corpus:-?} inputs, $crashes new crash(es)"
if [ "$rc" -ne 0 ] || [ "$crashes" -gt 0 ]; then
  echo "fuzz: FAILED (libFuzzer exit $rc); the log's end:" >&2
  tail -40 "$LOG" >&2
  for f in $(find "$ARTIFACTS" -type f -newer "$SEEDS" | head -5); do
    echo "reproduce: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ${flags[*]} $TARGET $f)" >&2
  done
  exit 1
fi
echo "fuzz: ran clean"
