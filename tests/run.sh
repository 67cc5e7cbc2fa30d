#!/usr/bin/env bash
# The test command of README.md: install the package with its test extras, then run every test
# (fast ones first; the reference checks against llama.cpp / transformers / onnxruntime run after them).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
# llama-cpp-python compiles llama.cpp from source (about 10 minutes on 2 cores; pip caches the wheel)
CMAKE_ARGS="$(bash tests/llama_cpp_cmake_args.sh)" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
  python3 -m pip install -q -e ".[test]"
python3 -m pytest "$@"
