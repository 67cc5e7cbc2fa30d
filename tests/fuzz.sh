#!/usr/bin/env bash
# Build libFuzzer targets under ASan/UBSan and run each for SECONDS (default 60) from a seed corpus that qconv writes
# (tests/fuzz_seeds.py). Exits non-zero on the first sanitizer report, crash, leak or hang.
#   bash tests/fuzz.sh gguf|model|tokenizer|quant|all [SECONDS]
#   FUZZ_DIR=DIR bash tests/fuzz.sh coverage     line coverage of the corpora a run left in DIR
# Targets (native/programs/fuzz_TARGET.c): gguf, the loader; model, open + tokenizer + a short eval + sampling of
# fuzzed GGUFs; tokenizer, arbitrary bytes through real vocabularies and every pre-tokenizer; quant, every
# quantizer on extreme finite values. Environment:
#   FUZZ_DIR=DIR   keep the binaries, corpora (DIR/corpus-TARGET), vocabularies and crash files there
#                  (default: a temporary folder, removed at exit)
#   FUZZ_RUNS=N    also stop after N executions (the local long runs: 10000000)
# coverage: each target's plain runner (-DQRT_FUZZ_MAIN) built with clang's source-based coverage replays its
# corpus and seeds; llvm-cov reports the lines of the loader, model, tokenizer, sampler and quantizers they reach.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:?usage: bash tests/fuzz.sh gguf|model|tokenizer|quant|all|coverage [SECONDS]}"
seconds="${2:-60}"
runs="${FUZZ_RUNS:--1}"
TARGETS=(gguf model tokenizer quant)
if [[ -n "${FUZZ_DIR:-}" ]]; then
  work="$FUZZ_DIR"
  mkdir -p "$work"
else
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
fi
work="$(cd "$work" && pwd)"

BASE_FLAGS=(-g -O1 -std=c11 -pthread -D_GNU_SOURCE)
SANITIZE=(-fsanitize=address,undefined -fno-sanitize-recover=undefined)
# per flavour: what clang adds to the library's objects, and to a target's program
declare -A LIBRARY_FLAGS=([fuzz]="${SANITIZE[*]} -fsanitize=fuzzer-no-link" [coverage]="-fprofile-instr-generate -fcoverage-mapping")
declare -A PROGRAM_FLAGS=([fuzz]="${SANITIZE[*]} -fsanitize=fuzzer" [coverage]="-fprofile-instr-generate -fcoverage-mapping -DQRT_FUZZ_MAIN")
declare -A GCC_FLAGS=([fuzz]="${SANITIZE[*]}" [coverage]="")
read -r -a NATIVE <<<"$(python3 -m tests.native_sources)" # include flags, then the library's sources
INCLUDES=() SOURCES=()
for word in "${NATIVE[@]}"; do
  if [[ $word == -I* ]]; then INCLUDES+=("$word"); else SOURCES+=("$word"); fi
done

# libqrt's objects, compiled once per flavour for all targets. clang for everything but the x86 SIMD files:
# clang 14 ignores `#pragma GCC target` and rejects __builtin_cpu_supports("f16c"), so those go through gcc (under
# ASan/UBSan when fuzzing: clang's runtime serves both), without coverage feedback or counts.
build_library() {
  local flavour="$1" obj="$work/obj-$1"
  [[ -f "$obj/.done" ]] && return
  mkdir -p "$obj"
  local gcc_only clang_sources=()
  gcc_only="$(grep -lE '#pragma GCC target|__builtin_cpu_supports' "${SOURCES[@]}")"
  for source in "${SOURCES[@]}"; do
    grep -qxF "$source" <<<"$gcc_only" || clang_sources+=("$source")
  done
  # one compiler per CPU (objects are named by the source's base name, which native/ keeps unique)
  # shellcheck disable=SC2086 # the flag strings and gcc_only (one file per line) split on purpose
  (cd "$obj" && gcc "${BASE_FLAGS[@]}" ${GCC_FLAGS[$flavour]} "${INCLUDES[@]}" -c $gcc_only &&
    printf '%s\0' "${clang_sources[@]}" | xargs -0 -n 1 -P "$(nproc)" \
      clang "${BASE_FLAGS[@]}" ${LIBRARY_FLAGS[$flavour]} "${INCLUDES[@]}" -c)
  touch "$obj/.done"
}

# build_target FLAVOUR NAME: $work/fuzz_NAME (libFuzzer) or $work/coverage_NAME (plain runner)
build_target() {
  local flavour="$1" name="$2" exe
  exe="$work/$([[ $flavour == fuzz ]] && echo fuzz || echo coverage)_$name"
  # shellcheck disable=SC2086
  if [[ $name == gguf ]]; then # the loader alone: no library needed
    clang "${BASE_FLAGS[@]}" ${PROGRAM_FLAGS[$flavour]} "${INCLUDES[@]}" native/programs/fuzz_gguf.c \
      native/loader/gguf.c -o "$exe"
  else
    build_library "$flavour"
    clang "${BASE_FLAGS[@]}" ${PROGRAM_FLAGS[$flavour]} "${INCLUDES[@]}" "native/programs/fuzz_$name.c" \
      "$work/obj-$flavour"/*.o -lm -o "$exe"
  fi
}

write_seeds() {
  local name="$1" seeds="$work/seeds-$1"
  [[ -d "$seeds" ]] && return
  python3 -m tests.fuzz_seeds "$name" "$seeds.tmp" "$work/vocab"
  mv "$seeds.tmp" "$seeds"
}

# per target: the longest input libFuzzer may make (model: the largest seed) and the memory a run may take
declare -A MAX_LEN=([gguf]=65536 [model]=0 [tokenizer]=4096 [quant]=16384)
declare -A RSS_MB=([gguf]=2048 [model]=4096 [tokenizer]=2048 [quant]=2048)

run_target() {
  local name="$1" corpus="$work/corpus-$1"
  echo "== fuzz $name: ${seconds}s${FUZZ_RUNS:+ or $runs executions}"
  build_target fuzz "$name"
  write_seeds "$name"
  mkdir -p "$corpus" "$work/crashes"
  local status=0
  QRT_FUZZ_VOCABS="$work/vocab" "$work/fuzz_$name" -max_total_time="$seconds" -runs="$runs" \
    -max_len="${MAX_LEN[$name]}" -rss_limit_mb="${RSS_MB[$name]}" -timeout=30 -print_final_stats=1 \
    -artifact_prefix="$work/crashes/$name-" "$corpus" "$work/seeds-$name" >"$work/fuzz-$name.log" 2>&1 || status=$?
  if ((status)); then
    tail -n 60 "$work/fuzz-$name.log"
    echo "fuzz $name: failed (exit $status); the input is in $work/crashes/ (FUZZ_DIR keeps it)" >&2
    return "$status"
  fi
  grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)|INITED|DONE' "$work/fuzz-$name.log" | tail -n 5
}

coverage() {
  local profiles="$work/profiles" objects=()
  rm -rf "$profiles" && mkdir -p "$profiles"
  for name in "${TARGETS[@]}"; do
    [[ -d "$work/corpus-$name" ]] || continue
    build_target coverage "$name"
    echo "== coverage $name: $(find "$work/corpus-$name" "$work/seeds-$name" -type f | wc -l) inputs"
    find "$work/corpus-$name" "$work/seeds-$name" -type f -print0 |
      LLVM_PROFILE_FILE="$profiles/$name-%p.profraw" QRT_FUZZ_VOCABS="$work/vocab" \
        xargs -0 -n 200 "$work/coverage_$name" >/dev/null
    objects+=(-object "$work/coverage_$name")
  done
  ((${#objects[@]})) || { echo "tests/fuzz.sh coverage: no corpus in $work (run with FUZZ_DIR=$work first)" >&2 && exit 2; }
  llvm-profdata merge -sparse "$profiles"/*.profraw -o "$work/coverage.profdata"
  llvm-cov report "${objects[@]:1}" -instr-profile="$work/coverage.profdata" native/loader/gguf.c \
    native/model/model.c native/model/ops.c native/tokenizer/tokenizer.c native/tokenizer/pretokenize.c \
    native/sampling/sampler.c native/quant/*.c
}

case "$mode" in
  all) for name in "${TARGETS[@]}"; do run_target "$name"; done ;;
  gguf | model | tokenizer | quant) run_target "$mode" ;;
  coverage) coverage ;;
  *) echo "tests/fuzz.sh: unknown target '$mode' (${TARGETS[*]}, all, coverage)" >&2 && exit 2 ;;
esac
