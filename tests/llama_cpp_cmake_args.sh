#!/usr/bin/env bash
# CMAKE_ARGS for building llama-cpp-python (the reference runtime) on this CPU.
# GGML_NATIVE would compile ggml's AMX kernels wherever the CPU reports AMX, and those crash in the VMs we run on
# (SIGSEGV in ggml_backend_amx_mul_mat), so the ISA is spelled out from /proc/cpuinfo with AMX left off.
flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
has() { [[ " $flags " == *" $1 "* ]] && echo ON || echo OFF; }
echo "-DGGML_NATIVE=OFF -DLLAMA_CURL=OFF" \
  "-DGGML_AVX=$(has avx) -DGGML_AVX2=$(has avx2) -DGGML_FMA=$(has fma) -DGGML_F16C=$(has f16c) -DGGML_BMI2=$(has bmi2)" \
  "-DGGML_AVX_VNNI=$(has avx_vnni) -DGGML_AVX512=$(has avx512f) -DGGML_AVX512_VBMI=$(has avx512vbmi)" \
  "-DGGML_AVX512_VNNI=$(has avx512_vnni) -DGGML_AVX512_BF16=$(has avx512_bf16)" \
  "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
