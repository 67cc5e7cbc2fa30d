#!/usr/bin/env bash
# Fuzz the C GGUF loader with libFuzzer under ASan/UBSan for N seconds (default 60), from a seed corpus of valid
# files written by qconv. Usage: bash tests/fuzz_loader.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -D_GNU_SOURCE -Inative/loader \
  -Inative/base native/programs/fuzz_gguf.c native/loader/gguf.c -o "$work/fuzz_gguf"
mkdir -p "$work/corpus"
python3 - "$work/corpus" <<'PY'
import sys
from pathlib import Path

from qconv.converter.convert import convert_to_gguf
from qconv.samples.synthetic import build_random_model

out = Path(sys.argv[1])
folder = build_random_model(out / "model", hidden=64, n_layers=1, n_heads=2, n_kv_heads=1, ffn=128, vocab=300, tied=True)
for t in ("f32", "q8_0", "q4_k_m"):
    convert_to_gguf(folder, out / f"seed-{t}.gguf", t, progress=False)
import shutil

shutil.rmtree(folder)
PY
"$work/fuzz_gguf" -artifact_prefix="$work/" -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 "$work/corpus" 2>&1 | tail -n 12
