/* ops.c — the small numeric steps of the forward pass. Formulas and evaluation order follow ggml's CPU ops
 * (double-precision sums in rmsnorm and softmax, iterated rope angles) so logits track llama.cpp closely. */
#include "ops.h"

#include <math.h>

void op_rmsnorm(float *out, const float *x, const float *weight, int n, float eps) {
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / n);
    const float scale = 1.0f / sqrtf(mean + eps);
    for (int i = 0; i < n; i++) out[i] = (x[i] * scale) * weight[i];
}

void op_rope_angles(float *cos_out, float *sin_out, int pos, int n_rot, float theta, float freq_scale,
                    const float *freq_divisors) {
    /* ggml iterates theta *= base^(-2/n_rot) rather than calling pow per pair; the rounding matches it */
    const float theta_scale = powf(theta, -2.0f / (float)n_rot);
    float angle = (float)pos;
    for (int i = 0; i < n_rot / 2; i++) {
        const float divisor = freq_divisors ? freq_divisors[i] : 1.0f;
        const float a = freq_scale * (angle / divisor);
        cos_out[i] = cosf(a);
        sin_out[i] = sinf(a);
        angle *= theta_scale;
    }
}

void op_rope(float *x, int n_heads, int head_dim, int n_rot, const float *cos_t, const float *sin_t, int neox) {
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (int64_t)h * head_dim;
        for (int i = 0; i < n_rot / 2; i++) {
            const int a = neox ? i : 2 * i;
            const int b = neox ? i + n_rot / 2 : 2 * i + 1;
            const float x0 = v[a], x1 = v[b];
            v[a] = x0 * cos_t[i] - x1 * sin_t[i];
            v[b] = x0 * sin_t[i] + x1 * cos_t[i];
        }
    }
}

void op_add(float *x, const float *y, int n) {
    for (int i = 0; i < n; i++) x[i] += y[i];
}

void op_swiglu(float *gate, const float *up, int n) {
    for (int i = 0; i < n; i++) {
        const float g = gate[i];
        gate[i] = (g / (1.0f + expf(-g))) * up[i];
    }
}

void op_softmax(float *x, int n) {
    float max = -INFINITY;
    for (int i = 0; i < n; i++) max = x[i] > max ? x[i] : max;
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    const float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++) x[i] *= inv;
}
