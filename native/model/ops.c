/* ops.c — the small numeric steps of the forward pass. Formulas and evaluation order follow ggml's CPU ops
 * (double-precision sums in rmsnorm and softmax, iterated rope angles) so logits track llama.cpp closely. */
#include "ops.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

void op_rmsnorm(float *out, const float *x, const float *weight, int n, float eps) {
    /* the squares four at a time (which compilers put in one vector), added to the double sum one by one in order */
    double sum = 0.0;
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        double square[4];
        for (int k = 0; k < 4; k++) square[k] = (double)(x[i + k] * x[i + k]);
        for (int k = 0; k < 4; k++) sum += square[k];
    }
    for (; i < n; i++) sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / n);
    const float scale = 1.0f / sqrtf(mean + eps);
    for (i = 0; i < n; i++) out[i] = (x[i] * scale) * weight[i];
}

void op_rope_angles(float *cos_out, float *sin_out, int pos, int n_rot, const RopeParams *rope,
                    const float *freq_divisors) {
    /* ggml iterates theta *= base^(-2/n_rot) rather than calling pow per pair; the rounding matches it */
    const float theta_scale = powf(rope->theta, -2.0f / (float)n_rot);
    const float mscale = rope->attn_factor;
    float angle = (float)pos;
    for (int i = 0; i < n_rot / 2; i++) {
        const float divisor = freq_divisors ? freq_divisors[i] : 1.0f;
        const float extrapolated = angle / divisor;
        const float interpolated = rope->freq_scale * extrapolated;
        float a = interpolated;
        if (rope->ext_factor != 0.0f) {
            /* YaRN (Peng et al. 2023): high-frequency pairs keep their angle, low ones are interpolated */
            const float y = ((float)i - rope->corr_dims[0]) / fmaxf(0.001f, rope->corr_dims[1] - rope->corr_dims[0]);
            const float mix = (1.0f - fminf(1.0f, fmaxf(0.0f, y))) * rope->ext_factor;
            a = fmaf(interpolated, 1.0f - mix, extrapolated * mix); /* as ggml's build contracts it */
        }
        cos_out[i] = cosf(a) * mscale;
        sin_out[i] = sinf(a) * mscale;
        angle *= theta_scale;
    }
}

void op_rope_yarn_corr_dims(int n_rot, int n_ctx_orig, float theta, float beta_fast, float beta_slow, float dims[2]) {
    /* the pair index whose wavelength 2 pi theta^(2i/n_rot) fits `turns` times into n_ctx_orig positions */
    const float pi = 3.14159265358979323846f;
    const float fast = (float)n_rot * logf((float)n_ctx_orig / (beta_fast * 2.0f * pi)) / (2.0f * logf(theta));
    const float slow = (float)n_rot * logf((float)n_ctx_orig / (beta_slow * 2.0f * pi)) / (2.0f * logf(theta));
    dims[0] = fmaxf(0.0f, floorf(fast));
    dims[1] = fminf((float)(n_rot - 1), ceilf(slow));
}

void op_rope(float *x, int n_heads, int head_dim, int n_rot, const float *cos_t, const float *sin_t, int neox) {
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (int64_t)h * head_dim;
        for (int i = 0; i < n_rot / 2; i++) {
            const int a = neox ? i : 2 * i;
            const int b = neox ? i + n_rot / 2 : 2 * i + 1;
            const float x0 = v[a], x1 = v[b];
            /* ggml's build contracts these two expressions into exactly these fused multiply-adds */
            v[a] = fmaf(x0, cos_t[i], -(x1 * sin_t[i]));
            v[b] = fmaf(x0, sin_t[i], x1 * cos_t[i]);
        }
    }
}

void op_add(float *x, const float *y, int n) {
    for (int i = 0; i < n; i++) x[i] += y[i];
}

/* silu through ggml's vector expf in blocks of 16 (libm expf for a tail), as ggml_vec_swiglu_f32. The exps of up to
 * 256 values are taken first, so that the division and product run as one loop the compiler vectorizes (gate and up
 * do not overlap), one rounding per value as before. */
void op_swiglu(float *restrict gate, const float *restrict up, int n, qrt_expf16_fn exp16) {
    int i = 0;
    while (n - i >= 16) {
        float neg[16], e[256];
        const int len = n - i >= 256 ? 256 : (n - i) & ~15;
        for (int b = 0; b < len; b += 16) {
            for (int k = 0; k < 16; k++) neg[k] = -gate[i + b + k];
            exp16(e + b, neg);
        }
        for (int k = 0; k < len; k++) gate[i + k] = (gate[i + k] / (1.0f + e[k])) * up[i + k];
        i += len;
    }
    for (; i < n; i++) {
        const float g = gate[i];
        gate[i] = (g / (1.0f + expf(-g))) * up[i];
    }
}

/* 16-lane float sum in the tree order of _mm512_reduce_add_ps */
float op_reduce16(const float *v) {
    float a[8], b[4];
    for (int i = 0; i < 8; i++) a[i] = v[i + 8] + v[i];
    for (int i = 0; i < 4; i++) b[i] = a[i + 4] + a[i];
    return (b[0] + b[2]) + (b[1] + b[3]);
}

/* As ggml_vec_soft_max_f32 over a KV row padded with masked (zero-weight) positions: exp in blocks of 16,
 * each block summed in float, block sums accumulated in double. */
void op_softmax(float *x, int n, qrt_expf16_fn exp16) {
    float max = -INFINITY;
    for (int i = 0; i < n; i++) max = x[i] > max ? x[i] : max;
    double sum = 0.0;
    for (int i = 0; i < n; i += 16) {
        float in[16], e[16];
        const int len = n - i < 16 ? n - i : 16;
        for (int k = 0; k < 16; k++) in[k] = k < len ? x[i + k] - max : -INFINITY;
        exp16(e, in);
        for (int k = 0; k < len; k++) x[i + k] = e[k];
        sum += (double)op_reduce16(e);
    }
    const float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++) x[i] *= inv;
}

float op_dot_f32_ggml(const float *x, const float *y, int n) {
    float lanes[4][16] = {{0}};
    const int np = n & ~63;
    for (int i = 0; i < np; i += 64)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 16; l++) lanes[j][l] = fmaf(x[i + 16 * j + l], y[i + 16 * j + l], lanes[j][l]);
    for (int l = 0; l < 16; l++) {
        lanes[0][l] += lanes[2][l];
        lanes[1][l] += lanes[3][l];
        lanes[0][l] += lanes[1][l];
    }
    float sum = op_reduce16(lanes[0]);
    for (int i = np; i < n; i++) sum = fmaf(x[i], y[i], sum);
    return sum;
}

void op_weighted_sum_ggml(float *out, const float *w, const float *v, int n_pos, int stride, int n) {
    for (int i = 0; i < n; i++) {
        float lanes[16] = {0};
        for (int t = 0; t < n_pos; t++) lanes[t & 15] = fmaf(v[(size_t)t * stride + i], w[t], lanes[t & 15]);
        out[i] = op_reduce16(lanes);
    }
}

QRT_SIMD_CLONES void op_layernorm(float *out, const float *x, const float *weight, const float *bias, int n, float eps) {
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += (double)x[i];
    const float mean = (float)(sum / n);
    double var = 0.0;
    for (int i = 0; i < n; i++) {
        const float d = x[i] - mean;
        var += (double)(d * d);
    }
    const float scale = 1.0f / sqrtf((float)(var / n) + eps);
    for (int i = 0; i < n; i++) out[i] = (x[i] - mean) * scale * weight[i] + bias[i];
}

/* The element-wise helpers below compare and select on the floats' bits as integers: compilers vectorise
 * integer selects, while float comparisons in a loop are only if-converted without trapping math. */
static inline uint32_t float_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}
static inline float bits_float(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* e^x for x <= 0 (e^-87 for x below -87): 2^n times a degree-6 Taylor polynomial of e^r, r = x - n ln 2 in
 * [-ln2/2, ln2/2] (ln 2 split in two for an exact r); relative error below 3e-7. */
static inline float exp_nonpositive(float x) {
    const uint32_t limit = 0xC2AE0000u; /* -87.0f: a larger pattern is a more negative float */
    const uint32_t u = float_bits(x);
    x = bits_float(u > limit ? limit : u);
    const float n = (float)(int)(x * 1.44269504f - 0.5f); /* round to nearest: x * log2(e) <= 0 */
    const float r = (x - n * 0.693145752f) - n * 1.42860677e-6f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    return p * bits_float((uint32_t)((int32_t)n + 127) << 23);
}

/* erf(x) by Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7, under a float's rounding of 1 + erf). */
static inline float erf_as(float x) {
    const uint32_t sign = float_bits(x) & 0x80000000u;
    const float a = bits_float(float_bits(x) & 0x7FFFFFFFu);
    const float t = 1.0f / (1.0f + 0.3275911f * a);
    float p = 1.061405429f;
    p = p * t - 1.453152027f;
    p = p * t + 1.421413741f;
    p = p * t - 0.284496736f;
    p = p * t + 0.254829592f;
    const float e = 1.0f - p * t * exp_nonpositive(-a * a);
    return bits_float(float_bits(e) | sign);
}

QRT_SIMD_CLONES void op_gelu_erf(float *x, const float *bias, int n) {
    for (int i = 0; i < n; i++) {
        const float v = x[i] + bias[i];
        x[i] = 0.5f * v * (1.0f + erf_as(v * 0.70710678118654752f));
    }
}

QRT_SIMD_CLONES void op_exp_shifted(float *x, int n, float shift) {
    for (int i = 0; i < n; i++) x[i] = exp_nonpositive(x[i] - shift);
}

void op_pool_rows(float *acc, const float *rows, int n_rows, int dim, int first, int total, int pooling) {
    const int last = first + n_rows == total;
    switch (pooling) {
    case POOL_MEAN:
        if (first == 0)
            for (int d = 0; d < dim; d++) acc[d] = 0.0f;
        for (int b = 0; b < n_rows; b++) op_add(acc, rows + (size_t)b * dim, dim);
        if (last)
            for (int d = 0; d < dim; d++) acc[d] /= (float)total;
        break;
    case POOL_CLS:
        if (first == 0)
            for (int d = 0; d < dim; d++) acc[d] = rows[d];
        break;
    case POOL_LAST:
        if (last)
            for (int d = 0; d < dim; d++) acc[d] = rows[(size_t)(n_rows - 1) * dim + d];
        break;
    default: break;
    }
}

void op_l2_normalize(float *x, int n) {
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += (double)x[i] * x[i];
    const double norm = sqrt(sum);
    const float scale = (float)(1.0 / (norm > 1e-12 ? norm : 1e-12)); /* torch's F.normalize eps */
    for (int i = 0; i < n; i++) x[i] *= scale;
}
