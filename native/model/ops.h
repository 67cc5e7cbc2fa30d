/* ops.h — the small numeric steps of the forward pass (ops.c), each a few lines, f32 in and out. */
#ifndef QRT_OPS_H
#define QRT_OPS_H
#include <stdint.h>

#include "kernels.h"
#pragma GCC visibility push(hidden)

/* Element-wise loops built also for AVX2 and AVX-512, the clone picked by the loader for this CPU (the build
 * itself targets baseline x86-64). Every clone does the same float operations per element (no contraction under
 * -std=c11), so results do not depend on which one runs. */
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define QRT_SIMD_CLONES __attribute__((target_clones("default", "avx2", "avx512f")))
#else
#define QRT_SIMD_CLONES
#endif

/* out = x / rms(x) * weight over n values (the mean square summed in double, as ggml does). */
void op_rmsnorm(float *out, const float *x, const float *weight, int n, float eps);
/* Rotary embedding parameters, as llama.cpp derives them from the GGUF's rope keys (model.c reads them). */
typedef struct {
    float theta;        /* frequency base */
    float freq_scale;   /* 1 / the scaling factor (linear and YaRN) */
    float ext_factor;   /* YaRN: 1 mixes extrapolated angles back in (below corr_dims), 0 off */
    float attn_factor;  /* magnitude of cos/sin (YaRN: about 1 + 0.1 ln(factor)) */
    float corr_dims[2]; /* YaRN: pairs below [0] keep the unscaled angle, above [1] the scaled one, a ramp between */
} RopeParams;

/* cos/sin of the rotation angles of position pos for n_rot/2 frequency pairs (freq_divisors: llama3's
 * rope_freqs tensor, or NULL). */
void op_rope_angles(float *cos_out, float *sin_out, int pos, int n_rot, const RopeParams *rope,
                    const float *freq_divisors);
/* YaRN's correction range for n_rot rotated dims, trained context n_ctx_orig and frequency base theta: the pairs
 * whose wavelength fits beta_fast and beta_slow times into the original context. */
void op_rope_yarn_corr_dims(int n_rot, int n_ctx_orig, float theta, float beta_fast, float beta_slow, float dims[2]);
/* Rotate the first n_rot values of each of n_heads vectors of head_dim values in place. */
void op_rope(float *x, int n_heads, int head_dim, int n_rot, const float *cos_t, const float *sin_t, int neox);
/* x += y */
void op_add(float *x, const float *y, int n);
/* gate = silu(gate) * up (arrays that do not overlap); exp16 is the variant chosen at open (select.h), an argument
 * so that the scalar reference never reaches the dispatcher */
void op_swiglu(float *restrict gate, const float *restrict up, int n, qrt_expf16_fn exp16);
/* dot product in the summation order of ggml's AVX-512 ggml_vec_dot_f32 (4 x 16 lanes, tree reduce) */
float op_dot_f32_ggml(const float *x, const float *y, int n);
/* out[i] = sum_t w[t] * v[t * stride + i] for i < n, t < n_pos, in tinyBLAS's order (16 lanes over t, fused) */
void op_weighted_sum_ggml(float *out, const float *w, const float *v, int n_pos, int stride, int n);
/* sum of 16 floats in the tree order of _mm512_reduce_add_ps */
float op_reduce16(const float *v);
/* in-place softmax of n scores */
void op_softmax(float *x, int n, qrt_expf16_fn exp16);
/* out = (x - mean) / sqrt(var + eps) * weight + bias over n values (mean and variance summed in double, as ggml_norm) */
void op_layernorm(float *out, const float *x, const float *weight, const float *bias, int n, float eps);
/* x = gelu(x + bias), gelu's erf form x/2 (1 + erf(x / sqrt 2)) (transformers' "gelu"; llama.cpp's bert runs
 * ggml_gelu, the tanh approximation) */
void op_gelu_erf(float *x, const float *bias, int n);
/* How embed turns a sequence's hidden rows into one vector: llama.cpp's numbers, as {arch}.pooling_type holds them. */
enum pooling {
    POOL_NONE = 0, /* no pooled vector: embed is refused */
    POOL_MEAN = 1,
    POOL_CLS = 2,  /* the first token's row */
    POOL_LAST = 3, /* the last token's row */
};
/* x = e^(x - shift) for n values x <= shift (a softmax's numerators; relative error below 3e-7) */
void op_exp_shifted(float *x, int n, float shift);
/* Embedding pooling (enum pooling) of n_rows hidden rows of dim floats, rows first.. of a sequence of total rows,
 * into acc: mean (acc zeroed at first 0, divided at the end), cls (row 0), last (row total - 1). */
void op_pool_rows(float *acc, const float *rows, int n_rows, int dim, int first, int total, int pooling);
/* x /= max(|x|, 1e-12) */
void op_l2_normalize(float *x, int n);

#pragma GCC visibility pop
#endif
