#!/usr/bin/env bash
# Build libFuzzer targets under ASan/UBSan and run each for SECONDS (default 60) from a seed corpus that qconv writes
# (tests/fuzz_seeds.py). Exits non-zero on the first sanitizer report, crash, leak or hang.
#   bash tests/fuzz.sh gguf|model|tokenizer|quant|all [SECONDS]
# Targets (native/programs/fuzz_TARGET.c): gguf, the loader; model, open + tokenizer + a short eval + sampling of
# fuzzed GGUFs; tokenizer, arbitrary bytes through real vocabularies and every pre-tokenizer; quant, every
# quantizer on extreme finite values. Environment:
#   FUZZ_DIR=DIR   keep the binaries, corpora (DIR/corpus-TARGET), vocabularies and crash files there
#                  (default: a temporary folder, removed at exit); tests/fuzz_coverage.sh reads DIR afterwards
#   FUZZ_RUNS=N    also stop after N executions (the local long runs: 10000000)
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:?usage: bash tests/fuzz.sh gguf|model|tokenizer|quant|all [SECONDS]}"
seconds="${2:-60}"
runs="${FUZZ_RUNS:--1}"
if [[ -n "${FUZZ_DIR:-}" ]]; then
  work="$FUZZ_DIR"
  mkdir -p "$work"
else
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
fi
work="$(cd "$work" && pwd)"

CFLAGS=(-g -O1 -std=c11 -pthread -D_GNU_SOURCE -fsanitize=address,undefined -fno-sanitize-recover=undefined)
read -r -a NATIVE <<<"$(python3 -m tests.native_sources)" # include flags, then the library's sources
INCLUDES=() SOURCES=()
for word in "${NATIVE[@]}"; do
  if [[ $word == -I* ]]; then INCLUDES+=("$word"); else SOURCES+=("$word"); fi
done

# libqrt's objects, compiled once for all targets. clang (fuzzer-no-link: coverage feedback without a main) for
# everything but the x86 SIMD files: clang 14 ignores `#pragma GCC target` and rejects __builtin_cpu_supports("f16c"),
# so those go through gcc, still under ASan/UBSan (clang's runtime serves both), without coverage feedback.
build_library() {
  [[ -f "$work/obj/.done" ]] && return
  mkdir -p "$work/obj"
  local gcc_only clang_sources=()
  gcc_only="$(grep -lE '#pragma GCC target|__builtin_cpu_supports' "${SOURCES[@]}")"
  for source in "${SOURCES[@]}"; do
    grep -qxF "$source" <<<"$gcc_only" || clang_sources+=("$source")
  done
  # shellcheck disable=SC2086 # one file per line
  (cd "$work/obj" && gcc "${CFLAGS[@]}" "${INCLUDES[@]}" -c $gcc_only &&
    clang "${CFLAGS[@]}" -fsanitize=fuzzer-no-link "${INCLUDES[@]}" -c "${clang_sources[@]}")
  touch "$work/obj/.done"
}

build_target() {
  local name="$1"
  if [[ $name == gguf ]]; then # the loader alone: no library needed
    clang "${CFLAGS[@]}" -fsanitize=fuzzer "${INCLUDES[@]}" native/programs/fuzz_gguf.c native/loader/gguf.c \
      -o "$work/fuzz_gguf"
  else
    build_library
    clang "${CFLAGS[@]}" -fsanitize=fuzzer "${INCLUDES[@]}" "native/programs/fuzz_$name.c" "$work"/obj/*.o -lm \
      -o "$work/fuzz_$name"
  fi
}

# per target: the longest input libFuzzer may make (model: the largest seed) and the memory a run may take
declare -A MAX_LEN=([gguf]=65536 [model]=0 [tokenizer]=4096 [quant]=16384)
declare -A RSS_MB=([gguf]=2048 [model]=4096 [tokenizer]=2048 [quant]=2048)

run_target() {
  local name="$1" corpus="$work/corpus-$1" seeds="$work/seeds-$1"
  echo "== fuzz $name: ${seconds}s${FUZZ_RUNS:+ or $runs executions}"
  build_target "$name"
  if [[ ! -d "$seeds" ]]; then
    python3 -m tests.fuzz_seeds "$name" "$seeds.tmp" "$work/vocab"
    mv "$seeds.tmp" "$seeds"
  fi
  mkdir -p "$corpus" "$work/crashes"
  local status=0
  QRT_FUZZ_VOCABS="$work/vocab" "$work/fuzz_$name" -max_total_time="$seconds" -runs="$runs" \
    -max_len="${MAX_LEN[$name]}" -rss_limit_mb="${RSS_MB[$name]}" -timeout=30 -print_final_stats=1 \
    -artifact_prefix="$work/crashes/$name-" "$corpus" "$seeds" >"$work/fuzz-$name.log" 2>&1 || status=$?
  if ((status)); then
    tail -n 60 "$work/fuzz-$name.log"
    echo "fuzz $name: failed (exit $status); the input is in $work/crashes/ (FUZZ_DIR keeps it)" >&2
    return "$status"
  fi
  grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)|INITED|DONE' "$work/fuzz-$name.log" | tail -n 5
}

case "$target" in
  all) for name in gguf model tokenizer quant; do run_target "$name"; done ;;
  gguf | model | tokenizer | quant) run_target "$target" ;;
  *) echo "tests/fuzz.sh: unknown target '$target' (gguf, model, tokenizer, quant, all)" >&2 && exit 2 ;;
esac
