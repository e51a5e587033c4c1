#!/usr/bin/env bash
# Coverage-guided fuzzing on stable Rust with cargo-afl (AFL++). `make fuzz` runs this script.
#
#   fuzz/run.sh [TARGET...]   build, then fuzz each target for FUZZ_SECONDS and print what ran
#   fuzz/run.sh cmin [TARGET...]  minimise each target's corpus plus what the last run found
#                             (afl's queue) back into fuzz/corpus/<target>/
#
# Settings (environment): FUZZ_SECONDS (per target, default 180), FUZZ_TARGET_DIR (the
# instrumented build, default ~/.cache/flowaudit-fuzz-target), FUZZ_OUT (afl's output, default
# ~/.cache/flowaudit-fuzz-out), FUZZ_ANALYTICS=0 to skip the two analytics targets (their build
# instruments DataFusion and takes long), FUZZ_NO_BUILD=1 to use the binaries already built,
# AFL_OPT_LEVEL (cargo-afl's, default 3).
# Method, targets and results: docs/fuzzing.md.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
FUZZ="$ROOT/fuzz"
CARGO_AFL_VERSION=0.18.2
FUZZ_SECONDS=${FUZZ_SECONDS:-180}
FUZZ_ANALYTICS=${FUZZ_ANALYTICS:-1}
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$HOME/.cache/flowaudit-fuzz-target}
FUZZ_OUT=${FUZZ_OUT:-$HOME/.cache/flowaudit-fuzz-out}

INGEST_TARGETS=(gateway flow_flowaudit flow_goflow2 flow_zeek geoip_csv geoip_mmdb delta_log)
ANALYTICS_TARGETS=(rule_header sql_check)

dict_for() {
  case $1 in
    gateway | flow_*) echo "$FUZZ/dict/json.dict" ;;
    geoip_csv) echo "$FUZZ/dict/geoip_csv.dict" ;;
    rule_header) echo "$FUZZ/dict/rule_header.dict" ;;
    sql_check) echo "$FUZZ/dict/sql.dict" ;;
    *) echo "" ;;
  esac
}

is_analytics() { [[ " ${ANALYTICS_TARGETS[*]} " == *" $1 "* ]]; }

# cargo-afl (crates.io) and its AFL++ build (made by `cargo afl config --build`; cc and make only:
# on stable Rust the instrumentation is LLVM's SanitizerCoverage inside rustc, no clang plugin).
setup() {
  local missing=""
  command -v cc >/dev/null || missing="$missing build-essential"
  command -v make >/dev/null || missing="$missing make"
  command -v git >/dev/null || missing="$missing git"
  if [ -n "$missing" ]; then
    echo "installing:$missing"
    apt-get update -qq && apt-get install -y -qq $missing
  fi
  if ! cargo afl --version 2>/dev/null | grep -q "cargo-afl $CARGO_AFL_VERSION"; then
    cargo install cargo-afl --version "$CARGO_AFL_VERSION" --locked
  fi
  if ! cargo afl --version 2>/dev/null | grep -q "AFL++ version [0-9]"; then
    cargo afl config --build --force
  fi
}

build() {
  local want_analytics=$1
  (cd "$FUZZ" && cargo afl build --release --bins)
  if [ "$want_analytics" = 1 ]; then
    (cd "$FUZZ" && cargo afl build --release --features analytics \
      --bin rule_header --bin sql_check)
  fi
}

stat_of() { awk -F' *: *' -v k="$2" '$1 == k {print $2}' "$1" 2>/dev/null; }

fuzz_one() {
  local t=$1 out="$FUZZ_OUT/$t" dict
  dict=$(dict_for "$t")
  rm -rf "$out"
  mkdir -p "$out"
  echo "== $t: fuzzing for ${FUZZ_SECONDS}s"
  AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1 \
    AFL_FAST_CAL=1 AFL_SKIP_CRASHES=1 \
    cargo afl fuzz -i "$FUZZ/corpus/$t" -o "$out" -V "$FUZZ_SECONDS" -t 5000 \
    ${dict:+-x "$dict"} -- "$CARGO_TARGET_DIR/release/$t" >"$out/afl.log" 2>&1 || {
    echo "afl-fuzz failed for $t; the last lines of $out/afl.log:"
    tail -20 "$out/afl.log"
    return 1
  }
}

report() {
  printf '%-15s %12s %10s %8s %8s %6s\n' target execs_done execs/s corpus crashes hangs
  local t stats crashes=0
  for t in "$@"; do
    stats="$FUZZ_OUT/$t/default/fuzzer_stats"
    if [ ! -f "$stats" ]; then
      printf '%-15s %12s\n' "$t" "(not run)"
      continue
    fi
    printf '%-15s %12s %10s %8s %8s %6s\n' "$t" "$(stat_of "$stats" execs_done)" \
      "$(stat_of "$stats" execs_per_sec)" "$(stat_of "$stats" corpus_count)" \
      "$(stat_of "$stats" saved_crashes)" "$(stat_of "$stats" saved_hangs)"
  done
  for t in "$@"; do
    for f in "$FUZZ_OUT/$t"/default/crashes/id:*; do
      [ -e "$f" ] || continue
      crashes=$((crashes + 1))
      echo "crash: $t: $f"
    done
  done
  if [ "$crashes" -gt 0 ]; then
    echo "$crashes crashing inputs: reproduce with fuzz/run.sh show TARGET FILE; keep each as"
    echo "fuzz/regressions/TARGET/<name> once fixed (make test replays them)"
    return 1
  fi
}

cmin() {
  local t tmp bin
  bin=$(dirname "$(ls -d "$HOME"/.local/share/afl.rs/rustc-"$(rustc --version | cut -d' ' -f2)"-*/afl.rs-*/afl/bin/afl-fuzz | tail -1)")
  for t in "$@"; do
    tmp=$(mktemp -d)
    mkdir "$tmp/in"
    cp "$FUZZ/corpus/$t"/* "$tmp/in/"
    if [ -d "$FUZZ_OUT/$t/default/queue" ]; then
      for f in "$FUZZ_OUT/$t"/default/queue/id:*; do
        [ -e "$f" ] && cp "$f" "$tmp/in/q-$(basename "$f" | cut -d, -f1 | tr : -)"
      done
    fi
    # afl-cmin.bash: the Python afl-cmin that `cargo afl cmin` prefers kept no input at all for
    # some targets here (AFL++ 4.40c).
    AFL_PATH="$bin" PATH="$bin:$PATH" AFL_SKIP_BIN_CHECK=1 "$bin/afl-cmin.bash" -i "$tmp/in" \
      -o "$tmp/out" -t 5000 -- "$CARGO_TARGET_DIR/release/$t" >"$tmp/cmin.log" 2>&1 || {
      tail -20 "$tmp/cmin.log"
      return 1
    }
    rm -rf "$FUZZ/corpus/$t"
    mv "$tmp/out" "$FUZZ/corpus/$t"
    echo "$t: $(ls "$FUZZ/corpus/$t" | wc -l) inputs ($(du -sh "$FUZZ/corpus/$t" | cut -f1))"
    rm -rf "$tmp"
  done
}

# Run one input through a target's binary outside afl and show its panic.
show() {
  "$CARGO_TARGET_DIR/release/$1" <"$2"
}

main() {
  local cmd=fuzz
  if [ "${1:-}" = cmin ] || [ "${1:-}" = show ]; then
    cmd=$1
    shift
  fi
  if [ "$cmd" = show ]; then
    show "$@"
    return
  fi
  local targets=("$@") want_analytics=0 t
  if [ ${#targets[@]} -eq 0 ]; then
    targets=("${INGEST_TARGETS[@]}")
    [ "$FUZZ_ANALYTICS" = 1 ] && targets+=("${ANALYTICS_TARGETS[@]}")
  fi
  for t in "${targets[@]}"; do
    [ -d "$FUZZ/corpus/$t" ] || { echo "unknown target $t (no fuzz/corpus/$t)"; return 2; }
    is_analytics "$t" && want_analytics=1
  done
  setup
  [ "${FUZZ_NO_BUILD:-0}" = 1 ] || build "$want_analytics"
  if [ "$cmd" = cmin ]; then
    cmin "${targets[@]}"
    return
  fi
  local failed=0
  for t in "${targets[@]}"; do
    fuzz_one "$t" || failed=1
  done
  report "${targets[@]}" || failed=1
  return $failed
}

main "$@"
